"""NTK_S V on a block of probes: kpflow's P K Pᵀ versus autodiff through ``torch.nn.GRU``.

NTK_S = (dz/dθ)(dz/dθ)ᵀ is the global NTK of the states (docs/theory.md).  kpflow applies it
as backpropagation through time (Pᵀ), the Kronecker core of K, then the forward recursion (P),
never storing a Jacobian.  The baseline applies the same NTK_S by automatic differentiation
of the whole unrolled ``torch.nn.GRU`` (``torch.func.functional_call`` of the module, the
same weights): a vjp (dz/dθ)ᵀ V, then a jvp (dz/dθ) ·, both vmapped over the probes.  The
baseline's forward pass (its vjp's linearisation) and kpflow's trajectory are built once,
before timing.  Routes:

- ``kpflow torch``: ``kpflow.global_ntk(traj).matmat(V)`` on the module's weights (from
  ``kpflow.backends.torch.from_module(module, detach=True)``), under ``torch.no_grad()`` as
  the solvers run it.
- ``kpflow torch, grad params``: the same with the module's ``nn.Parameter`` objects
  themselves (``detach=False``), still under ``torch.no_grad()``.  torch's ``matmul`` folds
  a batched product whose 2-D operand requires grad into one GEMM with copies even when no
  graph is recorded, so K's batched products cost more here.
- ``kpflow numpy``: the same product on numpy float32 copies of the weights and inputs.
- ``torch.func vjp+jvp``: the autodiff product through the module.

``--model lstm`` or ``rnn`` use ``torch.nn.LSTM`` / ``torch.nn.RNN`` instead (for the LSTM,
whose kpflow state is [h; c], kpflow's product is the h block, ``global_ntk(traj, part="h")``,
which is what autodiff of the module's output gives).

It also counts the dtype conversions in one numpy float32 product: calls of the namespace's
``astype`` (wrapped for the count) and of the arrays' ``astype`` method, and any float64
intermediate (every array derived from the probe block is an ndarray subclass that records
its dtype).  All of them should be 0.

Defaults: GRU(3, 128), B=32, T=50 (204,800 states), 16 probes, float32, torch on CPU with
its default thread count.  Each route is timed ``--repeat`` times after one warm-up call, in
round robin (every round times each route once, so a change in machine load hits all alike);
the table gives ms per probe (median and best), and the ratio of the autodiff route to
kpflow's torch route.  The relative Frobenius difference of each result to kpflow torch's is
printed (float32 rounding, ~1e-6 to 1e-5, is expected).

Run: ``python benchmarks/bench_ntk_product.py`` (``--quick`` for a short smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from _timing import timed_round_robin  # benchmarks/_timing.py (the script's folder is on sys.path)
from kpflow.backends.torch import from_module

import kpflow


class Tracked(np.ndarray):
    """An ndarray recording the dtype of every array derived from it and its ``astype`` calls."""

    dtypes: ClassVar[set[np.dtype]] = set()
    method_astype: ClassVar[int] = 0
    __array_priority__ = 10.0  # concatenate and stack of mixed inputs return the subclass

    def __array_finalize__(self, obj: Any) -> None:
        Tracked.dtypes.add(self.dtype)

    def astype(self, *args: Any, **kwargs: Any) -> Any:
        Tracked.method_astype += 1
        return super().astype(*args, **kwargs)


def count_conversions(N: Any, X: np.ndarray) -> tuple[int, int, list[str]]:
    """(namespace astype calls, array astype calls, dtypes seen) in one product ``N.matmat(X)``."""
    xp = N.xp
    calls = 0
    original = xp.astype

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    xp.astype = counting
    Tracked.dtypes, Tracked.method_astype = set(), 0
    try:
        N.matmat(X.view(Tracked))
    finally:
        xp.astype = original
    return calls, Tracked.method_astype, sorted(str(d) for d in Tracked.dtypes)


def without_onednn_rnn(module: torch.nn.Module) -> Any:
    """For the LSTM, turn off torch's oneDNN RNN kernel, which has no forward-mode AD (else nothing)."""
    stack = contextlib.ExitStack()
    if isinstance(module, torch.nn.LSTM):
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", UserWarning)  # a note about TF32 on Intel GPUs
        stack.enter_context(torch.backends.mkldnn.flags(enabled=False))
    return stack


