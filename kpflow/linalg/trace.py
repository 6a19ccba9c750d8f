"""Matrix-free trace estimation: exact, Hutchinson, Hutch++, XTrace and XNysTrace.

Cost comparison (``m`` = matvec budget, ``n`` = dimension, ε = relative error):

=============  ==========================================  =====================================
method         cost to reach ε                              error estimate
=============  ==========================================  =====================================
exact          ``n`` matvecs (0 with a structured rule)     0
hutchinson     ``O(1/ε²)`` matvecs                         sample standard error
hutch++        ``O(1/ε)`` (worst-case optimal)             standard error of the residual part
xtrace         error set by the spectral tail beyond        leave-one-out (free)
               ``m/2``; usually orders below Hutch++
xnystrace      as xtrace, symmetric PSD only, uses all      leave-one-out (free)
               ``m`` products for the Nyström sketch
=============  ==========================================  =====================================

A Gram operator ``A = F Fᵀ`` with a known factor (:func:`~kpflow.linalg.rules.gram_factor`;
NTK_S = J_S J_Sᵀ) has ``tr A = ‖F‖²_F``: the exact trace takes ``min(r, n)`` products with
``F`` or ``Fᵀ`` alone (``r`` = F's columns), half the work of ``n`` products with ``A``.
When ``r < n`` the estimators run on ``Fᵀ F`` (probes of length ``r``) if their budget
fits it (by default ``min(n, 100)``, as on ``A``; else they run on ``A``).  XTrace and
XNysTrace use Gaussian probes and depend on them only through their components in the
range of the operator, so their error has the same distribution on either side (a seed
gives other numbers); Hutchinson and Hutch++ use Rademacher probes, whose variance
2(‖A‖²_F − Σ A_ii²) depends on the diagonal, which ``Fᵀ F`` and ``F Fᵀ`` do not share.

References
----------
Hutchinson, "A stochastic estimator of the trace of the influence matrix for
Laplacian smoothing splines", Commun. Stat. Simul. Comput. 18 (1989).
Meyer, Musco, Musco, Woodruff, "Hutch++: optimal stochastic trace estimation",
SOSA 2021.
Epperly, Tropp, Webber, "XTrace: making the most of every sample in
stochastic trace estimation", SIAM J. Matrix Anal. Appl. 45 (2024).
"""

from __future__ import annotations

import math
from typing import Any

from kpflow._array import device_of
from kpflow.linalg import rules
from kpflow.linalg._common import (
    DENSE_LIMIT,
    UNIT_BLOCK,
    MatvecCounter,
    ScalarResult,
    check_budget,
    check_method,
    check_operator,
    check_square,
    host_rng,
    kernel,
    like_array,
    orthonormal_rows,
    probes,
    unit_rows,
    without_graph,
)
from kpflow.linalg._scaling import ScaledProducts
from kpflow.linalg._statistics import calibrated_mean, student_factor
from kpflow.linalg.norms import _fro_sq_exact
from kpflow.operators.base import LinearOperator

__all__ = ["trace"]

_METHODS = ("auto", "exact", "hutchinson", "hutch++", "xtrace", "xnystrace")
_MIN_BUDGET = {"hutchinson": 1, "hutch++": 3, "xtrace": 4, "xnystrace": 2}

#: The budget used when ``num_matvecs`` is not given and the operator is too large to
#: be traced exactly.
DEFAULT_BUDGET = 100


