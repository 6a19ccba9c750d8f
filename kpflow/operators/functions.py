"""Derived operations on operators, as single-dispatch functions.

Each function has a generic, always-correct implementation built from
``matmat``/``rmatmat``, and exact structured rules registered for the types
that allow them.  A downstream library adds a rule for its own operator with
``kpflow.operators.todense.register(MyOperator)`` and so on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, cast

from kpflow._array import as_shape, prod
from kpflow.operators.algebra import Adjoint, Composition, Gram, Reshaped, Scaled, Sum, add, scale
from kpflow.operators.base import DEFAULT_MAX_DENSE_SIZE, LinearOperator, SymmetricOperator, register_derived
from kpflow.operators.basic import Dense, Diagonal, Identity, Projector

__all__ = [
    "DEFAULT_MAX_DENSE_SIZE",
    "adjoint",
    "check_dense_size",
    "gram",
    "is_symmetric",
    "partial_trace",
    "reshape",
    "todense",
]


def _eye_probes(op: LinearOperator, shape: tuple[int, ...]) -> Any:
    n = prod(shape)
    eye = op.xp.eye(n, dtype=op.dtype, device=op.device)
    return op.xp.reshape(eye, (n, *shape))


# -- todense -----------------------------------------------------------------------------------
def check_dense_size(op: LinearOperator, max_size: Any, where: str) -> None:
    """Refuse to densify ``op`` when its matrix has more than ``max_size`` entries (``None``: no limit).

    Raises
    ------
    ValueError
        For a matrix larger than ``max_size``, with its size in entries and bytes and what to
        do instead; for a ``max_size`` that is not a positive int or ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> import kpflow
    >>> from kpflow.operators.functions import check_dense_size
    >>> check_dense_size(kpflow.Diagonal(np.ones(3000)), None, "f")
    >>> check_dense_size(kpflow.Diagonal(np.ones(3000)), 10**6, "f")
    Traceback (most recent call last):
    ...
    ValueError: f: the dense matrix of Diagonal(shape_in=(3000,), ...) would have 9000000 entries ...
    """
    if max_size is None:
        return
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        msg = f"{where}: expected max_size to be a positive int or None, got {max_size!r}"
        raise ValueError(msg)
    entries = op.size_out * op.size_in
    if entries <= max_size:
        return
    xp = op.xp
    itemsize = int(xp.finfo(op.dtype).bits) // 8 * (2 if xp.isdtype(op.dtype, "complex floating") else 1)
    msg = (
        f"{where}: the dense matrix of {op!r} would have {entries} entries ({op.size_out} × "
        f"{op.size_in}, {_bytes_text(entries * itemsize)} in {op.dtype}), more than "
        f"max_size={max_size}; use the matrix-free routines (matvec and matmat, kpflow.linalg: "
        "eigsh, svds, trace, effective_rank), or densify anyway with "
        "kpflow.operators.todense(op, max_size=...) (None: no limit)"
    )
    raise ValueError(msg)


def _bytes_text(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


class _DenseRules(Protocol):
    """:func:`todense`: a guarded call, with the ``register``/``dispatch`` of its single-dispatch rules."""

    registry: Mapping[Any, Callable[..., Any]]

    def __call__(self, op: LinearOperator, *, max_size: int | None = ...) -> Any: ...

    def register(self, cls: Any, func: Any = ...) -> Any: ...

    def dispatch(self, cls: Any) -> Callable[..., Any]: ...


def _todense(op: LinearOperator, *, max_size: int | None = DEFAULT_MAX_DENSE_SIZE) -> Any:
    """The matrix of ``op`` as an array of shape ``(*shape_out, *shape_in)``.

    The generic rule applies ``op`` to all unit vectors in one batched call;
    structured operators (Kronecker, Diagonal, ...) use their factors instead.
    Rules are single-dispatch: ``todense.register(MyOperator)`` adds one (a rule that
    densifies parts of its operator calls ``todense(part, max_size=None)``: the size was
    checked once, on the whole).

    Parameters
    ----------
    op : LinearOperator
    max_size : int or None
        The most entries (``size_out · size_in``) the matrix may have; default
        :data:`DEFAULT_MAX_DENSE_SIZE` (4,000,000: 32 MB in float64).  ``None``: no limit.

    Returns
    -------
    array of shape ``(*shape_out, *shape_in)``
        In ``op``'s namespace, dtype and device.

    Raises
    ------
    ValueError
        When the matrix has more than ``max_size`` entries (NTK_S of a GRU(3, 256) over 8
        sequences of 50 steps would take 78 GiB in float64): the message gives the size and
        what to use instead.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> kpflow.operators.todense(kpflow.Diagonal(xp.asarray([1.0, 2.0])))
    Array([[1., 0.],
           [0., 2.]], dtype=array_api_strict.float64)
    >>> kpflow.operators.todense(kpflow.Diagonal(xp.ones(3000)))
    Traceback (most recent call last):
    ...
    ValueError: kpflow.operators.todense: the dense matrix of Diagonal(...) would have 9000000 entries ...
    """
    check_dense_size(op, max_size, "kpflow.operators.todense")
    return _dense_rule(op)


@functools.singledispatch
def _dense_rule(op: LinearOperator) -> Any:
    xp = op.xp
    cols = op._matmat(_eye_probes(op, op.shape_in))  # (n_in, *shape_out)
    r = len(op.shape_out)
    mat = xp.permute_dims(cols, (*range(1, r + 1), 0))
    return xp.reshape(mat, (*op.shape_out, *op.shape_in))


_todense.__name__ = _todense.__qualname__ = "todense"
for _name in ("register", "dispatch", "registry", "_clear_cache"):
    setattr(_todense, _name, getattr(_dense_rule, _name))
todense = cast(_DenseRules, _todense)


@todense.register
def _(op: Dense) -> Any:
    return op.array


@todense.register
def _(op: Identity) -> Any:
    xp, n = op.xp, op.size_in
    return xp.reshape(xp.eye(n, dtype=op.dtype, device=op.device), (*op.shape_out, *op.shape_in))


@todense.register
def _(op: Diagonal) -> Any:
    xp, n = op.xp, op.size_in
    eye = xp.eye(n, dtype=op.dtype, device=op.device)
    return xp.reshape(eye * xp.reshape(op.array, (n, 1)), (*op.shape_out, *op.shape_in))


@todense.register
def _(op: Scaled) -> Any:
    return op.c * todense(op.op, max_size=None)


@todense.register
def _(op: Sum) -> Any:
    out = todense(op.terms[0], max_size=None)
    for t in op.terms[1:]:
        out = out + todense(t, max_size=None)
    return out


@todense.register
def _(op: Adjoint) -> Any:
    xp = op.xp
    inner = op.op
    mat = xp.reshape(todense(inner, max_size=None), (inner.size_out, inner.size_in))
    return xp.reshape(xp.matrix_transpose(mat), (*op.shape_out, *op.shape_in))


@todense.register
def _(op: Reshaped) -> Any:
    return op.xp.reshape(todense(op.op, max_size=None), (*op.shape_out, *op.shape_in))


# -- adjoint -------------------------------------------------------------------------------------
@functools.singledispatch
def adjoint(op: LinearOperator) -> LinearOperator:
    """The adjoint ``Aᵀ``, keeping structure where a rule exists (``(A⊗B)ᵀ = Aᵀ⊗Bᵀ``).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> A = kpflow.Dense(xp.asarray([[1.0, 2.0]]))
    >>> kpflow.operators.adjoint(A).todense()
    Array([[1.],
           [2.]], dtype=array_api_strict.float64)
    """
    return Adjoint(op)


@adjoint.register
def _(op: Adjoint) -> LinearOperator:
    return op.op


@adjoint.register(Identity)
@adjoint.register(SymmetricOperator)
def _(op: LinearOperator) -> LinearOperator:
    return op


@adjoint.register
def _(op: Dense) -> LinearOperator:
    xp = op.xp
    return Dense(
        xp.reshape(xp.matrix_transpose(op.matrix), (*op.shape_in, *op.shape_out)),
        shape_in=op.shape_out,
        shape_out=op.shape_in,
    )


@adjoint.register
def _(op: Projector) -> LinearOperator:
    return Projector(op.y, op.x)


@adjoint.register
def _(op: Scaled) -> LinearOperator:
    return Scaled(op.c, adjoint(op.op))


@adjoint.register
def _(op: Sum) -> LinearOperator:
    return Sum([adjoint(t) for t in op.terms])


@adjoint.register
def _(op: Composition) -> LinearOperator:
    return Composition([adjoint(f) for f in reversed(op.factors)])


@adjoint.register
def _(op: Reshaped) -> LinearOperator:
    return Reshaped(adjoint(op.op), op.shape_out, op.shape_in)


# -- reshape -------------------------------------------------------------------------------------
def reshape(op: LinearOperator, shape_in: Any, shape_out: Any) -> LinearOperator:
    """``op`` seen on tensor shapes ``shape_in -> shape_out`` of the same sizes.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> D = kpflow.Dense(xp.ones((2, 3, 4)), shape_in=(4,))
    >>> kpflow.operators.reshape(D, (2, 2), (6,)).todense().shape
    (6, 2, 2)
    """
    where = f"{type(op).__name__}.reshape"
    shape_in = as_shape(shape_in, "shape_in", where)
    shape_out = as_shape(shape_out, "shape_out", where)
    if isinstance(op, Reshaped):
        op = op.op
    if shape_in == op.shape_in and shape_out == op.shape_out:
        return op
    return Reshaped(op, shape_in, shape_out)


# -- gram ----------------------------------------------------------------------------------------
@functools.singledispatch
def gram(op: LinearOperator) -> LinearOperator:
    """The Gram operator ``A Aᵀ`` (a :class:`Gram`, or structured: ``(A⊗B)(A⊗B)ᵀ = AAᵀ⊗BBᵀ``).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> kpflow.operators.gram(kpflow.Diagonal(xp.asarray([2.0]))).todense()
    Array([[4.]], dtype=array_api_strict.float64)
    """
    return Gram(op)


@gram.register
def _(op: Scaled) -> LinearOperator:
    return scale(op.c * op.c, gram(op.op))


# -- symmetry ------------------------------------------------------------------------------------
@functools.singledispatch
def is_symmetric(op: LinearOperator) -> bool:
    """Whether ``op`` is known, from its structure alone, to be symmetric (``A = Aᵀ``).

    ``False`` means "not known", never "checked and found asymmetric".

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> A = kpflow.Dense(xp.asarray([[1.0, 2.0]]))
    >>> kpflow.operators.is_symmetric(A @ A.T), kpflow.operators.is_symmetric(A)
    (True, False)
    """
    return False


@is_symmetric.register(Identity)
@is_symmetric.register(SymmetricOperator)
def _(op: LinearOperator) -> bool:
    return op.shape_in == op.shape_out


@is_symmetric.register
def _(op: Scaled) -> bool:
    return is_symmetric(op.op)


@is_symmetric.register
def _(op: Sum) -> bool:
    return all(is_symmetric(t) for t in op.terms)


@is_symmetric.register
def _(op: Composition) -> bool:
    # Palindromic compositions A B ... Bᵀ Aᵀ, with a symmetric middle.
    fs = op.factors
    n = len(fs)
    for i in range(n // 2):
        left, right = fs[i], fs[n - 1 - i]
        if not (isinstance(right, Adjoint) and right.op is left) and not (
            isinstance(left, Adjoint) and left.op is right
        ):
            if not _same_transposed(left, right):
                return False
    return n % 2 == 0 or is_symmetric(fs[n // 2])


def _same_transposed(left: LinearOperator, right: LinearOperator) -> bool:
    """Whether ``right`` is a structured adjoint of ``left`` built from the same arrays."""
    if isinstance(left, Dense) and isinstance(right, Dense):
        return _dense_is_transpose(left, right)
    return False


def _dense_is_transpose(left: Dense, right: Dense) -> bool:
    if left.shape_in != right.shape_out or left.shape_out != right.shape_in:
        return False
    xp = left.xp
    return bool(xp.all(xp.matrix_transpose(left.matrix) == right.matrix))


# -- partial trace -------------------------------------------------------------------------------
def _normalise_axes(op: LinearOperator, axes: Any) -> tuple[int, ...]:
    where = f"{type(op).__name__}.partial_trace"
    if op.shape_in != op.shape_out:
        msg = (
            f"{where}: a partial trace needs a square operator (shape_in == shape_out), "
            f"got shape_in={op.shape_in} and shape_out={op.shape_out}"
        )
        raise ValueError(msg)
    if isinstance(axes, int):
        axes = (axes,)
    if not isinstance(axes, Iterable):
        msg = f"{where}: expected axes to be an int or a tuple of ints, got {axes!r}"
        raise TypeError(msg)
    ndim = len(op.shape_in)
    out = []
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool):
            msg = f"{where}: expected axes to hold ints, got {a!r}"
            raise TypeError(msg)
        if not -ndim <= a < ndim:
            msg = (
                f"{where}: axis {a} is out of range for an operator on tensors of shape "
                f"{op.shape_in} (valid: {-ndim} to {ndim - 1})"
            )
            raise ValueError(msg)
        out.append(a % ndim)
    if len(set(out)) != len(out):
        msg = f"{where}: axes must not repeat, got {tuple(axes)}"
        raise ValueError(msg)
    return tuple(sorted(out))


def partial_trace(op: LinearOperator, axes: Any, *, mean: bool = False) -> LinearOperator:
    """Trace out ``axes`` of a square operator, keeping the others in order.

    For ``A`` on tensors indexed by ``(i, j)`` with ``j`` traced,
    ``(Tr_j A)[i, i'] = Σ_j A[(i, j), (i', j)]``; with ``mean=True`` the sum is
    divided by the number of traced entries.  Tracing every axis gives the
    ``1 × 1`` operator on shape ``()`` holding ``tr A``.

    Parameters
    ----------
    op : LinearOperator
        With ``shape_in == shape_out``.
    axes : int or tuple of int
        The axes to trace out (negative values count from the end).
    mean : bool
        Average instead of sum over the traced entries.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> A = kpflow.kron(xp.asarray([[1.0, 2.0], [3.0, 4.0]]), xp.asarray([[1.0, 0.0], [0.0, 2.0]]))
    >>> A.partial_trace(1).todense()
    Array([[ 3.,  6.],
           [ 9., 12.]], dtype=array_api_strict.float64)
    """
    traced = _normalise_axes(op, axes)
    out = _partial_trace(op, traced)
    if mean and traced:
        out = scale(1.0 / prod([op.shape_in[a] for a in traced]), out)
    return out


class PartialTrace(LinearOperator):
    """The generic, exact partial trace of a square operator (see :func:`partial_trace`).

    One application costs one batched call of the inner operator on
    ``k · n_traced`` probes ``x ⊗ e_j``.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> M = xp.reshape(xp.arange(16.0), (2, 2, 2, 2))
    >>> A = kpflow.operators.Adjoint(kpflow.Dense(M, shape_in=(2, 2)))
    >>> kpflow.operators.PartialTrace(A, (0,)).shape_in
    (2,)
    """

    def __init__(self, op: LinearOperator, traced: tuple[int, ...]) -> None:
        keep = tuple(a for a in range(len(op.shape_in)) if a not in traced)
        shape = tuple(op.shape_in[a] for a in keep)
        super().__init__(shape, shape, xp=op.xp, dtype=op.dtype, device=op.device)
        self.op = op
        self.traced = traced
        self.keep = keep

    def _apply(self, X: Any, inner: Any) -> Any:
        xp, op = self.xp, self.op
        k = X.shape[0]
        tr_shape = tuple(op.shape_in[a] for a in self.traced)
        nt, nk = prod(tr_shape), len(self.keep)
        eye = xp.eye(nt, dtype=self.dtype, device=self.device)
        E = xp.reshape(eye, (1, nt) + (1,) * nk + tr_shape)
        Xe = xp.reshape(X, (k, 1, *self.shape_in) + (1,) * len(tr_shape))
        Z = Xe * E  # (k, nt, *keep, *traced)
        order = self.keep + self.traced  # position in Z (after 2) of each original axis
        perm = (0, 1) + tuple(2 + order.index(a) for a in range(len(op.shape_in)))
        Z = xp.reshape(xp.permute_dims(Z, perm), (k * nt, *op.shape_in))
        W = xp.reshape(inner(Z), (k, nt, *op.shape_in))
        back = (0, 1) + tuple(2 + a for a in order)
        W = xp.reshape(xp.permute_dims(W, back), (k, nt, *self.shape_in, nt))
        W = W * xp.reshape(eye, (1, nt) + (1,) * nk + (nt,))
        return xp.sum(xp.sum(W, axis=-1), axis=1)

    def _matmat(self, X: Any) -> Any:
        return self._apply(X, self.op._matmat)

    def _rmatmat(self, Y: Any) -> Any:
        return self._apply(Y, self.op._rmatmat)


@adjoint.register
def _(op: PartialTrace) -> LinearOperator:
    return PartialTrace(adjoint(op.op), op.traced)


@functools.singledispatch
def _partial_trace(op: LinearOperator, traced: tuple[int, ...]) -> LinearOperator:
    if not traced:
        return op
    return PartialTrace(op, traced)


@_partial_trace.register
def _(op: Identity, traced: tuple[int, ...]) -> LinearOperator:
    keep = tuple(s for a, s in enumerate(op.shape_in) if a not in traced)
    n = prod([op.shape_in[a] for a in traced])
    like = op.xp.zeros((1,), dtype=op.dtype, device=op.device)
    out: LinearOperator = Identity(keep, like=like)
    return out if n == 1 else scale(float(n), out)


@_partial_trace.register
def _(op: Diagonal, traced: tuple[int, ...]) -> LinearOperator:
    if not traced:
        return op
    # numpy reductions to 0-d give a numpy scalar; asarray keeps it an array.
    return Diagonal(op.xp.asarray(op.xp.sum(op.array, axis=traced)))


@_partial_trace.register
def _(op: Dense, traced: tuple[int, ...]) -> LinearOperator:
    if not traced:
        return op
    xp, nd = op.xp, len(op.shape_in)
    keep = tuple(a for a in range(nd) if a not in traced)
    kshape = tuple(op.shape_in[a] for a in keep)
    nk, nt = prod(kshape), prod([op.shape_in[a] for a in traced])
    perm = keep + traced + tuple(nd + a for a in keep) + tuple(nd + a for a in traced)
    M = xp.reshape(xp.permute_dims(op.array, perm), (nk, nt, nk, nt))
    eye = xp.eye(nt, dtype=op.dtype, device=op.device)
    M = xp.sum(xp.sum(M * xp.reshape(eye, (1, nt, 1, nt)), axis=3), axis=1)
    return Dense(xp.reshape(M, kshape + kshape), shape_in=kshape)


@_partial_trace.register
def _(op: Scaled, traced: tuple[int, ...]) -> LinearOperator:
    return scale(op.c, _partial_trace(op.op, traced))


@_partial_trace.register
def _(op: Sum, traced: tuple[int, ...]) -> LinearOperator:
    return add(*(_partial_trace(t, traced) for t in op.terms))


register_derived(
    adjoint=adjoint,
    todense=todense,
    reshape=reshape,
    partial_trace=partial_trace,
    gram=gram,
    dense_rule=_dense_rule,
    check_dense_size=check_dense_size,
)
