"""The Krylov routes of :func:`kpflow.linalg.eigsh`: the solve with its options resolved, and the Gram side.

:func:`_krylov` runs the restarted block Lanczos (:mod:`kpflow.linalg._krylov`) on an operator
with the public options sized (:mod:`kpflow.linalg._eig_sizes`); :func:`_gram_side` runs it on
the smaller ``Fᵀ F`` of a Gram operator ``A = F Fᵀ`` and maps the pairs back to ``A``.
"""

from __future__ import annotations

import math
from typing import Any

from kpflow.linalg._backend import dtype_eps, kernel
from kpflow.linalg._eig_sizes import (
    _basis_rows,
    _chunk_rows,
    _fits_products,
)
from kpflow.linalg._krylov import cholesky_qr2, gram_rows, restarted_lanczos
from kpflow.linalg._products import MatvecCounter, min_bucket
from kpflow.linalg._results import EighResult
from kpflow.linalg._rows import inner_rows
from kpflow.linalg._scaling import check_finite, row_norms
from kpflow.operators.algebra import Scaled
from kpflow.operators.base import LinearOperator
from kpflow.operators.functions import adjoint, gram

__all__: list[str] = []


def _krylov(
    A: LinearOperator,
    k: int,
    b: int,
    options: dict[str, Any],
    *,
    pairwise: bool,
    sized_like: LinearOperator | None = None,
) -> tuple[EighResult, Any, float]:
    """The restarted block Lanczos on ``A`` with the public options resolved.

    Returns the pairs of ``A / scale`` (flat eigenvectors), their residual vectors (divided
    by ``scale`` as well) and ``scale`` (see ``restarted_lanczos``).
    ``sized_like`` is the operator whose vector size bounds the probes per product (default
    ``A``; the parameter side passes NTK_S, whose state-sized temporaries its products make).
    """
    where = "kpflow.linalg.eigsh"
    n = A.size_in
    basis = _basis_rows(A, k, b, options["max_basis"], options["memory_budget"], where)
    cap = options["max_matvecs"]
    budget = 100 * basis if cap is None else max(b, int(cap))
    verify = dtype_eps(A) > 1e-10
    return restarted_lanczos(
        A,
        k,
        block_size=b,
        max_basis=min(basis, n),
        tol=max(options["tol"], 100 * dtype_eps(A)),
        max_matvecs=budget,
        gen=options["gen"],
        progress=options["progress"],
        verify=verify,
        pairwise=pairwise,
        max_rows=_chunk_rows(A if sized_like is None else sized_like, options["memory_budget"]),
        min_rows=min_bucket(A if sized_like is None else sized_like),
        store_products=verify and _fits_products(A, k, b, min(basis, n), options["memory_budget"]),
        name=options["name"],
    )


