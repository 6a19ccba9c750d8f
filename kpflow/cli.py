"""The ``kpflow`` command line.

``kpflow spectrum`` builds a built-in model from a seed, runs it on seeded
inputs, and prints the top-k eigenvalues of K and NTK_S, their traces, and
their effective ranks globally and along each axis of the state.  It needs
nothing beyond kpflow's own dependencies (numpy by default).

Examples
--------
>>> from kpflow.cli import main
>>> main(["spectrum", "--model", "leaky", "--batch", "2", "--time", "3", "--hidden", "4", "--k", "2",
...       "--json"])  # doctest: +ELLIPSIS
{...
0
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

from kpflow._threads import cpu_threads
from kpflow.linalg.rank import MIN_ESTIMATE_BUDGET
from kpflow.models import registry

__all__ = ["build_parser", "console", "main", "run_demo_command", "run_spectrum"]

#: ``--model`` choices: every entry of kpflow.models.registry
MODELS = registry.names()
BACKENDS = ("numpy", "array_api_strict", "torch", "jax")
DTYPES = ("float64", "float32")


#: The smallest ``--matvecs``: the effective-rank estimates split their budget into
#: independent probe pairs and need at least this many products.
MIN_MATVECS = MIN_ESTIMATE_BUDGET


def _checked(convert: Any, accept: Any, what: str) -> Any:
    """An argparse type: ``convert(text)`` that ``accept`` holds for (argparse names the flag)."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError as err:
            msg = f"expected {what}, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from err
        if not accept(value):
            msg = f"expected {what}, got {value}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


def _int_at_least(minimum: int, what: str) -> Any:
    """An argparse type: an int ``>= minimum``."""
    return _checked(int, lambda v: v >= minimum, what)