@without_graph
def trace(
    A: LinearOperator,
    *,
    method: str = "auto",
    num_matvecs: int | None = None,
    rng: Any = None,
    progress: Any = None,
) -> ScalarResult:
    """The trace ``tr A`` of a square operator from matrix-vector products.

    Parameters
    ----------
    A : LinearOperator
        Square (``shape_in == shape_out``), e.g. K, P or NTK_S = P K Pᵀ.
    method : {"auto", "exact", "hutchinson", "hutch++", "xtrace", "xnystrace"}
        ``"auto"`` uses a structured rule (:func:`kpflow.linalg.rules.exact_trace`)
        when one applies, ``"exact"`` when the budget reaches the dimension
        (or, without a budget, when ``n <= DENSE_LIMIT``), otherwise
        ``"xnystrace"`` for operators known to be PSD
        (:func:`~kpflow.linalg.rules.is_psd`) and ``"xtrace"`` for the rest.
        ``"xnystrace"`` requires a symmetric PSD operator (not checked).
        For a Gram operator ``A = F Fᵀ`` (:func:`~kpflow.linalg.rules.gram_factor`, e.g.
        NTK_S = J_S J_Sᵀ) ``"exact"`` is ``‖F‖²_F`` from ``r = min(F.size_in, n)``
        products with ``F`` or ``Fᵀ`` (``"auto"`` takes it when ``r`` is within the
        budget, or at most ``DENSE_LIMIT``), and when ``F`` has fewer columns than ``n``
        the estimators run on ``Fᵀ F`` (the module docstring says how that changes their
        error: not at all for XTrace and XNysTrace).
    num_matvecs : int, optional
        The budget of products with ``A`` (or with ``Fᵀ F``, at the same cost); default
        ``min(n, 100)``.
    rng : int, numpy.random.Generator or None
        Seed or generator for the probes (SPEC 7): it supplies one integer seed per
        probe block, drawn with on ``A``'s device; reproducible per backend.
    progress : None, bool or callable
        ``True`` shows a tqdm bar (a plain text line on stderr without tqdm);
        a callable is called as ``progress(done, total)``.

    Returns
    -------
    ScalarResult
        ``.value`` (0-d array in ``A``'s namespace, dtype and device),
        ``.error`` (standard-error estimate, see the table in the module
        docstring), ``.num_matvecs``, ``.method``; ``float()`` converts.

    Raises
    ------
    ValueError
        For a non-square operator, an unknown method, or a budget too small for
        the method (hutchinson 1, hutch++ 3, xtrace 4, xnystrace 2) or larger
        than the sketch the method can use (``n`` probes).
    TypeError
        For a bad ``rng`` or ``num_matvecs``.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import trace
    >>> A = kpflow.Dense(xp.reshape(xp.arange(9.0), (3, 3)))
    >>> trace(A, method="exact").value
    Array(12., dtype=array_api_strict.float64)
    >>> r = trace(A, method="xtrace", num_matvecs=4, rng=0)
    >>> r.method, r.num_matvecs, r.value.dtype == A.dtype, r.error is not None
    ('xtrace', 4, True, True)
    """
    where = "kpflow.linalg.trace"
    check_operator(A, where)
    check_square(A, where)
    check_method(method, _METHODS, where)
    gen = host_rng(rng, where)
    n = A.size_in
    if num_matvecs is not None:
        check_budget(num_matvecs, 0, where, method)
    if method in ("auto", "exact"):
        exact = rules.exact_trace(A)
        if exact is not None:
            return ScalarResult(exact, _zero(A), 0, "exact")
    factor = rules.gram_factor(A)
    if factor is not None:
        routed = _trace_of_gram(A, factor, method, num_matvecs, gen, progress)
        if routed is not None:
            return routed
    if method == "auto":
        if (num_matvecs is None and n <= DENSE_LIMIT) or (num_matvecs is not None and num_matvecs >= n):
            method = "exact"
        else:
            method = "xnystrace" if rules.is_psd(A) else "xtrace"
    if method == "exact":
        return _exact_by_probes(A, progress)
    budget = min(n, DEFAULT_BUDGET) if num_matvecs is None else int(num_matvecs)
    budget = check_budget(budget, _MIN_BUDGET[method], where, method)
    limit = _budget_limit(method, n)
    if budget > limit:
        msg = (
            f"{where}: method {method!r} cannot use num_matvecs={budget} on an operator of "
            f"dimension {n} (at most {limit}); use method='exact'"
        )
        raise ValueError(msg)
    counter = ScaledProducts(MatvecCounter(A, progress, budget, where), where)
    try:
        value, error = _ESTIMATORS[method](counter, budget, gen)
    finally:
        counter.close()
    value, error = counter.unscale(value), counter.unscale(error)
    return ScalarResult(value, error, counter.num_matvecs, method)


