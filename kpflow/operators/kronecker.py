"""The Kronecker (tensor) product of operators on tensor domains.

``Kronecker(A, B)`` acts on tensors of shape ``(*A.shape_in, *B.shape_in)``:
``(A ⊗ B)(X) = A X Bᵀ`` in tensor form, i.e. ``A`` acts on the leading axes
and ``B`` on the trailing ones.  Its matrix is ``kron(todense(A), todense(B))``
with row-major flattening.  The exact rules here keep the structure:
``(A⊗B)ᵀ = Aᵀ⊗Bᵀ``, ``Tr_axes(A⊗B) = Tr_{axes∩A}(A) ⊗ Tr_{axes∩B}(B)``,
``(A⊗B)(A⊗B)ᵀ = AAᵀ ⊗ BBᵀ``, and ``todense`` multiplies the factors' matrices.
"""

from __future__ import annotations

from typing import Any

from kpflow._array import prod
from kpflow.operators.algebra import scale
from kpflow.operators.base import LinearOperator, common_meta
from kpflow.operators.basic import Dense
from kpflow.operators.functions import (
    _partial_trace,
    adjoint,
    gram,
    is_symmetric,
    todense,
)

__all__ = ["Kronecker", "kron"]


class Kronecker(LinearOperator):
    """The tensor product ``A ⊗ B``; shapes concatenate, ``A`` acts on the leading axes.

    Parameters
    ----------
    A, B : LinearOperator
        The factors, of one namespace, dtype and device.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> A = kpflow.Dense(xp.asarray([[1.0, 2.0], [0.0, 1.0]]))
    >>> B = kpflow.Diagonal(xp.asarray([1.0, 10.0, 100.0]))
    >>> K = kpflow.Kronecker(A, B)
    >>> K.shape_in
    (2, 3)
    >>> K.matvec(xp.ones((2, 3)))
    Array([[  3.,  30., 300.],
           [  1.,  10., 100.]], dtype=array_api_strict.float64)
    """

    def __init__(self, A: LinearOperator, B: LinearOperator) -> None:
        for name, f in (("A", A), ("B", B)):
            if not isinstance(f, LinearOperator):
                msg = f"Kronecker: expected {name} to be a LinearOperator, got {type(f).__name__}"
                raise TypeError(msg)
        super().__init__(
            A.shape_in + B.shape_in,
            A.shape_out + B.shape_out,
            **common_meta([A, B], "Kronecker"),
        )
        self.A = A
        self.B = B

    def _apply(self, X: Any, fa: Any, fb: Any, a_in: tuple, a_out: tuple, b_in: tuple, b_out: tuple) -> Any:
        xp = self.xp
        k = X.shape[0]
        na_in, nb_out = prod(a_in), prod(b_out)
        # B on the trailing axes: (k·|a_in|, *b_in) -> (k·|a_in|, *b_out)
        Y = fb(xp.reshape(X, (k * na_in, *b_in)))
        # A on the leading axes: bring them last, then first of a fresh probe block.
        Y = xp.reshape(Y, (k, na_in, nb_out))
        Y = xp.reshape(xp.permute_dims(Y, (0, 2, 1)), (k * nb_out, *a_in))
        Y = xp.reshape(fa(Y), (k, nb_out, prod(a_out)))
        Y = xp.permute_dims(Y, (0, 2, 1))
        return xp.reshape(Y, (k, *a_out, *b_out))

    def _matmat(self, X: Any) -> Any:
        A, B = self.A, self.B
        return self._apply(X, A._matmat, B._matmat, A.shape_in, A.shape_out, B.shape_in, B.shape_out)

    def _rmatmat(self, Y: Any) -> Any:
        A, B = self.A, self.B
        return self._apply(Y, A._rmatmat, B._rmatmat, A.shape_out, A.shape_in, B.shape_out, B.shape_in)


def kron(*factors: Any) -> LinearOperator:
    """``F₁ ⊗ F₂ ⊗ …`` of operators or 2-D arrays (arrays become :class:`Dense`).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> K = kpflow.kron(xp.asarray([[0.0, 1.0], [1.0, 0.0]]), xp.asarray([[2.0]]))
    >>> K.todense()
    Array([[[[0.],
             [2.]]],
    <BLANKLINE>
    <BLANKLINE>
           [[[2.],
             [0.]]]], dtype=array_api_strict.float64)
    """
    if not factors:
        msg = "kron: expected at least one factor, got none"
        raise ValueError(msg)
    ops = [f if isinstance(f, LinearOperator) else Dense(f) for f in factors]
    out = ops[0]
    for f in ops[1:]:
        out = Kronecker(out, f)
    return out


@todense.register
def _(op: Kronecker) -> Any:
    xp = op.xp
    A, B = op.A, op.B
    a = xp.reshape(todense(A, max_size=None), (A.size_out, A.size_in))
    b = xp.reshape(todense(B, max_size=None), (B.size_out, B.size_in))
    full = a[:, None, :, None] * b[None, :, None, :]
    return xp.reshape(full, (*op.shape_out, *op.shape_in))


@adjoint.register
def _(op: Kronecker) -> LinearOperator:
    return Kronecker(adjoint(op.A), adjoint(op.B))


@gram.register
def _(op: Kronecker) -> LinearOperator:
    return Kronecker(gram(op.A), gram(op.B))


@is_symmetric.register
def _(op: Kronecker) -> bool:
    return is_symmetric(op.A) and is_symmetric(op.B)


def _factor_trace(op: LinearOperator, traced: tuple[int, ...]) -> LinearOperator | float:
    """Partial trace of one factor; a fully traced factor becomes its trace, a float."""
    if traced and len(traced) == len(op.shape_in):
        one_by_one = _partial_trace(op, traced)  # the 1×1 operator holding tr(op)
        return float(op.xp.reshape(todense(one_by_one), ()))
    return _partial_trace(op, traced)


@_partial_trace.register
def _(op: Kronecker, traced: tuple[int, ...]) -> LinearOperator:
    if not traced:
        return op
    na = len(op.A.shape_in)
    A = _factor_trace(op.A, tuple(a for a in traced if a < na))
    B = _factor_trace(op.B, tuple(a - na for a in traced if a >= na))
    if isinstance(A, LinearOperator) and isinstance(B, LinearOperator):
        return Kronecker(A, B)
    if isinstance(A, LinearOperator):
        return scale(float(B), A)  # type: ignore[arg-type]
    if isinstance(B, LinearOperator):
        return scale(A, B)
    total = op.xp.asarray(A * B, dtype=op.dtype, device=op.device)
    return Dense(op.xp.reshape(total, ()), shape_in=())
