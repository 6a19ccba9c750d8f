"""The composite operators that the algebra returns, and the constructors that build them.

``A + B`` is a :class:`Sum`, ``c * A`` a :class:`Scaled`, ``A @ B`` a
:class:`Composition`, ``A.T`` an :class:`Adjoint` (unless a structured rule
applies), ``A.reshape`` a :class:`Reshaped`, ``A.gram()`` a :class:`Gram`.
"""

from __future__ import annotations

from typing import Any

from kpflow._array import prod
from kpflow.operators.base import LinearOperator, SymmetricOperator, common_meta, register_derived

__all__ = [
    "Adjoint",
    "Composition",
    "Gram",
    "Reshaped",
    "Scaled",
    "Sum",
    "add",
    "compose",
    "scale",
]


class Adjoint(LinearOperator):
    """The adjoint ``Aᵀ`` of an operator without a structured adjoint rule.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> A = kpflow.Dense(xp.asarray([[1.0, 2.0, 3.0]]))
    >>> kpflow.operators.Adjoint(A).matvec(xp.asarray([2.0]))
    Array([2., 4., 6.], dtype=array_api_strict.float64)
    """

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.shape_out, op.shape_in, xp=op.xp, dtype=op.dtype, device=op.device)
        self.op = op

    def _matmat(self, X: Any) -> Any:
        return self.op._rmatmat(X)

    def _rmatmat(self, Y: Any) -> Any:
        return self.op._matmat(Y)


class Sum(LinearOperator):
    """``A₁ + A₂ + …`` for operators of equal shapes.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> I = kpflow.Identity((2,), like=xp.zeros(1))
    >>> (I + I).todense()
    Array([[2., 0.],
           [0., 2.]], dtype=array_api_strict.float64)
    """

    def __init__(self, terms: list[LinearOperator]) -> None:
        first = terms[0]
        for t in terms[1:]:
            if t.shape_in != first.shape_in or t.shape_out != first.shape_out:
                msg = (
                    "Sum: expected operators of equal shapes, got "
                    f"{first.shape_out}<-{first.shape_in} and {t.shape_out}<-{t.shape_in}"
                )
                raise ValueError(msg)
        super().__init__(first.shape_in, first.shape_out, **common_meta(terms, "Sum"))
        self.terms = tuple(terms)

    def _matmat(self, X: Any) -> Any:
        out = self.terms[0]._matmat(X)
        for t in self.terms[1:]:
            out = out + t._matmat(X)
        return out

    def _rmatmat(self, Y: Any) -> Any:
        out = self.terms[0]._rmatmat(Y)
        for t in self.terms[1:]:
            out = out + t._rmatmat(Y)
        return out


class Scaled(LinearOperator):
    """``c · A`` for a real scalar ``c``.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> (3 * kpflow.Identity((1,), like=xp.zeros(1))).todense()
    Array([[3.]], dtype=array_api_strict.float64)
    """

    def __init__(self, c: float, op: LinearOperator) -> None:
        super().__init__(op.shape_in, op.shape_out, xp=op.xp, dtype=op.dtype, device=op.device)
        self.c = float(c)
        self.op = op

    def _matmat(self, X: Any) -> Any:
        return self.c * self.op._matmat(X)

    def _rmatmat(self, Y: Any) -> Any:
        return self.c * self.op._rmatmat(Y)


class Composition(LinearOperator):
    """``A₁ A₂ ⋯ A_n`` (``A_n`` acts first).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> A = kpflow.Dense(xp.asarray([[1.0, 1.0]]))
    >>> (A @ A.T).todense()
    Array([[2.]], dtype=array_api_strict.float64)
    """

    def __init__(self, factors: list[LinearOperator]) -> None:
        for left, right in zip(factors[:-1], factors[1:], strict=True):
            if left.shape_in != right.shape_out:
                msg = (
                    "Composition: cannot compose an operator with input shape "
                    f"{left.shape_in} after one with output shape {right.shape_out}"
                )
                raise ValueError(msg)
        super().__init__(factors[-1].shape_in, factors[0].shape_out, **common_meta(factors, "Composition"))
        self.factors = tuple(factors)

    def _matmat(self, X: Any) -> Any:
        for f in reversed(self.factors):
            X = f._matmat(X)
        return X

    def _rmatmat(self, Y: Any) -> Any:
        for f in self.factors:
            Y = f._rmatmat(Y)
        return Y


