"""Saved linear maps inside the linearised forward: a norm's Jacobian with a cheap second derivative.

In the saved linearisation (first derivatives at eps = 0 only) a LayerNorm / RMSNorm call
is replaced by y(x₀) + J (x − x₀), with J its Jacobian at the call's input x₀.  J runs as a
:class:`SavedLinear` node: its backward is Jᵀ, itself a :class:`SavedLinear` node whose
backward is J, so a product's backward (Jᵀ) and double backward (J) each apply one saved
map.  Through the norm's own autograd node the double backward is the derivative of the
norm's backward formula (a chain of a dozen elementwise passes, ~6x one application).

J of a norm is γ ⊙ C with C symmetric (per row of n units, x̂ = the normalised input)

- LayerNorm: C u = rstd (u − mean(u) − x̂ mean(x̂ u)), the input gradient of torch's fused
  layer-norm backward with no weight, so J u = γ ⊙ C u and Jᵀ g = C (γ ⊙ g);
- RMSNorm: C u = rstd (u − x̂ mean(x̂ u)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["SavedLinear", "linearised_norm", "tangent_line"]


class SavedLinear(torch.autograd.Function):
    """u ↦ J u for a linear map J given with its adjoint; backward is Jᵀ, its backward J again.

    Examples
    --------
    >>> import torch
    >>> from kpflow.backends._torch_graph_linear import SavedLinear
    >>> M = torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=torch.float64)
    >>> u = torch.ones(2, dtype=torch.float64, requires_grad=True)
    >>> y = SavedLinear.apply(u, lambda v: M @ v, lambda g: M.T @ g)
    >>> torch.autograd.grad(y, u, torch.tensor([1.0, 1.0], dtype=torch.float64))[0]
    tensor([1., 5.], dtype=torch.float64)
    """

    @staticmethod
    def forward(ctx: Any, u: Any, apply: Callable, adjoint: Callable) -> Any:
        ctx.maps = (apply, adjoint)
        return apply(u)

    @staticmethod
    def backward(ctx: Any, g: Any) -> tuple[Any, None, None]:
        apply, adjoint = ctx.maps
        return SavedLinear.apply(g, adjoint, apply), None, None


class _TangentLine(torch.autograd.Function):
    """x ↦ y₀ + J (x − x₀), evaluated at x = x₀ only: its value y₀, its backward Jᵀ."""

    @staticmethod
    def forward(ctx: Any, x: Any, y0: Any, apply: Callable, adjoint: Callable) -> Any:
        ctx.maps = (apply, adjoint)
        return y0.clone()

    @staticmethod
    def backward(ctx: Any, g: Any) -> tuple[Any, None, None, None]:
        apply, adjoint = ctx.maps
        return SavedLinear.apply(g, adjoint, apply), None, None, None


def tangent_line(x: Any, y0: Any, apply: Callable, adjoint: Callable) -> Any:
    """y₀ + J (x − x₀) at x = x₀ (one node: its backward Jᵀ, its double backward J).

    Examples
    --------
    >>> import torch
    >>> from kpflow.backends._torch_graph_linear import tangent_line
    >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    >>> d = 2 * x.detach()  # (x²)' at x₀
    >>> y = tangent_line(x, x.detach() ** 2, lambda u: d * u, lambda g: d * g)
    >>> y.detach(), torch.autograd.grad(y.sum(), x)[0]
    (tensor([1., 4.], dtype=torch.float64), tensor([2., 4.], dtype=torch.float64))
    """
    return _TangentLine.apply(x, y0, apply, adjoint)


def linearised_norm(norm: Any, x: Any, out: Any) -> Any:
    """A LayerNorm / RMSNorm call's output linearised at its input: y(x₀) + J (x − x₀).

    None when the call is not one to linearise (no graph to x, or not a norm over the
    last axis).
    """
    if not isinstance(x, torch.Tensor) or not x.requires_grad or out.shape != x.shape:
        return None
    if len(norm.normalized_shape) != 1:
        return None
    x0 = x.detach()
    gamma = None if norm.weight is None else norm.weight.detach()
    if isinstance(norm, torch.nn.LayerNorm):
        apply, adjoint = _layer_norm_maps(norm, x0, gamma)
    else:
        apply, adjoint = _rms_norm_maps(norm, x0, gamma)
    return tangent_line(x, out.detach(), apply, adjoint)


def _layer_norm_maps(norm: Any, x0: Any, gamma: Any) -> tuple[Callable, Callable]:
    shape = list(norm.normalized_shape)
    x0 = x0.contiguous()
    _, mean, rstd = torch.native_layer_norm(x0, shape, None, None, norm.eps)
    mask = [True, False, False]

    def C(u: Any, weight: Any = None) -> Any:
        backward = torch.ops.aten.native_layer_norm_backward
        return backward(u.contiguous(), x0, shape, mean, rstd, weight, None, mask)[0]

    if gamma is None:
        return C, C
    return (lambda u: gamma * C(u)), (lambda g: C(g, gamma))


def _rms_norm_maps(norm: Any, x0: Any, gamma: Any) -> tuple[Callable, Callable]:
    eps = torch.finfo(x0.dtype).eps if norm.eps is None else norm.eps
    rstd = torch.rsqrt(torch.mean(x0 * x0, dim=-1, keepdim=True) + eps)
    xhat = x0 * rstd

    def C(u: Any) -> Any:
        return rstd * (u - xhat * torch.mean(xhat * u, dim=-1, keepdim=True))

    if gamma is None:
        return C, C
    return (lambda u: gamma * C(u)), (lambda g: C(gamma * g))
