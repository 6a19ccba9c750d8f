"""Top-k eigenpairs and singular triplets from matrix-vector products.

Cost comparison for the top ``k`` eigenpairs of a symmetric ``n × n`` operator:

==============  ====================================================  ===========================
method          cost                                                  accuracy
==============  ====================================================  ===========================
rule            a structured rule (:mod:`kpflow.linalg.rules`),       exact
                e.g. Kronecker from its factors; ``k`` matvecs for
                the residual norms
dense           ``n`` unit-vector matvecs (0 with a dense rule) and   exact
                an ``O(n³)`` ``eigh``
lanczos         randomized block Krylov (block Lanczos, full          to ``tol`` on the residual
                reorthogonalisation, Rayleigh–Ritz): about            norms; correct multiplicities
                ``O(k log n / √ε)`` matvecs (Musco & Musco 2015)      up to the block size
nystrom         one sketch of ``k + p`` matvecs (PSD only), plus      approximate (no ``tol``)
                ``k`` for residuals (Tropp et al. 2017)
==============  ====================================================  ===========================

Host transfers: convergence decisions read a handful of control scalars
(the largest residual norm and the largest Ritz value) with ``float()``; no
vector or matrix ever leaves the operator's device.

References
----------
Musco, Musco, "Randomized block Krylov methods for stronger and faster
approximate singular value decomposition", NeurIPS 2015.
Tropp, Yurtsever, Udell, Cevher, "Fixed-rank approximation of a positive
semidefinite matrix from streaming data", NeurIPS 2017.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, cast

from kpflow.linalg import rules
from kpflow.linalg._common import (
    DENSE_LIMIT,
    MIN_BUCKET,
    UNPADDED_FROM,
    EighResult,
    MatvecCounter,
    SvdResult,
    adapter_of,
    check_k,
    check_method,
    check_operator,
    check_square,
    check_tol,
    dtype_eps,
    host_rng,
    inner_rows,
    kernel,
    min_bucket,
    rows_for_budget,
    without_graph,
)
from kpflow.linalg._krylov import cholesky_qr2, gram_rows, restarted_lanczos
from kpflow.linalg._scaling import ScaledProducts, check_finite, power_of_four, row_norms
from kpflow.linalg._spectral_rules import top_eigh_of_matrix
from kpflow.operators.algebra import Scaled
from kpflow.operators.base import LinearOperator
from kpflow.operators.functions import DEFAULT_MAX_DENSE_SIZE, adjoint, check_dense_size, gram, todense

__all__ = ["eigsh", "svds"]

_METHODS = ("auto", "dense", "lanczos", "nystrom")

#: Bytes the Krylov basis of :func:`eigsh` may take when ``memory_budget`` is not given (1 GiB).
DEFAULT_MEMORY_BUDGET = 2**30


@without_graph
def eigsh(
    A: LinearOperator,
    k: int,
    *,
    method: str = "auto",
    tol: float = 1e-10,
    rng: Any = None,
    block_size: int | None = None,
    max_matvecs: int | None = None,
    max_basis: int | None = None,
    memory_budget: float | None = None,
    progress: Any = None,
) -> EighResult:
    """The ``k`` largest (algebraic) eigenpairs of a symmetric operator.

    Parameters
    ----------
    A : LinearOperator
        Symmetric (``A = Aᵀ``, not checked), ``shape_in == shape_out``; e.g. K or NTK_S.
    k : int
        The number of eigenpairs, ``1 <= k <= n``.
    method : {"auto", "dense", "lanczos", "nystrom"}
        ``"auto"``: a structured rule (:func:`kpflow.linalg.rules.exact_eigsh`)
        if one applies, else ``"dense"`` when ``n <= DENSE_LIMIT`` (256), else
        ``"lanczos"``.  ``"nystrom"`` needs a PSD operator.
    tol : float
        Stop when every returned pair has ``‖A v − λ v‖ <= tol · max|θ|``
        (``θ`` the Ritz values); finite and ``>= 0``.  Raised to ``100 ε`` of the dtype:
        ``1.2e-5`` in float32, ``2.2e-14`` in float64 (``tol=0`` asks for that floor).
    rng : int, numpy.random.Generator or None
        Seed or generator for the starting block.
    block_size : int, optional
        Probes per operator product of ``"lanczos"`` (default on the CPU: 1 for ``n >=
        2**20`` and 2 for ``n >= 2**16``, where few probes run at GEMM speed and need the
        fewest products; ``min(k, 4)`` for smaller operators and on GPUs; 16 on jax where
        its blocks are padded to 16 rows: small operators, GPUs, several devices), or
        sketch size of ``"nystrom"`` (``>= k``, default ``2k + 10``).
        Larger blocks cost more products but run them at better GEMM speed (GPUs: try
        16–64).  Repeated eigenvalues keep their multiplicity: a
        cluster of ``block_size`` or more equal values triggers a search from a fresh
        block orthogonal to the converged pairs (see Notes).
    max_matvecs : int, optional
        Cap on the operator products of the Krylov space (default ``100 · max_basis``).
        If reached before convergence, a ``RuntimeWarning`` is issued and the best pairs
        are returned with their (estimated) residual norms.
    max_basis : int, optional
        Most vectors the restarted Krylov basis holds (``>= k + 2·block_size``; default
        ``max(5k, k + 10·block_size)``, or ``n`` when ``n`` is at most four times that,
        capped by ``memory_budget``).  Memory is
        ``max_basis · n`` entries, whatever the number of products.
    memory_budget : float, optional
        Bytes the solver's vectors may take (default 1 GiB, :data:`DEFAULT_MEMORY_BUDGET`):
        the default ``max_basis`` shrinks to fit, so that a large problem takes more
        restarts instead of more memory; a budget too small for ``k + 2·block_size``
        vectors is an error that says how much is needed.  In float32 the products ``A V``
        are stored beside the basis when the budget holds both (see Notes).  The operator's
        own temporaries are not counted.
    progress : None, bool or callable
        ``True``: tqdm bar (a text line on stderr without tqdm); callable:
        ``progress(done, total)``.

    Returns
    -------
    EighResult
        Unpacks like ``numpy.linalg.eigh`` into ``eigenvalues (k,), eigenvectors
        (k, *shape_in)``, descending, in ``A``'s namespace, dtype and device; the
        attributes ``residual_norms (k,)`` and ``num_matvecs`` hold the diagnostics.

    Raises
    ------
    ValueError
        For a non-square operator, ``k`` out of range, a ``tol``, ``block_size``,
        ``max_basis`` or ``memory_budget`` out of range, or an unknown method.
    FloatingPointError
        When the operator's products (or its matrix, or a structured rule's result) hold
        NaN or inf: the message names the operator.

    Notes
    -----
    ``"lanczos"`` is a thick-restart block Lanczos (block Krylov–Schur) method: the basis
    is restarted from its top Ritz vectors when it reaches ``max_basis`` rows, converged
    pairs are kept (locked), blocks are orthonormalised by CholeskyQR2 (Householder QR for
    ill-conditioned blocks), and convergence is decided on residual norms.  In float64 the
    returned residual norms are the Krylov–Schur residuals (exact up to rounding); in lower
    precision they are explicit, ``‖A u − λ u‖``: read from the products ``A V`` that the
    solver stores beside its basis when ``memory_budget`` holds both (no product more), else
    recomputed with ``k`` more products.

    Every route works at unit scale, so that float32 operators far from it (NTK_S of inputs
    of size 1e-12 has eigenvalues near 1e-23, whose squares underflow) keep their accuracy:
    the iterative routes run on ``A / s`` with ``s`` a power of 4 read from the first
    product (dividing by it is exact), the dense ones eigendecompose the matrix divided
    likewise, and residual norms are taken row by row at unit scale.

    When ``A`` is known to be a Gram operator ``F Fᵀ`` whose factor has the smaller domain
    (:func:`kpflow.linalg.rules.gram_factor`: NTK_S = J_S J_Sᵀ with fewer parameters than
    states), the Krylov basis lives on ``Fᵀ F`` instead (less memory for the same
    products); the eigenvectors ``u = F v / σ`` come back in ``A``'s shape with residual
    norms measured on ``A``: ``A u − λ u = F r / σ`` for the residual ``r`` on ``Fᵀ F``, with
    ``F`` applied to the few directions that hold the ``k`` residuals (about ``block_size``)
    and the rest bounded, so they are upper bounds at most ``0.1 · tol · λ_1`` above the
    exact norms (about ``(k + block_size) / 2`` more products).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import eigsh
    >>> A = kpflow.Dense(xp.asarray([[2.0, 1.0], [1.0, 2.0]]))
    >>> w, V = eigsh(A, 1)
    >>> w
    Array([3.], dtype=array_api_strict.float64)
    >>> float(eigsh(A, 1).residual_norms[0]) < 1e-12
    True
    """
    where = "kpflow.linalg.eigsh"
    check_operator(A, where)
    check_square(A, where)
    check_method(method, _METHODS, where)
    tol = check_tol(tol, where)
    gen = host_rng(rng, where)
    n = A.size_in
    k = check_k(k, n, where)
    if method == "auto":
        exact = rules.exact_eigsh(A, k)
        if exact is not None:
            return _checked(A, exact, where)
        method = "dense" if n <= DENSE_LIMIT else "lanczos"
    if method == "dense":
        return _dense(A, k)
    if method == "nystrom":
        s = 2 * k + 10 if block_size is None else _check_block(block_size, k, where, nystrom=True)
        return _nystrom(A, k, min(s, n), gen, progress)
    b = _default_block(A, k) if block_size is None else _check_block(block_size, k, where)
    options: dict[str, Any] = {"tol": tol, "max_basis": max_basis, "max_matvecs": max_matvecs}
    options |= {"memory_budget": memory_budget, "gen": gen, "progress": progress, "name": repr(A)}
    F = rules.gram_factor(A)
    if F is not None and F.size_in < n and k <= F.size_in:
        small = _gram_side(A, F, k, min(b, F.size_in), options)
        if small is not None:
            return small
    r, _, scale = _krylov(A, k, min(b, n), options, pairwise=False)
    vectors = A.xp.reshape(r.eigenvectors, (k, *A.shape_in))
    return EighResult(r.eigenvalues * scale, vectors, r.residual_norms * scale, r.num_matvecs)


def _checked(A: LinearOperator, r: EighResult, where: str) -> EighResult:
    """``r`` from a structured rule, if its eigenvalues and residual norms are finite."""
    xp = A.xp
    both = xp.concat([xp.reshape(r.eigenvalues, (-1,)), xp.reshape(r.residual_norms, (-1,))])
    check_finite(xp, both, where, repr(A), "structured rule (rules.exact_eigsh)")
    return r


#: Vector lengths from which a CPU product is GEMM-bound: blocks of 2 probes from the first,
#: 1 probe from the second (block Lanczos with one probe needs the fewest products).
SMALL_BLOCK_SIZES = (UNPADDED_FROM, 2**20)


def _default_block(A: LinearOperator, k: int) -> int:
    """Probes per product of ``"lanczos"`` when ``block_size`` is not given.

    - jax: 16 where it pads every probe block to at least 16 rows (:func:`min_bucket`:
      several devices, accelerators, operators under ``2**16`` entries), since smaller
      blocks would pay for 16 probes per product anyway; otherwise the CPU rules below;
    - the CPU, ``n >= 2**20``: 1; ``2**16 <= n < 2**20``: 2.  Such products run near GEMM
      speed with few probes, and fewer probes per step need fewer products.  Measured on
      NTK_S of a GRU, top 10 (``benchmarks/bench_ntk_spectrum.py``): at 1,638,400 states
      89, 98 and 130 products with 1, 2 and 4 probes, in 16, 17 and 23 s (numpy; one probe
      pays 8 products for the multiplicity check); at 204,800 states 81, 90 and 110
      products in 1.49, 1.53 and 1.47 s, where two probes are no slower;
    - otherwise (small operators, whose products are dominated by per-call overhead; GPUs,
      where a block costs little more than one probe): ``min(k, 4)``.
    """
    adapter = adapter_of(A)
    if min_bucket(A) > 1:  # jax where it pads blocks to 16 rows (1 on every other backend)
        return MIN_BUCKET
    if adapter.is_accelerator(A.device) or A.size_in < SMALL_BLOCK_SIZES[0]:
        return min(k, 4)
    return 1 if A.size_in >= SMALL_BLOCK_SIZES[1] else min(k, 2)


def _check_block(block_size: Any, k: int, where: str, *, nystrom: bool = False) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
        msg = f"{where}: expected block_size to be a positive int, got {block_size!r}"
        raise TypeError(msg)
    low = k if nystrom else 1
    if block_size < low:
        what = f"at least k={k} (the sketch size of method='nystrom')" if nystrom else "at least 1"
        msg = f"{where}: block_size={block_size} must be {what}"
        raise ValueError(msg)
    return int(block_size)


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


def _fits_products(A: LinearOperator, k: int, b: int, basis: int, memory_budget: Any) -> bool:
    """Whether ``A V`` fits beside the basis in the memory budget (see ``_basis_rows``).

    Stored products make the float32 verification free (``k`` products fewer per solve);
    they double the basis memory, so they are kept only when the budget holds both.
    """
    return (2 * basis + _work_rows(k, b)) * A.size_in * _itemsize(A) <= _budget_bytes(memory_budget)


def _budget_bytes(memory_budget: Any) -> float:
    """The memory budget in bytes: ``memory_budget``, or :data:`DEFAULT_MEMORY_BUDGET` when None."""
    return float(DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget)


def _work_rows(k: int, b: int) -> int:
    """Vectors the solver holds besides its basis: the block, its product, the residual block
    (``3·b``) and the Ritz vectors (``k``)."""
    return 3 * b + k


def _chunk_rows(A: LinearOperator, memory_budget: Any) -> int:
    """Probes per product under the memory budget (a quarter of it; see ``rows_for_budget``).

    The default budget applies when none is given, so that the solver's wide blocks (the
    ``k`` vectors of a verification, the ``2k`` of the parameter side's mapping back) are
    pushed through a large operator in several products instead of one ``k`` times as big.
    """
    rows = rows_for_budget(A, _budget_bytes(memory_budget) / 4)
    # jax pads blocks to min_bucket rows: smaller chunks would cost as much each
    return max(rows, min_bucket(A))


def _basis_rows(A: LinearOperator, k: int, b: int, max_basis: Any, memory_budget: Any, where: str) -> int:
    """Rows of the Krylov basis: ``max_basis``, or the default capped by the memory budget.

    The basis holds ``max_basis`` vectors of ``A.size_in`` entries; the solver's other arrays
    (the block, its product, the residual block, the Ritz vectors) are counted as ``3·b + k``
    more rows.
    """
    row_bytes = A.size_in * _itemsize(A)
    number = isinstance(memory_budget, numbers.Real) and not isinstance(memory_budget, bool)
    if memory_budget is not None and not (number and memory_budget > 0):
        msg = f"{where}: expected memory_budget to be a positive number of bytes, got {memory_budget!r}"
        raise ValueError(msg)
    budget = _budget_bytes(memory_budget)
    fit = int(budget // row_bytes) - _work_rows(k, b)
    smallest = k + 2 * b
    if max_basis is None:
        # A small space is spanned whole (at most n products, no restart, as dense would cost).
        default = A.size_in if A.size_in <= 4 * _default_basis(k, b) else _default_basis(k, b)
        rows = min(default, max(fit, smallest))
        if fit < smallest and rows < A.size_in:
            need = (smallest + _work_rows(k, b)) * row_bytes
            msg = (
                f"{where}: memory_budget={budget:.3g} bytes holds {max(fit, 0)} basis vectors of "
                f"{A.size_in} entries, fewer than the {smallest} that k={k} with block_size={b} "
                f"needs; raise memory_budget to at least {need} bytes, or lower k or block_size"
            )
            raise ValueError(msg)
        return rows
    if isinstance(max_basis, bool) or not isinstance(max_basis, numbers.Integral):
        msg = f"{where}: expected max_basis to be an int, got {max_basis!r}"
        raise TypeError(msg)
    if max_basis < smallest:
        msg = f"{where}: max_basis={max_basis} must be at least k + 2·block_size = {smallest}"
        raise ValueError(msg)
    return int(max_basis)


def _itemsize(A: LinearOperator) -> int:
    xp = A.xp
    return int(xp.finfo(A.dtype).bits) // 8 * (2 if xp.isdtype(A.dtype, "complex floating") else 1)


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


def _default_basis(k: int, b: int) -> int:
    """``max(5k, k + 10·b)``: 50 rows for ``k = 10`` (with 30, the NTK_S solves of the benchmark
    took 8% more products for one probe per step)."""
    return max(5 * k, k + 10 * b)


def _dense(A: LinearOperator, k: int) -> EighResult:
    """Exact pairs from the matrix of ``A``, eigendecomposed at unit scale (a power of 4 out)."""
    xp, n = A.xp, A.size_in
    used = 0 if rules.has_cheap_dense(A) else n
    check_dense_size(A, DEFAULT_MAX_DENSE_SIZE, "kpflow.linalg.eigsh(method='dense')")
    M = xp.reshape(todense(A, max_size=None), (n, n))
    scale = power_of_four(xp, A.dtype, check_finite(xp, M, "kpflow.linalg.eigsh", repr(A), "matrix"))
    M = M if scale == 1.0 else M * (1.0 / scale)
    vals, vecs = top_eigh_of_matrix(xp, M, k, name=repr(A))
    res = kernel(A, row_norms)(vecs @ xp.matrix_transpose(M) - vals[:, None] * vecs)
    return EighResult(vals * scale, xp.reshape(vecs, (k, *A.shape_in)), res * scale, used)


def _nystrom(A: LinearOperator, k: int, s: int, gen: Any, progress: Any) -> EighResult:
    from kpflow.linalg.trace import nystrom_sketch

    counter = ScaledProducts(MatvecCounter(A, progress, s + k, "kpflow.linalg.eigsh"), "kpflow.linalg.eigsh")
    try:
        # a duck-typed counter: the sketch is of A / scale, the scale fixed by its one product
        sk = nystrom_sketch(cast(Any, counter), s, gen)
        vals, vecs = kernel(A, _nystrom_pairs, k)(sk["B"], sk["Q"], sk["nu"])
        AU = counter.matmat(vecs)
    finally:
        counter.close()
    res = kernel(A, _residual_norms)(AU, vals, vecs)
    scale = counter.scale
    return EighResult(vals * scale, A.xp.reshape(vecs, (k, *A.shape_in)), res * scale, counter.num_matvecs)


def _nystrom_pairs(xp: Any, k: int, B: Any, Q: Any, nu: Any) -> tuple[Any, Any]:
    # A + νI ≈ Q B Bᵀ Qᵀ: eigenpairs from the SVD of the small B.
    Ub, sig, _ = xp.linalg.svd(B, full_matrices=False)
    vals = xp.maximum(sig[:k] * sig[:k] - nu, 0.0)
    return vals, xp.matrix_transpose(Ub[:, :k]) @ Q


def _residual_norms(xp: Any, AU: Any, vals: Any, U: Any) -> Any:
    return row_norms(xp, AU - vals[:, None] * U)


@without_graph
def svds(
    A: LinearOperator,
    k: int,
    *,
    method: str = "auto",
    tol: float = 1e-10,
    rng: Any = None,
    block_size: int | None = None,
    max_matvecs: int | None = None,
    max_basis: int | None = None,
    memory_budget: float | None = None,
    progress: Any = None,
) -> SvdResult:
    """The ``k`` largest singular triplets of any operator, via the smaller Gram side.

    ``eigsh`` runs on ``Aᵀ A`` (on ``shape_in``) when ``size_in <= size_out``
    and on ``A Aᵀ`` otherwise (they share their nonzero spectrum).  Structured operators
    keep their structure (``gram`` of a Kronecker product is a Kronecker product).  A
    Rayleigh–Ritz step on ``A`` itself then gives the triplets: the SVD of the ``k``
    images ``A v_i`` (or ``Aᵀ u_i``), ``k`` products, so that both sides' vectors are
    orthonormal and the singular values are those of ``A`` on the span found, accurate to
    rounding, about ``ε σ_1``: a zero singular value comes out near ``ε σ_1``, where the
    square root of a Gram eigenvalue would give ``√ε σ_1`` (``3e-4 σ_1`` in float32).
    ``tol`` applies to the Gram operator, whose eigenvalues are ``σ²``: the span found
    misses singular directions of values far below ``σ_1`` by about ``tol · σ_1² / σ``.

    Parameters
    ----------
    A : LinearOperator
        Any shapes, e.g. J (the Jacobian) with NTK = J Jᵀ.
    k : int
        ``1 <= k <= min(size_in, size_out)``.
    method, tol, rng, block_size, max_matvecs, max_basis, memory_budget, progress
        As in :func:`eigsh` (applied to the Gram operator).

    Returns
    -------
    SvdResult
        Unpacks into ``U (k, *shape_out), s (k,), V (k, *shape_in)``; the attribute
        ``num_matvecs`` counts products with ``A`` or ``Aᵀ`` (a Gram product is 2).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import svds
    >>> A = kpflow.Dense(xp.asarray([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]]))
    >>> U, s, V = svds(A, 2)
    >>> s
    Array([4., 3.], dtype=array_api_strict.float64)
    >>> U.shape, V.shape
    ((2, 3), (2, 2))
    """
    where = "kpflow.linalg.svds"
    check_operator(A, where)
    check_k(k, min(A.size_in, A.size_out), where, "min(size_in, size_out)")
    tol = check_tol(tol, where)
    xp = A.xp
    right = A.size_in <= A.size_out
    G = gram(adjoint(A)) if right else gram(A)
    r = eigsh(
        G,
        k,
        method=method,
        tol=tol,
        rng=rng,
        block_size=block_size,
        max_matvecs=max_matvecs,
        max_basis=max_basis,
        memory_budget=memory_budget,
        progress=progress,
    )
    # Rayleigh–Ritz on A itself: the SVD of the k images A V (or Aᵀ U) gives the singular
    # values to ε σ_1 (the square root of a Gram eigenvalue only to √ε σ_1) and orthonormal
    # vectors on both sides, at no product more.
    if right:
        X, shape_x, shape_y = r.eigenvectors, A.shape_in, A.shape_out
        AX = A._matmat(X)
    else:
        X, shape_x, shape_y = r.eigenvectors, A.shape_out, A.shape_in
        AX = A._rmatmat(X)
    flat = xp.reshape(AX, (k, math.prod(shape_y)))
    scale = power_of_four(xp, A.dtype, check_finite(xp, flat, where, repr(A)))
    P, s, Y = kernel(A, _ritz_svd)(flat if scale == 1.0 else flat * (1.0 / scale))
    X = xp.reshape(xp.matrix_transpose(P) @ xp.reshape(X, (k, math.prod(shape_x))), (k, *shape_x))
    Y = xp.reshape(Y, (k, *shape_y))
    U, V = (Y, X) if right else (X, Y)
    return SvdResult(U, s * scale, V, 2 * r.num_matvecs + k)


def _ritz_svd(xp: Any, AX: Any) -> tuple[Any, Any, Any]:
    """``AX (k, m) = P diag(s) Y``: ``P`` (k, k) orthogonal, ``s`` descending, ``Y`` orthonormal rows."""
    P, s, Y = xp.linalg.svd(AX, full_matrices=False)
    return P, s, Y