class Reshaped(LinearOperator):
    """The operator ``op`` seen on other tensor shapes with the same sizes.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> I = kpflow.Identity((6,), like=xp.zeros(1))
    >>> I.reshape((2, 3), (3, 2)).shape_out
    (3, 2)
    """

    def __init__(self, op: LinearOperator, shape_in: tuple[int, ...], shape_out: tuple[int, ...]):
        if prod(shape_in) != op.size_in or prod(shape_out) != op.size_out:
            msg = (
                f"{type(op).__name__}.reshape: cannot view an operator of shapes "
                f"{op.shape_out}<-{op.shape_in} as {tuple(shape_out)}<-{tuple(shape_in)}; "
                "the sizes must match"
            )
            raise ValueError(msg)
        super().__init__(shape_in, shape_out, xp=op.xp, dtype=op.dtype, device=op.device)
        self.op = op

    def _matmat(self, X: Any) -> Any:
        xp, k = self.xp, X.shape[0]
        Y = self.op._matmat(xp.reshape(X, (k, *self.op.shape_in)))
        return xp.reshape(Y, (k, *self.shape_out))

    def _rmatmat(self, Y: Any) -> Any:
        xp, k = self.xp, Y.shape[0]
        X = self.op._rmatmat(xp.reshape(Y, (k, *self.op.shape_out)))
        return xp.reshape(X, (k, *self.shape_in))


class Gram(SymmetricOperator):
    """The Gram operator ``A Aᵀ`` on ``A.shape_out``: symmetric positive semi-definite.

    ``factor`` keeps ``A`` so that spectral routines can work on whichever of
    ``A Aᵀ`` and ``Aᵀ A`` is smaller (they share their nonzero spectrum).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> A = kpflow.Dense(xp.asarray([[1.0, 2.0]]))
    >>> A.gram().todense()
    Array([[5.]], dtype=array_api_strict.float64)
    """

    def __init__(self, factor: LinearOperator) -> None:
        super().__init__(
            factor.shape_out, factor.shape_out, xp=factor.xp, dtype=factor.dtype, device=factor.device
        )
        self.factor = factor

    def _matmat(self, X: Any) -> Any:
        return self.factor._matmat(self.factor._rmatmat(X))


def add(*ops: LinearOperator) -> LinearOperator:
    """``A₁ + A₂ + …``, flattening nested sums.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> I = kpflow.Identity((2,), like=xp.zeros(1))
    >>> type(kpflow.operators.add(I, I, I)).__name__, len(kpflow.operators.add(I, I, I).terms)
    ('Sum', 3)
    """
    terms: list[LinearOperator] = []
    for op in ops:
        terms.extend(op.terms if isinstance(op, Sum) else (op,))
    return Sum(terms)


def scale(c: float, op: LinearOperator) -> LinearOperator:
    """``c · A``, folding nested scalings.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> S = kpflow.operators.scale(2.0, kpflow.operators.scale(3.0, kpflow.Identity((1,), like=xp.zeros(1))))
    >>> S.c
    6.0
    """
    if isinstance(op, Scaled):
        return Scaled(c * op.c, op.op)
    return Scaled(c, op)


def compose(*ops: LinearOperator) -> LinearOperator:
    """``A₁ A₂ ⋯`` (the last acts first), flattening nested compositions.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> A = kpflow.Diagonal(xp.asarray([2.0, 3.0]))
    >>> kpflow.operators.compose(A, A).matvec(xp.ones(2))
    Array([4., 9.], dtype=array_api_strict.float64)
    """
    factors: list[LinearOperator] = []
    for op in ops:
        factors.extend(op.factors if isinstance(op, Composition) else (op,))
    return Composition(factors)


register_derived(compose=compose, add=add, scale=scale)
