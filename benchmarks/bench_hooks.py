"""NTK_S V for a tanh RNN written by the user with weight hooks versus the built-in ``RNN``.

The same model, the same weights, the same probes, on torch and on jax in one run: the
built-in ``kpflow.models.RNN`` applies D_w and the step Jacobians analytically; the
user-defined ``kpflow.models.Recurrent`` cell (the step written with ``site(name, a)``
hooks) gets each D_w and each step Jacobian from jvp/vjp of the user's step
(``kpflow/models/_hook_autodiff.py``: on torch a graph traced once per shape, its primal
part run once per product for every step; on jax one compiled scan for P and one for Pᵀ,
as the built-in).  Both give the same NTK_S (the script prints the relative difference).

Each route is timed ``--repeat`` times after one warm-up call (which also traces and
compiles), in round robin (every round times each route of every backend once, so a change
of machine load hits all alike); the table gives ms per probe (median and best) and, per
backend, the ratio hooks / built-in of the medians.  ``--threads`` (default 1) caps the
CPU threads of torch and XLA, and ``--clock cpu`` times this process's CPU time instead of
the elapsed time: on a shared machine both keep the load out of the ratio.

Measured on 2 shared cores under load (1 thread, default sizes B=16, T=50, H=64, 8 probes,
float32, medians of 7 rounds): see docs/hooks.md ("Cost").

Run: ``python benchmarks/bench_hooks.py`` (``--quick`` for a smoke run of seconds;
``--backends torch`` for one backend).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import kpflow
from kpflow.models import RNN, Recurrent

ROUTES = ("built-in RNN", "hooks Recurrent")


def torch_rnn(params: Any, h: Any, x: Any, site: Any) -> Any:
    """The user's step: h_t = tanh(W_hh h + b_hh + W_ih x + b_ih), every weight through a hook."""
    import torch

    return torch.tanh(site("weight_hh", h) + site("bias_hh") + site("weight_ih", x) + site("bias_ih"))


def jax_rnn(params: Any, h: Any, x: Any, site: Any) -> Any:
    """The same step on jax."""
    import jax.numpy as jnp

    return jnp.tanh(site("weight_hh", h) + site("bias_hh") + site("weight_ih", x) + site("bias_ih"))


def _torch_routes(host: dict[str, Any], x: np.ndarray, V: np.ndarray, n_in: int, H: int) -> dict:
    import torch

    builtin = RNN(n_in, H)
    user = Recurrent(torch_rnn, n_in=n_in, n_hidden=H, param_shapes=builtin.param_shapes())
    params = {k: torch.asarray(v) for k, v in host.items()}
    xt, Vt = torch.asarray(x), torch.asarray(V)
    ntks = {
        ROUTES[0]: kpflow.global_ntk(builtin.run(params, xt)),
        ROUTES[1]: kpflow.global_ntk(user.run(params, xt)),
    }

    def product(ntk: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return ntk.matmat(Vt).numpy()

        return run

    return {name: product(ntk) for name, ntk in ntks.items()}


def _jax_routes(host: dict[str, Any], x: np.ndarray, V: np.ndarray, n_in: int, H: int) -> dict:
    import jax.numpy as jnp

    builtin = RNN(n_in, H)
    user = Recurrent(jax_rnn, n_in=n_in, n_hidden=H, param_shapes=builtin.param_shapes())
    params = {k: jnp.asarray(v) for k, v in host.items()}
    xj, Vj = jnp.asarray(x), jnp.asarray(V)
    ntks = {
        ROUTES[0]: kpflow.global_ntk(builtin.run(params, xj)),
        ROUTES[1]: kpflow.global_ntk(user.run(params, xj)),
    }

    def product(ntk: Any) -> Callable[[], Any]:
        def run() -> Any:
            return np.asarray(ntk.matmat(Vj).block_until_ready())

        return run

    return {name: product(ntk) for name, ntk in ntks.items()}


def _round_robin(
    routes: dict[str, Callable[[], Any]], repeat: int, clock: Callable[[], float]
) -> dict[str, tuple[float, float, Any]]:
    """(median, best, output) of each route: one untimed call each, then ``repeat`` rounds.

    Every round times each route once, in turn (as benchmarks/_timing.py, with a choice of
    clock), so a change in machine load hits all routes alike.
    """
    outputs = {name: fn() for name, fn in routes.items()}
    times: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(repeat):
        for name, fn in routes.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: (statistics.median(t), min(t), outputs[name]) for name, t in times.items()}


def _limit_threads(n: int, backends: list[str]) -> None:
    """At most ``n`` threads for torch's and XLA's CPU kernels (before jax is imported)."""
    import os

    if "torch" in backends:
        import torch

        torch.set_num_threads(n)
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'}".strip()
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def _versions(backends: list[str]) -> str:
    out = []
    if "torch" in backends:
        import torch

        out.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    if "jax" in backends:
        import jax

        out.append(f"jax {jax.__version__} ({jax.default_backend()})")
    return ", ".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--time", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backends", default="torch,jax", help="comma-separated: torch, jax")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads per framework (0: the frameworks' defaults)"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (steadier on a loaded machine)",
    )
    parser.add_argument("--quick", action="store_true", help="B=4, T=10, H=16, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.time, args.hidden, args.repeat = 4, 10, 16, 2
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - {"torch", "jax"})
    if unknown or not backends:
        parser.error(f"--backends: expected a comma-separated subset of torch,jax, got {args.backends!r}")
    if args.threads > 0:
        _limit_threads(args.threads, backends)
    B, T, H, n_in = args.batch, args.time, args.hidden, 3
    rng = np.random.default_rng(0)
    host = {k: v.astype(np.float32) for k, v in RNN(n_in, H).init(0).items()}  # one set of weights
    x = rng.standard_normal((B, T, n_in)).astype(np.float32)
    V = rng.standard_normal((args.probes, B, T, H)).astype(np.float32)
    make = {"torch": _torch_routes, "jax": _jax_routes}
    routes = {}
    for backend in backends:
        for name, fn in make[backend](host, x, V, n_in, H).items():
            routes[(backend, name)] = fn

    print(__doc__.splitlines()[0])
    print(
        f"{_versions(backends)}; B={B} T={T} H={H}, {B * T * H:,} states, {args.probes} probes, "
        f"float32, {args.clock} clock"
    )
    keys = list(routes)
    labels = {key: f"{key[0]}:{key[1]}" for key in keys}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    results = _round_robin({labels[k]: routes[k] for k in keys}, args.repeat, clock)
    print(f"{'backend':<8}{'route':<18}{'median ms/probe':>17}{'best ms/probe':>15}{'rel. diff':>11}")
    for backend, name in keys:
        median, best, out = results[labels[(backend, name)]]
        ref = results[labels[(backend, ROUTES[0])]][2]
        diff = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
        print(
            f"{backend:<8}{name:<18}{1e3 * median / args.probes:>17.2f}"
            f"{1e3 * best / args.probes:>15.2f}{diff:>11.1e}"
        )
    for backend in backends:
        ratio = results[labels[(backend, ROUTES[1])]][0] / results[labels[(backend, ROUTES[0])]][0]
        print(f"RATIO hooks / built-in time ({backend}): {ratio:.2f}x")


if __name__ == "__main__":
    main()
