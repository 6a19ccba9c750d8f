"""The array-API building blocks shared by the built-in cells.

Nonlinearities and their derivatives, the affine map ``a Wᵀ``, and PyTorch's
parameter layout for its recurrent cells (gates stacked along the first axis).
"""

from __future__ import annotations

from typing import Any

from kpflow._array import prod

__all__ = [
    "TORCH_CELL_ORDER",
    "activation",
    "activation_derivative",
    "check_nonlinearity",
    "linear",
    "matmul_last",
    "sigmoid",
]

NONLINEARITIES = ("tanh", "relu")


def check_nonlinearity(nonlinearity: Any, where: str, allowed: tuple[str, ...] = NONLINEARITIES) -> str:
    """Validate a nonlinearity name.

    Examples
    --------
    >>> from kpflow.models.ops import check_nonlinearity
    >>> check_nonlinearity("relu", "RNN")
    'relu'
    """
    if nonlinearity not in allowed:
        msg = f"{where}: expected nonlinearity to be one of {allowed}, got {nonlinearity!r}"
        raise ValueError(msg)
    return str(nonlinearity)


def activation(xp: Any, name: str, u: Any) -> Any:
    """φ(u) for ``name`` in tanh, relu (relu's derivative at 0 is taken as 0 everywhere).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.ops import activation
    >>> activation(xp, "relu", xp.asarray([-1.0, 2.0]))
    Array([0., 2.], dtype=array_api_strict.float64)
    """
    if name == "tanh":
        return xp.tanh(u)
    # where(u > 0, u, 0), not maximum(u, 0): autodiff of maximum splits the tie at u = 0 and
    # gives slope 0.5 there, while the analytic derivative (activation_derivative) is 1[u > 0].
    # With where, every path (forward, torch.func/jax derivatives, analytic D) agrees: φ′(0) = 0,
    # as torch.relu's own gradient.
    return xp.where(u > 0, u, xp.zeros_like(u))


def activation_derivative(xp: Any, name: str, u: Any, y: Any) -> Any:
    """φ′(u) given u and y = φ(u) (tanh: 1 − y², relu: 1[u > 0]).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.ops import activation_derivative
    >>> u = xp.asarray([-1.0, 2.0])
    >>> activation_derivative(xp, "relu", u, u)
    Array([0., 1.], dtype=array_api_strict.float64)
    """
    if name == "tanh":
        return 1.0 - y * y
    return xp.astype(u > 0, y.dtype)


#: matmul_last folds the leading axes of a stack of slices with fewer rows than this ...
FOLD_MAX_ROWS = 256
#: ... when the product has at least this many multiply-adds (the two reshapes cost a few µs).
FOLD_MIN_WORK = 1 << 17


def matmul_last(xp: Any, a: Any, M: Any) -> Any:
    """a M on the last axis of ``a``; a stack of small slices runs as one 2-D GEMM.

    numpy's ``matmul`` loops over the leading axis of a stack and calls BLAS once per slice:
    a probe block (k, B, H) times an H×3H matrix (one GRU step, B = 32) runs about 2.5×
    faster on two threads as one (k·B, H) GEMM.  The leading axes are folded into the rows
    when the slices are small (fewer than ``FOLD_MAX_ROWS`` rows, where per-slice BLAS calls
    are inefficient) and the product is large enough to pay for the reshapes; a stack of
    large slices (the MLP's batch, a whole (B, T) trajectory) stays as it is, as a strided
    slice would be copied by the reshape.  torch and jax fold the axes themselves, so this
    is neutral there.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.ops import matmul_last
    >>> matmul_last(xp, xp.ones((5, 2, 3)), xp.ones((3, 4))).shape
    (5, 2, 4)
    """
    shape = a.shape
    if len(shape) <= 2:
        return a @ M
    rows = prod(shape[:-1])
    if rows // shape[0] >= FOLD_MAX_ROWS or rows * shape[-1] * M.shape[-1] < FOLD_MIN_WORK:
        return a @ M
    out = xp.reshape(a, (rows, shape[-1])) @ M
    return xp.reshape(out, (*shape[:-1], M.shape[-1]))


def linear(xp: Any, a: Any, W: Any) -> Any:
    """a Wᵀ on the last axis of ``a`` (a stack of pre-activations), as one 2-D GEMM.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.ops import linear
    >>> linear(xp, xp.ones((2, 3)), xp.ones((4, 3))).shape
    (2, 4)
    """
    return matmul_last(xp, a, xp.matrix_transpose(W))


def sigmoid(xp: Any, u: Any) -> Any:
    """σ(u) = 1 / (1 + e^{−u}), computed as (1 + tanh(u/2))/2.

    The tanh form never overflows (``1/(1 + exp(-u))`` warns for u ≪ 0) and agrees with
    torch's sigmoid to rounding.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.ops import sigmoid
    >>> sigmoid(xp, xp.asarray([0.0, -1000.0]))
    Array([0.5, 0. ], dtype=array_api_strict.float64)
    """
    return 0.5 + 0.5 * xp.tanh(0.5 * u)


#: The order of a torch cell's parameters (``nn.RNN``, ``nn.GRU``, ``nn.LSTM``): the order of
#: ``param_shapes`` and so of the random draws of ``init``.
TORCH_CELL_ORDER = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