def _zero(A: LinearOperator) -> Any:
    return A.xp.zeros((), dtype=A.dtype, device=A.device)


#: What the estimators take: a counter, or one that scales its products.
Counter = MatvecCounter | ScaledProducts


def _budget_limit(method: str, n: int) -> int | float:
    """The most products ``method`` can use on an operator of dimension ``n``."""
    return {"xtrace": 2 * n, "hutch++": 3 * n, "xnystrace": n}.get(method, math.inf)


def _trace_of_gram(
    A: LinearOperator, F: LinearOperator, method: str, num_matvecs: int | None, gen: Any, progress: Any
) -> ScalarResult | None:
    """``tr(F Fᵀ)`` through the factor: ``‖F‖²_F`` exactly, or an estimator on the smaller ``Fᵀ F``.

    ``None`` when neither applies: the estimators when ``F`` has at least ``n`` columns, or
    when their budget (by default ``A``'s, ``min(n, DEFAULT_BUDGET)``) is more than ``Fᵀ F``'s
    dimension lets them use.  Then ``A`` itself is traced, as without a factor.
    """
    n, r = A.size_in, F.size_in
    small = min(n, r)
    budget_ok = small <= DENSE_LIMIT if num_matvecs is None else num_matvecs >= small
    if method == "exact" or (method == "auto" and budget_ok):
        sq, used = _fro_sq_exact(F, progress, "kpflow.linalg.trace")
        return ScalarResult(sq, _zero(A), used, "exact")
    budget = min(n, DEFAULT_BUDGET) if num_matvecs is None else num_matvecs
    if r >= n or budget > _budget_limit("xnystrace" if method == "auto" else method, r):
        return None
    # tr(F Fᵀ) = tr(Fᵀ F): the same estimators on r-long probes, at the same cost per product.
    return trace(F.T.gram(), method=method, num_matvecs=budget, rng=gen, progress=progress)


def _exact_by_probes(A: LinearOperator, progress: Any) -> ScalarResult:
    """``Σ_j e_jᵀ A e_j`` with unit vectors pushed through in chunks."""
    xp, n = A.xp, A.size_in
    counter = MatvecCounter(A, progress, n, "kpflow.linalg.trace")
    total = _zero(A)
    chunk = UNIT_BLOCK
    try:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            E = unit_rows(A, start, stop, n)
            total = total + xp.sum(counter.matmat(E) * E)
    finally:
        counter.close()
    return ScalarResult(total, _zero(A), counter.num_matvecs, "exact")


def _quadratic_forms(xp: Any, G: Any, AG: Any) -> tuple[Any, Any]:
    """Mean and calibrated standard error of the quadratic forms ``gᵢᵀ A gᵢ`` (rows of ``G``, ``A G``)."""
    return calibrated_mean(xp, xp.sum(G * AG, axis=1))


def _hutchinson_total(xp: Any, G: Any, AG: Any) -> tuple[Any, Any]:
    """The mean of the quadratic forms ``gᵢᵀ A gᵢ`` and its error (see :func:`_hutchpp_total`)."""
    mean, se = _quadratic_forms(xp, G, AG)
    bound = xp.sqrt(2.0 * xp.mean(xp.sum(AG * AG, axis=1)) / G.shape[0])
    return mean, bound if se is None else xp.maximum(se, bound)


def _hutchinson(counter: Counter, m: int, gen: Any) -> tuple[Any, Any]:
    # m Rademacher quadratic forms gᵀ A g, each unbiased for tr A.
    A = counter.op
    G = probes(gen, m, A.size_in, like_array(A), "rademacher")
    AG = counter.matmat(G)
    value, error = kernel(A, _hutchinson_total)(G, AG)
    return kernel(A, _with_floor, A.size_in, 0)(value, error, kernel(A, _row_scale)(AG))


def deflate(xp: Any, G: Any, Q: Any) -> Any:
    """``G (I − QᵀQ)``: the rows of ``G`` with the row space of orthonormal ``Q`` removed."""
    return G - (G @ xp.matrix_transpose(Q)) @ Q