def autodiff_product(module: torch.nn.Module, x: torch.Tensor, V: torch.Tensor) -> Callable[[], torch.Tensor]:
    """NTK_S V = J (Jᵀ V) with J = d(module(x)[0])/dθ: vmapped vjp then vmapped jvp (setup here)."""
    func = torch.func
    params = {name: p.detach() for name, p in module.named_parameters()}

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return func.functional_call(module, p, (x,))[0]

    with without_onednn_rnn(module):
        batched_vjp = func.vmap(func.vjp(f, params)[1])

    def jvp_one(tangent: dict[str, torch.Tensor]) -> torch.Tensor:
        return func.jvp(f, (params,), (tangent,))[1]

    batched_jvp = func.vmap(jvp_one)

    def product() -> torch.Tensor:
        with warnings.catch_warnings(), without_onednn_rnn(module):
            # vmap over the module's fused kernel falls back to a loop and says so; the
            # timing includes that, as it is what autodiff of the module costs.
            warnings.simplefilter("ignore", UserWarning)
            return batched_jvp(batched_vjp(V)[0])

    return product


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke run)")
    parser.add_argument("--model", choices=("gru", "lstm", "rnn"), default="gru")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--time", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--n-in", type=int, default=3)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    B, T, H, n_in, k, repeat = args.batch, args.time, args.hidden, args.n_in, args.probes, args.repeat
    if args.quick:
        B, T, H, k, repeat = 4, 6, 16, 4, 2

    dtype = torch.float32
    torch.manual_seed(0)
    cls = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM, "rnn": torch.nn.RNN}[args.model]
    module = cls(n_in, H, batch_first=True, dtype=dtype)
    rng = np.random.default_rng(0)
    x = torch.asarray(rng.standard_normal((B, T, n_in)), dtype=dtype)
    V_host = rng.standard_normal((k, B, T, H)).astype(np.float32)
    V = torch.asarray(V_host)
    part = "h" if args.model == "lstm" else "all"

    model, params = from_module(module, detach=True)
    grad_params = from_module(module)[1]
    with torch.no_grad():
        N_torch = kpflow.global_ntk(model.run(params, x), part=part)
        np_params = {name: p.numpy().copy() for name, p in params.items()}
        N_numpy = kpflow.global_ntk(model.run(np_params, x.numpy().copy()), part=part)
    N_grad = kpflow.global_ntk(model.run(grad_params, x), part=part)  # caches that require grad
    full = N_torch.full if part == "h" else N_torch
    for N in (N_torch, N_numpy, N_grad):
        _ = (N.full if part == "h" else N).P.traj.sites  # built once per trajectory, like the vjp setup

    routes: dict[str, Callable[[], Any]] = {
        "kpflow torch": lambda: N_torch.matmat(V),
        "kpflow numpy": lambda: torch.from_numpy(N_numpy.matmat(V_host)),
        "kpflow torch, grad params": lambda: N_grad.matmat(V),
        "torch.func vjp+jvp": autodiff_product(module, x, V),
    }

    states = math.prod(full.shape_in)
    print(
        f"NTK_S V, {type(module).__name__}({n_in}, {H}) B={B} T={T} ({states:,} states), "
        f"{k} probes, {dtype}, CPU"
    )
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} torch threads, "
        f"{repeat} repeats, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    with torch.no_grad():
        results = timed_round_robin(routes, repeat)
    ref_median, _, ref_out = results["kpflow torch"]
    print(
        f"{'route':<26} {'median ms/probe':>16} {'best ms/probe':>14} {'/ kpflow torch':>15} {'rel diff':>9}"
    )
    for name, (median, best, out) in results.items():
        diff = float(torch.linalg.norm(out - ref_out) / torch.linalg.norm(ref_out))
        ms, best_ms, ratio = 1e3 * median / k, 1e3 * best / k, median / ref_median
        print(f"{name:<26} {ms:16.2f} {best_ms:14.2f} {ratio:14.2f}x {diff:9.1e}")
    auto = results["torch.func vjp+jvp"][0]
    print(f"RATIO autodiff / kpflow torch: {auto / ref_median:.1f}x by median")
    namespace, method, dtypes = count_conversions(N_numpy, V_host)
    print(
        f"dtype conversions in one numpy float32 product: {namespace} namespace astype calls, "
        f"{method} array astype calls, intermediate dtypes {dtypes}"
    )


if __name__ == "__main__":
    main()
