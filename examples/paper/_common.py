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


def torch_scale_params(model: Any, seed: int | np.random.Generator, g: float) -> dict[str, np.ndarray]:
    """The research code's initialisation: torch's defaults, the recurrent weights times g.

    The built-in recurrent models draw every weight U(±1/√H) as torch does, so the research
    code's ``weight_hh *= g`` (entries of variance g²/(3H)) is kpflow's ``init`` with
    ``weight_hh`` scaled; kpflow's ``init_params(model, g=...)`` instead draws N(0, g²/H).
    """
    params = {k: np.asarray(v, dtype=np.float64) for k, v in model.init(seed).items()}
    params["weight_hh"] = g * params["weight_hh"]
    return params


def participation_ratio(M: np.ndarray) -> float:
    """pr(M) = tr(M)² / tr(M²) of a symmetric matrix (dense, host)."""
    return float(np.trace(M) ** 2 / np.sum(M * M))


def cumulative_variance(values: np.ndarray) -> np.ndarray:
    """Cumulative fraction of the sum of ``values`` (sorted descending, clipped at 0)."""
    v = np.sort(np.clip(np.asarray(values, dtype=np.float64), 0.0, None))[::-1]
    return np.cumsum(v) / max(float(v.sum()), 1e-300)


def research_forecast(
    batch: int, T: int, d_inp: int, d_targ: int, *, n_latent: int = 10, seed: int = 0, rng: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """The research code's forecasting task, as the paper describes it (not kpflow's LowRankForecast).

    A latent z (``n_latent``) follows z ← 0.8 z + 0.2 A z; the inputs are sin(W_inp z_t + b_inp)
    (``d_inp`` channels), the targets sin(W_targ z_{t+1} + b_targ) (``d_targ``).  A, W_inp,
    W_targ (entries N(0, 1/n_latent)) and the biases (U(−π, π)) are fixed by ``seed``; each
    trial draws z_0 ~ N(0, I) from ``rng``.  Returns inputs (B, T, d_inp), targets (B, T, d_targ).
    """
    maps = np.random.default_rng([seed, 7])
    A = maps.standard_normal((n_latent, n_latent)) / np.sqrt(n_latent)
    W_inp = maps.standard_normal((d_inp, n_latent)) / np.sqrt(n_latent) * 2.0
    W_targ = maps.standard_normal((d_targ, n_latent)) / np.sqrt(n_latent) * 2.0
    b_inp, b_targ = maps.uniform(-np.pi, np.pi, d_inp), maps.uniform(-np.pi, np.pi, d_targ)
    gen = np.random.default_rng(rng)
    z = gen.standard_normal((batch, n_latent))
    xs, ys = [], []
    for _ in range(T):
        xs.append(np.sin(z @ W_inp.T + b_inp))
        z = 0.8 * z + 0.2 * z @ A.T
        ys.append(np.sin(z @ W_targ.T + b_targ))
    return np.stack(xs, axis=1), np.stack(ys, axis=1)