def _hutchpp_total(xp: Any, Q: Any, AQ: Any, G: Any, AG: Any) -> tuple[Any, Any]:
    """``tr(Qᵀ A Q)`` plus Hutchinson on the deflated ``B = (I − P) A (I − P)``, and its error.

    Given ``Q``, the total errs only by the mean of ``g`` quadratic forms ``gᵢᵀ B gᵢ``.  Their
    variance is at most ``2‖B‖²_F`` (Rademacher or Gaussian ``gᵢ``), and ``‖B gᵢ‖²`` is unbiased
    for ``‖B‖²_F``; the error is the larger of that bound's estimate and the Student-scaled
    sample standard error.  After deflation the forms are dominated by the few largest
    eigenvalues of ``B`` (a scaled χ² with few degrees of freedom on decaying spectra), whose
    sample variance from a handful of draws is often far too small.
    """
    mean, se = _quadratic_forms(xp, G, AG)
    BG = deflate(xp, AG, Q)
    g = G.shape[0]
    bound = xp.sqrt(2.0 * xp.mean(xp.sum(BG * BG, axis=1)) / g)
    return xp.sum(Q * AQ) + mean, bound if se is None else xp.maximum(se, bound)


def _hutchpp(counter: Counter, m: int, gen: Any) -> tuple[Any, Any]:
    # Meyer et al.: Q = orth(A S) from m/3 sketch vectors, tr(Qᵀ A Q) exactly, and
    # Hutchinson on the deflated (I − QQᵀ) A (I − QQᵀ) with the remaining m/3.
    A = counter.op
    n, like = A.size_in, like_array(A)
    k = m // 3
    g = m - 2 * k
    S = probes(gen, k, n, like, "rademacher")
    AS = counter.matmat(S)
    Q = kernel(A, orthonormal_rows)(AS)
    AQ = counter.matmat(Q)
    G = kernel(A, deflate)(probes(gen, g, n, like, "rademacher"), Q)
    value, error = kernel(A, _hutchpp_total)(Q, AQ, G, counter.matmat(G))
    return kernel(A, _with_floor, n, 0)(value, error, kernel(A, _row_scale)(AS))


def _range_basis(xp: Any, Y: Any) -> tuple[Any, Any]:
    """Rows ``Q`` (s, n), orthonormal, and ``R`` (s, s) with ``Yᵀ = Qᵀ R`` (QR of ``Yᵀ``)."""
    Qm, R = xp.linalg.qr(xp.matrix_transpose(Y))  # (n, s), (s, s)
    return xp.matrix_transpose(Qm), R


def _numerical_rank(xp: Any, R: Any) -> Any:
    s = R.shape[0]
    sig = xp.linalg.svdvals(R)
    return xp.count_nonzero(sig > s * float(xp.finfo(R.dtype).eps) * xp.max(sig))


def _pair_inverse(g11: Any, g12: Any, g22: Any) -> tuple[Any, Any, Any]:
    """The entries of the inverse of the symmetric 2 × 2 blocks ``[[g11, g12], [g12, g22]]``."""
    det = g11 * g22 - g12 * g12
    return g22 / det, -g12 / det, g11 / det


def _pairs(xp: Any, M: Any) -> tuple[Any, Any, Any, Any]:
    """The 2 × 2 blocks ``M[[i, j]][:, [i, j]]`` of an (s, s) matrix on the (i, j) grid, entrywise."""
    d = xp.linalg.diagonal(M)
    return d[:, None], M, xp.matrix_transpose(M), d[None, :]


def _vector_pairs(xp: Any, V: Any) -> tuple[Any, Any]:
    """``(V[i, i], V[j, i])`` on the (i, j) grid: column ``i`` of ``V`` at rows ``i`` and ``j``."""
    return xp.linalg.diagonal(V)[:, None], xp.matrix_transpose(V)


