"""NTK_S V for a tanh RNN written by the user with weight hooks versus the built-in ``RNN``.

The same model, the same weights, the same probes, on torch: the built-in
``kpflow.models.RNN`` applies D_w and the step Jacobians analytically; the user-defined
``kpflow.models.Recurrent`` cell (the step written with ``site(name, a)`` hooks) gets each
D_w and each step Jacobian from jvp/vjp of the user's step.  Both give the same NTK_S (the
script prints the relative difference).  The ratio tells whether the built-in cells could be
rebuilt on hooks "at no cost in speed": they stay analytic while the ratio is well above 1.

Each route is timed ``--repeat`` times after one warm-up call, in round robin (every round
times each route once, so a change of machine load hits both alike); the table gives ms per
probe (median and best) and the ratio hooks / built-in of the medians.

Run: ``python benchmarks/bench_hooks.py`` (``--quick`` for a smoke run of seconds).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from _timing import timed_round_robin  # benchmarks/_timing.py (the script's folder is on sys.path)

import kpflow
from kpflow.models import RNN, Recurrent


def tanh_rnn(params: Any, h: Any, x: Any, site: Any) -> Any:
    """The user's step: h_t = tanh(W_hh h + b_hh + W_ih x + b_ih), every weight through a hook."""
    return torch.tanh(site("weight_hh", h) + site("bias_hh") + site("weight_ih", x) + site("bias_ih"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--time", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="B=4, T=10, H=16, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.time, args.hidden, args.repeat = 4, 10, 16, 2
    B, T, H, n_in = args.batch, args.time, args.hidden, 3
    torch.manual_seed(0)
    builtin = RNN(n_in, H)
    params = builtin.init(0, like=torch.zeros(1, dtype=torch.float32))
    user = Recurrent(tanh_rnn, n_in=n_in, n_hidden=H, param_shapes=builtin.param_shapes())
    x = torch.randn(B, T, n_in)
    V = torch.randn(args.probes, B, T, H)
    ntk_builtin = kpflow.global_ntk(builtin.run(params, x))
    ntk_user = kpflow.global_ntk(user.run(params, x))

    def product(ntk: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return ntk.matmat(V)

        return run

    print(__doc__.splitlines()[0])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={B} T={T} H={H}, "
        f"{B * T * H:,} states, {args.probes} probes, float32"
    )
    results = timed_round_robin(
        {"built-in RNN": product(ntk_builtin), "hooks Recurrent": product(ntk_user)}, args.repeat
    )
    ref = results["built-in RNN"][2]
    print(f"{'route':<18}{'median ms/probe':>17}{'best ms/probe':>15}{'rel. diff':>11}")
    for name, (median, best, out) in results.items():
        diff = float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref))
        print(f"{name:<18}{1e3 * median / args.probes:>17.2f}{1e3 * best / args.probes:>15.2f}{diff:>11.1e}")
    ratio = results["hooks Recurrent"][0] / results["built-in RNN"][0]
    print(f"RATIO hooks / built-in time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
