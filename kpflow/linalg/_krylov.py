"""Thick-restart block Lanczos (block Krylov–Schur) for the top-k eigenpairs of a symmetric operator.

The basis ``V`` (rows, orthonormal) and the projected matrix ``T = V A Vᵀ`` grow one block at
a time; only the last block ``Q`` is multiplied by ``A``.  With ``H = V (A Q)ᵀ`` computed
explicitly and ``W = A Q − Hᵀ V`` (projected twice: "twice is enough"), the basis satisfies

    A Vᵀ = Vᵀ T + Wᵀ E_lastᵀ            (rows of V: only the last block leaves span V)

so a Ritz pair ``(θ, u = yᵀ V)`` of ``T`` has the residual ``A u − θ u = y_lastᵀ W`` and its
norm ``√(y_lastᵀ (W Wᵀ) y_last)`` costs no product.  When the basis would exceed ``max_basis``
rows it is *restarted*: the top Ritz vectors are kept (``V ← Yᵀ V``, ``T ← diag θ``, which
keeps the identity above) and the Krylov space grows again from ``orth(W)``.  Converged pairs
are always among those kept (locking), so they are never lost to a restart.  Memory is
bounded by ``max_basis`` rows of length ``n``; the ``A V`` of the old solver is never stored.

Orthonormalisation is CholeskyQR2 (two Gram-matrix passes: BLAS-3 in the row layout the basis
is stored in), with Householder QR of the transposed block as the fallback when the block is
too ill-conditioned for it (``cond > ε^{-1/2}``, detected from the Cholesky factor).

The solver works on ``A / s``, with ``s`` a power of 4 read from the first product, so that
float32 Gram matrices and norms of its vectors neither underflow nor overflow however far
``A`` is from unit scale (NTK_S of inputs of size 1e-12 has eigenvalues near 1e-24, whose
squares are below float32's range); every product is checked for NaN and inf.

When asked to verify (float32), the returned residual norms are computed explicitly,
``‖A u − θ u‖``: from ``k`` more products, or, when the solver stores ``A V`` beside the
basis (``store_products``, twice the basis memory), from ``A U = Yᵀ (A V)`` at no product's
cost.  Without verification, or when the product budget is exhausted without stored
products, they are the Krylov estimates above, which equal the true residuals up to
rounding.  If the explicit residuals miss the tolerance while the estimates met it (rounding
in long float32 runs), the solver restarts from the ``k`` verified vectors themselves, whose
``A U`` it already holds, and continues.

References
----------
Stewart, "A Krylov–Schur algorithm for large eigenproblems", SIAM J. Matrix Anal. Appl. 23 (2001).
Zhou, Saad, "Block Krylov–Schur method for large symmetric eigenvalue problems",
Numer. Algorithms 47 (2008).
Fukaya, Nakatsukasa, Yanagisawa, Yamamoto, "CholeskyQR2: a simple and communication-avoiding
algorithm for computing a tall-skinny QR factorization", ScalA 2014.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from kpflow._array import to_host
from kpflow.linalg._backend import array_kernel
from kpflow.linalg._common import (
    EighResult,
    MatvecCounter,
    device_of,
    dtype_eps,
    inner_rows,
    kernel,
    like_array,
    orthonormal_rows,
    probes,
)
from kpflow.linalg._krylov_basis import _Basis
from kpflow.linalg._krylov_basis import _last_rows as _last_rows  # the basis's kernels, re-exported
from kpflow.linalg._krylov_basis import _placed as _placed
from kpflow.linalg._krylov_basis import _rayleigh_ritz as _rayleigh_ritz
from kpflow.linalg._krylov_basis import _rayleigh_ritz_padded as _rayleigh_ritz_padded
from kpflow.linalg._krylov_basis import _reset as _reset
from kpflow.linalg._krylov_basis import _with_columns as _with_columns
from kpflow.linalg._scaling import ScaledProducts, row_norms
from kpflow.operators.base import LinearOperator

__all__ = ["cholesky_qr2", "gram_rows", "restarted_lanczos"]


# -- orthonormalisation ------------------------------------------------------------------------
def gram_rows(xp: Any, W: Any) -> Any:
    """``W Wᵀ`` (s, s) for rows ``W`` (s, n), symmetrised against rounding (pure)."""
    G = inner_rows(xp, W, W)
    return (G + xp.matrix_transpose(G)) / 2


def _cholesky_pass(xp: Any, W: Any) -> tuple[Any, Any]:
    """One CholeskyQR pass: ``(L⁻¹ W, min diag L / max diag L)`` with ``W Wᵀ = L Lᵀ``."""
    L = xp.linalg.cholesky(gram_rows(xp, W))
    d = xp.linalg.diagonal(L)
    Linv = xp.linalg.inv(L)
    return Linv @ W, xp.min(d) / xp.max(d)


def _normalised_row(xp: Any, W: Any) -> tuple[Any, Any]:
    """``W / ‖W‖`` for one row ``W`` (1, n), and ``‖W‖`` (its square summed by :func:`inner_rows`)."""
    norm = xp.sqrt(inner_rows(xp, W, W)[0, 0])
    return W / xp.where(norm > 0, norm, xp.ones_like(norm)), norm


def cholesky_qr2(A: LinearOperator, W: Any) -> Any:
    """Orthonormal rows spanning the rows of ``W`` (s, n), ``s <= n``: CholeskyQR2, else Householder.

    CholeskyQR2 runs at GEMM speed in the row layout (two ``s × s`` Gram matrices); it is
    used when the first Cholesky factor has ``min diag / max diag >= √ε`` (a conservative
    bound on ``cond(W) <= ε^{-1/2}``, where it is stable), and Householder QR of ``Wᵀ``
    otherwise (ill-conditioned or rank-deficient blocks).  A single row is divided by its
    norm (what CholeskyQR2 does in two passes over it).
    """
    floor = math.sqrt(dtype_eps(A))
    if W.shape[0] == 1:  # one row: normalised by its (chunk-summed) norm, one pass over it
        q, norm = kernel(A, _normalised_row)(W)
        if math.isfinite(float(norm)) and float(norm) > 0:
            return q
        return kernel(A, orthonormal_rows)(W)
    try:
        Q, quality = kernel(A, _cholesky_pass)(W)
        ok = float(quality)
        if math.isfinite(ok) and ok >= floor:
            Q, quality = kernel(A, _cholesky_pass)(Q)
            if math.isfinite(float(quality)):
                return Q
    except Exception:
        pass
    return kernel(A, orthonormal_rows)(W)


# -- the dense algebra between products (pure functions: compiled per shape on jax) -----------
def _expand(xp: Any, V: Any, AQ: Any) -> tuple[Any, Any, Any]:
    """``H = V (A Q)ᵀ`` (m, s), ``W = A Q ⟂ V`` (one pass) and the rows of W that lost all but √ε.

    The second Gram–Schmidt pass comes after ``W`` is normalised (:func:`_next_block`).
    """
    H = inner_rows(xp, V, AQ)
    W = AQ - xp.matrix_transpose(H) @ V
    before = xp.linalg.vector_norm(AQ, axis=1)
    after = xp.linalg.vector_norm(W, axis=1)
    return H, W, after <= math.sqrt(float(xp.finfo(W.dtype).eps)) * before


def _project_once(xp: Any, V: Any, W: Any) -> Any:
    """``W`` with the row space of orthonormal ``V`` removed (one pass)."""
    return W - inner_rows(xp, W, V) @ V


def _project_out(xp: Any, V: Any, W: Any) -> Any:
    """``W`` with the row space of orthonormal ``V`` removed (two passes of :func:`_project_once`)."""
    return _project_once(xp, V, _project_once(xp, V, W))


def _combine(xp: Any, Y: Any, V: Any) -> Any:
    """Rows ``Yᵀ V``."""
    return xp.matrix_transpose(Y) @ V


def _verified(xp: Any, AU: Any, vals: Any, U: Any) -> tuple[Any, Any, Any]:
    """Explicit residual norms ``‖A u − θ u‖`` and the restart data ``(T, W)`` from ``U``, ``AU``."""
    T = inner_rows(xp, U, AU)
    R = AU - xp.matrix_transpose(T) @ U
    return row_norms(xp, AU - vals[:, None] * U), (T + xp.matrix_transpose(T)) / 2, R


def _any(xp: Any, x: Any) -> Any:
    return xp.any(x)


def _next_block(A: LinearOperator, V: Any, W: Any, lost: Any, gen: Any) -> Any:
    """Orthonormal rows spanning ``W ⟂ V``; rows lost to cancellation are refilled at random.

    ``W`` comes out of one Gram–Schmidt pass against ``V`` (:func:`_expand`).  A row that kept
    under ``√ε`` of its norm through it carries mostly rounding error; any direction ⟂ V is
    valid for the Krylov–Schur basis, so a random one, projected twice, replaces it.  The
    block is then orthonormalised, projected a second time (classical Gram–Schmidt twice,
    the second pass on the normalised rows, so that rows scaled up from small norms cannot
    bring back components along ``V``) and orthonormalised again: two passes over the basis
    per step, each one product with it and one combination of its rows.
    """
    xp = A.xp
    if bool(kernel(A, _any)(lost)):
        fresh = kernel(A, _project_out)(V, probes(gen, W.shape[0], A.size_in, like_array(A)))
        W = xp.where(lost[:, None], fresh, W)
    Q = cholesky_qr2(A, W)
    return cholesky_qr2(A, kernel(A, _project_once)(V, Q))


#: A multiplicity check expands the grown block ``_CHECK_STEPS + 1`` times and tests the Ritz
#: values after each (see ``restarted_lanczos``): 8 products at one probe per step.
_CHECK_STEPS = 3


def _largest_cluster(vals: Any, width: float) -> int:
    """The size of the largest run of host values (descending) within ``width`` of its first."""
    best, start = 1, 0
    for i in range(1, len(vals)):
        while vals[start] - vals[i] > width:
            start += 1
        best = max(best, i - start + 1)
    return best


def restarted_lanczos(
    A: LinearOperator,
    k: int,
    *,
    block_size: int,
    max_basis: int,
    tol: float,
    max_matvecs: int,
    gen: Any,
    progress: Any,
    verify: bool,
    pairwise: bool = False,
    max_rows: int | None = None,
    min_rows: int | None = None,
    store_products: bool = False,
    where: str = "kpflow.linalg.eigsh",
    name: str | None = None,
) -> tuple[EighResult, Any, float]:
    """Top-``k`` eigenpairs of symmetric ``A`` by thick-restart block Lanczos (module docstring).

    Returns ``(pairs, R, scale)``: the pairs of ``A / scale`` (eigenvectors as flat rows,
    eigenvalues and residual norms divided by ``scale``), their residual vectors
    ``(A u − θ u) / scale`` (k, n), explicit when ``verify`` and the Krylov–Schur ones
    otherwise, and ``scale``, a power of 4 that brings the entries of the first product to
    order 1 (:class:`~kpflow.linalg._scaling.ScaledProducts`): the solver works on
    ``A / scale`` throughout, so that float32 Gram matrices and norms neither underflow nor
    overflow for operators far from unit scale.  A product holding NaN or inf raises
    ``FloatingPointError`` naming ``name`` (default ``repr(A)``).

    ``store_products`` keeps ``A V`` beside the basis (twice the memory): a verification
    then reads ``A U = Yᵀ (A V)`` instead of computing ``k`` more products, so explicit
    residuals cost no product, and a failed one restarts from the verified vectors as
    often as needed.

    ``block_size`` rows are multiplied by ``A`` per step; the basis holds at most
    ``max_basis`` rows (``>= k + 2·block_size``); at most ``max_matvecs`` products are used
    for the Krylov space (plus ``k`` per verification when ``verify`` without
    ``store_products``).  Converged when every top-``k`` pair has
    ``‖A u − θ u‖ <= tol · max|θ|`` (``pairwise``: ``<= tol · √(θ · max|θ|)``, the target on
    ``Fᵀ F`` that bounds the residual of ``u = F v / σ`` on ``F Fᵀ`` by ``tol · max|θ|``:
    ``‖F Fᵀ u − θ u‖ = ‖F (Fᵀ F v − θ v)‖ / σ <= σ_max ‖r_v‖ / σ``).

    Multiplicities: a block Krylov space with blocks of ``s`` rows holds at most ``s``
    directions of any one eigenspace.  When the converged values contain a cluster of ``s``
    or more equal values (within ``√tol · max|θ|``), the next block is grown by
    ``block_size`` fresh random directions and expanded ``_CHECK_STEPS + 1`` times; if a
    Ritz value rises into the top ``k`` (a missed copy), the solver converges again with the
    larger block and checks again.  Multiplicities up to ``max_basis − k`` are resolved.
    """
    xp, n = A.xp, A.size_in
    b = block_size
    extra = k if verify and not store_products else 0
    counter = MatvecCounter(A, progress, max_matvecs + extra, where, max_rows=max_rows, min_rows=min_rows)
    products = ScaledProducts(counter, where, name)
    basis = _Basis(A, max_basis, store_products=store_products)
    verified_once = False
    locked: EighResult | None = None  # the converged pairs while a multiplicity check runs
    locked_R: Any = None
    check_steps = 0
    try:
        Q = cholesky_qr2(A, probes(gen, b, n, like_array(A)))
        basis.set_rows(0, Q)
        while True:
            m, s = basis.m, Q.shape[0]
            AQ = products.matmat(Q)
            basis.set_products(m - s, AQ)
            H, W, lost = kernel(A, _expand)(basis.rows(), AQ)
            basis.set_last_columns(H, s)
            step = min(s, n - m)
            if m < k:  # too few rows for k Ritz pairs yet
                Q = _next_block(A, basis.rows(), W[:step, :], lost[:step], gen)
                basis.set_rows(m, Q)
                continue
            theta, Y, est, scale_arr = basis.ritz(k, s, W)
            theta_k, Y_k = kernel(A, _leading, k)(theta, Y)  # one program, not two slices
            target = tol * max(float(scale_arr), 1e-300)
            width = math.sqrt(tol) * max(float(scale_arr), 1e-300)
            worst = float(array_kernel(xp, est, _max_of)(est))
            excess = _excess(xp, est, theta_k, target, float(scale_arr), pairwise)
            if locked is not None:
                # A multiplicity check: has a value from the fresh block entered the top k?
                grown = max(float(xp.max(theta_k - locked.eigenvalues)), 0.0) > width
                if not grown and (check_steps <= 0 or m >= n):
                    # The check's products count: the result reports every product spent.
                    locked.num_matvecs = products.num_matvecs
                    return locked, locked_R, products.scale
                check_steps -= 1
                if grown:
                    locked = None  # a missed copy: converge as usual, then check again
            if locked is None and (excess <= 1.0 or m >= n):
                vals = theta_k
                U = kernel(A, _combine)(Y_k, basis.rows())
                if verify:
                    if store_products:
                        AU = kernel(A, _combine)(Y_k, basis.products())
                    else:
                        AU = products.matmat(U)
                    res, T_u, R_u = kernel(A, _verified)(AU, vals, U)
                    AU_or_R = (AU, None)
                else:
                    res, R_u = est, kernel(A, _combine)(basis.last_rows(Y_k, s), W)
                    T_u = _diag(A, vals)
                    AU_or_R = (None, R_u)
                worst = float(array_kernel(xp, res, _max_of)(res))
                if _excess(xp, res, vals, target, float(scale_arr), pairwise) <= 1.0 or m >= n:
                    result, R = (
                        EighResult(vals, U, res, products.num_matvecs),
                        kernel(A, _residuals)(AU_or_R, vals, U),
                    )
                    cluster = _largest_cluster(to_host(vals).tolist(), width)  # one copy, no per-item slices
                    if m >= n or cluster < s or s + b > max_basis - k:
                        return result, R, products.scale
                    # s or more equal values: more copies may lie outside this Krylov space (it
                    # holds at most s directions of any eigenspace).  Grow the next block by b
                    # fresh random directions and expand for a few steps; a copy above the k-th
                    # value would show in the Ritz values.
                    locked, locked_R, check_steps = result, R, _CHECK_STEPS
                    W = xp.concat([W, probes(gen, b, n, like_array(A))], axis=0)
                    lost = xp.concat([lost, xp.zeros((b,), dtype=xp.bool, device=A.device)], axis=0)
                    step = min(s + b, n - m)
                elif (verified_once and not store_products) or products.num_matvecs + b > max_matvecs:
                    _warn_not_converged(where, products, worst, target)
                    result = EighResult(vals, U, res, products.num_matvecs)
                    return result, _residuals(xp, AU_or_R, vals, U), products.scale
                else:
                    # The estimates drifted from the true residuals (rounding in a long run):
                    # restart from the verified vectors, whose residual block R_u is at hand.
                    verified_once = True
                    Q = _lock(A, basis, U, T_u, R_u, gen, AU)
                    continue
            if products.num_matvecs + step > max_matvecs:
                _warn_not_converged(where, products, worst, target)
                U = kernel(A, _combine)(Y_k, basis.rows())
                if store_products:  # the explicit residuals, at no product's cost
                    AU = kernel(A, _combine)(Y_k, basis.products())
                    R = _residuals(xp, (AU, None), theta_k, U)
                    res = xp.linalg.vector_norm(R, axis=1)
                    return EighResult(theta_k, U, res, products.num_matvecs), R, products.scale
                R = kernel(A, _combine)(basis.last_rows(Y_k, s), W)
                return EighResult(theta_k, U, est, products.num_matvecs), R, products.scale
            if m + step > max_basis:
                # Thick restart: keep the top Ritz vectors (the converged ones among them).
                kept = _kept_rows(max_basis, step, k)
                if store_products:
                    basis.set_products(0, kernel(A, _combine)(Y[:, :kept], basis.products()))
                basis.set_rows(0, kernel(A, _combine)(Y[:, :kept], basis.rows()))
                basis.reset_T(_diag(A, theta[:kept]))
            Q = _next_block(A, basis.rows(), W[:step, :], lost[:step], gen)
            basis.set_rows(basis.m, Q)
    finally:
        products.close()


def _kept_rows(max_basis: int, step: int, k: int) -> int:
    """Rows a thick restart keeps: half-way between ``k`` and ``max_basis`` (at least ``k + step``).

    A restart costs a ``kept × m`` combination of the basis (and of the stored products), a
    pass over ``2·kept·n`` entries; keeping ``max_basis − step`` rows would restart at every
    step once the basis is full.  Keeping half-way restarts every ``(max_basis − k) / 2``
    rows instead, for the same product count on NTK_S of a GRU (1.6M states: 89 against 90;
    the combinations took 2.2 s of a 19 s torch solve when run at every step).
    """
    return max(k + step, min(max_basis - step, (max_basis + k) // 2))


def _residuals(xp: Any, AU_or_R: tuple[Any, Any], vals: Any, U: Any) -> Any:
    """The residual vectors ``A u − θ u``: from ``A U`` when at hand, else the Krylov–Schur ones."""
    AU, R = AU_or_R
    return R if AU is None else AU - vals[:, None] * U


def _excess(xp: Any, res: Any, vals: Any, target: float, scale: float, pairwise: bool) -> float:
    """``max(res / target)`` over the pairs: ``<= 1`` when all have converged."""
    if not pairwise:
        return float(array_kernel(xp, res, _max_of)(res)) / target
    # one program (jax) for the five steps, the floats as arguments
    return float(array_kernel(xp, res, _pairwise_excess)(res, vals, target, max(scale, 1e-300)))


def _max_of(xp: Any, x: Any) -> Any:
    return xp.max(x)


def _leading(xp: Any, k: int, theta: Any, Y: Any) -> tuple[Any, Any]:
    """The top ``k`` Ritz values and their coefficient columns."""
    return theta[:k], Y[:, :k]


def _pairwise_excess(xp: Any, res: Any, vals: Any, target: Any, scale: Any) -> Any:
    per_pair = target * xp.sqrt(xp.clip(vals, 0.0, None) / scale)
    return xp.max(res / xp.maximum(per_pair, 1e-300 * target))


def _diag(A: LinearOperator, values: Any) -> Any:
    return kernel(A, _diag_matrix)(values)


def _diag_matrix(xp: Any, values: Any) -> Any:
    """``diag(values)`` (one program on jax, not seven)."""
    return xp.eye(values.shape[0], dtype=values.dtype, device=device_of(values)) * values[None, :]


def _lock(A: LinearOperator, basis: _Basis, U: Any, T_u: Any, R: Any, gen: Any, AU: Any = None) -> Any:
    """Restart from the rows ``U`` (with ``T = U A Uᵀ``) and the next block ``orth(R ⟂ U)``.

    ``R`` must contain the part of ``A U`` outside span ``U`` (so the residual identity of the
    module docstring holds), optionally with more rows (fresh directions).  ``AU`` (when the
    basis stores products) is kept as the products of the new rows.
    """
    k = U.shape[0]
    if AU is not None:
        basis.set_products(0, AU)
    basis.set_rows(0, U)
    basis.reset_T(T_u)
    R = kernel(A, _project_out)(U, R)
    rows = min(R.shape[0], A.size_in - k, basis.V.shape[0] - k)
    lost = A.xp.zeros((rows,), dtype=A.xp.bool, device=A.device)
    Q = _next_block(A, U, R[:rows, :], lost, gen)
    basis.set_rows(k, Q)
    return Q


def _warn_not_converged(where: str, products: ScaledProducts, worst: float, target: float) -> None:
    """Warn that the solve stopped short; ``worst`` and ``target`` are of ``A / scale``."""
    used, scale = products.num_matvecs, products.scale
    warnings.warn(
        f"{where}: not converged after {used} matvecs (largest residual {worst * scale:.3e}, "
        f"target {target * scale:.3e}); raise max_matvecs, block_size or max_basis",
        RuntimeWarning,
        stacklevel=4,
    )