def _jackknife(xp: Any, E: Any) -> Any:
    """The jackknife standard error from leave-two-out estimates ``E[i, j]`` (``i ≠ j``).

    ``θ₍ⱼ₎ = mean_{i≠j} E[i, j]`` is the estimator run without probe ``j``; the error is
    ``√((s−1)/s Σⱼ (θ₍ⱼ₎ − θ̄)²)`` times :func:`student_factor` of ``s`` (few probes).  By the
    Efron–Stein inequality its square is an upward-biased estimate of the variance of the
    estimator on ``s − 1`` probes, itself above the variance on ``s``.
    """
    s = E.shape[0]
    off = 1.0 - xp.eye(s, dtype=E.dtype, device=device_of(E))
    theta = xp.sum(xp.where(off > 0, E, xp.zeros_like(E)), axis=0) / (s - 1)
    return xp.sqrt((s - 1) / s * xp.sum((theta - xp.mean(theta)) ** 2)) * student_factor(s)


def _xtrace_full_rank(xp: Any, Om: Any, Y: Any, Q: Any, Z: Any, R: Any) -> tuple[Any, Any]:
    """The ``s`` leave-one-out XTrace estimates (their mean is the estimate) and its jackknife error.

    The leave-one-out basis of estimate ``i`` is ``range(Q)`` minus ``nᵢ = R⁻ᵀ eᵢ``; without
    probe ``j`` as well it is ``range(Q)`` minus ``span(nᵢ, nⱼ)``, so every leave-two-out
    estimate ``E[i, j]`` comes from ``s × s`` algebra: with ``N`` (the unit columns ``nₖ``),
    ``Γ = NᵀN``, ``β = Γ₂⁻¹ N₂ᵀ wᵢ`` and ``c = wᵢ − N₂ β`` (``N₂ = [nᵢ nⱼ]``),
    ``E[i, j] = tr H − tr(Γ₂⁻¹ N₂ᵀ H N₂) + ωᵢᵀ A ωᵢ − tᵢ·c − c·R eᵢ + cᵀ H c``,
    where ``N₂ᵀ R eᵢ`` is ``(1/‖R⁻ᵀ eᵢ‖, 0)`` because ``R⁻¹ R = I``.
    """
    H = Q @ xp.matrix_transpose(Z)  # H[j, l] = q_jᵀ A q_l
    W = Q @ xp.matrix_transpose(Om)  # columns w_i = Qᵀ ω_i
    T = Z @ xp.matrix_transpose(Om)  # columns t_i = (ω_iᵀ A Q)ᵀ
    Ninv = xp.matrix_transpose(xp.linalg.inv(R))  # columns R⁻ᵀ e_i
    scale = xp.linalg.vector_norm(Ninv, axis=0)
    N = Ninv / scale[None, :]
    NT = xp.matrix_transpose(N)
    tr_h = xp.linalg.trace(H)
    quad = xp.sum(Om * Y, axis=1)  # ω_iᵀ A ω_i
    tw = xp.sum(T * W, axis=0)
    wr = xp.sum(W * R, axis=0)
    whw = xp.sum(W * (H @ W), axis=0)
    # leave-one-out (the estimate)
    C = W - N * xp.sum(N * W, axis=0)[None, :]  # c_i = (I − n_i n_iᵀ) w_i
    ests = (
        tr_h
        - xp.sum(N * (H @ N), axis=0)
        + quad
        - xp.sum(T * C, axis=0)
        - xp.sum(C * R, axis=0)
        + xp.sum(C * (H @ C), axis=0)
    )
    # leave-two-out (the jackknife)
    g11, g12, _, g22 = _pairs(xp, NT @ N)
    eye = xp.eye(R.shape[0], dtype=R.dtype, device=device_of(R))
    g12 = g12 - eye * g12  # the diagonal (i = j) is not a pair; keep it finite
    i11, i12, i22 = _pair_inverse(g11, g12, g22)
    h11, h12, h21, h22 = _pairs(xp, NT @ H @ N)
    a1, a2 = _vector_pairs(xp, NT @ W)
    b1 = i11 * a1 + i12 * a2
    b2 = i12 * a1 + i22 * a2
    n1, n2 = _vector_pairs(xp, NT @ T)
    p1, p2 = _vector_pairs(xp, NT @ xp.matrix_transpose(H) @ W)  # w_iᵀ H N₂
    q1, q2 = _vector_pairs(xp, NT @ H @ W)  # N₂ᵀ H w_i
    E = (
        tr_h
        - (i11 * h11 + i12 * (h12 + h21) + i22 * h22)
        + quad[:, None]
        - (tw[:, None] - (b1 * n1 + b2 * n2))
        - (wr[:, None] - b1 / scale[:, None])
        + whw[:, None]
        - (p1 * b1 + p2 * b2)
        - (q1 * b1 + q2 * b2)
        + (b1 * b1 * h11 + b1 * b2 * (h12 + h21) + b2 * b2 * h22)
    )
    return ests, _jackknife(xp, E)


