"""Exact structured rules for :mod:`kpflow.linalg`, as single-dispatch functions.

Each quantity has one dispatcher.  The generic implementation returns
``None`` ("no exact rule here"), and the public estimator then falls back to
dense computation or randomized estimation.  A rule returns the exact answer
in the operator's namespace, dtype and device:

========================================  ==========================================================
dispatcher                                returns
========================================  ==========================================================
``exact_trace(op)``                       0-d array ``tr A``, or ``None``
``exact_fro_norm(op)``                    0-d array ``‖A‖_F``, or ``None``
``exact_inner(A, B)``                     0-d array ``⟨A, B⟩_F``, or ``None`` (dispatch on ``A``)
``exact_eigsh(op, k)``                    :class:`~kpflow.linalg.EighResult` (top ``k``), or ``None``
``is_psd(op)``                            ``True`` when ``A`` is known to be symmetric PSD
``gram_factor(op)``                       an operator ``F`` with ``A = F Fᵀ``, or ``None``
========================================  ==========================================================

Rules shipped here: :class:`~kpflow.Identity`, :class:`~kpflow.Diagonal`,
:class:`~kpflow.Dense` (up to :data:`DENSE_RULE_LIMIT` rows), ``Scaled``,
``Sum`` (trace), ``Reshaped``, ``Adjoint``, ``Projector``, ``PartialTrace``
(trace), :class:`~kpflow.Kronecker` (``tr(A⊗B) = tr A·tr B``,
``‖A⊗B‖_F = ‖A‖_F‖B‖_F``, ``⟨A⊗B, C⊗D⟩ = ⟨A,C⟩⟨B,D⟩``, eigenpairs as products of
the factors' eigenpairs with their multiplicities), and ``Gram`` (``G = F Fᵀ``
is handled on the smaller of ``F Fᵀ`` and ``Fᵀ F``).  Partial traces use the
operator's own :meth:`~kpflow.LinearOperator.partial_trace`, whose rules live
in :mod:`kpflow.operators`.

Registering a rule for a new operator type (no kpflow file is edited)::

    from kpflow.linalg import rules

    @rules.exact_trace.register
    def _(op: MyKroneckerCore):
        return op.xp.sum(op.site_diagonal * op.unit_scale)   # a 0-d array

    @rules.exact_eigsh.register
    def _(op: MyKroneckerCore, k):
        ...                                                  # an EighResult, or None

A rule may return ``None`` for instances it cannot handle cheaply; the caller
then falls back to the generic route.  The dispatchers run every rule under the
backend's ``no_grad()`` (see :mod:`kpflow.linalg`): exact answers carry no autograd
graph either.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from kpflow.linalg._common import EighResult, kernel, without_graph
from kpflow.operators.algebra import Adjoint, Composition, Gram, Reshaped, Scaled, Sum
from kpflow.operators.base import LinearOperator
from kpflow.operators.basic import Dense, Diagonal, Identity, Projector
from kpflow.operators.functions import PartialTrace, is_symmetric, todense
from kpflow.operators.kronecker import Kronecker

__all__ = [
    "DENSE_ENTRIES_LIMIT",
    "DENSE_RULE_LIMIT",
    "exact_eigsh",
    "exact_fro_norm",
    "exact_inner",
    "exact_trace",
    "gram_factor",
    "has_cheap_dense",
    "is_psd",
]

#: A :class:`~kpflow.Dense` operator (or a Kronecker factor) with at most this many rows is
#: diagonalised with a dense ``eigh``.
DENSE_RULE_LIMIT = 4096

#: ``todense`` of an operator with a structured dense rule is used when the matrix has at
#: most this many entries.
DENSE_ENTRIES_LIMIT = 2**22


def _scalar(op: LinearOperator, value: float) -> Any:
    return op.xp.asarray(value, dtype=op.dtype, device=op.device)


def has_cheap_dense(op: LinearOperator) -> bool:
    """Whether ``todense(op)`` is built from arrays (no unit-vector matvecs) and is small.

    True for operators whose ``todense`` rule, and those of all their parts, read stored
    arrays (Dense, Diagonal, Identity, and sums, scalings, adjoints, reshapes and Kronecker
    products of them), with at most :data:`DENSE_ENTRIES_LIMIT` entries.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg.rules import has_cheap_dense
    >>> D = kpflow.Diagonal(xp.ones(3))
    >>> has_cheap_dense(D), has_cheap_dense(D @ D)
    (True, False)
    """
    return _array_backed(op) and op.size_in * op.size_out <= DENSE_ENTRIES_LIMIT


@functools.singledispatch
def _array_backed(op: LinearOperator) -> bool:
    return todense.dispatch(type(op)) is not todense.dispatch(LinearOperator)


@_array_backed.register
def _(op: Sum) -> bool:
    return all(_array_backed(t) for t in op.terms)


@_array_backed.register(Scaled)
@_array_backed.register(Adjoint)
@_array_backed.register(Reshaped)
def _(op: Any) -> bool:
    return _array_backed(op.op)


@_array_backed.register
def _(op: Kronecker) -> bool:
    return _array_backed(op.A) and _array_backed(op.B)


def _matrix(op: LinearOperator) -> Any:
    return op.xp.reshape(todense(op, max_size=None), (op.size_out, op.size_in))  # has_cheap_dense


# -- trace ---------------------------------------------------------------------------------------
@without_graph
@functools.singledispatch
def exact_trace(op: LinearOperator) -> Any:
    """``tr A`` exactly from ``A``'s structure, as a 0-d array; ``None`` when no rule applies.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import rules
    >>> rules.exact_trace(kpflow.kron(xp.eye(2), xp.asarray([[3.0]])))
    Array(6., dtype=array_api_strict.float64)
    """
    return None


@exact_trace.register
def _(op: Identity) -> Any:
    return _scalar(op, float(op.size_in))


@exact_trace.register
def _(op: Diagonal) -> Any:
    return op.xp.sum(op.array)


@exact_trace.register
def _(op: Dense) -> Any:
    return kernel(op, _matrix_trace)(op.matrix)


def _matrix_trace(xp: Any, a: Any) -> Any:
    return xp.linalg.trace(a)


@exact_trace.register
def _(op: Projector) -> Any:
    if op.x.shape != op.y.shape:
        return None
    return op.xp.sum(op.x * op.y)


@exact_trace.register
def _(op: Scaled) -> Any:
    inner = exact_trace(op.op)
    return None if inner is None else op.c * inner


@exact_trace.register
def _(op: Sum) -> Any:
    parts = [exact_trace(t) for t in op.terms]
    if any(p is None for p in parts):
        return None
    return functools.reduce(lambda a, b: a + b, parts)


@exact_trace.register(Adjoint)
@exact_trace.register(Reshaped)
@exact_trace.register(PartialTrace)
def _(op: Any) -> Any:
    inner = op.op
    if inner.size_in != inner.size_out:
        return None
    return exact_trace(inner)


@exact_trace.register
def _(op: Kronecker) -> Any:
    ta = exact_trace(op.A) if op.A.size_in == op.A.size_out else None
    tb = exact_trace(op.B) if op.B.size_in == op.B.size_out else None
    if ta is None or tb is None:
        return None
    return ta * tb


@exact_trace.register
def _(op: Gram) -> Any:
    f = exact_fro_norm(op.factor)
    return None if f is None else f * f


# -- Frobenius norm --------------------------------------------------------------------------------
@without_graph
@functools.singledispatch
def exact_fro_norm(op: LinearOperator) -> Any:
    """``‖A‖_F`` exactly from ``A``'s structure, as a 0-d array; ``None`` when no rule applies.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import rules
    >>> rules.exact_fro_norm(kpflow.kron(xp.eye(4), xp.asarray([[3.0]])))
    Array(6., dtype=array_api_strict.float64)
    """
    if has_cheap_dense(op):
        return op.xp.linalg.vector_norm(todense(op, max_size=None))
    return None


@exact_fro_norm.register
def _(op: Identity) -> Any:
    return _scalar(op, math.sqrt(op.size_in))


@exact_fro_norm.register(Diagonal)
@exact_fro_norm.register(Dense)
def _(op: Any) -> Any:
    return kernel(op, _vector_norm)(op.array)


def _vector_norm(xp: Any, a: Any) -> Any:
    return xp.linalg.vector_norm(a)


@exact_fro_norm.register
def _(op: Projector) -> Any:
    xp = op.xp
    return xp.linalg.vector_norm(op.x) * xp.linalg.vector_norm(op.y)


@exact_fro_norm.register
def _(op: Scaled) -> Any:
    inner = exact_fro_norm(op.op)
    return None if inner is None else abs(op.c) * inner


@exact_fro_norm.register(Adjoint)
@exact_fro_norm.register(Reshaped)
def _(op: Any) -> Any:
    return exact_fro_norm(op.op)


@exact_fro_norm.register
def _(op: Kronecker) -> Any:
    fa, fb = exact_fro_norm(op.A), exact_fro_norm(op.B)
    if fa is None or fb is None:
        return None
    return fa * fb


@exact_fro_norm.register
def _(op: Gram) -> Any:
    # ‖F Fᵀ‖_F = ‖Fᵀ F‖_F: form the smaller Gram matrix.
    F = op.factor
    if not has_cheap_dense(F) or min(F.size_in, F.size_out) > DENSE_RULE_LIMIT:
        return None
    xp = op.xp
    M = _matrix(F)
    small = xp.matrix_transpose(M) @ M if F.size_in <= F.size_out else M @ xp.matrix_transpose(M)
    return xp.linalg.vector_norm(small)


# -- Frobenius inner product -----------------------------------------------------------------------
@without_graph
@functools.singledispatch
def exact_inner(A: LinearOperator, B: LinearOperator) -> Any:
    """``⟨A, B⟩_F = tr(Aᵀ B)`` exactly, as a 0-d array; ``None`` when no rule applies.

    Dispatches on the type of ``A``; ``A`` and ``B`` have equal shapes.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import rules
    >>> A = kpflow.kron(xp.eye(2), xp.asarray([[1.0, 2.0], [3.0, 4.0]]))
    >>> rules.exact_inner(A, A)
    Array(60., dtype=array_api_strict.float64)
    """
    if has_cheap_dense(A) and has_cheap_dense(B):
        return A.xp.sum(todense(A, max_size=None) * todense(B, max_size=None))
    return None


@exact_inner.register
def _(A: Scaled, B: LinearOperator) -> Any:
    inner = exact_inner(A.op, B)
    return None if inner is None else A.c * inner


@exact_inner.register
def _(A: Kronecker, B: LinearOperator) -> Any:
    if isinstance(B, Scaled):
        inner = exact_inner(A, B.op)
        return None if inner is None else B.c * inner
    if (
        isinstance(B, Kronecker)
        and B.A.shape_in == A.A.shape_in
        and B.A.shape_out == A.A.shape_out
        and B.B.shape_in == A.B.shape_in
    ):
        ia, ib = exact_inner(A.A, B.A), exact_inner(A.B, B.B)
        if ia is not None and ib is not None:
            return ia * ib
    return exact_inner.dispatch(LinearOperator)(A, B)


# -- positive semi-definiteness --------------------------------------------------------------------
@functools.singledispatch
def is_psd(op: LinearOperator) -> bool:
    """Whether ``A`` is known, from its structure, to be symmetric positive semi-definite.

    ``False`` means "not known".  For :class:`~kpflow.Diagonal` the sign of the
    entries is checked (one host boolean).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg.rules import is_psd
    >>> A = kpflow.Dense(xp.asarray([[1.0, 2.0]]))
    >>> minus = kpflow.Diagonal(xp.asarray([-1.0]))
    >>> is_psd(A.gram()), is_psd(A @ A.T), is_psd(A.T @ minus @ A), is_psd(-1.0 * A.gram())
    (True, True, False, False)
    """
    return False


@is_psd.register(Identity)
@is_psd.register(Gram)
def _(op: LinearOperator) -> bool:
    return op.shape_in == op.shape_out


@is_psd.register
def _(op: Diagonal) -> bool:
    return bool(op.xp.all(op.array >= 0))


@is_psd.register
def _(op: Scaled) -> bool:
    return op.c >= 0 and is_psd(op.op)


@is_psd.register
def _(op: Sum) -> bool:
    return all(is_psd(t) for t in op.terms)


@is_psd.register
def _(op: Kronecker) -> bool:
    return is_psd(op.A) and is_psd(op.B)


@is_psd.register
def _(op: Composition) -> bool:
    # B M Bᵀ (palindromic, see is_symmetric) is PSD when the middle M is, or is absent.
    fs = op.factors
    if not is_symmetric(op):
        return False
    return len(fs) % 2 == 0 or is_psd(fs[len(fs) // 2])


@is_psd.register(Reshaped)
@is_psd.register(PartialTrace)
def _(op: Any) -> bool:
    return op.shape_in == op.shape_out and is_psd(op.op)


# -- Gram factors --------------------------------------------------------------------------------
@functools.singledispatch
def gram_factor(op: LinearOperator) -> LinearOperator | None:
    """An operator ``F`` with ``A = F Fᵀ`` known from ``A``'s structure, or ``None``.

    Iterative spectral routines use it to work on whichever of ``F Fᵀ`` (on ``A``'s
    domain) and ``Fᵀ F`` (on ``F.shape_in``) is smaller: they share their nonzero
    spectrum, and a Krylov basis on the smaller side costs less memory.  For NTK_S the
    factor is the state Jacobian J_S = P F (registered by :mod:`kpflow.ntk`).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg.rules import gram_factor
    >>> F = kpflow.Dense(xp.asarray([[1.0, 2.0]]))
    >>> gram_factor(F.gram()) is F, gram_factor(F)
    (True, None)
    """
    return None


@gram_factor.register
def _(op: Gram) -> LinearOperator | None:
    return op.factor


@without_graph
@functools.singledispatch
def exact_eigsh(op: LinearOperator, k: int) -> EighResult | None:
    """Top-``k`` eigenpairs of a symmetric ``A`` from its structure; ``None`` when no rule applies.

    The ``num_matvecs`` of the result counts the ``k`` products used to report
    residual norms (plus any the rule itself spent).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import rules
    >>> A = kpflow.kron(kpflow.Diagonal(xp.asarray([1.0, 3.0])), kpflow.Identity((2,), like=xp.zeros(1)))
    >>> rules.exact_eigsh(A, 3).eigenvalues
    Array([3., 3., 1.], dtype=array_api_strict.float64)
    """
    return None
