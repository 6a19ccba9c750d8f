"""K V on a block of probes: kpflow's Kronecker core versus the best vmapped autodiff vjp + jvp.

K = J_θ J_θᵀ is the parameter kernel of a tanh RNN (docs/theory.md, "The Kronecker core of K").
kpflow applies it through its Kronecker core, K V = D A (Aᵀ (D V)), with the site variables A
and the derivatives D cached on the trajectory.  The baselines apply the same K by automatic
differentiation of the one-step map f(θ) = tanh(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh) at
all B·T sites at once (states held fixed): a vjp (Jᵀ V) then a jvp (J ·), both vmapped over
the probes, so no baseline loops over probes in Python.  Per-trajectory setup (the vjp's
forward pass, the linearisation, kpflow's site variables) is done once, before timing, for
every route alike.  Variants:

- ``kpflow autodiff``: ``kpflow.ntk.parameter_kernel(traj, method="autodiff")`` (torch.func
  vjp + jvp of ``model.update_map``, through array-api-compat).
- ``torch.func vjp+jvp``: the same in plain torch on a hand-written fused step.
- ``torch.func vjp+linearize``: the jvp replaced by ``torch.func.linearize``'s traced jvp.
- ``torch.func vjp+vjp-of-vjp``: J u obtained as the vjp of the (linear) map v ↦ Jᵀ v.

Defaults: tanh RNN, B=32, T=50, H=128, n_in=16, 16 probes, float32, torch on CPU with
torch's default thread count.  Each route is timed ``--repeat`` times after two warm-up
calls (``time.perf_counter``); the table gives the median and the best, and the ratio is
the best baseline's median over kpflow's median.  Both routes must give the same K V:
their relative Frobenius difference is printed (float32 rounding, ~1e-6, is expected).

Run: ``python benchmarks/bench_kernel_matvec.py`` (``--quick`` for a short smoke run).
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _timing import timed_round_robin  # benchmarks/_timing.py (the script's folder is on sys.path)

import kpflow.ntk as ntk
from kpflow.models import RNN


def plain_step(x: torch.Tensor, h_prev: torch.Tensor) -> Callable[..., torch.Tensor]:
    """The one-step map at all sites, θ ↦ tanh(x W_ihᵀ + b_ih + h_prev W_hhᵀ + b_hh), in plain torch."""

    def f(w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w_ih.T + h_prev @ w_hh.T + b_ih + b_hh)

    return f


def autodiff_variants(
    f: Callable[..., torch.Tensor], theta: tuple[torch.Tensor, ...], V: torch.Tensor
) -> dict[str, Callable[[], torch.Tensor]]:
    """Vmapped vjp + jvp routes for K V = J (Jᵀ V), setup done here (outside the timing)."""
    func = torch.func
    vjp_fn = func.vjp(f, *theta)[1]
    batched_vjp = func.vmap(vjp_fn)

    def jvp_one(*tangents: torch.Tensor) -> torch.Tensor:
        return func.jvp(f, theta, tangents)[1]

    batched_jvp = func.vmap(jvp_one)

    def vjp_jvp() -> torch.Tensor:
        return batched_jvp(*batched_vjp(V))

    with warnings.catch_warnings():
        # torch.fx's constant folding inside linearize warns about its own graph; harmless here.
        warnings.simplefilter("ignore", UserWarning)
        _, jvp_fn = func.linearize(f, *theta)
    batched_linear = func.vmap(jvp_fn)

    def vjp_linearize() -> torch.Tensor:
        return batched_linear(*batched_vjp(V))

    # v ↦ Jᵀ v is linear, so its vjp at any point is u ↦ J u.
    transpose_fn = func.vjp(lambda v: vjp_fn(v), torch.zeros_like(V[0]))[1]
    batched_transpose = func.vmap(lambda *u: transpose_fn(u)[0])

    def vjp_vjp() -> torch.Tensor:
        return batched_transpose(*batched_vjp(V))

    return {
        "torch.func vjp+jvp": vjp_jvp,
        "torch.func vjp+linearize": vjp_linearize,
        "torch.func vjp+vjp-of-vjp": vjp_vjp,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke run)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--time", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--n-in", type=int, default=16)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    B, T, H, n_in, k, repeat = args.batch, args.time, args.hidden, args.n_in, args.probes, args.repeat
    if args.quick:
        B, T, H, repeat = 4, 6, 16, 3

    dtype = torch.float32
    rng = np.random.default_rng(0)
    model = RNN(n_in, H, nonlinearity="tanh")
    params = model.init(0, like=torch.zeros(1, dtype=dtype))
    x = torch.asarray(rng.standard_normal((B, T, n_in)), dtype=dtype)
    V = torch.asarray(rng.standard_normal((k, B, T, H)), dtype=dtype)
    with torch.no_grad():
        traj: Any = model.run(params, x)
    K_core = ntk.parameter_kernel(traj)
    _ = traj.sites  # built once per trajectory, like the baselines' vjp setup
    K_auto = ntk.parameter_kernel(traj, method="autodiff")

    routes: dict[str, Callable[[], torch.Tensor]] = {
        "kpflow Kronecker core": lambda: K_core.matmat(V),
        "kpflow autodiff": lambda: K_auto.matmat(V),
    }
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    theta = tuple(params[n] for n in names)
    routes.update(autodiff_variants(plain_step(x, traj.prev_states), theta, V))

    print(f"K V, tanh RNN B={B} T={T} H={H} n_in={n_in}, {k} probes, {dtype}, torch CPU")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {repeat} repeats, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    with torch.no_grad():
        results = timed_round_robin(routes, repeat, warmups=2)
    core_median, core_best, core_out = results["kpflow Kronecker core"]
    header = f"{'route':<28} {'median ms':>10} {'best ms':>9} {'median/core':>12} {'best/core':>10}"
    print(f"{header} {'rel. diff of K V':>17}")
    for name, (median, best, out) in results.items():
        diff = float(torch.linalg.norm(out - core_out) / torch.linalg.norm(core_out))
        print(
            f"{name:<28} {1e3 * median:10.2f} {1e3 * best:9.2f} {median / core_median:11.2f}x "
            f"{best / core_best:9.2f}x {diff:17.2e}"
        )
    baselines = {n: r for n, r in results.items() if n != "kpflow Kronecker core"}
    by_median = min(baselines, key=lambda n: baselines[n][0])
    by_best = min(baselines, key=lambda n: baselines[n][1])
    print(
        f"RATIO best autodiff / Kronecker core: {baselines[by_median][0] / core_median:.2f}x by median "
        f"({by_median}), {baselines[by_best][1] / core_best:.2f}x by best time ({by_best}); target >= 1.5x"
    )


if __name__ == "__main__":
    main()