def xtrace_estimates(counter: Counter, s: int, gen: Any) -> tuple[Any, Any, Any]:
    """The ``s`` exchangeable XTrace estimates (2s matvecs), the error of their mean, and ``‖A Ω‖_F/√s``.

    Estimate ``i`` is ``tr(Qᵢᵀ A Qᵢ) + ωᵢᵀ (I − QᵢQᵢᵀ) A (I − QᵢQᵢᵀ) ωᵢ`` with
    ``Qᵢ`` an orthonormal basis of ``A Ω₋ᵢ`` (all test vectors but ``ωᵢ``).
    ``range(Qᵢ)`` is ``range(Q)`` minus the direction ``Q sᵢ`` with
    ``sᵢ ∝ R⁻ᵀ eᵢ`` (``A Ω = Q R``), so every leave-one-out basis comes from one
    QR and one block ``A Q`` (Epperly, Tropp, Webber 2024).  The estimates are
    correlated (they share probes), so the error of their mean is the jackknife's
    (:func:`_jackknife`), not their standard deviation over ``√s``.  The last value,
    an estimate of ``‖A‖_F``, scales the rounding floor of the error.
    """
    A = counter.op
    Om = probes(gen, s, A.size_in, like_array(A), "gaussian")  # rows ω_i
    Y = counter.matmat(Om)  # rows y_i = A ω_i
    Q, R = kernel(A, _range_basis)(Y)  # A Ω = (Q R)ᵀ: Q (s, n) rows, R (s, s)
    Z = counter.matmat(Q)  # rows z_j = A q_j
    rank = int(kernel(A, _numerical_rank)(R))  # the one host sync: which formula applies
    if rank < s:
        ests = kernel(A, _xtrace_rank_deficient, rank)(Om, Y, Q, Z, R)
        error = kernel(A, calibrated_mean)(ests)[1]
    else:
        ests, error = kernel(A, _xtrace_full_rank)(Om, Y, Q, Z, R)
    return ests, error, kernel(A, _row_scale)(Y)


def _row_scale(xp: Any, Y: Any) -> Any:
    """``‖Y‖_F / √s`` for ``s`` rows ``A ωᵢ``: an estimate of ``‖A‖_F`` (Gaussian or Rademacher ``ωᵢ``)."""
    return xp.linalg.vector_norm(Y) / math.sqrt(Y.shape[0])


#: The rounding floor of a trace estimate's error is ``ROUNDING_FLOOR · ε · n · ‖A‖_F`` (``ε`` the
#: dtype's machine epsilon, ``‖A‖_F`` estimated from the probes' products), and
#: ``ROUNDING_FLOOR · ε · (n + s²) · ‖A‖_F`` for XNysTrace with ``s`` probes: the estimators'
#: dense algebra and sums over ``n`` entries err by a few ``ε √n ‖A‖_F``; XNysTrace's shift
#: ``ν = ε ‖A Ω‖_F/√s`` enters its value as ``ν n``, and its Nyström core floors eigenvalues of
#: ``Ωᵀ A Ω`` at ``ε s`` times the largest, a bias of order ``ε s² ‖A‖₂`` (measured in float64:
#: 0.6 to 3.4 ``ε (n + s²) ‖A‖_F`` for operators of rank 10 or spectrum ``e⁻ᵏ``, n = 120 to 400,
#: s = 40 to 100).  It matters only for near-exact results (a sketch that holds the operator's
#: whole range), whose sampling error is itself rounding.
ROUNDING_FLOOR = 8.0


