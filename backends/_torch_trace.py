"""Once-traced aten graphs of small torch functions (the hook models' Jacobian actions).

:func:`trace` records ``f`` with ``make_fx`` on fake tensors (a Python branch on array
values raises instead of being frozen into the graph) and returns a function that replays
the graph.  :func:`trace_split` also splits the graph at one argument, the tangent: the
operations that do not read it (a step's primal computation) become ``prep`` and the rest
``apply``, so that ``prep`` can run once for every step at once (vmapped) and ``apply`` at
each step reads its slice of the residuals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["trace", "trace_split"]


def _graph(f: Callable, example: tuple) -> Any:
    from torch.fx.experimental.proxy_tensor import make_fx

    fakes = [torch.empty(tuple(a.shape), dtype=a.dtype, device=a.device) for a in example]
    with torch.no_grad():
        gm = make_fx(f, tracing_mode="fake")(*fakes)
    gm.graph.eliminate_dead_code()
    # views recorded for the example's (contiguous) strides become reshapes, which accept any
    # strides (and copy only where a view is impossible): slices of (B, T, ...) arrays go in as
    # they are.  A graph with another stride-bound operation is fed contiguous arrays.
    aten = torch.ops.aten
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in (aten.view.default, aten._unsafe_view.default):
            n.target = aten.reshape.default
    gm.recompile()
    return gm


def _strided(gm: Any) -> bool:
    names = (str(n.target) for n in gm.graph.nodes if n.op == "call_function")
    return any("as_strided" in name or ".view" in name for name in names)


def _runner(gm: Any) -> Callable:
    run = gm.forward  # (no nn.Module call machinery per call)
    if _strided(gm):
        return lambda *arrays: run(*[a.contiguous() for a in arrays])
    return run


def trace(f: Callable, *example: Any) -> Callable:
    """``f`` replayed from its aten graph, for arrays of the shapes, dtypes and device of ``example``."""
    return _runner(_graph(f, example))


def trace_split(f: Callable, *example: Any, tangent: int) -> tuple[Callable, Callable, list[tuple[int, ...]]]:
    """``(prep, apply, shapes)`` with ``f(*a) == apply(a[tangent], *prep(*others))``.

    ``others`` are the arguments but ``a[tangent]``; ``prep`` returns the residuals (the
    values of the operations that do not read the tangent and that the rest reads), of the
    given ``shapes``.  Raises ``ValueError`` for a graph with in-place operations.
    """
    import torch.fx as fx

    gm = _graph(f, example)
    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    output = next(n for n in nodes if n.op == "output")
    reads_tangent: set[Any] = {inputs[tangent]}
    for n in nodes:
        if n.op == "call_function":
            schema = getattr(n.target, "_schema", None)
            if schema is None or schema.is_mutable:
                msg = f"trace_split: operation {n.target} is not a pure aten operation"
                raise ValueError(msg)
            if any(a in reads_tangent for a in n.all_input_nodes):
                reads_tangent.add(n)
        elif n.op not in ("placeholder", "output"):
            msg = f"trace_split: unexpected graph node {n.op}"
            raise ValueError(msg)
    residuals: list[Any] = []
    for n in [*nodes, output]:
        if n in reads_tangent or n.op == "output":
            for a in n.all_input_nodes:
                if a not in reads_tangent and a not in residuals:
                    residuals.append(a)

    prep_graph = fx.Graph()
    env: dict[Any, Any] = {}
    for i, n in enumerate(inputs):
        if i != tangent:
            env[n] = prep_graph.placeholder(n.name)
    for n in nodes:
        if n.op == "call_function" and n not in reads_tangent:
            env[n] = prep_graph.node_copy(n, lambda a: env[a])
    prep_graph.output(tuple(env[r] for r in residuals))
    prep_graph.eliminate_dead_code()

    apply_graph = fx.Graph()
    env2: dict[Any, Any] = {inputs[tangent]: apply_graph.placeholder(inputs[tangent].name)}
    for r in residuals:
        env2[r] = apply_graph.placeholder(f"r_{r.name}")
    for n in nodes:
        if n in reads_tangent and n.op == "call_function":
            env2[n] = apply_graph.node_copy(n, lambda a: env2[a])
    apply_graph.output(fx.graph.map_arg(output.args[0], lambda a: env2[a]))

    prep = fx.GraphModule(gm, prep_graph)
    apply = fx.GraphModule(gm, apply_graph)
    shapes = [tuple(r.meta["val"].shape) for r in residuals]
    return _runner(prep), _runner(apply), shapes
