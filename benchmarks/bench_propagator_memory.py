"""Peak memory and time of the propagator P = (I − L)⁻¹ versus storing the per-step Jacobians.

P q is the forward recursion y_t = q_t + J_t y_{t−1} (docs/theory.md, "Applying P and Pᵀ").
kpflow applies J_t as a Jacobian-vector product from the trajectory's cached gates, to a whole block of k
probes per step, and never stores the B·T·H·H Jacobians that the research code kept.
This script measures, for a GRU on numpy:

- the bytes B·T·H·H·itemsize that stored per-step Jacobians take (the research code's
  footprint; the ratio column compares against it);
- the memory the trajectory holds (states and cached gate derivatives), allocated once;
- the peak extra memory during one P matvec, one Pᵀ matvec and one NTK_S = P K Pᵀ matvec
  on a block of k probes, and the same minus the output block (k·B·T·H) that any method
  must return;
- the wall time of each matvec (median of ``--repeat``), and, for sizes whose Jacobians
  fit under ``--max-dense-bytes``, the stored-Jacobian baseline measured in the same run:
  build the (B, T, H, H) Jacobians, then run the same recursion with them (its memory is
  the Jacobians plus the recursion's peak, not counting the transient peak of building
  them, which is printed separately; its time excludes building them).

How memory is measured, and why it is honest: numpy reports every array-data allocation
to ``tracemalloc`` (numpy ≥ 1.13), so ``tracemalloc.get_traced_memory()`` after
``tracemalloc.reset_peak()`` gives the exact high-water mark of Python and numpy
allocations made during the call, above what was live before it (the trajectory, the
probes).  It does not see memory the BLAS library allocates internally (small per-call
workspaces), nor the interpreter's own baseline; both are the same for every route here.
torch's CPU allocator is invisible to tracemalloc, which is why this benchmark runs on numpy.

Defaults: GRU with n_in=32 at B=64, T=100, H=256 and at B=32, T=50, H=128, k=8 probes,
float32.  Run: ``python benchmarks/bench_propagator_memory.py`` (``--quick`` for a short
smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

import kpflow.ntk as ntk
from kpflow.models.gru import GRU

MB = 2.0**20


def measure(fn: Callable[[], Any], repeat: int) -> tuple[float, int, Any]:
    """(median seconds, peak extra bytes during one call, output) of ``fn()``."""
    out = fn()  # warm-up
    del out
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    out = fn()
    peak = tracemalloc.get_traced_memory()[1] - before
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak, out


def stored_jacobians(traj: Any, dtype: Any) -> np.ndarray:
    """The per-step Jacobians J_t = ∂h_t/∂h_{t−1}, shape (B, T, H, H) (J_0 unused, zero)."""
    B, T, H = traj.state_shape
    eye = np.broadcast_to(np.eye(H, dtype=dtype)[:, None, :], (H, B, H))  # probes e_j, (H, B, H)
    blocks = [np.zeros((B, H, H), dtype=dtype)]
    for t in range(1, T):
        cols = np.asarray(traj.step_jvp(t, eye))  # (j, b, i) = (J_t e_j)_i
        blocks.append(np.ascontiguousarray(np.transpose(cols, (1, 2, 0))))  # (b, i, j)
    return np.stack(blocks, axis=1)


def stored_propagator(J: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """P Q by the recursion with stored Jacobians: Q (k, B, T, H)."""
    y = Q[:, :, 0, :]
    out = [y]
    for t in range(1, Q.shape[2]):
        y = Q[:, :, t, :] + np.einsum("bij,kbj->kbi", J[:, t], y)
        out.append(y)
    return np.stack(out, axis=2)


def run_size(B: int, T: int, H: int, n_in: int, k: int, dtype: Any, repeat: int, max_dense: float) -> None:
    itemsize = np.dtype(dtype).itemsize
    jac_bytes = B * T * H * H * itemsize
    block_bytes = k * B * T * H * itemsize
    rng = np.random.default_rng(0)
    model = GRU(n_in, H)
    params = model.init(0, like=np.zeros(1, dtype=dtype))
    x = rng.standard_normal((B, T, n_in)).astype(dtype)
    V = rng.standard_normal((k, B, T, H)).astype(dtype)

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    traj = model.run(params, x)
    P = ntk.propagator(traj)
    N = ntk.global_ntk(traj)
    _ = traj.sites
    traj_bytes = tracemalloc.get_traced_memory()[0] - before

    routes = {
        "P matvec (forward recursion)": lambda: P.matmat(V),
        "P^T matvec (BPTT)": lambda: P.T.matmat(V),
        "NTK_S = P K P^T matvec": lambda: N.matmat(V),
    }
    results = {name: measure(fn, repeat) for name, fn in routes.items()}

    dense = None
    if jac_bytes <= max_dense:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        J = stored_jacobians(traj, dtype)
        build_peak = tracemalloc.get_traced_memory()[1] - before
        t_dense, peak_dense, Y_dense = measure(lambda: stored_propagator(J, V), repeat)
        Y = results["P matvec (forward recursion)"][2]
        err = float(np.linalg.norm(np.asarray(Y) - Y_dense) / np.linalg.norm(Y_dense))
        dense = (t_dense, J.nbytes + peak_dense, build_peak, err)
        del J
    tracemalloc.stop()

    print(f"\nGRU B={B} T={T} H={H} n_in={n_in}, k={k} probes, numpy {np.dtype(dtype).name}")
    print(f"  stored Jacobians B*T*H*H:    {jac_bytes / MB:10.2f} MB  (the research code's footprint)")
    print(f"  probe block k*B*T*H:         {block_bytes / MB:10.2f} MB  (input; the output is as large)")
    print(f"  trajectory (states + gates): {traj_bytes / MB:10.2f} MB  (held once, shared by all matvecs)")
    print(
        f"  {'matvec':<30} {'time s':>8} {'peak MB':>9} {'peak-out MB':>12} "
        f"{'Jacobians/peak':>15} {'Jacobians/(peak-out)':>21}"
    )
    for name, (t, peak, _) in results.items():
        work = max(peak - block_bytes, 1)
        print(
            f"  {name:<30} {t:8.3f} {peak / MB:9.2f} {work / MB:12.2f} "
            f"{jac_bytes / peak:14.1f}x {jac_bytes / work:20.1f}x"
        )
    if dense is None:
        print(f"  stored-Jacobian baseline skipped (needs {jac_bytes / MB:.0f} MB > --max-dense-bytes)")
    else:
        t_dense, mem_dense, build_peak, err = dense
        t_p, peak_p, _ = results["P matvec (forward recursion)"]
        print(
            f"  {'stored-Jacobian P matvec':<30} {t_dense:8.3f} {mem_dense / MB:9.2f}   "
            f"(Jacobians + recursion peak; relative difference from kpflow's P V: {err:.1e})"
        )
        print(f"  (building the stored Jacobians here peaked at {build_peak / MB:.0f} MB)")
        print(
            f"  RATIO stored-Jacobian / kpflow P matvec: memory {mem_dense / peak_p:.1f}x, "
            f"time {t_dense / t_p:.2f}x (building the Jacobians not timed)"
        )
    t_p, peak_p, _ = results["P matvec (forward recursion)"]
    print(f"  RATIO B*T*H*H bytes / peak of one P matvec: {jac_bytes / peak_p:.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--n-in", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--max-dense-bytes",
        type=float,
        default=2.0 * 2**30,
        help="run the stored-Jacobian baseline only below this many bytes of Jacobians (default 2 GiB)",
    )
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype).type
    sizes = [(4, 8, 16)] if args.quick else [(64, 100, 256), (32, 50, 128)]
    repeat = 1 if args.quick else args.repeat
    for B, T, H in sizes:
        run_size(B, T, H, args.n_in, args.probes, dtype, repeat, args.max_dense_bytes)


if __name__ == "__main__":
    main()
