"""``kpflow demo``: train a small recurrent network on a task, and analyse its NTK before and after.

The report follows the paper's workflow in one call: train (kpflow's own BPTT on numpy), then
for the network at initialisation and after training compute the spectrum of K (exact) and of
NTK_S = P K Pᵀ, their effective ranks globally and along batch, time and hidden, and how much
the NTK moved (the alignment of NTK_S at initialisation with the trained one).  Every number
in the written summary is read from the report dictionary, which :func:`run_demo` returns.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["DemoConfig", "run_demo", "summary", "write_report"]

MODELS = ("gru", "rnn", "lstm", "leaky")
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
    seed: int = 0

    def __post_init__(self) -> None:
        where = "DemoConfig"
        if self.model not in MODELS:
            msg = f"{where}: expected model to be one of {MODELS}, got {self.model!r}"
            raise ValueError(msg)
        if self.task not in TASKS:
            msg = f"{where}: expected task to be one of {TASKS}, got {self.task!r}"
            raise ValueError(msg)
        for name in ("batch", "time", "hidden", "steps", "k", "matvecs"):
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


def _model(config: DemoConfig, n_in: int) -> Any:
    from kpflow.models import GRU, LSTM, RNN, LeakyRNN

    H = config.hidden
    if config.model == "leaky":
        return LeakyRNN(n_in, H, dt=0.2, bias=True)
    return {"gru": GRU, "rnn": RNN, "lstm": LSTM}[config.model](n_in, H)


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
        ``config``; ``training`` (``losses``, ``initial_loss``, ``final_loss``, ``loss_ratio``,
        ``seconds``); ``init`` and ``trained``, each :func:`kpflow.analysis.spectrum_report` of
        the network on the task's batch (K exact; NTK_S from block Lanczos and randomized
        estimates with standard errors); ``alignment_init_trained`` (of NTK_S at
        initialisation with the trained one); ``seconds``.

    Examples
    --------
    >>> from kpflow.analysis.demo import DemoConfig, run_demo
    >>> report = run_demo(DemoConfig(batch=4, time=8, hidden=6, steps=5, k=3, matvecs=16))
    >>> sorted(report)
    ['alignment_init_trained', 'config', 'init', 'seconds', 'state_shape', 'trained', 'training']
    """
    import numpy as np

    from kpflow import linalg
    from kpflow.analysis.spectrum import spectrum_report
    from kpflow.models import Linear
    from kpflow.ntk import global_ntk
    from kpflow.training import Adam, init_params, train

    if not isinstance(config, DemoConfig):
        msg = f"run_demo: expected config to be a DemoConfig, got {type(config).__name__}"
        raise TypeError(msg)
    start = time.perf_counter()
    like = np.zeros(1) if like is None else like
    rng = np.random.default_rng(config.seed)
    task = _task(config)
    batch = task.sample(config.batch, rng, like=like)
    model = _model(config, task.n_in)
    readout = Linear(config.hidden, task.n_out)
    params = init_params(model, rng, like=like)
    readout_params = readout.init(rng, like=like)
    t0 = time.perf_counter()
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
    train_seconds = time.perf_counter() - t0
    losses = [float(v) for v in result.losses]
    final = float(_loss(model, readout, result.params, result.readout_params, batch))
    report: dict[str, Any] = {
        "config": asdict(config),
        "training": {
            "losses": losses,
            "initial_loss": losses[0],
            "final_loss": final,
            "loss_ratio": losses[0] / final if final > 0 else float("inf"),
            "seconds": train_seconds,
        },
    }
    ntks = {}
    for label, step in (("init", 0), ("trained", config.steps)):
        traj = model.run(result.checkpoint(step).params, batch.inputs)
        report[label] = spectrum_report(
            traj, k=config.k, num_matvecs=config.matvecs, rng=rng, progress=progress
        )
        ntks[label] = global_ntk(traj)
        report["state_shape"] = list(traj.state_shape)
    a = linalg.alignment(ntks["init"], ntks["trained"], num_matvecs=max(config.matvecs, 30), rng=rng)
    report["alignment_init_trained"] = {
        "value": float(a),
        "error": None if a.error is None else float(a.error),
        "method": a.method,
    }
    report["seconds"] = time.perf_counter() - start
    return report


