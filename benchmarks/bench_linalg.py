"""Accuracy per matvec of kpflow.linalg's estimators, against the dense answer and against baselines.

Run:  python benchmarks/bench_linalg.py [--n 1000] [--seeds 20]

Prints, for each test spectrum:
  * trace: mean relative error of each estimator at several budgets, and its ratio to
    Hutchinson's error at the same budget (smaller is better);
  * fro_norm and effective_rank: the same, against Hutchinson-style baselines;
  * eigsh on a degenerate spectrum: accuracy, multiplicity, matvecs and time of block
    Lanczos against scipy's ARPACK (through kpflow.linalg.to_scipy) and dense eigh.
Errors are measured against the dense answer computed with numpy.
"""

from __future__ import annotations

import argparse
import time

import array_api_compat.numpy as cnp
import numpy as np

import kpflow
from kpflow.linalg import effective_rank, eigsh, fro_norm, to_scipy, trace
from kpflow.operators.base import LinearOperator


class Opaque(LinearOperator):
    """Hides the Dense type so that only matvecs are used (no structured rules)."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.shape_in, op.shape_out, xp=op.xp, dtype=op.dtype, device=op.device)
        self.op = op
        self.calls = 0

    def _matmat(self, X):
        self.calls += X.shape[0]
        return self.op._matmat(X)

    def _rmatmat(self, Y):
        self.calls += Y.shape[0]
        return self.op._rmatmat(Y)


def spectra(n: int) -> dict[str, np.ndarray]:
    i = np.arange(n)
    rng = np.random.default_rng(0)
    return {
        "exp decay e^(-i/10)": np.exp(-i / 10),
        "poly decay 1/(i+1)^2": 1.0 / (i + 1.0) ** 2,
        "low rank + noise": np.sort(
            np.concatenate([10 * 0.7 ** np.arange(10), 0.01 * np.abs(rng.standard_normal(n - 10))])
        )[::-1],
        "slow decay 1/sqrt(i+1)": 1.0 / np.sqrt(i + 1.0),
    }


def matrix(lam: np.ndarray, seed: int = 0) -> np.ndarray:
    n = lam.size
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    M = (Q * lam) @ Q.T
    return (M + M.T) / 2


def bench_trace(M: np.ndarray, budgets: list[int], seeds: int) -> None:
    A = Opaque(kpflow.Dense(cnp.asarray(M)))
    truth = np.trace(M)
    methods = ["hutchinson", "hutch++", "xtrace", "xnystrace"]
    print(f"  trace: mean relative error over {seeds} seeds (ratio to Hutchinson at the same budget)")
    print("    " + "matvecs".rjust(8) + "".join(m.rjust(24) for m in methods))
    for m in budgets:
        errs = {}
        for method in methods:
            errs[method] = np.mean(
                [
                    abs(float(trace(A, method=method, num_matvecs=m, rng=s)) - truth) / abs(truth)
                    for s in range(seeds)
                ]
            )
        base = errs["hutchinson"]
        cells = "".join(f"{errs[k]:11.2e} (x{errs[k] / base:8.2e})" for k in methods)
        print(f"    {m:8d}{cells}")


def bench_fro_and_rank(M: np.ndarray, budgets: list[int], seeds: int) -> None:
    A = Opaque(kpflow.Dense(cnp.asarray(M)))
    fro = np.linalg.norm(M)
    pr = np.trace(M) ** 2 / np.sum(M * M)
    print("  fro_norm / effective_rank: mean relative error (fro: ratio hutch++/hutchinson)")
    for m in budgets:
        eh = np.mean(
            [
                abs(float(fro_norm(A, method="hutchinson", num_matvecs=m, rng=s)) - fro) / fro
                for s in range(seeds)
            ]
        )
        ep = np.mean(
            [
                abs(float(fro_norm(A, method="hutch++", num_matvecs=m, rng=s)) - fro) / fro
                for s in range(seeds)
            ]
        )
        er = np.mean(
            [
                abs(float(effective_rank(A, method="estimate", num_matvecs=max(m, 16), rng=s)) - pr) / pr
                for s in range(seeds)
            ]
        )
        print(
            f"    {m:8d}  fro hutchinson {eh:9.2e}  fro hutch++ {ep:9.2e} (x{ep / eh:8.2e})"
            f"  eff. rank {er:9.2e}"
        )


def bench_eigsh(n: int) -> None:
    from scipy.sparse.linalg import eigsh as arpack

    lam = np.concatenate([np.full(20, 5.0), np.linspace(3.0, 0.01, n - 20)])
    M = matrix(lam, seed=1)
    print(f"  eigsh on a degenerate spectrum (5.0 repeated 20 times, n={n}):")
    for k in (10, 20):
        A = Opaque(kpflow.Dense(cnp.asarray(M)))
        t0 = time.perf_counter()
        r = eigsh(A, k, method="lanczos", rng=0)
        t_lanczos = time.perf_counter() - t0
        w = np.asarray(r.eigenvalues)
        mult = int(np.sum(np.abs(w - 5.0) <= 1e-6))
        err = np.max(np.abs(w - lam[:k]) / lam[:k])

        B = Opaque(kpflow.Dense(cnp.asarray(M)))
        S = to_scipy(B)
        t0 = time.perf_counter()
        wa = np.sort(arpack(S, k=k, which="LA", return_eigenvectors=False, tol=1e-10))[::-1]
        t_arpack = time.perf_counter() - t0
        mult_a = int(np.sum(np.abs(wa - 5.0) <= 1e-6))
        err_a = np.max(np.abs(wa - lam[:k]) / lam[:k])

        t0 = time.perf_counter()
        np.linalg.eigh(M)
        t_dense = time.perf_counter() - t0
        print(
            f"    k={k:2d}  block Lanczos: multiplicity {mult}/{k}, max rel err {err:.1e}, "
            f"max residual {float(np.max(np.asarray(r.residual_norms))):.1e}, "
            f"{r.num_matvecs} matvecs, {t_lanczos:.3f} s"
        )
        print(
            f"          ARPACK (scipy): multiplicity {mult_a}/{k}, max rel err {err_a:.1e}, "
            f"{B.calls} matvecs, {t_arpack:.3f} s  -> Lanczos/ARPACK matvecs x{r.num_matvecs / B.calls:.2f}, "
            f"time x{t_lanczos / t_arpack:.2f};  dense eigh {t_dense:.3f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    budgets = [12, 30, 60, 120, 300]
    for name, lam in spectra(args.n).items():
        print(f"spectrum: {name}, n={args.n}")
        M = matrix(lam)
        bench_trace(M, budgets, args.seeds)
        bench_fro_and_rank(M, budgets, args.seeds)
    bench_eigsh(args.n)


if __name__ == "__main__":
    main()