_positive_int = _int_at_least(1, "a positive integer")
_unit_interval = _checked(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")


def _add_threads(parser: Any) -> None:
    parser.add_argument(
        "--threads",
        type=_int_at_least(0, "a non-negative integer"),
        default=1,
        help=(
            "CPU threads of numpy's BLAS and of torch while the command runs (default: 1: at "
            "the default sizes more threads wait on one another, and far longer when other "
            "programs keep the cores busy; 0 keeps the libraries' own settings)"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``kpflow`` command.

    Examples
    --------
    >>> from kpflow.cli import build_parser
    >>> build_parser().parse_args(["spectrum", "--model", "rnn"]).model
    'rnn'
    """
    from kpflow import __version__

    parser = argparse.ArgumentParser(
        prog="kpflow",
        description="The global empirical NTK of recurrent and feed-forward networks, NTK_S = P K Pᵀ.",
    )
    parser.add_argument("--version", action="version", version=f"kpflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    spec = sub.add_parser(
        "spectrum",
        help="top eigenvalues, traces and effective ranks of K and NTK_S for a seeded model",
        description=(
            "Build a built-in model from a seed, run it on seeded Gaussian inputs, and print the "
            "top-k eigenvalues of the parameter kernel K and of the global NTK NTK_S = P K Pᵀ, their "
            "traces, and their effective ranks (participation ratios) globally and along each axis "
            "of the state (batch, time, hidden; batch, units for the MLP). K's numbers are exact "
            "(Kronecker-core rules); NTK_S's come from block Lanczos and randomized estimators, "
            "printed with their standard errors."
        ),
    )
    spec.add_argument(
        "--model",
        choices=MODELS,
        default="gru",
        help="built-in model, from kpflow.models.registry (default: gru)",
    )
    spec.add_argument("--backend", choices=BACKENDS, default="numpy", help="array backend (default: numpy)")
    spec.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help=(
            "floating dtype (default: float64; on jax float32 unless jax's x64 mode is on, "
            "JAX_ENABLE_X64=1, since jax without it has no float64)"
        ),
    )
    spec.add_argument("--batch", type=_positive_int, default=8, help="batch size B (default: 8)")
    spec.add_argument("--time", type=_positive_int, default=30, help="sequence length T (default: 30)")
    spec.add_argument("--hidden", type=_positive_int, default=32, help="hidden width H (default: 32)")
    spec.add_argument("--inputs", type=_positive_int, default=3, help="input features n_in (default: 3)")
    depth, dt = registry.entry("mlp").defaults["depth"], registry.entry("leaky").defaults["dt"]
    spec.add_argument("--depth", type=_positive_int, help=f"MLP hidden layers (default: {depth})")
    spec.add_argument("--dt", type=_unit_interval, help=f"leaky RNN time step (default: {dt})")
    spec.add_argument("--k", type=_positive_int, default=10, help="top eigenvalues to print (default: 10)")
    spec.add_argument(
        "--matvecs",
        type=_int_at_least(MIN_MATVECS, f"an integer >= {MIN_MATVECS}"),
        default=300,
        help=(
            f"NTK_S products for the trace estimate, at least {MIN_MATVECS} (default: 300); a second "
            "trace estimate and each effective rank take half as many (the effective ranks share "
            "the two trace estimates as their numerator)"
        ),
    )
    spec.add_argument(
        "--seed",
        type=_int_at_least(0, "a non-negative integer"),
        default=0,
        help="seed of weights, inputs and probes (default: 0)",
    )
    spec.add_argument("--json", action="store_true", help="print the report as JSON")
    spec.add_argument(
        "--progress",
        action="store_true",
        help="show progress on stderr (a tqdm bar with pip install kpflow[progress])",
    )
    spec.add_argument(
        "--jax-cache",
        metavar="DIR",
        default=None,
        help=(
            "with --backend jax: the folder where jax keeps the programs it compiles, so that the "
            "next run loads them (default: $KPFLOW_JAX_CACHE, else kpflow/jax in the user cache "
            "folder, e.g. ~/.cache/kpflow/jax; 'off' turns it off)"
        ),
    )
    _add_threads(spec)
    _add_demo_parser(sub)
    return parser


def _add_demo_parser(sub: Any) -> None:
    from kpflow.analysis.demo import MODELS as DEMO_MODELS
    from kpflow.analysis.demo import TASKS, DemoConfig

    d = DemoConfig()
    demo = sub.add_parser(
        "demo",
        help="train a small GRU on flip-flop and report its NTK before and after training",
        description=(
            "Train a small recurrent network on a fixed batch with kpflow's own BPTT (numpy by default), "
            "measure its loss on fresh held-out trials, then analyse its global NTK at initialisation and "
            "after training: the spectra of K (exact) and NTK_S = P K Pᵀ, their effective ranks globally "
            "and along batch, time and hidden next to their ceilings, the effective rank of P Pᵀ, and the "
            "alignment of the NTK before and after. The summary says when training failed or the NTK "
            "collapsed. Writes report.json, summary.md and (with matplotlib) PNG plots to --out, and "
            "prints the summary."
        ),
    )
    demo.add_argument("--model", choices=DEMO_MODELS, default=d.model, help=f"(default: {d.model})")
    demo.add_argument("--task", choices=TASKS, default=d.task, help=f"(default: {d.task})")
    demo.add_argument("--backend", choices=BACKENDS, default=d.backend, help=f"(default: {d.backend})")
    for name, what in (("batch", "trials"), ("time", "steps per trial"), ("hidden", "hidden units")):
        demo.add_argument(
            f"--{name}",
            type=_positive_int,
            default=getattr(d, name),
            help=f"{what} (default: {getattr(d, name)})",
        )
    demo.add_argument(
        "--steps", type=_positive_int, default=d.steps, help=f"training steps (default: {d.steps})"
    )
    demo.add_argument(
        "--lr",
        type=_checked(float, lambda v: v > 0, "a positive number"),
        default=d.lr,
        help=f"Adam learning rate (default: {d.lr})",
    )
    demo.add_argument("--k", type=_positive_int, default=d.k, help=f"top eigenvalues (default: {d.k})")
    demo.add_argument(
        "--matvecs",
        type=_int_at_least(MIN_MATVECS, f"an integer >= {MIN_MATVECS}"),
        default=d.matvecs,
        help=f"NTK_S products per estimate (default: {d.matvecs})",
    )
    demo.add_argument(
        "--held-out",
        type=_positive_int,
        default=d.held_out,
        help=f"fresh trials the trained network's loss is measured on (default: {d.held_out})",
    )
    demo.add_argument(
        "--seed", type=_int_at_least(0, "a non-negative integer"), default=d.seed, help="(default: 0)"
    )
    demo.add_argument("--out", default="kpflow-demo", help="report folder (default: ./kpflow-demo)")
    demo.add_argument(
        "--json", action="store_true", help="print the whole report as JSON instead of the summary"
    )
    demo.add_argument("--progress", action="store_true", help="show progress on stderr")
    _add_threads(demo)


def run_demo_command(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``kpflow demo`` for parsed ``args``: train, analyse, write the report folder; return the report.

    Examples
    --------
    >>> import tempfile
    >>> from kpflow.cli import build_parser, run_demo_command
    >>> with tempfile.TemporaryDirectory() as d:
    ...     args = build_parser().parse_args(["demo", "--batch", "4", "--time", "8", "--hidden", "6",
    ...                                       "--steps", "5", "--k", "3", "--matvecs", "16", "--out", d])
    ...     report = run_demo_command(args)
    >>> report["config"]["hidden"], len(report["training"]["losses"])
    (6, 5)
    """
    from kpflow.analysis.demo import DemoConfig, run_demo, write_report

    fields = (
        "model",
        "task",
        "backend",
        "batch",
        "time",
        "hidden",
        "steps",
        "lr",
        "k",
        "matvecs",
        "held_out",
        "seed",
    )
    config = DemoConfig(**{f: getattr(args, f) for f in fields})
    like = _like(args.backend, _default_dtype(args.backend))
    with cpu_threads(getattr(args, "threads", 1)):
        report = run_demo(config, like=like, progress=args.progress or None)
    report["files"] = [str(p) for p in write_report(report, args.out)]
    return report


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The registry entry's options that have a flag (``--dt``, ``--depth``): given or default."""
    defaults = registry.entry(args.model).defaults
    given = {k: getattr(args, k, None) for k in defaults}
    return {k: defaults[k] if v is None else v for k, v in given.items() if hasattr(args, k)}


def _make_model(args: argparse.Namespace) -> Any:
    entry = registry.entry(args.model)
    return entry.build(entry.n_inputs(args.inputs, args.hidden), args.hidden, **_model_options(args))


def _like(backend: str, dtype: str) -> Any:
    import numpy as np

    from kpflow.backends import get_backend

    try:
        adapter = get_backend(backend)
        xp = adapter.namespace()
    except ImportError as err:
        msg = f"the {backend} backend is not installed ({err}); install it or choose --backend numpy"
        raise SystemExit(_fail(msg)) from err
    like = adapter.from_host(np.zeros(1), dtype=getattr(xp, dtype))
    if like.dtype != getattr(xp, dtype):
        msg = f"the {backend} backend gave {like.dtype} for --dtype {dtype}" + (
            " (set JAX_ENABLE_X64=1, or use --dtype float32)" if backend == "jax" else ""
        )
        raise SystemExit(_fail(msg))
    return like


def _default_dtype(backend: str) -> str:
    """float64, except on jax without x64 mode (which has no float64): float32 there."""
    if backend == "jax":
        try:
            import jax
        except ImportError:
            return "float64"  # _like reports the missing backend
        return "float64" if jax.config.read("jax_enable_x64") else "float32"
    return "float64"


def _jax_cache(folder: str | None) -> None:
    """Turn on jax's persistent compilation cache (``docs/cli.md``), before anything compiles.

    The first run compiles every program of the spectrum (solvers, estimators, the model's
    steps) and stores it; later runs of the same shapes load them instead of compiling.
    """
    try:
        from kpflow.backends.jax import enable_compilation_cache
    except ImportError:
        return  # _like reports the missing backend
    off = folder is not None and folder.strip().lower() in ("", "off", "0", "false", "no")
    if not off:
        enable_compilation_cache(folder)


def _fail(msg: str) -> int:
    print(f"kpflow: error: {msg}", file=sys.stderr)
    return 2


def run_spectrum(args: argparse.Namespace) -> dict[str, Any]:
    """Build, run and analyse the model that ``args`` describe; return the report dictionary.

    Examples
    --------
    >>> from kpflow.cli import build_parser, run_spectrum
    >>> args = build_parser().parse_args(["spectrum", "--model", "rnn", "--batch", "2", "--time", "3",
    ...                                   "--hidden", "2", "--k", "2"])
    >>> sorted(run_spectrum(args))
    ['K', 'NTK_S', 'axes', 'config', 'seconds', 'state_shape']
    """
    import numpy as np

    from kpflow.analysis import spectrum_report
    from kpflow.backends import get_backend

    if args.backend == "jax":
        _jax_cache(getattr(args, "jax_cache", None))
    if args.dtype is None:
        args.dtype = _default_dtype(args.backend)
    like = _like(args.backend, args.dtype)
    model = _make_model(args)
    rng = np.random.default_rng(args.seed)
    params = model.init(rng, like=like)
    entry = registry.entry(args.model)
    shape = entry.input_shape(args.batch, args.time, args.inputs, args.hidden)
    x = get_backend(like).from_host(rng.standard_normal(shape), dtype=like.dtype, device=None)
    with cpu_threads(getattr(args, "threads", 1)):  # after _like: the backend's pools are loaded
        traj = model.run(params, x)
        report = spectrum_report(
            traj, k=args.k, num_matvecs=args.matvecs, rng=rng, progress=args.progress or None
        )
    config = {
        key: getattr(args, key)
        for key in ("model", "backend", "dtype", "batch", "time", "hidden", "inputs", "k", "matvecs", "seed")
    }
    config["inputs"] = entry.n_inputs(args.inputs, args.hidden)
    if not entry.sequence:
        del config["time"]
    config.update(_model_options(args))
    report["config"] = config
    return report


def _fmt_scalar(entry: dict[str, Any]) -> str:
    if entry["method"] == "exact":
        return f"{entry['value']:.6g} (exact)"
    err = entry["error"]
    return f"{entry['value']:.6g} ± {err:.2g} ({entry['method']}, {entry['matvecs']} matvecs)"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable text of a :func:`run_spectrum` report.

    Examples
    --------
    >>> from kpflow.cli import format_report
    >>> entry = {"value": 2.0, "error": 0.0, "method": "exact", "matvecs": 0}
    >>> op = {"eigenvalues": [1.0], "trace": entry, "effective_rank": entry,
    ...       "effective_rank_along": {"batch": entry}, "seconds": 0.1, "eigensolver_matvecs": 1,
    ...       "max_residual": 0.0}
    >>> print(format_report({"config": {"model": "rnn"}, "state_shape": [1], "axes": ["batch"],
    ...                      "K": op, "NTK_S": op, "seconds": 0.2}).splitlines()[0])
    kpflow spectrum: model=rnn
    """
    cfg = ", ".join(f"{k}={v}" for k, v in report["config"].items())
    lines = [
        f"kpflow spectrum: {cfg}",
        f"state shape {tuple(report['state_shape'])} ({', '.join(report['axes'])})",
    ]
    for label in ("K", "NTK_S"):
        entry = report[label]
        lines.append("")
        lines.append(
            f"{label}  ({entry['seconds']:.2f} s, eigensolver {entry['eigensolver_matvecs']} matvecs)"
        )
        eig = "  ".join(f"{v:.6g}" for v in entry["eigenvalues"])
        lines.append(f"  top-{len(entry['eigenvalues'])} eigenvalues: {eig}")
        lines.append(f"  max residual ‖Av − λv‖: {entry['max_residual']:.2g}")
        lines.append(f"  trace:            {_fmt_scalar(entry['trace'])}")
        shared = entry.get("second_trace_matvecs", 0)
        if shared:
            pair = f"the trace × a second estimate ({shared} matvecs)"
            lines.append(f"  numerator tr² of the effective ranks: {pair}")
        lines.append(f"  effective rank:   {_fmt_scalar(entry['effective_rank'])}")
        for name, value in entry["effective_rank_along"].items():
            lines.append(f"    along {name + ':':<8}{_fmt_scalar(value)}")
    lines.append("")
    lines.append(f"total {report['seconds']:.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kpflow`` console script; returns the exit status.

    Examples
    --------
    >>> from kpflow.cli import main
    >>> main(["spectrum", "--batch", "0"])  # doctest: +SKIP
    2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from kpflow.analysis.demo import summary

        try:
            report = run_demo_command(args)
        except (ValueError, TypeError, OSError) as err:
            return _fail(str(err))
        print(
            json.dumps(report, indent=2)
            if args.json
            else summary(report) + f"\nReport written to {args.out}/"
        )
        return 0
    try:
        report = run_spectrum(args)
    except (ValueError, TypeError) as err:
        return _fail(str(err))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


def console(argv: list[str] | None = None) -> NoReturn:
    """The ``kpflow`` console script and ``python -m kpflow``: :func:`main`, then the process ends.

    Once jax is loaded, Python's own teardown of the interpreter takes about 0.4 s on a
    two-core machine (its runtime's objects and threads), longer than a warm spectrum; so
    after ``main`` returns, the output streams are flushed, the ``atexit`` handlers run, and
    the process ends without that teardown.  Without jax it exits as usual.  Call
    :func:`main` from Python: this function never returns.

    Examples
    --------
    >>> from kpflow.cli import console
    >>> console(["--version"])  # doctest: +SKIP
    kpflow ...
    """
    _end_process(main(argv))


def _end_process(status: int) -> NoReturn:
    """End the process with ``status``, skipping the interpreter's teardown when jax is loaded."""
    if "jax" not in sys.modules:
        raise SystemExit(status)
    import atexit
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(status)


if __name__ == "__main__":
    console()
