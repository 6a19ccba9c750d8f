"""The torch adapter: array-api-compat's torch namespace and ``torch.func`` autodiff.

torch is imported only when this module is imported, which kpflow does only
when it meets a torch tensor or is asked for this backend by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from kpflow.backends._base import Backend

__all__ = ["TorchBackend", "adapter", "from_module"]


def _match_dtype(tangents: tuple, primals: tuple) -> tuple:
    return tuple(t.to(p.dtype) if t.dtype != p.dtype else t for t, p in zip(tangents, primals, strict=True))


class TorchBackend(Backend):
    """torch tensors on any device, with ``torch.func`` transforms.

    ``jit`` returns the function unchanged: kpflow runs torch eagerly, where
    ``torch.func`` transforms compose without recompilation.  ``no_grad`` is
    ``torch.no_grad()``; random numbers come from a ``torch.Generator`` on the
    target device, seeded from the host.

    Examples
    --------
    >>> import torch
    >>> from kpflow.backends.torch import adapter
    >>> out, tangent = adapter.jvp(torch.sin, (torch.zeros(2, dtype=torch.float64),),
    ...                            (torch.ones(2, dtype=torch.float64),))
    >>> tangent
    tensor([1., 1.], dtype=torch.float64)
    """

    name = "torch"
    has_autodiff = True
    traces = True

    def owns(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor)

    def namespace(self) -> Any:
        import array_api_compat.torch

        return array_api_compat.torch

    def no_grad(self) -> Any:
        return torch.no_grad()

    def is_accelerator(self, device: Any) -> bool:
        return torch.device(device).type != "cpu"

    def records_graph(self, arrays: tuple) -> bool:
        grads = (isinstance(a, torch.Tensor) and a.requires_grad for a in arrays)
        return torch.is_grad_enabled() and any(grads)

    def graph_free(self, x: Any) -> Any:
        return x.detach() if isinstance(x, torch.Tensor) else x

    def recomputed(self, fn: Callable[..., Any], *arrays: Any) -> Any:
        if not self.records_graph(arrays):
            return fn(*arrays)
        # (torch.utils.checkpoint would do, but its first call costs ~75 MB of resident memory)
        _refuse_functorch(arrays)
        out = _Recomputed.apply(fn, *arrays)
        return out[0] if len(out) == 1 else out

    def attach_vjp(self, value: Any, inputs: dict[str, Any], vjp: Callable[[Any], dict[str, Any]]) -> Any:
        names = tuple(inputs)
        _refuse_functorch(tuple(inputs.values()))
        return _GivenVjp.apply(vjp, names, value.detach(), *(inputs[n] for n in names))

    def custom_vjp(self, fn: Callable, vjp: Callable, *, where: str) -> Callable:
        return lambda *arrays: _CustomVjp.apply(fn, vjp, *arrays)

    def for_products(self, operands: tuple) -> tuple:
        if torch.is_grad_enabled():
            return operands
        return _detached(operands)

    def _generator(self, seed: int, device: Any) -> Any:
        gen = torch.Generator(device=torch.device("cpu") if device is None else device)
        return gen.manual_seed(int(seed))

    def random_normal(self, seed: int, shape: tuple[int, ...], *, dtype: Any, device: Any = None) -> Any:
        # A generator on the target device draws there: no host sample, no copy.
        gen = self._generator(seed, device)
        return torch.randn(tuple(shape), generator=gen, dtype=dtype, device=gen.device)

    def random_rademacher(self, seed: int, shape: tuple[int, ...], *, dtype: Any, device: Any = None) -> Any:
        gen = self._generator(seed, device)
        bits = torch.randint(0, 2, tuple(shape), generator=gen, dtype=dtype, device=gen.device)
        return 2 * bits - 1

    def jvp(self, f: Callable, primals: tuple, tangents: tuple) -> tuple[Any, Any]:
        # torch accepts mismatched tangent dtypes silently; kpflow makes them match.
        result = torch.func.jvp(f, tuple(primals), _match_dtype(tuple(tangents), tuple(primals)))
        return result[0], result[1]

    def vjp(self, f: Callable, *primals: Any) -> tuple[Any, Callable]:
        result = torch.func.vjp(f, *primals)
        return result[0], result[1]

    def vmap(self, f: Callable, in_axes: Any = 0, out_axes: Any = 0) -> Callable:
        return torch.func.vmap(f, in_dims=in_axes, out_dims=out_axes)

    def jacrev(self, f: Callable, argnums: int | tuple[int, ...] = 0) -> Callable:
        return torch.func.jacrev(f, argnums=argnums)

    def trace(self, f: Callable, *example: Any) -> Callable:
        from kpflow.backends._torch_trace import trace

        return trace(f, *example)

    def trace_split(self, f: Callable, *example: Any, tangent: int) -> tuple[Callable, Callable, list]:
        from kpflow.backends._torch_trace import trace_split

        return trace_split(f, *example, tangent=tangent)


def _refuse_functorch(arrays: tuple) -> None:
    """A clear error where torch.func cannot go: through a model's run in the parameters."""
    if not any(
        isinstance(a, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(a) for a in arrays
    ):
        return
    msg = (
        "kpflow: a model's run (its states and the operators built on them) cannot be "
        "differentiated with respect to its parameters inside torch.func transforms (grad, vjp, "
        "jacrev): its steps are torch.autograd.Function nodes without "
        "functorch rules. Use torch.autograd instead (parameters with requires_grad=True, then "
        "loss.backward() or torch.autograd.grad); products of a built operator, op.matvec(v), "
        "work inside torch.func.vmap, grad and jvp in v"
    )
    raise NotImplementedError(msg)


class _GivenVjp(torch.autograd.Function):
    """One autograd node: forward returns the given graph-free value, backward calls the given vjp."""

    @staticmethod
    def forward(ctx: Any, vjp: Callable, names: tuple, value: Any, *inputs: Any) -> Any:
        ctx.vjp, ctx.names = vjp, names
        return value.view_as(value)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Any) -> tuple:
        grads = ctx.vjp(g)
        return (None, None, None, *(grads[n] for n in ctx.names))


