"""NTK_S V for torch GRUs mapped by ``from_module`` versus the built-in ``kpflow.models.GRU``.

One set of GRU weights, one input, one block of probes; routes, in one run (torch):

- ``built-in GRU``: ``kpflow.models.GRU`` (analytic D_w and step Jacobian), the baseline;
- ``nn.GRUCell``: ``from_module(torch.nn.GRUCell)`` (mapped to the built-in model);
- ``nn.GRU (T, B)``: ``from_module(torch.nn.GRU(batch_first=False))``, x time-major;
- ``user GRU cell``: ``from_module(cell, recurrent=True)`` of a cell module written with six
  ``torch.nn.Linear`` (one per gate and input), run as a hook cell (D_w and the step
  Jacobian by jvp/vjp of the cell's own forward; every site per-unit);
- ``2-layer nn.GRU``: ``from_module(torch.nn.GRU(num_layers=2))`` (the layer stack, twice the
  state), for scale only: no baseline of the same size exists (left out by ``--quick``).

All give the same NTK_S (the table prints the relative difference to the built-in one; the
2-layer route is compared on nothing).  Each route is timed ``--repeat`` times after two
warm-up calls (the hook cells trace their graphs on the second), in round robin
(benchmarks/_timing.py); the table gives ms per probe (median and best), and one RATIO line
per mapped route: its median over the built-in GRU's.  ``--threads`` (default 1) caps torch's
CPU threads.

Run: ``python benchmarks/bench_from_module_gru.py`` (``--quick`` for a smoke run of seconds).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from _timing import timed_round_robin

BASELINE = "built-in GRU"
COMPARED = ("nn.GRUCell", "nn.GRU (T, B)", "user GRU cell")


def _user_cell(n_in: int, H: int, dtype: Any) -> Any:
    import torch

    class GRUCellModule(torch.nn.Module):
        """torch's GRU equations, one nn.Linear per gate and input."""

        def __init__(self) -> None:
            super().__init__()
            self.input_size, self.hidden_size = n_in, H
            self.x_r, self.x_z, self.x_n = (torch.nn.Linear(n_in, H, dtype=dtype) for _ in range(3))
            self.h_r, self.h_z, self.h_n = (torch.nn.Linear(H, H, dtype=dtype) for _ in range(3))

        def forward(self, x: Any, h: Any) -> Any:
            r = torch.sigmoid(self.x_r(x) + self.h_r(h))
            z = torch.sigmoid(self.x_z(x) + self.h_z(h))
            n = torch.tanh(self.x_n(x) + r * self.h_n(h))
            return (1 - z) * n + z * h

    return GRUCellModule()


def _routes(B: int, T: int, H: int, n_in: int, probes: int, deep: bool) -> dict[str, Any]:
    import torch
    from kpflow.backends.torch import from_module

    import kpflow
    from kpflow.models import GRU

    dtype = torch.float32
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(n_in, H, dtype=dtype)
    gru = torch.nn.GRU(n_in, H, dtype=dtype)  # batch_first=False
    user = _user_cell(n_in, H, dtype)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(gru, f"{name}_l0").copy_(getattr(cell, name))
        for g, gate in enumerate("rzn"):
            rows = slice(g * H, (g + 1) * H)
            for side, suffix in (("x", "ih"), ("h", "hh")):
                lin = getattr(user, f"{side}_{gate}")
                lin.weight.copy_(getattr(cell, f"weight_{suffix}")[rows])
                lin.bias.copy_(getattr(cell, f"bias_{suffix}")[rows])
    x = torch.randn(B, T, n_in, dtype=dtype)
    V = torch.randn(probes, B, T, H, dtype=dtype)
    builtin_params = {k: v.detach() for k, v in cell.named_parameters()}
    ntks = {BASELINE: kpflow.global_ntk(GRU(n_in, H).run(builtin_params, x))}
    model, params = from_module(cell, detach=True)
    ntks["nn.GRUCell"] = kpflow.global_ntk(model.run(params, x))
    model, params = from_module(gru, detach=True)
    ntks["nn.GRU (T, B)"] = kpflow.global_ntk(model.run(params, x.transpose(0, 1)))
    model, params = from_module(user, recurrent=True, detach=True)
    ntks["user GRU cell"] = kpflow.global_ntk(model.run(params, x))
    if deep:
        two = torch.nn.GRU(n_in, H, num_layers=2, dtype=dtype)
        model, params = from_module(two, detach=True)
        ntks["2-layer nn.GRU"] = kpflow.global_ntk(model.run(params, x.transpose(0, 1)))
    V2 = torch.randn(probes, B, T, 2 * H, dtype=dtype)

    def product(name: str) -> Any:
        ntk, probe = ntks[name], (V2 if name == "2-layer nn.GRU" else V)

        def run() -> Any:
            with torch.no_grad():
                return ntk.matmat(probe).numpy()

        return run

    return {name: product(name) for name in ntks}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--time", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="B=2, T=4, H=8, 1 repeat, no 2-layer route")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.time, args.hidden, args.repeat = 2, 4, 8, 1
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    B, T, H, n_in, k = args.batch, args.time, args.hidden, 3, args.probes
    routes = _routes(B, T, H, n_in, k, deep=not args.quick)
    print(__doc__.splitlines()[0])
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); B={B} T={T} H={H}, "
        f"{B * T * H:,} states, {k} probes, float32"
    )
    results = timed_round_robin(routes, args.repeat, warmups=2)
    ref = results[BASELINE][2]
    print(f"{'route':<17}{'median ms/probe':>17}{'best ms/probe':>15}{'rel. diff':>11}")
    for name, (median, best, out) in results.items():
        diff = "-" if out.shape != ref.shape else f"{np.linalg.norm(out - ref) / np.linalg.norm(ref):.1e}"
        print(f"{name:<17}{1e3 * median / k:>17.2f}{1e3 * best / k:>15.2f}{diff:>11}")
    for name in COMPARED:
        print(f"RATIO {name} / built-in GRU time: {results[name][0] / results[BASELINE][0]:.2f}x")


if __name__ == "__main__":
    main()
