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
from typing import Any, cast

from kpflow.linalg import rules
from kpflow.linalg._common import (
    DENSE_LIMIT,
    EighResult,
    MatvecCounter,
    SvdResult,
    check_k,
    check_method,
    check_operator,
    check_square,
    check_tol,
    host_rng,
    kernel,
    without_graph,
)

# the sizing rules and the Krylov routes live in modules of their own; re-exported here
from kpflow.linalg._eig_krylov import _gram_side as _gram_side
from kpflow.linalg._eig_krylov import _krylov as _krylov
from kpflow.linalg._eig_sizes import DEFAULT_MEMORY_BUDGET as DEFAULT_MEMORY_BUDGET
from kpflow.linalg._eig_sizes import SMALL_BLOCK_SIZES as SMALL_BLOCK_SIZES
from kpflow.linalg._eig_sizes import _check_block as _check_block
from kpflow.linalg._eig_sizes import _default_block as _default_block
from kpflow.linalg._eig_sizes import _fits_products as _fits_products
from kpflow.linalg._scaling import ScaledProducts, check_finite, power_of_four, row_norms
from kpflow.linalg._spectral_rules import full_eigh, kronecker_products, rule_result, top_eigh_of_matrix
from kpflow.operators.algebra import Gram
from kpflow.operators.base import LinearOperator
from kpflow.operators.functions import DEFAULT_MAX_DENSE_SIZE, adjoint, check_dense_size, gram, todense
from kpflow.operators.kronecker import Kronecker

__all__ = ["eigsh", "svds"]

_METHODS = ("auto", "dense", "lanczos", "nystrom")


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
    which: str = "LA",
) -> EighResult:
    """The ``k`` largest (algebraic) eigenpairs of a symmetric operator, or smallest, or largest in magnitude.

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
    which : {"LA", "SA", "LM"}
        Which ``k`` eigenpairs, scipy's names: ``"LA"`` the largest algebraic (the
        default), ``"SA"`` the smallest algebraic (the largest of ``-A``, same method and
        options), ``"LM"`` the largest in magnitude (``"LA"`` for an operator known to be PSD,
        :func:`~kpflow.linalg.rules.is_psd`, such as K and NTK_S; otherwise the ``k`` of
        largest ``|λ|`` among the ``k`` largest and the ``k`` smallest, at twice the
        products, or among all ``n`` pairs when ``2k > n``).  ``"SA"`` with
        ``method="nystrom"`` is an error (Nyström approximates the top of a PSD operator).

    Returns
    -------
    EighResult
        Unpacks like ``numpy.linalg.eigh`` into ``eigenvalues (k,), eigenvectors
        (k, *shape_in)``, in ``A``'s namespace, dtype and device, the pair asked for first:
        ``"LA"`` descending, ``"SA"`` ascending, ``"LM"`` by descending ``|λ|``; the
        attributes ``residual_norms (k,)`` and ``num_matvecs`` hold the diagnostics.
        Eigenvector ``i`` is the row ``eigenvectors[i]`` in ``A``'s tensor shape, where numpy's
        ``eigh`` and scipy's ``eigsh`` return ascending eigenvalues and the columns of an
        ``(n, k)`` matrix: for ``M`` the matrix of ``A`` (``n × n``) and
        ``w, V = numpy.linalg.eigh(M)``, ``which="LA"`` gives ``w[::-1][:k]`` and
        ``V[:, ::-1][:, :k].T.reshape(k, *A.shape_in)``, ``which="SA"`` gives ``w[:k]`` and
        ``V[:, :k].T.reshape(...)``; scipy's ``w, V = eigsh(to_scipy(A), k, which="LA")`` is
        ``w[::-1]`` and ``V[:, ::-1].T`` in kpflow's order (the signs of eigenvectors are
        arbitrary in all three).

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
    >>> eigsh(A, 1, which="SA").eigenvalues
    Array([1.], dtype=array_api_strict.float64)
    """
    where = "kpflow.linalg.eigsh"
    check_operator(A, where)
    check_square(A, where)
    check_method(method, _METHODS, where)
    tol = check_tol(tol, where)
    gen = host_rng(rng, where)
    n = A.size_in
    k = check_k(k, n, where)
    if which != "LA":
        kwargs = {"method": method, "tol": tol, "rng": gen, "block_size": block_size}
        kwargs |= {"max_matvecs": max_matvecs, "max_basis": max_basis}
        kwargs |= {"memory_budget": memory_budget, "progress": progress}
        return _other_end(A, k, _check_which(which, method, where), kwargs)
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


_WHICH = ("LA", "SA", "LM")


def _check_which(which: Any, method: str, where: str) -> str:
    if not isinstance(which, str) or which not in _WHICH:
        msg = f"{where}: expected which to be one of {', '.join(map(repr, _WHICH))}, got {which!r}"
        raise ValueError(msg)
    if which == "SA" and method == "nystrom":
        msg = (
            f"{where}: which='SA' cannot use method='nystrom', which approximates the largest "
            "eigenvalues of a PSD operator; use method='auto', 'dense' or 'lanczos'"
        )
        raise ValueError(msg)
    return which


