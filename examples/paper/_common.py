"""Shared plumbing of the paper examples: command line, progress, results.json, figures.

Every example is a script with ``main(argv=None) -> dict``: ``--quick`` (reduced sizes, the
default), ``--paper`` (the paper's sizes), ``--out DIR`` (``results.json`` with the numbers
behind every panel, and PNG figures), ``--seed``.  Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from kpflow.models import RNN
from kpflow.tasks import LowRankForecast, MemoryTask
from kpflow.training import init_params


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    """The common command line; ``args.size`` is ``"quick"`` or ``"paper"``."""
    parser = argparse.ArgumentParser(description=description)
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", dest="size", action="store_const", const="quick", help="reduced sizes (default)"
    )
    size.add_argument("--paper", dest="size", action="store_const", const="paper", help="the paper's sizes")
    parser.add_argument("--out", type=Path, default=None, help="write results.json and PNG figures here")
    parser.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    parser.set_defaults(size="quick")
    return parser.parse_args(argv)


class Progress:
    """One line per stage on stderr, with the seconds since the start."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(
            f"[{self.name} {time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True
        )

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.integer | bool):
        return value if isinstance(value, bool) else int(value)
    if isinstance(value, float | np.floating):
        v = float(value)
        return v if math.isfinite(v) else None  # strict JSON has no NaN
    return value


def write_results(out: Path | None, results: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Write ``results.json`` (NaN as null) under ``out`` when given; return the JSON-ready dict."""
    results = _jsonable(results)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "results.json"
        path.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
        progress(f"wrote {path}")
    return results


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out: Path | None, name: str, progress: Progress) -> None:
    """Save ``fig`` as ``out/name.png`` (small: 100 dpi) and close it."""
    plt = pyplot()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        progress(f"wrote {out / (name + '.png')}")
    plt.close(fig)


def torch_scale_params(model: Any, seed: int | np.random.Generator, g: float) -> dict[str, Any]:
    """The research code's initialisation: torch's defaults, the recurrent weights times g.

    :func:`kpflow.training.init_params` with ``scale="torch"`` (g × U(±1/√H) on every
    recurrent gate, variance g²/(3H)); g = 0 gives ``weight_hh = 0`` with the other weights
    of the same draw.  kpflow's default ``scale="gaussian"`` draws N(0, g²/H) instead.
    """
    if g > 0:
        return init_params(model, seed, g=float(g), scale="torch")
    params = init_params(model, seed)
    params["weight_hh"] = 0.0 * params["weight_hh"]
    return params


def memory_pro(period: int, *, analysis: bool = True) -> MemoryTask:
    """Memory-pro as the research code lays it out: stimulus, memory, response of ``period`` steps.

    ``period = 30`` is :meth:`kpflow.tasks.MemoryTask.research` (T = 90); smaller periods
    scale it down.  ``analysis``: evenly spaced angles, no noise; else uniform angles and
    the research code's training noise σ = 0.1·√2.
    """
    if period == 30:
        return MemoryTask.research("memory_pro", analysis=analysis)
    noise = 0.0 if analysis else MemoryTask.research("memory_pro").noise
    return MemoryTask(
        T_fix=0,
        T_stim=period,
        T_mem=period,
        T_resp=period,
        noise=noise,
        angles="even" if analysis else "random",
    )


def forecasting(d_inp: int, size: dict[str, Any], seed: int, *, noise: bool = True) -> tuple[RNN, Any]:
    """A tanh ``RNN(d_inp, H)`` and the research forecasting task (e3, e4), sampled.

    :meth:`kpflow.tasks.LowRankForecast.research` with D_targ = 10 and ``size["T"]`` steps
    (task seed ``seed``; ``noise``: its observation noise), ``size["B"]`` trials drawn with
    seed ``seed + 1``; H is ``size["H"]``.
    """
    task = LowRankForecast.research(D_inp=d_inp, D_targ=10, T=size["T"], noise=noise, seed=seed)
    return RNN(d_inp, size["H"]), task.sample(size["B"], seed + 1)


def participation_ratio(M: np.ndarray) -> float:
    """pr(M) = tr(M)² / tr(M²) of a symmetric matrix (dense, host)."""
    return float(np.trace(M) ** 2 / np.sum(M * M))


def cumulative_variance(values: np.ndarray) -> np.ndarray:
    """Cumulative fraction of the sum of ``values`` (sorted descending, clipped at 0)."""
    v = np.sort(np.clip(np.asarray(values, dtype=np.float64), 0.0, None))[::-1]
    return np.cumsum(v) / max(float(v.sum()), 1e-300)
