"""Top-k spectrum of K: the exact Kronecker-core rule versus block Krylov on the same operator.

K = Σ_w D_w (G_w ⊗ I) D_wᵀ is the parameter kernel (docs/theory.md, "The Kronecker core of K"
and "Exact shortcuts").  For a Kronecker core, ``kpflow.linalg.eigsh(K, k)`` dispatches to an
exact rule (registered by ``kpflow.ntk`` with ``kpflow.linalg.rules.exact_eigsh``): per-unit
small Gram matrices, no iteration, exact multiplicities.  The baseline is the same call forced
to the iterative method, ``eigsh(K, k, method="lanczos")``: randomized block Krylov (block
Lanczos with full reorthogonalisation and Rayleigh–Ritz), stopped at residual norms ≤ ``--tol`` · ‖K‖
(default 1e-6, looser than eigsh's own 1e-10 default, which makes the baseline faster and
the ratio conservative).  Both run on the same K on the same backend; the ratio is the
Krylov time over the exact time.  Agreement is printed as max |λ_exact − λ_Krylov| /
λ_max and as the multiplicity of the top eigenvalue each method reports.

Models (numpy float64 by default, no autodiff needed): a leaky RNN (D = dt·I, every
eigenvalue repeated H times) and a tanh RNN (site-varying diagonal D), each with
B·T = 2000 sites (B=20, T=100), H=64, n_in=16, and k=20.  K is 128 000 × 128 000 there.
Times are wall-clock (``time.perf_counter``); the exact rule is timed as the median of
``--repeat`` calls, each Krylov run once.  The machine's load average is printed: on a
shared machine, other processes slow every route, and BLAS threads suffer most.

Run: ``python benchmarks/bench_kernel_spectrum.py`` (``--quick`` for a short smoke run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np
from kpflow.backends import get_backend

import kpflow.ntk as ntk
from kpflow.linalg import eigsh, rules
from kpflow.models import RNN, LeakyRNN
from kpflow.operators.base import LinearOperator


def to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu()
    return np.asarray(a, dtype=np.float64)


def build_kernel(name: str, B: int, T: int, H: int, n_in: int, backend: str) -> LinearOperator:
    """K of a seeded model run on seeded inputs, on ``backend`` in float64."""
    model = LeakyRNN(n_in, H, dt=0.1) if name == "leaky" else RNN(n_in, H, nonlinearity="tanh")
    adapter = get_backend(backend)
    like = adapter.from_host(np.zeros(1), dtype=adapter.namespace().float64, device=None)
    params = model.init(0, like=like)
    host_x = np.random.default_rng(1).standard_normal((B, T, n_in))
    x = adapter.from_host(host_x, dtype=like.dtype, device=None)
    traj = model.run(params, x)
    return ntk.parameter_kernel(traj)


def top_multiplicity(values: np.ndarray, rtol: float = 1e-8) -> int:
    return int(np.sum(np.abs(values - values[0]) <= rtol * abs(values[0])))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--time", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--n-in", type=int, default=16)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backend", default="numpy", help="numpy (default), torch or jax")
    parser.add_argument("--tol", type=float, default=1e-6, help="Krylov residual tolerance")
    parser.add_argument("--max-matvecs", type=int, default=None, help="cap on the Krylov basis")
    args = parser.parse_args(argv)
    B, T, H, n_in, k = args.batch, args.time, args.hidden, args.n_in, args.k
    if args.quick:
        B, T, H, k = 4, 10, 8, 6

    print(f"top-{k} eigenvalues of K, B*T={B * T} (B={B}, T={T}), H={H}, n_in={n_in}, {args.backend} float64")
    print(f"K is {B * T * H} x {B * T * H}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rows = []
    for name in ("leaky", "tanh"):
        K = build_kernel(name, B, T, H, n_in, args.backend)
        registered = rules.exact_eigsh.dispatch(type(K)) is not rules.exact_eigsh.dispatch(LinearOperator)
        if not registered:
            print(f"{name}: NO exact eigsh rule is registered for {type(K).__name__}; 'auto' is not exact")
        eigsh(K, k)  # warm-up (also builds the cached sites)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            exact = eigsh(K, k)
            times.append(time.perf_counter() - t0)
        t_exact = statistics.median(times)
        w_exact = to_numpy(exact.eigenvalues)
        row: dict[str, Any] = {"model": name, "exact": t_exact, "rule": registered, "w": w_exact}
        t0 = time.perf_counter()
        res = eigsh(K, k, method="lanczos", tol=args.tol, rng=0, max_matvecs=args.max_matvecs)
        row["krylov"] = time.perf_counter() - t0
        w = to_numpy(res.eigenvalues)
        row["err"] = float(np.max(np.abs(w - w_exact)) / abs(w_exact[0]))
        row["mult"] = top_multiplicity(w)
        row["mv"] = int(res.num_matvecs)
        row["res"] = float(np.max(to_numpy(res.residual_norms)) / abs(w_exact[0]))
        row["res_exact"] = float(np.max(to_numpy(exact.residual_norms)) / abs(w_exact[0]))
        rows.append(row)

    print(
        f"{'model':<6} {'rule':>5} {'exact s':>9} {'Krylov s':>9} {'ratio':>8} {'matvecs':>8} "
        f"{'max |dλ|/λ1':>12} {'top mult exact/Krylov':>22} {'resid exact':>12} {'resid Krylov':>13}"
    )
    for r in rows:
        mult = f"{top_multiplicity(r['w'])}/{r['mult']}"
        print(
            f"{r['model']:<6} {r['rule']!s:>5} {r['exact']:9.4f} {r['krylov']:9.2f} "
            f"{r['krylov'] / r['exact']:7.0f}x {r['mv']:8d} {r['err']:12.1e} {mult:>22} "
            f"{r['res_exact']:12.1e} {r['res']:13.1e}"
        )
    print("(residuals: max ‖K v − λ v‖ / λ1 of the returned pairs)")
    for r in rows:
        print(
            f"RATIO {r['model']}: block-Krylov / exact = {r['krylov'] / r['exact']:.0f}x "
            f"(tol {args.tol:g}); target >= 100x"
        )
        print(f"  top eigenvalues (exact): {np.array2string(r['w'][:6], precision=6)} ...")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
