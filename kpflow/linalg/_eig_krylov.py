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
from kpflow.linalg._scaling import nonfinite_error, row_norms
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
    small, R, scale = _krylov(gram(adjoint(F)), k, b, options, pairwise=True, sized_like=A)
    vals = small.eigenvalues
    top, low, first = (float(v) for v in kernel(A, _value_range)(vals, small.residual_norms))
    if low <= 1e3 * dtype_eps(A) * top:
        return None
    # ‖F‖ = √λ_max(Fᵀ F) <= √(θ_1 + ‖r_1‖) for the top Ritz pair (θ_1, r_1)
    sigma_max = math.sqrt(top + first)
    # what may stay outside span Z: 10% of the target tol · λ_1 on A, for the smallest σ
    tol = max(options["tol"], 100 * dtype_eps(A))
    sigma_min = math.sqrt(low)
    Z, C, outside = _residual_span(A, R, 0.1 * tol * top * sigma_min / sigma_max)
    rows = k + Z.shape[0]
    # b rows per product, as in the solve (jax: its padded block), so that mapping back
    # holds no more memory than one of the solver's steps
    chunk = min(max(b, min_bucket(A)), _chunk_rows(A, options["memory_budget"]))
    F_scaled = F if scale == 1.0 else Scaled(1.0 / math.sqrt(scale), F)  # exact: a power of 2
    counter = MatvecCounter(F_scaled, None, rows, "kpflow.linalg.eigsh", max_rows=chunk)
    FVZ = counter.matmat(kernel(A, _stacked)(small.eigenvectors, Z))
    largest, values, U, res = kernel(A, _mapped_back, k, A.shape_in, C is None)(
        FVZ, vals, C, outside, sigma_max, scale
    )
    if not math.isfinite(float(largest)):
        raise nonfinite_error("kpflow.linalg.eigsh", options["name"])
    num = small.num_matvecs + (rows + 1) // 2
    return EighResult(values, U, res, num)


def _value_range(xp: Any, vals: Any, res: Any) -> tuple[Any, Any, Any]:
    """``(max|θ|, min θ, ‖r_1‖)`` of the Ritz values and residual norms (one program on jax)."""
    return xp.max(xp.abs(vals)), xp.min(vals), res[0]


def _stacked(xp: Any, V: Any, Z: Any) -> Any:
    return xp.concat([V, Z], axis=0)


def _mapped_back(
    xp: Any,
    k: int,
    shape: tuple,
    whole: bool,
    FVZ: Any,
    vals: Any,
    C: Any,
    outside: Any,
    sigma_max: Any,
    scale: Any,
) -> tuple[Any, Any, Any, Any]:
    """``(max|F [V; Z]|, λ, U, residual norms)`` on ``A``: ``u = F v / σ``, ``‖F r‖ / σ`` (times ``scale``).

    ``F r`` is ``F Z``'s rows themselves when every residual direction was kept (``whole``),
    else ``C F Z`` (exactly, for ``r = C Z``).
    """
    inv_sigma = 1.0 / xp.sqrt(vals)
    U = FVZ[:k, :] * inv_sigma[:, None]
    FR = FVZ[k:, :] if whole else C @ FVZ[k:, :]
    res = (row_norms(xp, FR) + sigma_max * outside) * inv_sigma
    return xp.max(xp.abs(FVZ)), vals * scale, xp.reshape(U, (k, *shape)), res * scale


def _residual_span(A: LinearOperator, R: Any, cut: float) -> tuple[Any, Any, Any]:
    """``R ≈ C Z`` (k, n): ``Z`` orthonormal rows spanning the singular directions of ``R`` above ``cut``.

    Returns ``(Z, C, outside)`` with ``outside[i] = ‖R_i − C_i Z‖`` (computed, not
    estimated), or ``(R, None, 0)`` when every direction is kept.  The residual vectors of
    a Krylov solver are, up to rounding, combinations of its last block: ``Z`` has about
    ``block_size`` rows for ``k`` residuals.
    """
    xp, k = A.xp, R.shape[0]
    mu, E = kernel(A, _gram_eigh)(R)  # ascending: singular values² of R
    kept = int(kernel(A, _count_above)(mu, cut * cut))
    if kept >= k:
        return R, None, xp.zeros((k,), dtype=R.dtype, device=A.device)
    Z = cholesky_qr2(A, kernel(A, _top_directions, max(kept, 1))(E, R))
    return kernel(A, _coefficients)(R, Z)


def _gram_eigh(xp: Any, R: Any) -> tuple[Any, Any]:
    return xp.linalg.eigh(gram_rows(xp, R))


def _count_above(xp: Any, mu: Any, floor: Any) -> Any:
    return xp.sum(xp.astype(mu > floor, xp.int32))


def _top_directions(xp: Any, kept: int, E: Any, R: Any) -> Any:
    """The rows ``Eᵀ R`` of the ``kept`` largest singular directions (``E`` ascending)."""
    return xp.matrix_transpose(E[:, E.shape[1] - kept :]) @ R


def _coefficients(xp: Any, R: Any, Z: Any) -> tuple[Any, Any, Any]:
    """``(Z, C, ‖R − C Z‖ per row)`` with ``C = R Zᵀ``."""
    C = inner_rows(xp, R, Z)
    return Z, C, row_norms(xp, R - C @ Z)
