"""Does ``torch.compile`` pay for the recursions P and Pᵀ?  Eager against compiled steps, same run.

P (the forward recursion, dz = J_t dz_{t−1} + source) and Pᵀ (backpropagation through
time) are half of every NTK_S product.  Each of their T steps is one small GEMM with the
recurrent weight and about a dozen elementwise operations on ``(probes, B, 3H)`` arrays,
which eager torch runs one kernel at a time.  ``torch.compile`` could fuse the elementwise
work of a step into a few kernels.  This benchmark measures whether it does, on the
trajectory's own step functions (:class:`kpflow.models.StepKernel`, pure functions of
arrays):

- ``kpflow eager``: ``kpflow.ntk.propagator(traj)`` (``P.matmat`` / ``P.T.matmat``), as
  every kpflow product runs it on torch;
- ``compiled steps``: the same recursion with each step ``q + J_t y`` (``q + J_tᵀ w``) run
  by one ``torch.compile``-d function.  The step's per-time caches are passed already
  indexed at ``t`` (``[:, t:t+1]`` views) with ``t = 0``, so that one compiled program
  serves every step: torch specialises on an integer index, and would otherwise compile
  once per step until its recompilation limit.

It prints the one-time compilation cost (the first call of each route minus a warm call),
ms per product (median and best of ``--repeat`` round-robin rounds), the compiled route's
relative difference from the eager one (0 or float32 rounding: on the CPU the fused
kernels have given bit-identical results), and the ratio ``RATIO compiled / eager time``
for P and Pᵀ: below 1 means compilation pays.

Measured on the two-core CPU machine (torch 2.13, one probe, 5 rounds): compiled steps
are *slower*, 1.53× (P) and 1.63× (Pᵀ) at 204,800 states and 1.12× and 1.17× at
1,638,400, after 4–6 s of compilation per recursion.  A step's GEMM is already one
call, and eager torch already spreads each elementwise operation over both cores; the
compiled program adds its own dispatch and guards on every one of the T calls.  kpflow
therefore runs torch eagerly (``TorchBackend.jit`` is the identity).  On a GPU, where an
eager step is a dozen kernel launches, the answer may differ: run this with
``--device cuda``.

Defaults: GRU(3, 128), B=32, T=50 (204,800 states), one probe (the CPU eigensolver's block
from 2²⁰ states), float32.  ``--size large`` is GRU(3, 256), B=64, T=100 (1,638,400 states).
``--device cuda`` runs it on a GPU.  Run: ``python benchmarks/bench_torch_compile.py``
(``--quick`` for a short smoke run).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from _timing import timed_round_robin  # benchmarks/_timing.py (the script's folder is on sys.path)
from kpflow.backends.torch import from_module

from kpflow.ntk import propagator

SIZES = {"small": (32, 50, 128), "large": (64, 100, 256), "quick": (4, 6, 8)}


def _is_cache(a: Any, batch: int, steps: int) -> bool:
    """A per-time cache of the step (shape ``(B, T, ...)``, read at ``[:, t]``), not a weight."""
    return isinstance(a, torch.Tensor) and a.ndim >= 2 and tuple(a.shape[:2]) == (batch, steps)


def compiled_recursion(traj: Any, adjoint: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """P (or Pᵀ) of ``traj`` on blocks ``(k, B, T, S)``, each step one ``torch.compile``-d program."""
    kernel = traj.step_kernel()
    action = kernel.vjp if adjoint else kernel.jvp
    xp, static = traj.xp, kernel.static
    batch, steps = traj.state_shape[0], traj.n_steps

    def step(operands: tuple, q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return q + action(xp, *static, operands, y, 0)

    fn = torch.compile(step, dynamic=False, fullgraph=True)

    def at(t: int) -> tuple:
        return tuple(a[:, t : t + 1] if _is_cache(a, batch, steps) else a for a in kernel.operands)

    def run(X: torch.Tensor) -> torch.Tensor:
        out: list[torch.Tensor] = [None] * steps  # type: ignore[list-item]
        order = range(steps - 1, -1, -1) if adjoint else range(steps)
        y = None
        for t in order:
            if y is None:
                y = X[:, :, t]
            else:  # J_t reads step t's caches (adjoint: J_{t+1}ᵀ reads step t + 1's)
                y = fn(at(t + 1 if adjoint else t), X[:, :, t], y)
            out[t] = y
        return torch.stack(out, dim=2)

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "large"), default="small")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke run)")
    parser.add_argument("--probes", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    B, T, H = SIZES["quick" if args.quick else args.size]
    repeat = 2 if args.quick else args.repeat
    device = torch.device(args.device)

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    module = torch.nn.GRU(3, H, batch_first=True).to(device)
    model, params = from_module(module, detach=True)
    x = torch.randn(B, T, 3, generator=gen).to(device)
    traj = model.run(params, x)
    P = propagator(traj)
    X = torch.randn(args.probes, B, T, H, generator=gen).to(device)
    print(f"GRU(3, {H}), B={B}, T={T}: {B * T * H:,} states, {args.probes} probe(s), {device}, float32")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    routes: dict[str, Callable[[], Any]] = {}
    with torch.no_grad():
        for name, adjoint, eager in (("P", False, P.matmat), ("P^T", True, P.T.matmat)):
            comp = compiled_recursion(traj, adjoint)

            def timed(f: Callable[[Any], Any]) -> Callable[[], Any]:
                def g() -> Any:
                    out = f(X)
                    sync()
                    return out

                return g

            routes[f"{name} eager"] = timed(eager)
            routes[f"{name} compiled"] = timed(comp)
        first = {}
        for name, fn in routes.items():  # the one-time cost: first call against a warm one
            t0 = time.perf_counter()
            fn()
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            fn()
            first[name] = cold - (time.perf_counter() - t0)
        results = timed_round_robin(routes, repeat)

    print(f"{'route':<14} {'first-call extra s':>18} {'median ms':>10} {'best ms':>8} {'rel diff':>9}")
    for name, (med, best, out) in results.items():
        ref = results[name.replace("compiled", "eager")][2]
        diff = float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref))
        print(f"{name:<14} {first[name]:>18.2f} {med * 1e3:>10.1f} {best * 1e3:>8.1f} {diff:>9.1e}")
    for name in ("P", "P^T"):
        ratio = results[f"{name} compiled"][0] / results[f"{name} eager"][0]
        print(f"RATIO compiled / eager time, {name}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
