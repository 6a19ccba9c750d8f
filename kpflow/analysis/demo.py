"""``kpflow demo``: train a small recurrent network on a task, and analyse its NTK before and after.

The report follows the paper's workflow in one call: train (kpflow's own BPTT on numpy) on a
fixed batch, measure the loss on fresh held-out trials, then for the network at
initialisation and after training compute the spectrum of K (exact) and of NTK_S = P K Pᵀ,
their effective ranks globally and along batch, time and hidden (with their ceilings), the
effective rank of P Pᵀ, and how much the NTK moved (the alignment of NTK_S at initialisation
with the trained one).  Every number in the written summary is read from the report
dictionary, which :func:`run_demo` returns; the summary says when training failed (the loss
rose or diverged) and when the NTK collapsed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kpflow.models.registry import build_for_task, names

__all__ = ["DemoConfig", "run_demo", "summary", "write_report"]

#: the registry's models that a task's (B, T, n_in) inputs can drive (kpflow.models.registry)
MODELS = names(sequence=True, free_inputs=True)

#: NTK_S has collapsed when its top eigenvalue after training is below this fraction of the
#: one at initialisation (a saturated network: J_S ≈ 0, its effective rank is noise).
COLLAPSE = 1e-6
TASKS = ("flipflop", "memory_pro", "integration")


@dataclass(frozen=True)
class DemoConfig:
    """What ``kpflow demo`` runs (every field is a command-line option of the same name).

    Examples
    --------
    >>> from kpflow.analysis.demo import DemoConfig
    >>> DemoConfig(hidden=8).model, DemoConfig(hidden=8).hidden
    ('gru', 8)
    """

    model: str = "gru"
    task: str = "flipflop"
    backend: str = "numpy"
    batch: int = 16
    time: int = 40
    hidden: int = 32
    steps: int = 300
    lr: float = 0.02
    k: int = 10
    matvecs: int = 120
    held_out: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        where = "DemoConfig"
        if self.model not in MODELS:
            msg = f"{where}: expected model to be one of {MODELS}, got {self.model!r}"
            raise ValueError(msg)
        if self.task not in TASKS:
            msg = f"{where}: expected task to be one of {TASKS}, got {self.task!r}"
            raise ValueError(msg)
        for name in ("batch", "time", "hidden", "steps", "k", "matvecs", "held_out"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"{where}: expected {name} to be a positive int, got {value!r}"
                raise ValueError(msg)
        if self.matvecs < 16:
            msg = (
                f"{where}: expected matvecs >= 16 (the effective-rank estimates need it), got {self.matvecs}"
            )
            raise ValueError(msg)
        if not isinstance(self.lr, int | float) or not 0 < float(self.lr) < float("inf"):
            msg = f"{where}: expected lr to be a positive float, got {self.lr!r}"
            raise ValueError(msg)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            msg = f"{where}: expected seed to be a non-negative int, got {self.seed!r}"
            raise ValueError(msg)


def _task(config: DemoConfig) -> Any:
    from kpflow.tasks import ContextIntegration, FlipFlop, MemoryTask

    T = config.time
    if config.task == "flipflop":
        return FlipFlop(T=T)
    if config.task == "memory_pro":
        quarter = max(T // 4, 1)
        return MemoryTask(T_fix=quarter, T_stim=quarter, T_mem=quarter, T_resp=max(T - 3 * quarter, 1))
    return ContextIntegration(T_stim=max(T - T // 4, 1), T_resp=max(T // 4, 1))


def _model(config: DemoConfig, task: Any) -> tuple[Any, Any]:
    """The configured model on ``task``'s inputs and its linear readout (the registry's defaults)."""
    return build_for_task(config.model, task, config.hidden)


def run_demo(config: DemoConfig, *, like: Any = None, progress: Any = None) -> dict[str, Any]:
    """Train the configured model on its task and analyse its NTK at initialisation and after.

    Parameters
    ----------
    config : DemoConfig
    like : array, optional
        An array of the backend, dtype and device to run on (numpy float64 by default).
    progress : bool or callable, optional
        Progress of the training steps and of the estimators (silent by default).

    Returns
    -------
    dict
        ``config``; ``training``: ``losses`` (per step, on the training batch),
        ``initial_loss``, ``final_loss`` and ``loss_ratio`` (on the training batch),
        ``held_out`` (``trials``, ``initial_loss``, ``final_loss``, ``loss_ratio``: on
        ``config.held_out`` fresh trials drawn with another seed), ``diverged`` (the step
        whose loss was not finite, else ``None``), ``failed`` (the loss rose, on the training
        batch, or diverged), ``seconds``; ``init`` and ``trained``,
        each :func:`kpflow.analysis.spectrum_report` of the network on the training batch
        (K exact; NTK_S from block Lanczos and randomized estimates with standard errors)
        plus ``PPT`` (the effective rank of P Pᵀ) and ``ceilings`` (the largest value each
        effective rank can take: ``NTK_S`` and ``K`` min(states, parameters), ``PPT`` the
        states, each axis its length); ``ntk_collapsed`` (the trained top eigenvalue of
        NTK_S below ``COLLAPSE`` times the initial one); ``alignment_init_trained`` (of NTK_S at
        initialisation with the trained one, with its standard error); ``state_shape``;
        ``parameters``; ``matplotlib`` (whether ``write_report`` draws PNGs); ``seconds``.

    Examples
    --------
    >>> from kpflow.analysis.demo import DemoConfig, run_demo
    >>> report = run_demo(DemoConfig(batch=4, time=8, hidden=6, steps=5, k=3, matvecs=16, held_out=8))
    >>> sorted(report)  # doctest: +NORMALIZE_WHITESPACE
    ['alignment_init_trained', 'config', 'init', 'matplotlib', 'ntk_collapsed', 'parameters',
     'seconds', 'state_shape', 'trained', 'training']
    >>> report["trained"]["ceilings"]["NTK_S"], report["parameters"]  # min(4 * 8 * 6 states, 198)
    (192, 198)
    """
    import importlib.util

    import numpy as np

    from kpflow import linalg
    from kpflow.analysis.spectrum import axis_names, spectrum_report
    from kpflow.ntk import global_ntk, propagator
    from kpflow.training import Adam, TrainingDiverged, init_params, train

    if not isinstance(config, DemoConfig):
        msg = f"run_demo: expected config to be a DemoConfig, got {type(config).__name__}"
        raise TypeError(msg)
    start = time.perf_counter()
    like = np.zeros(1) if like is None else like
    rng = np.random.default_rng(config.seed)
    task = _task(config)
    batch = task.sample(config.batch, rng, like=like)
    # fresh trials from their own stream: the training draws above are unchanged by it
    held_out = task.sample(config.held_out, np.random.default_rng([config.seed, 1]), like=like)
    model, readout = _model(config, task)
    params = init_params(model, rng, like=like)
    readout_params = readout.init(rng, like=like)
    t0 = time.perf_counter()
    diverged = None
    try:
        result = train(
            model,
            readout,
            params,
            readout_params,
            batch,
            steps=config.steps,
            optimizer=Adam(float(config.lr)),
            checkpoints=[0, config.steps],
            method="kpflow",
            progress=progress,
        )
    except TrainingDiverged as err:  # analyse the last finite parameters, and say so
        result, diverged = err.result, err.step
    trained_step = result.checkpoints[-1].step
    train_seconds = time.perf_counter() - t0
    losses = [float(v) for v in result.losses]
    first = float(_loss(model, readout, params, readout_params, batch))
    final = float(_loss(model, readout, result.params, result.readout_params, batch))
    held0 = float(_loss(model, readout, params, readout_params, held_out))
    held1 = float(_loss(model, readout, result.params, result.readout_params, held_out))
    failed = diverged is not None or not (math.isfinite(final) and final < first)
    report: dict[str, Any] = {
        "config": asdict(config),
        "training": {
            "losses": losses,
            "initial_loss": first,
            "final_loss": final,
            "loss_ratio": _ratio(first, final),
            "held_out": {
                "trials": config.held_out,
                "initial_loss": held0,
                "final_loss": held1,
                "loss_ratio": _ratio(held0, held1),
            },
            "diverged": diverged,
            "trained_step": trained_step,
            "failed": failed,
            "seconds": train_seconds,
        },
    }
    n_params = sum(int(math.prod(v.shape)) for v in params.values())
    ntks = {}
    for label, step in (("init", 0), ("trained", trained_step)):
        traj = model.run(result.checkpoint(step).params, batch.inputs)
        entry = spectrum_report(traj, k=config.k, num_matvecs=config.matvecs, rng=rng, progress=progress)
        N = global_ntk(traj)
        ntks[label] = N
        n_states = N.size_in
        P = propagator(traj)
        ppt = linalg.effective_rank(P @ P.T, num_matvecs=config.matvecs, rng=rng, progress=progress)
        entry["PPT"] = {"effective_rank": _scalar(ppt)}
        entry["ceilings"] = {
            "NTK_S": min(n_states, n_params),
            "K": min(n_states, n_params),
            "PPT": n_states,
            "along": dict(zip(axis_names(traj), (int(s) for s in traj.state_shape), strict=True)),
        }
        report[label] = entry
        report["state_shape"] = list(traj.state_shape)
    report["parameters"] = n_params
    top0, top1 = (report[x]["NTK_S"]["eigenvalues"][0] for x in ("init", "trained"))
    report["ntk_collapsed"] = bool(not math.isfinite(top1) or top1 <= COLLAPSE * top0)
    a = linalg.alignment(ntks["init"], ntks["trained"], num_matvecs=max(config.matvecs, 30), rng=rng)
    report["alignment_init_trained"] = {
        "value": float(a),
        "error": None if a.error is None else float(a.error),
        "method": a.method,
        "matvecs": a.num_matvecs,
    }
    report["matplotlib"] = importlib.util.find_spec("matplotlib") is not None
    report["seconds"] = time.perf_counter() - start
    return report


def _ratio(before: float, after: float) -> float:
    return before / after if after > 0 else float("inf")


def _scalar(result: Any) -> dict[str, Any]:
    return {
        "value": float(result),
        "error": None if result.error is None else float(result.error),
        "method": result.method,
        "matvecs": result.num_matvecs,
    }


def _loss(model: Any, readout: Any, params: Any, readout_params: Any, batch: Any) -> float:
    from kpflow.training import loss_and_gradients

    return float(loss_and_gradients(model, readout, params, readout_params, *batch, method="kpflow").loss)


def _rank_table(report: dict[str, Any], label: str) -> dict[str, float]:
    entry = report[label]["NTK_S"]
    out = {"global": entry["effective_rank"]["value"]}
    out |= {name: v["value"] for name, v in entry["effective_rank_along"].items()}
    return out


def _change(before: float, after: float) -> str:
    """ "fell from a to b (r×)" or "rose from a to b (r×)"."""
    if after < before:
        return f"fell from {before:.4g} to {after:.4g} ({_ratio(before, after):.1f}×)"
    grew = f" ({after / before:.3g}×)" if before > 0 and math.isfinite(after) else ""
    return f"rose from {before:.4g} to {after:.4g}{grew}"


def _pm(entry: dict[str, Any], digits: str = ".2f") -> str:
    err = entry.get("error")
    text = f"{entry['value']:{digits}}"
    return text if not err else f"{text} ± {err:.2g}"


def summary(report: dict[str, Any]) -> str:
    """A short Markdown summary that cites the report's numbers.

    It states the held-out loss next to the training loss, each effective rank next to its
    ceiling, and says plainly when training failed (the loss rose or diverged), when NTK_S
    collapsed, and when the PNG plots are missing for want of matplotlib.

    Examples
    --------
    >>> from kpflow.analysis.demo import DemoConfig, run_demo, summary
    >>> text = summary(run_demo(DemoConfig(batch=4, time=8, hidden=6, steps=5, k=3, matvecs=16, held_out=8)))
    >>> text.splitlines()[0]
    '# kpflow demo: a GRU trained on flipflop'
    """
    cfg, tr = report["config"], report["training"]
    held = tr.get("held_out")
    ceil = report["trained"].get("ceilings", {})
    n = math.prod(report["state_shape"])
    p = report.get("parameters")
    lines = [
        f"# kpflow demo: a {cfg['model'].upper()} trained on {cfg['task']}",
        "",
        f"- Network: {cfg['model'].upper()} with {cfg['hidden']} hidden units"
        + (f" ({p:,} parameters)" if p is not None else "")
        + f", trained on one fixed batch of {cfg['batch']} trials of {cfg['time']} steps: NTK_S acts "
        f"on {n:,} states {tuple(report['state_shape'])}.",
    ]
    steps = f"{cfg['steps']} Adam steps (lr {cfg['lr']}) with kpflow's own BPTT"
    if tr.get("diverged") is not None:
        lines.append(
            f"- **Training failed**: the loss became non-finite at step {tr['diverged']} of {steps}; "
            f"the numbers below are for the last finite parameters (step {tr['trained_step']})."
        )
    elif tr.get("failed", tr["final_loss"] >= tr["initial_loss"]):
        lines.append(
            f"- **Training failed**: over {steps} the training loss "
            f"{_change(tr['initial_loss'], tr['final_loss'])}."
        )
    else:
        lines.append(
            f"- Training: {steps}; the training loss {_change(tr['initial_loss'], tr['final_loss'])} "
            f"in {tr['seconds']:.1f} s."
        )
    if held is not None:
        lines.append(
            f"- On {held['trials']} fresh held-out trials the loss "
            f"{_change(held['initial_loss'], held['final_loss'])}."
        )
    lines += ["", "| | initialisation | trained | ceiling |", "|---|---|---|---|"]
    rows = [
        ("top eigenvalue of NTK_S", lambda r: f"{r['NTK_S']['eigenvalues'][0]:.4g}", None),
        ("trace of NTK_S", lambda r: _pm(r["NTK_S"]["trace"], ".4g"), None),
        ("effective rank of K (exact)", lambda r: _pm(r["K"]["effective_rank"]), ceil.get("K")),
        (
            "effective rank of P Pᵀ",
            lambda r: _pm(r["PPT"]["effective_rank"]) if "PPT" in r else "–",
            ceil.get("PPT"),
        ),
        ("effective rank of NTK_S", lambda r: _pm(r["NTK_S"]["effective_rank"]), ceil.get("NTK_S")),
    ]
    for label, get, bound in rows:
        lines.append(
            f"| {label} | {get(report['init'])} | {get(report['trained'])} | "
            f"{'' if bound is None else f'{bound:,}'} |"
        )
    for name in report["init"]["NTK_S"]["effective_rank_along"]:
        vals = [_pm(report[x]["NTK_S"]["effective_rank_along"][name]) for x in ("init", "trained")]
        bound = ceil.get("along", {}).get(name)
        lines.append(
            f"| NTK_S effective rank along {name} | {vals[0]} | {vals[1]} | "
            f"{'' if bound is None else bound} |"
        )
    al = report["alignment_init_trained"]
    err = al.get("error") or 0.0
    moved = "moved" if al["value"] + 2 * err < 0.95 else "barely moved"
    rank = report["trained"]["NTK_S"]["effective_rank"]
    lines += [
        "",
        f"- The NTK {moved} during training: the alignment of NTK_S at initialisation with the "
        f"trained NTK_S is {al['value']:.3f}" + (f" ± {err:.2g}" if err else "") + f" ({al['method']}).",
    ]
    if report.get("ntk_collapsed"):
        top0, top1 = (report[x]["NTK_S"]["eigenvalues"][0] for x in ("init", "trained"))
        lines.append(
            f"- **NTK_S collapsed** after training: its top eigenvalue is {top1:.3g} against {top0:.3g} at "
            "initialisation (the network saturated), so its effective ranks describe rounding noise."
        )
    else:
        bound = ceil.get("NTK_S")
        of = f" against a ceiling of {bound:,} (the smaller of states and parameters)" if bound else ""
        lines.append(f"- NTK_S's effective rank after training is {_pm(rank, '.1f')}{of}.")
        k0, k1 = (report[x]["K"]["effective_rank"]["value"] for x in ("init", "trained"))
        if "PPT" in report["trained"]:
            q0, q1 = (report[x]["PPT"]["effective_rank"]["value"] for x in ("init", "trained"))
            n0 = report["init"]["NTK_S"]["effective_rank"]["value"]
            lines.append(
                f"- Over training K's effective rank went from {k0:.1f} to {k1:.1f}, P Pᵀ's from "
                f"{q0:.1f} to {q1:.1f}, and NTK_S = P K Pᵀ's from {n0:.1f} to {rank['value']:.1f}."
            )
    lines += [
        "",
        f"Total {report['seconds']:.1f} s. Numbers with ± are randomized estimates with their "
        "standard errors; K's are exact (Kronecker-core rules).",
    ]
    if report.get("matplotlib") is False:
        lines.append(
            "No PNG plots were written: matplotlib is not installed (`pip install kpflow[plot]` adds "
            "loss.png, spectra.png and effective_ranks.png)."
        )
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write ``report.json``, ``summary.md`` and, when matplotlib is installed, PNG plots to ``out``.

    Returns the paths written.

    Examples
    --------
    >>> import tempfile
    >>> from kpflow.analysis.demo import DemoConfig, run_demo, write_report
    >>> report = run_demo(DemoConfig(batch=4, time=8, hidden=6, steps=5, k=3, matvecs=16, held_out=8))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     names = {p.name for p in write_report(report, d)}
    >>> {"report.json", "summary.md"} <= names
    True
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "report.json", folder / "summary.md"]
    written[0].write_text(json.dumps(report, indent=2), encoding="utf-8")
    written[1].write_text(summary(report), encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    from kpflow.plot import plot_effective_ranks, plot_losses, plot_spectra

    figures = {
        "loss.png": lambda ax: plot_losses(report["training"]["losses"], ax=ax),
        "spectra.png": lambda ax: plot_spectra(
            {f"NTK_S {x}": report[x]["NTK_S"]["eigenvalues"] for x in ("init", "trained")}
            | {f"K {x}": report[x]["K"]["eigenvalues"] for x in ("init", "trained")},
            ax=ax,
        ),
        "effective_ranks.png": lambda ax: plot_effective_ranks(
            {x: _rank_table(report, x) for x in ("init", "trained")}, ax=ax
        ),
    }
    for name, draw in figures.items():
        fig, ax = plt.subplots(figsize=(5, 3.5))
        draw(ax)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        written.append(folder / name)
    return written