class _CustomVjp(torch.autograd.Function):
    """``fn(*arrays)`` run without a graph, whose backward is ``vjp(arrays, out, g)`` (torch.func too)."""

    @staticmethod
    def forward(fn: Callable, vjp: Callable, *arrays: Any) -> Any:
        return fn(*arrays)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        ctx.vjp = inputs[1]
        ctx.save_for_backward(*inputs[2:], output)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Any) -> tuple:
        *arrays, out = ctx.saved_tensors
        return (None, None, *ctx.vjp(tuple(arrays), out, g))


class _Recomputed(torch.autograd.Function):
    """``fn(*inputs)`` (a tensor or a tuple of tensors) whose backward runs ``fn`` again under autograd."""

    @staticmethod
    def forward(ctx: Any, fn: Callable, *inputs: Any) -> Any:
        ctx.fn = fn
        ctx.save_for_backward(*inputs)
        out = fn(*inputs)
        return tuple(out) if isinstance(out, tuple | list) else (out,)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *grads: Any) -> tuple:
        inputs = tuple(t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors)
        with torch.enable_grad():
            out = ctx.fn(*inputs)
        out = tuple(out) if isinstance(out, tuple | list) else (out,)
        pairs = [(o, g) for o, g in zip(out, grads, strict=True) if g is not None and o.requires_grad]
        wanted = [t for t in inputs if t.requires_grad]
        found: tuple = (None,) * len(wanted)
        if pairs and wanted:
            outs, gs = zip(*pairs, strict=True)
            found = torch.autograd.grad(outs, wanted, gs, allow_unused=True)
        by_input = iter(found)
        return (None, *(next(by_input) if t.requires_grad else None for t in inputs))


def _detached(tree: Any) -> Any:
    """Tensors in a tuple tree as detached views (same storage, no autograd history)."""
    if isinstance(tree, tuple):
        return tuple(_detached(t) for t in tree)
    if isinstance(tree, torch.Tensor) and tree.requires_grad:
        return tree.detach()
    return tree


adapter = TorchBackend()


# -- torch.nn modules: see kpflow.backends._torch_modules ------------------------------------------
from kpflow.backends._torch_modules import from_module  # noqa: E402  (after the adapter)