def _gram_side(
    A: LinearOperator, F: LinearOperator, k: int, b: int, options: dict[str, Any]
) -> EighResult | None:
    """Eigenpairs of ``A = F Fᵀ`` from the smaller ``Fᵀ F``: ``u = F v / σ``, residuals on ``A``.

    The Krylov basis lives on ``F.shape_in``; the target per pair is tightened so that the
    mapped pair meets ``tol`` on ``A`` (see ``restarted_lanczos``).  The returned residual
    norms are those of ``A`` itself: ``A u − λ u = F r / σ`` with ``r = Fᵀ F v − λ v``.  The
    ``k`` residual vectors ``r`` lie, up to rounding, in the span of the solver's last block
    (``block_size`` rows), so ``F`` is applied to an orthonormal basis ``Z`` of their
    dominant span only (:func:`_residual_span`), and what lies outside it is bounded by
    ``‖F‖ ‖r − C Z‖``: the norms are upper bounds, exact when nothing is left outside and
    otherwise above the exact ones by at most 10% of ``tol · λ_1`` (in float32, by a few
    rounding errors ``ε · λ_1``).  Mapping back costs
    ``k + rank`` products with ``F`` (``(k + rank) / 2`` with ``A``, rounded up) instead of
    ``2k``, pushed ``block_size`` rows at a time (as the solver's own products, so that it
    does not raise the solve's peak memory).  ``None`` (use ``A``'s side) when a returned
    eigenvalue is numerically zero: its vector is not ``F v / σ``.

    Everything here is of ``A / scale`` (the solver's scale, a power of 4): ``F`` is applied
    as ``F / √scale``, so that the residuals and their images stay of order 1 in float32.
    """
    xp = A.xp
    small, R, scale = _krylov(gram(adjoint(F)), k, b, options, pairwise=True, sized_like=A)
    vals = small.eigenvalues
    top = float(xp.max(xp.abs(vals)))
    if float(xp.min(vals)) <= 1e3 * dtype_eps(A) * top:
        return None
    inv_sigma = 1.0 / xp.sqrt(vals)
    # ‖F‖ = √λ_max(Fᵀ F) <= √(θ_1 + ‖r_1‖) for the top Ritz pair (θ_1, r_1)
    sigma_max = math.sqrt(top + float(small.residual_norms[0]))
    # what may stay outside span Z: 10% of the target tol · λ_1 on A, for the smallest σ
    tol = max(options["tol"], 100 * dtype_eps(A))
    sigma_min = math.sqrt(float(xp.min(vals)))
    Z, C, outside = _residual_span(A, R, 0.1 * tol * top * sigma_min / sigma_max)
    rows = k + Z.shape[0]
    # b rows per product, as in the solve (jax: its padded block), so that mapping back
    # holds no more memory than one of the solver's steps
    chunk = min(max(b, min_bucket(A)), _chunk_rows(A, options["memory_budget"]))
    F_scaled = F if scale == 1.0 else Scaled(1.0 / math.sqrt(scale), F)  # exact: a power of 2
    counter = MatvecCounter(F_scaled, None, rows, "kpflow.linalg.eigsh", max_rows=chunk)
    FVZ = counter.matmat(xp.concat([small.eigenvectors, Z], axis=0))
    check_finite(xp, FVZ, "kpflow.linalg.eigsh", options["name"])
    U = FVZ[:k, :] * inv_sigma[:, None]
    FR = FVZ[k:, :] if C is None else C @ FVZ[k:, :]  # F r, exactly for r = C Z
    res = (kernel(A, row_norms)(FR) + sigma_max * outside) * inv_sigma
    num = small.num_matvecs + (rows + 1) // 2
    return EighResult(vals * scale, xp.reshape(U, (k, *A.shape_in)), res * scale, num)


def _residual_span(A: LinearOperator, R: Any, cut: float) -> tuple[Any, Any, Any]:
    """``R ≈ C Z`` (k, n): ``Z`` orthonormal rows spanning the singular directions of ``R`` above ``cut``.

    Returns ``(Z, C, outside)`` with ``outside[i] = ‖R_i − C_i Z‖`` (computed, not
    estimated), or ``(R, None, 0)`` when every direction is kept.  The residual vectors of
    a Krylov solver are, up to rounding, combinations of its last block: ``Z`` has about
    ``block_size`` rows for ``k`` residuals.
    """
    xp, k = A.xp, R.shape[0]
    mu, E = xp.linalg.eigh(kernel(A, gram_rows)(R))  # ascending: singular values² of R
    kept = sum(float(m) > cut * cut for m in mu)
    if kept >= k:
        return R, None, xp.zeros((k,), dtype=R.dtype, device=A.device)
    Z = cholesky_qr2(A, xp.matrix_transpose(E[:, k - max(kept, 1) :]) @ R)
    return kernel(A, _coefficients)(R, Z)


def _coefficients(xp: Any, R: Any, Z: Any) -> tuple[Any, Any, Any]:
    """``(Z, C, ‖R − C Z‖ per row)`` with ``C = R Zᵀ``."""
    C = inner_rows(xp, R, Z)
    return Z, C, row_norms(xp, R - C @ Z)
