"""NTK_S V for torch GRUs mapped by ``from_module`` versus the built-in ``kpflow.models.GRU``.

One set of GRU weights, one input, one block of probes; routes, in one run (torch):

- ``built-in GRU``: ``kpflow.models.GRU`` (analytic D_w and step Jacobian), the baseline;
- ``nn.GRUCell``: ``from_module(torch.nn.GRUCell)`` (mapped to the built-in model);
- ``nn.GRU (T, B)``: ``from_module(torch.nn.GRU(batch_first=False))``, x time-major;
- ``user GRU cell``: ``from_module(cell, recurrent=True)`` of a cell module written with six
  ``torch.nn.Linear`` (one per gate and input), run as a hook cell (D_w and the step
  Jacobian by jvp/vjp of the cell's own forward; every site per-unit);
- ``2-layer nn.GRU``: ``from_module(torch.nn.GRU(num_layers=2))``, the layer stack (twice the
  state; each layer's per-unit GRU sites, P the stacked recursion);
- ``2-layer hook cell``: the same two layers written as one user cell module (four
  ``torch.nn.Linear``, state [h¹; h²]) through ``from_module(cell, recurrent=True)``: D_w and
  the step Jacobian by jvp/vjp, the lower layer's sites matrix-free (its D reaches the layer
  above within the step).  The baseline of the 2-layer route, of the same size.

The one-layer routes give the built-in GRU's NTK_S, the 2-layer ones each other's (the table
prints the relative difference to the route's baseline).  Each route is timed ``--repeat``
times after two warm-up calls (the hook cells trace their graphs on the second), in round
robin (benchmarks/_timing.py); the table gives ms per probe (median and best), one RATIO line
per mapped one-layer route (its median over the built-in GRU's), and two for the 2-layer
stack: its median over twice the built-in one-layer GRU's (the work of two layers; ≤ 2 is
the target) and the hook cell's over it.  ``--threads`` (default 1) caps torch's CPU threads.

Run: ``python benchmarks/bench_from_module_gru.py`` (``--quick`` for a smoke run of seconds).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from _timing import timed_round_robin

BASELINE = "built-in GRU"
COMPARED = ("nn.GRUCell", "nn.GRU (T, B)", "user GRU cell")
STACK, STACK_BASELINE = "2-layer nn.GRU", "2-layer hook cell"


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


def _two_layer_cell(gru: Any) -> Any:
    """``gru`` (2 layers) as one user cell module on [h¹; h²], its weights copied."""
    import torch

    n_in, H = gru.input_size, gru.hidden_size

    class TwoLayerGRU(torch.nn.Module):
        """torch's 2-layer GRU step: layer 2 reads layer 1's new h."""

        def __init__(self) -> None:
            super().__init__()
            self.input_size, self.hidden_size = n_in, 2 * H
            sizes = {"ih0": n_in, "hh0": H, "ih1": H, "hh1": H}
            for name, size in sizes.items():
                setattr(self, name, torch.nn.Linear(size, 3 * H, dtype=gru.weight_hh_l0.dtype))

        def forward(self, x: Any, h: Any) -> Any:
            out = []
            for layer in (0, 1):
                prev = h[..., layer * H : (layer + 1) * H]
                gi, gh = getattr(self, f"ih{layer}")(x), getattr(self, f"hh{layer}")(prev)
                r = torch.sigmoid(gi[..., :H] + gh[..., :H])
                z = torch.sigmoid(gi[..., H : 2 * H] + gh[..., H : 2 * H])
                n = torch.tanh(gi[..., 2 * H :] + r * gh[..., 2 * H :])
                x = (1 - z) * n + z * prev
                out.append(x)
            return torch.cat(out, dim=-1)

    cell = TwoLayerGRU()
    with torch.no_grad():
        for layer in (0, 1):
            for side in ("ih", "hh"):
                lin = getattr(cell, f"{side}{layer}")
                lin.weight.copy_(getattr(gru, f"weight_{side}_l{layer}"))
                lin.bias.copy_(getattr(gru, f"bias_{side}_l{layer}"))
    return cell


def _routes(B: int, T: int, H: int, n_in: int, probes: int) -> tuple[dict[str, Any], dict[str, str]]:
    """The timed products and, for each mapped route, the route whose NTK_S it must equal."""
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
    two = torch.nn.GRU(n_in, H, num_layers=2, dtype=dtype)
    model, params = from_module(two, detach=True)
    ntks[STACK] = kpflow.global_ntk(model.run(params, x.transpose(0, 1)))
    model, params = from_module(_two_layer_cell(two), recurrent=True, detach=True)
    ntks[STACK_BASELINE] = kpflow.global_ntk(model.run(params, x))
    V2 = torch.randn(probes, B, T, 2 * H, dtype=dtype)

    def product(name: str) -> Any:
        ntk, probe = ntks[name], (V2 if name in (STACK, STACK_BASELINE) else V)

        def run() -> Any:
            with torch.no_grad():
                return ntk.matmat(probe).numpy()

        return run

    reference = {name: BASELINE for name in ntks} | {STACK: STACK_BASELINE, STACK_BASELINE: STACK_BASELINE}
    return {name: product(name) for name in ntks}, reference


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--time", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="B=2, T=4, H=8, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.time, args.hidden, args.repeat = 2, 4, 8, 1
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    B, T, H, n_in, k = args.batch, args.time, args.hidden, 3, args.probes
    routes, reference = _routes(B, T, H, n_in, k)
    print(__doc__.splitlines()[0])
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); B={B} T={T} H={H}, "
        f"{B * T * H:,} states ({2 * B * T * H:,} for 2 layers), {k} probes, float32"
    )
    results = timed_round_robin(routes, args.repeat, warmups=2)
    print(f"{'route':<19}{'median ms/probe':>17}{'best ms/probe':>15}{'rel. diff':>11}")
    for name, (median, best, out) in results.items():
        ref = results[reference[name]][2]
        diff = f"{np.linalg.norm(out - ref) / np.linalg.norm(ref):.1e}"
        print(f"{name:<19}{1e3 * median / k:>17.2f}{1e3 * best / k:>15.2f}{diff:>11}")
    for name in COMPARED:
        print(f"RATIO {name} / built-in GRU time: {results[name][0] / results[BASELINE][0]:.2f}x")
    per_layer = results[STACK][0] / (2 * results[BASELINE][0])
    print(f"RATIO {STACK} / (2 x built-in GRU) time: {per_layer:.2f}x")
    print(f"RATIO {STACK_BASELINE} / {STACK} time: {results[STACK_BASELINE][0] / results[STACK][0]:.2f}x")


if __name__ == "__main__":
    main()
