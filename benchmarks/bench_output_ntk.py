"""The dense output NTK of an MLP: kpflow's ``output_ntk(...).todense()`` versus the torch.func recipe.

The model: ``torch.nn.Sequential(Linear(10, 128), Tanh, Linear(128, 128), Tanh, Linear(128, 1))``
over 64 inputs, in float64.  Routes, timed in one run on the same weights and inputs:

- ``kpflow``: ``kpflow.output_ntk(MLP((10, 128, 128), linear_output=False).run(params, x),
  readout).todense()``, the run included (kpflow/ntk/output_gram.py: the Gram of Jᵀ on the
  unit outputs, no forward recursion);
- ``torch.func``: the recipe of PyTorch's "Neural Tangent Kernels" tutorial,
  ``vmap(jacrev(f))`` over the inputs, then one ``einsum`` per parameter, summed;
- ``kpflow products``: NTK_out applied to every unit output (BPTT, K, the forward
  recursion; the generic ``todense`` rule), for reference.

``--model transformer`` times a transformer instead: ``TransformerEncoder(d_model=32,
n_heads=2, d_ff=64, n_layers=2, positional="learned", final_norm=True)`` over 4 sequences of
16 tokens, a readout of one output on every residual-stream state, float64.  Its sites are
tokens (one row of A_w per (b, n)), the learned positions a site of site variable onehot(n);
it has no torch.func row (the readout reads every block's state, not only the module's
output), so its routes are ``kpflow`` and ``kpflow products``, and the ratio is kpflow /
kpflow products.

Each route is timed ``--repeat`` times after one warm-up call, in round robin
(benchmarks/_timing.py); the table gives the median and best ms and the relative difference
to the reference (torch.func; for the transformer, the products route); the last line is the
ratio of the medians (below 1: kpflow is faster).  ``--threads`` (default 1) caps torch's
CPU threads.

Run: ``python benchmarks/bench_output_ntk.py [--model transformer]`` (``--quick`` for a
smoke run of seconds).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from _timing import timed_round_robin

ROUTES = ("kpflow", "torch.func", "kpflow products")
TRANSFORMER_ROUTES = ("kpflow", "kpflow products")


def _routes(n_in: int, width: int, n_out: int, batch: int) -> dict[str, Any]:
    import torch
    from torch.func import functional_call, jacrev, vmap

    import kpflow
    from kpflow.models import MLP
    from kpflow.operators import LinearOperator, todense

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(n_in, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, n_out),
    ).to(torch.float64)
    x = torch.randn(batch, n_in, dtype=torch.float64)
    theta = {k: v.detach() for k, v in net.named_parameters()}
    params = {f"layers.{i}.{k}": theta[f"{2 * i}.{k}"] for i in range(2) for k in ("weight", "bias")}
    readout = {k: theta[f"4.{k}"] for k in ("weight", "bias")}
    model = MLP((n_in, width, width), linear_output=False)

    def kpflow_route() -> Any:
        return kpflow.output_ntk(model.run(params, x), readout).todense().reshape(batch * n_out, -1)

    def products_route() -> Any:
        N = kpflow.output_ntk(model.run(params, x), readout)
        return todense.dispatch(LinearOperator)(N).reshape(batch * n_out, -1)

    def one(p: dict[str, Any], xi: Any) -> Any:
        return functional_call(net, p, (xi[None, :],))[0]

    def recipe() -> Any:
        jac = vmap(jacrev(one), (None, 0))(theta, x)
        flat = [j.flatten(2) for j in jac.values()]
        ntk = torch.stack([torch.einsum("Naf,Mbf->NaMb", j, j) for j in flat]).sum(0)
        return ntk.reshape(batch * n_out, -1)

    return {ROUTES[0]: kpflow_route, ROUTES[1]: recipe, ROUTES[2]: products_route}


def _transformer_routes(d: int, n_layers: int, batch: int, tokens: int) -> dict[str, Any]:
    import torch

    import kpflow
    from kpflow.models import Linear, TransformerEncoder
    from kpflow.operators import LinearOperator, todense

    torch.manual_seed(0)
    model = TransformerEncoder(d, 2, 2 * d, n_layers, positional="learned", max_len=tokens, final_norm=True)
    like = torch.zeros(1, dtype=torch.float64)
    params = model.init(0, like=like)
    readout = Linear(d, 1).init(1, like=like)
    x = torch.randn(batch, tokens, d, dtype=torch.float64)

    def kpflow_route() -> Any:
        N = kpflow.output_ntk(model.run(params, x), readout)
        return N.todense().reshape(N.size_in, -1)

    def products_route() -> Any:
        N = kpflow.output_ntk(model.run(params, x), readout)
        return todense.dispatch(LinearOperator)(N).reshape(N.size_in, -1)

    return {TRANSFORMER_ROUTES[0]: kpflow_route, TRANSFORMER_ROUTES[1]: products_route}


def _table(results: dict[str, tuple[float, float, Any]], names: tuple[str, ...], reference: str) -> None:
    ref = results[reference][2].numpy()
    print(f"{'route':<18}{'median ms':>11}{'best ms':>10}{'rel. diff':>11}")
    for name in names:
        median, best, out = results[name]
        diff = float(np.linalg.norm(out.numpy() - ref) / np.linalg.norm(ref))
        print(f"{name:<18}{1e3 * median:>11.2f}{1e3 * best:>10.2f}{diff:>11.1e}")
    ratio = results[names[0]][0] / results[reference][0]
    print(f"RATIO {names[0]} / {reference} time: {ratio:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--model", choices=("mlp", "transformer"), default="mlp")
    parser.add_argument("--quick", action="store_true", help="width 16, batch 8, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.width, args.repeat = 8, 16, 2
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.model == "transformer":
        d, n_layers, batch, tokens = (8, 1, 2, 4) if args.quick else (32, 2, 4, 16)
        print(__doc__.splitlines()[0])
        print(
            f"torch {torch.__version__} ({torch.get_num_threads()} threads); TransformerEncoder d={d}, "
            f"{n_layers} layers, learned positions, {batch} sequences of {tokens} tokens, float64"
        )
        results = timed_round_robin(_transformer_routes(d, n_layers, batch, tokens), args.repeat)
        _table(results, TRANSFORMER_ROUTES, TRANSFORMER_ROUTES[1])
        return
    n_in, n_out = 10, 1
    routes = _routes(n_in, args.width, n_out, args.batch)
    print(__doc__.splitlines()[0])
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); MLP {n_in}->{args.width}->"
        f"{args.width}->{n_out} over {args.batch} inputs, float64"
    )
    _table(timed_round_robin(routes, args.repeat), ROUTES, ROUTES[1])


if __name__ == "__main__":
    main()