def _other_end(A: LinearOperator, k: int, which: str, kwargs: dict[str, Any]) -> EighResult:
    """``which="SA"``: the top of ``-A``; ``which="LM"``: the largest ``|λ|`` of both ends."""
    if which == "LM" and (rules.is_psd(A) or kwargs["method"] == "nystrom"):
        return eigsh(A, k, **kwargs)
    if which == "SA":
        r = eigsh(-A, k, **kwargs)
        return EighResult(-r.eigenvalues, r.eigenvectors, r.residual_norms, r.num_matvecs)
    xp, n = A.xp, A.size_in
    if 2 * k > n:  # the two ends overlap: every pair, then the k of largest |λ|
        parts = [eigsh(A, n, **kwargs)]
    else:  # the k largest |λ| are among the k largest and the k smallest
        parts = [eigsh(A, k, **kwargs), _other_end(A, k, "SA", kwargs)]
    vals = xp.concat([p.eigenvalues for p in parts])
    # a stable sort: on equal |λ| the largest end comes first (one run's orthonormal vectors)
    order = xp.argsort(-xp.abs(vals), stable=True)[:k]
    vecs = xp.concat([xp.reshape(p.eigenvectors, (-1, n)) for p in parts])
    res = xp.concat([p.residual_norms for p in parts])
    return EighResult(
        xp.take(vals, order),
        xp.reshape(xp.take(vecs, order, axis=0), (k, *A.shape_in)),
        xp.take(res, order),
        sum(p.num_matvecs for p in parts),
    )


def _checked(A: LinearOperator, r: EighResult, where: str) -> EighResult:
    """``r`` from a structured rule, if its eigenvalues and residual norms are finite."""
    both = kernel(A, _flat_pair)(r.eigenvalues, r.residual_norms)
    check_finite(A.xp, both, where, repr(A), "structured rule (rules.exact_eigsh)")
    return r


def _flat_pair(xp: Any, a: Any, b: Any) -> Any:
    return xp.concat([xp.reshape(a, (-1,)), xp.reshape(b, (-1,))])


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
    from kpflow.linalg.trace import nystrom_basis, nystrom_sketch

    counter = ScaledProducts(MatvecCounter(A, progress, s + k, "kpflow.linalg.eigsh"), "kpflow.linalg.eigsh")
    try:
        # a duck-typed counter: the sketch is of A / scale, the scale fixed by its one product
        sk = nystrom_sketch(cast(Any, counter), s, gen)
        Q, B = nystrom_basis(A, sk)
        vals, vecs = kernel(A, _nystrom_pairs, k)(B, Q, sk["nu"])
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


# -- exact rules that solve a smaller eigenproblem (they call eigsh, so they live beside it) ---------
#: The Kronecker rule, which falls back on an iterative eigensolver for a large PSD factor,
#: seeds it with this fixed value, so that it is deterministic.
_RULE_SEED = 0


@rules.exact_eigsh.register
def _(op: Kronecker, k: int) -> EighResult | None:
    xp = op.xp
    fa, fb = full_eigh(op.A), full_eigh(op.B)
    extra = 0
    if (fa is None or fb is None) and rules.is_psd(op.A) and rules.is_psd(op.B):
        # Nonnegative factors: the top-k products come from each factor's top k.
        parts = []
        for f in (op.A, op.B):
            r = eigsh(f, min(k, f.size_in), rng=_RULE_SEED)
            extra += r.num_matvecs
            parts.append((r.eigenvalues, xp.reshape(r.eigenvectors, (r.eigenvalues.shape[0], f.size_in))))
        fa, fb = parts
    if fa is None or fb is None:
        return None
    if fa[0].shape[0] * fb[0].shape[0] < k:
        return None
    vals, vecs = kronecker_products(xp, fa, fb, k)
    return rule_result(op, vals, vecs, extra)


@rules.exact_eigsh.register
def _(op: Gram, k: int) -> EighResult | None:
    # G = F Fᵀ on F's output side.  When Fᵀ F is small enough to form densely
    # (at most DENSE_LIMIT columns of F), diagonalise it exactly and map its
    # eigenvectors v to u = F v / σ (they share the nonzero spectrum).  A larger small
    # side is no exact rule: eigsh solves it iteratively with the caller's options.
    F = op.factor
    if F.size_in >= F.size_out or k > F.size_in or F.size_in > DENSE_LIMIT:
        return None
    xp = op.xp
    small = eigsh(gram(adjoint(F)), k, method="dense")
    vals = small.eigenvalues
    top = float(xp.max(xp.abs(vals)))
    if float(xp.min(vals)) <= 1e3 * float(xp.finfo(op.dtype).eps) * top:
        return None  # zero eigenvalues: their vectors in F's output space are not F v / σ
    V = xp.reshape(small.eigenvectors, (k, *F.shape_in))
    U = xp.reshape(F._matmat(V), (k, F.size_out)) / xp.sqrt(vals)[:, None]
    return rule_result(op, vals, U, small.num_matvecs + k)