def _with_floor(xp: Any, n: int, s: int, value: Any, error: Any, scale: Any) -> tuple[Any, Any]:
    eps = float(xp.finfo(value.dtype).eps)
    floor = ROUNDING_FLOOR * eps * (n + s * s) * scale
    return value, floor if error is None else xp.maximum(error, floor)


def _xtrace_rank_deficient(xp: Any, rank: int, Om: Any, Y: Any, Q: Any, Z: Any, R: Any) -> Any:
    """XTrace when ``A Ω`` has numerical rank ``r < s``.

    Then every ``A Ω₋ᵢ`` spans the same ``r``-dimensional range (``A`` has rank ``r``
    up to rounding), so each estimate is ``tr(Q_rᵀ A Q_r) + ωᵢᵀ (I − P) A (I − P) ωᵢ``
    with ``P`` onto that range; the second term is rounding error.
    """
    U, _, _ = xp.linalg.svd(R)
    Ur = U[:, :rank]  # Q Ur spans range(A Ω)
    Qr = xp.matrix_transpose(Ur) @ Q  # rows
    Zr = xp.matrix_transpose(Ur) @ Z  # rows A q
    H = Qr @ xp.matrix_transpose(Zr)
    W = Qr @ xp.matrix_transpose(Om)
    T = Zr @ xp.matrix_transpose(Om)
    Rr = Qr @ xp.matrix_transpose(Y)
    return (
        xp.linalg.trace(H)
        + xp.sum(Om * Y, axis=1)
        - xp.sum(T * W, axis=0)
        - xp.sum(W * Rr, axis=0)
        + xp.sum(W * (H @ W), axis=0)
    )


