"""Calibration of kpflow's error bars: how often ±2σ covers the truth, per method and spectrum.

For every randomized trace method and the effective-rank estimate (global and along the time
and hidden axes; on operators known PSD and on plain symmetric ones), on flat, power-law
(1/(1+i)²), exponential (e^(−i/4)) spectra and the NTK_S of a GRU (numpy, float64, densified
once for the truth), this prints the coverage of ±2·error over ``--seeds`` seeds and the RMS
of the z-scores ``(estimate − truth)/error`` (1 for a bar that is exactly the standard
deviation; below 1 is conservative), and the mean relative bias of the estimates.  A bar is
a promise: coverage must be at least 90% in every cell; the last line counts the cells below.

The defaults (n = 4·10·6 = 240 states, 50 seeds, trace budgets 12 and 40, effective-rank
budget 60) take a few minutes on a loaded two-core machine; larger runs, e.g.
``--seeds 200 --batch 4 --time 20 --hidden 6 --trace-budgets 12,40,100 --rank-budget 120``
(n = 480) or ``--batch 8`` on top (n = 960).

    python benchmarks/bench_calibration.py [--seeds 50] [--batch 4 --time 10 --hidden 6]
"""

from __future__ import annotations

import argparse
import time

import array_api_compat.numpy as cnp
import numpy as np

from kpflow.linalg import effective_rank, rules, trace
from kpflow.operators.base import LinearOperator


class _Matrix(LinearOperator):
    """A dense host matrix seen only through products, on a tensor shape."""

    def __init__(self, M: np.ndarray, shape: tuple[int, ...]) -> None:
        super().__init__(shape, shape, xp=cnp, dtype=cnp.float64, device="cpu")
        self.M = cnp.asarray(M)

    def _matmat(self, X):
        k = X.shape[0]
        return cnp.reshape(cnp.reshape(X, (k, -1)) @ self.M.T, (k, *self.shape_in))

    def _rmatmat(self, Y):
        k = Y.shape[0]
        return cnp.reshape(cnp.reshape(Y, (k, -1)) @ self.M, (k, *self.shape_in))


class _PSDMatrix(_Matrix):
    """Known PSD: XNysTrace and the Nyström routes apply."""


rules.is_psd.register(_PSDMatrix, lambda op: True)


def _spectral(lam: np.ndarray, seed: int = 0) -> np.ndarray:
    Q, R = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    Q = Q * np.sign(np.diag(R))
    M = (Q * lam) @ Q.T
    return (M + M.T) / 2


def _gru_ntk(shape: tuple[int, int, int]) -> np.ndarray:
    from kpflow.models import GRU
    from kpflow.ntk import global_ntk
    from kpflow.operators.functions import todense

    B, T, H = shape
    model = GRU(2, H)
    x = np.random.default_rng(0).standard_normal((B, T, 2))
    n = B * T * H
    D = np.asarray(todense(global_ntk(model.run(model.init(0), x)))).reshape(n, n)
    return (D + D.T) / 2


def _partial(M: np.ndarray, shape: tuple[int, ...], keep: int) -> np.ndarray:
    """The partial trace over the other axes, keeping axis ``keep`` of (batch, time, hidden)."""
    src = "abc"
    dst = "".join("xyz"[a] if a == keep else src[a] for a in range(3))
    return np.einsum(f"{src}{dst}->{src[keep]}{'xyz'[keep]}", M.reshape(*shape, *shape))


def _pr(M: np.ndarray) -> float:
    return float(np.trace(M) ** 2 / np.sum(M * M))


_BELOW: list[str] = []


def _row(label: str, results: list, truth: float) -> str:
    if any(r.error is None for r in results):
        return f"| {label} | no bar | – | – |"
    z = []
    for r in results:
        err = float(r.error)
        d = float(r) - truth
        z.append(0.0 if d == 0 else d / err if err > 0 else np.inf)
    z = np.asarray(z)
    cover = 100 * np.mean(np.abs(z) <= 2)
    rms = np.sqrt(np.mean(np.minimum(z**2, 1e6)))
    bias = 100 * (np.mean([float(r) for r in results]) / truth - 1) if truth else 0.0
    flag = ""
    if cover < 90:
        flag = "  <-- below 90%"
        _BELOW.append(label)
    return f"| {label} | {cover:5.1f} | {rms:5.2f} | {bias:+6.2f} |{flag}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--time", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=6)
    parser.add_argument("--trace-budgets", default="12,40")
    parser.add_argument("--rank-budget", type=int, default=60)
    args = parser.parse_args()
    shape = (args.batch, args.time, args.hidden)
    n = int(np.prod(shape))
    k = np.arange(n)
    spectra = {
        "flat": _spectral(np.ones(n)),
        "power law": _spectral(1.0 / (1.0 + k) ** 2),
        "exponential": _spectral(np.exp(-k / 4.0)),
        "GRU NTK_S": _gru_ntk(shape),
    }
    seeds = range(args.seeds)
    budgets = [int(b) for b in args.trace_budgets.split(",")]
    start = time.perf_counter()
    print(f"n = {n} states {shape}, {args.seeds} seeds; coverage of ±2σ (%) and RMS z-score\n")
    print("| method, budget, spectrum | coverage % | RMS z | bias % |")
    print("|---|---|---|---|")
    for name, M in spectra.items():
        A = _PSDMatrix(M, shape)
        truth = float(np.trace(M))
        for method in ("hutchinson", "hutch++", "xtrace", "xnystrace"):
            for m in budgets:
                results = [trace(A, method=method, num_matvecs=m, rng=s) for s in seeds]
                print(_row(f"trace {method}, m={m}, {name}", results, truth), flush=True)
    m = args.rank_budget
    for name, M in spectra.items():
        for psd in (True, False):
            A = (_PSDMatrix if psd else _Matrix)(M, shape)
            kind = "PSD" if psd else "symmetric"
            for keep in (None, 1, 2):
                truth = _pr(M if keep is None else _partial(M, shape, keep))
                results = [effective_rank(A, keep, method="estimate", num_matvecs=m, rng=s) for s in seeds]
                axis = "global" if keep is None else ("batch", "time", "hidden")[keep]
                print(_row(f"effective_rank {axis}, m={m}, {name} ({kind})", results, truth), flush=True)
    print(f"\n{len(_BELOW)} cells below 90% coverage; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
