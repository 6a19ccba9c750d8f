"""Exact top-k eigenpairs from operator structure: the :func:`exact_eigsh` dispatcher.

Re-exported by :mod:`kpflow.linalg.rules`; see that module for how to register a rule.
"""

from __future__ import annotations

from typing import Any

from kpflow.linalg._common import EighResult, unit_rows
from kpflow.linalg._scaling import check_finite, power_of_four, row_norms
from kpflow.linalg.rules import DENSE_RULE_LIMIT, exact_eigsh, has_cheap_dense
from kpflow.operators.algebra import Reshaped, Scaled
from kpflow.operators.base import LinearOperator
from kpflow.operators.basic import Dense, Diagonal, Identity
from kpflow.operators.functions import is_symmetric, todense
from kpflow.operators.kronecker import Kronecker

__all__ = ["full_eigh", "kronecker_products", "residuals", "rule_result", "top_eigh_of_matrix"]


def _matrix(op: LinearOperator) -> Any:
    return op.xp.reshape(todense(op, max_size=None), (op.size_out, op.size_in))  # has_cheap_dense


def top_eigh_of_matrix(xp: Any, M: Any, k: int, *, name: str = "A") -> tuple[Any, Any]:
    """Top-``k`` eigenpairs of the symmetric part of the square matrix ``M``: values (k,), rows (k, n).

    ``M`` is eigendecomposed divided by a power of 4 that brings its entries to order 1 (not
    every ``eigh`` scales its input: a float32 matrix of entries near 1e-24 would square to
    nothing).  A matrix holding NaN or inf raises ``FloatingPointError`` naming ``name``.
    """
    n = M.shape[0]
    largest = check_finite(xp, M, "kpflow.linalg.eigsh", name, "matrix")
    scale = power_of_four(xp, M.dtype, largest)
    S = (M + xp.matrix_transpose(M)) / (2 * scale)
    w, V = xp.linalg.eigh(S)
    vals = xp.flip(w[n - k :], axis=0)
    vecs = xp.flip(xp.matrix_transpose(V)[n - k :, :], axis=0)
    return (vals if scale == 1.0 else vals * scale), vecs


def residuals(op: LinearOperator, vals: Any, vecs: Any) -> Any:
    """``‖A v_j − λ_j v_j‖`` for rows ``v_j`` of ``vecs`` (k, n): k matvecs, checked for NaN and inf.

    The norms are taken row by row at unit scale (:func:`~kpflow.linalg._scaling.row_norms`),
    so that they do not underflow to 0 for an operator of tiny entries.
    """
    xp = op.xp
    k = vecs.shape[0]
    AV = xp.reshape(op._matmat(xp.reshape(vecs, (k, *op.shape_in))), (k, op.size_out))
    check_finite(xp, AV, "kpflow.linalg.eigsh", repr(op))
    return row_norms(xp, AV - vals[:, None] * vecs)


def rule_result(op: LinearOperator, vals: Any, vecs: Any, extra_matvecs: int = 0) -> EighResult:
    k = vecs.shape[0]
    res = residuals(op, vals, vecs)
    return EighResult(vals, op.xp.reshape(vecs, (k, *op.shape_in)), res, k + extra_matvecs)


@exact_eigsh.register
def _(op: Identity, k: int) -> EighResult:
    xp = op.xp
    vals = xp.ones((k,), dtype=op.dtype, device=op.device)
    return rule_result(op, vals, unit_rows(op, 0, k, op.size_in))


@exact_eigsh.register
def _(op: Diagonal, k: int) -> EighResult:
    xp, n = op.xp, op.size_in
    d = xp.reshape(op.array, (n,))
    check_finite(xp, d, "kpflow.linalg.eigsh", repr(op), "diagonal")
    idx = xp.argsort(d, descending=True, stable=True)[:k]
    vecs = xp.astype(idx[:, None] == xp.arange(n, device=op.device)[None, :], op.dtype)
    return rule_result(op, xp.take(d, idx), vecs)


@exact_eigsh.register
def _(op: Dense, k: int) -> EighResult | None:
    if op.size_in > DENSE_RULE_LIMIT:
        return None
    vals, vecs = top_eigh_of_matrix(op.xp, op.matrix, k, name=repr(op))
    return rule_result(op, vals, vecs)


@exact_eigsh.register
def _(op: Scaled, k: int) -> EighResult | None:
    if op.c < 0:
        return None
    inner = exact_eigsh(op.op, k)
    if inner is None:
        return None
    return EighResult(
        op.c * inner.eigenvalues, inner.eigenvectors, op.c * inner.residual_norms, inner.num_matvecs
    )


@exact_eigsh.register
def _(op: Reshaped, k: int) -> EighResult | None:
    if op.op.shape_in != op.op.shape_out:
        return None
    inner = exact_eigsh(op.op, k)
    if inner is None:
        return None
    vecs = op.xp.reshape(inner.eigenvectors, (k, *op.shape_in))
    return EighResult(inner.eigenvalues, vecs, inner.residual_norms, inner.num_matvecs)


def full_eigh(op: LinearOperator) -> tuple[Any, Any] | None:
    """All eigenpairs (values (n,), rows (n, n)) of a small symmetric factor, or ``None``."""
    xp = op.xp
    if op.shape_in != op.shape_out or op.size_in > DENSE_RULE_LIMIT:
        return None
    if isinstance(op, Kronecker):
        fa, fb = full_eigh(op.A), full_eigh(op.B)
        if fa is None or fb is None or op.size_in > DENSE_RULE_LIMIT:
            return None
        return kronecker_products(xp, fa, fb, op.size_in)
    if not has_cheap_dense(op):
        return None
    M = _matrix(op)
    if not is_symmetric(op):
        # at unit scale: the Frobenius norms of a float32 matrix of tiny entries would be 0
        Mu = M / power_of_four(xp, op.dtype, check_finite(xp, M, "kpflow.linalg.eigsh", repr(op), "matrix"))
        scale = float(xp.linalg.vector_norm(Mu))
        asym = float(xp.linalg.vector_norm(Mu - xp.matrix_transpose(Mu)))
        if asym > 100 * float(xp.finfo(op.dtype).eps) * max(scale, 1e-300):
            return None
    return top_eigh_of_matrix(xp, M, op.size_in, name=repr(op))


def kronecker_products(xp: Any, fa: tuple[Any, Any], fb: tuple[Any, Any], k: int) -> tuple[Any, Any]:
    """Top-``k`` products ``λ_i μ_j`` with eigenvectors ``u_i ⊗ v_j`` (multiplicities kept)."""
    (wa, Va), (wb, Vb) = fa, fb
    na, nb = wa.shape[0], wb.shape[0]
    prods = xp.reshape(wa[:, None] * wb[None, :], (na * nb,))
    idx = xp.argsort(prods, descending=True, stable=True)[:k]
    ia, ib = idx // nb, idx % nb
    Ua, Ub = xp.take(Va, ia, axis=0), xp.take(Vb, ib, axis=0)
    vecs = xp.reshape(Ua[:, :, None] * Ub[:, None, :], (k, Ua.shape[1] * Ub.shape[1]))
    return xp.take(prods, idx), vecs