def _xtrace(counter: Counter, m: int, gen: Any) -> tuple[Any, Any]:
    ests, error, scale = xtrace_estimates(counter, m // 2, gen)
    A = counter.op
    return kernel(A, _with_floor, A.size_in, 0)(kernel(A, _mean)(ests), error, scale)


def _mean(xp: Any, x: Any) -> Any:
    return xp.mean(x)


def _nystrom_factors(xp: Any, Om: Any, Y: Any) -> tuple[Any, Any, Any, Any]:
    """``Y_ν = Y + ν Ω``, ``X`` with ``Xᵀ X = (Ωᵀ Y_ν)⁻¹``, the factor ``F = X Y_ν`` and ``ν``."""
    s = Om.shape[0]
    finfo = xp.finfo(Y.dtype)
    eps = float(finfo.eps)
    nu = eps * xp.linalg.vector_norm(Y) / math.sqrt(s)  # a 0-d array: no host round trip
    Yn = Y + nu * Om
    Hn = Om @ xp.matrix_transpose(Yn)
    h, V = xp.linalg.eigh((Hn + xp.matrix_transpose(Hn)) / 2)
    floor = xp.maximum(xp.max(h), 0.0) * (eps * s) + float(finfo.smallest_normal)
    h = xp.maximum(h, floor)
    X = xp.matrix_transpose(V) / xp.sqrt(h)[:, None]  # XᵀX = Hν⁻¹
    return Yn, X, X @ Yn, nu


def nystrom_sketch(counter: Counter, s: int, gen: Any) -> dict[str, Any]:
    """A stable (shifted) Nyström sketch of a PSD ``A`` with ``s`` matvecs.

    ``A + νI ≈ Fᵀ F`` with ``Y_ν = (A + νI) Ω`` (rows ``(A + νI) ωᵢ``) and the factor
    ``F = X Y_ν`` (s, n), where ``Xᵀ X = (Ωᵀ Y_ν)⁻¹`` comes from an eigendecomposition
    (robust where a Cholesky factorisation would fail in float32).  Every estimator built
    on the sketch uses ``Y_ν`` only through ``F``, so no QR of ``Y_ν`` is formed: with
    ``Y_νᵀ = Qᵀ R``, ``F = X Rᵀ Q`` is the same matrix (up to rounding of the same order)
    as the rotated factor ``Bᵀ Q`` (``B = R Xᵀ``) of the textbook algorithm, and an
    eigensolver that needs ``Q`` forms it itself (:func:`nystrom_basis`).  The shift ``ν``
    is a 0-d array.
    """
    A = counter.op
    Om = probes(gen, s, A.size_in, like_array(A), "gaussian")
    Y = counter.matmat(Om)
    Yn, X, F, nu = kernel(A, _nystrom_factors)(Om, Y)
    return {"F": F, "Yn": Yn, "X": X, "nu": nu, "n": A.size_in, "scale": kernel(A, _row_scale)(Y)}


def nystrom_basis(A: LinearOperator, sk: dict[str, Any]) -> tuple[Any, Any]:
    """Orthonormal rows ``Q`` (s, n) and the core ``B = R Xᵀ`` (s, s) of a sketch: ``A + νI ≈ Qᵀ B Bᵀ Q``."""
    return kernel(A, _nystrom_rotated)(sk["Yn"], sk["X"])


def _nystrom_rotated(xp: Any, Yn: Any, X: Any) -> tuple[Any, Any]:
    Q, R = _range_basis(xp, Yn)
    return Q, R @ xp.matrix_transpose(X)


def _xnystrace_total(xp: Any, n: int, F: Any, X: Any, nu: Any) -> tuple[Any, Any]:
    """The XNysTrace estimate and its jackknife error.

    Leave-one-out Nyström: ``Â₍ᵢ₎ = Â − zᵢzᵢᵀ`` with ``zᵢ = Y gᵢ/√Gᵢᵢ``, ``G = (ΩᵀY)⁻¹``, so
    estimate ``i`` is ``tr Â − ‖zᵢ‖² + 1/Gᵢᵢ`` (the quadratic forms ``ωᵢᵀAωᵢ`` and ``ωᵢᵀÂωᵢ``
    cancel).  Without probes ``i`` and ``j`` (``K = {i, j}``), ``Â − Â₍ₖ₎ = Y G_{:K} G_{KK}⁻¹ G_{K:} Yᵀ``
    (the Schur complement), so the leave-two-out estimate is
    ``E[i, j] = tr Â − tr(G_{KK}⁻¹ (G YᵀY G)_{KK}) + (G_{KK}⁻¹)ᵢᵢ``: the jackknife
    (:func:`_jackknife`) from ``s × s`` algebra.
    """
    G = xp.matrix_transpose(X) @ X
    FFt = F @ xp.matrix_transpose(F)  # X YᵀY Xᵀ (s, s)
    M2 = xp.matrix_transpose(X) @ FFt @ X  # G YᵀY G
    g = xp.linalg.diagonal(G)
    total = xp.linalg.trace(FFt)  # tr Â = ‖F‖²_F
    ests = total - xp.linalg.diagonal(M2) / g + 1.0 / g
    # In units of d = √diag(G) (a correlation matrix: the 2 × 2 inverses stay in range)
    d = xp.sqrt(g)
    outer = d[:, None] * d[None, :]
    g11, g12, _, g22 = _pairs(xp, G / outer)
    eye = xp.eye(G.shape[0], dtype=G.dtype, device=device_of(G))
    g12 = g12 - eye * g12  # the diagonal (i = j) is not a pair; keep it finite
    i11, i12, i22 = _pair_inverse(g11, g12, g22)
    m11, m12, m21, m22 = _pairs(xp, M2 / outer)
    E = total - (i11 * m11 + i12 * (m12 + m21) + i22 * m22) + i11 / g[:, None]
    return xp.mean(ests) - nu * n, _jackknife(xp, E)


def _xnystrace(counter: Counter, m: int, gen: Any) -> tuple[Any, Any]:
    sk = nystrom_sketch(counter, m, gen)
    A = counter.op
    value, error = kernel(A, _xnystrace_total, sk["n"])(sk["F"], sk["X"], sk["nu"])
    return kernel(A, _with_floor, A.size_in, m)(value, error, sk["scale"])


_ESTIMATORS = {
    "hutchinson": _hutchinson,
    "hutch++": _hutchpp,
    "xtrace": _xtrace,
    "xnystrace": _xnystrace,
}