def _loss(model: Any, readout: Any, params: Any, readout_params: Any, batch: Any) -> float:
    from kpflow.training import loss_and_gradients

    return float(loss_and_gradients(model, readout, params, readout_params, *batch, method="kpflow").loss)


def _rank_table(report: dict[str, Any], label: str) -> dict[str, float]:
    entry = report[label]["NTK_S"]
    out = {"global": entry["effective_rank"]["value"]}
    out |= {name: v["value"] for name, v in entry["effective_rank_along"].items()}
    return out


def summary(report: dict[str, Any]) -> str:
    """A short Markdown summary that cites the report's numbers.

    Examples
    --------
    >>> from kpflow.analysis.demo import DemoConfig, run_demo, summary
    >>> text = summary(run_demo(DemoConfig(batch=4, time=8, hidden=6, steps=5, k=3, matvecs=16)))
    >>> text.splitlines()[0]
    '# kpflow demo: a GRU trained on flipflop'
    """
    cfg, tr = report["config"], report["training"]
    n = 1
    for s in report["state_shape"]:
        n *= s
    lines = [
        f"# kpflow demo: a {cfg['model'].upper()} trained on {cfg['task']}",
        "",
        f"- Network: {cfg['model'].upper()} with {cfg['hidden']} hidden units, {cfg['batch']} trials of "
        f"{cfg['time']} steps: NTK_S acts on {n:,} states {tuple(report['state_shape'])}.",
        f"- Training: {cfg['steps']} Adam steps (lr {cfg['lr']}) with kpflow's own BPTT; the loss fell "
        f"from {tr['initial_loss']:.4g} to {tr['final_loss']:.4g} ({tr['loss_ratio']:.1f}×) "
        f"in {tr['seconds']:.1f} s.",
        "",
        "| | initialisation | trained |",
        "|---|---|---|",
    ]
    for label, get in (
        ("top eigenvalue of NTK_S", lambda r: f"{r['NTK_S']['eigenvalues'][0]:.4g}"),
        (
            "trace of NTK_S",
            lambda r: f"{r['NTK_S']['trace']['value']:.4g} ± {r['NTK_S']['trace']['error'] or 0:.2g}",
        ),
        ("effective rank of K (exact)", lambda r: f"{r['K']['effective_rank']['value']:.2f}"),
        ("effective rank of NTK_S", lambda r: f"{r['NTK_S']['effective_rank']['value']:.2f}"),
    ):
        lines.append(f"| {label} | {get(report['init'])} | {get(report['trained'])} |")
    for name in report["init"]["NTK_S"]["effective_rank_along"]:
        vals = [report[x]["NTK_S"]["effective_rank_along"][name]["value"] for x in ("init", "trained")]
        lines.append(f"| NTK_S effective rank along {name} | {vals[0]:.2f} | {vals[1]:.2f} |")
    al = report["alignment_init_trained"]
    rank = report["trained"]["NTK_S"]["effective_rank"]["value"]
    lines += [
        "",
        f"- The NTK moved during training: the alignment of NTK_S at initialisation with the trained "
        f"NTK_S is {al['value']:.3f} ({al['method']}).",
        f"- NTK_S is low-rank: its effective rank is {rank:.1f} of {n:,} dimensions after training.",
        "",
        f"Total {report['seconds']:.1f} s. Numbers with ± are randomized estimates with their "
        "standard errors; K's are exact (Kronecker-core rules).",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write ``report.json``, ``summary.md`` and, when matplotlib is installed, PNG plots to ``out``.

    Returns the paths written.

    Examples
    --------
    >>> import tempfile
    >>> from kpflow.analysis.demo import DemoConfig, run_demo, write_report
    >>> report = run_demo(DemoConfig(batch=4, time=8, hidden=6, steps=5, k=3, matvecs=16))
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
