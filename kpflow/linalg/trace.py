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
    mean_and_error,
    orthonormal_rows,
    probes,
    unit_rows,
    without_graph,
)
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
    counter = MatvecCounter(A, progress, budget, where)
    try:
        value, error = _ESTIMATORS[method](counter, budget, gen)
    finally:
        counter.close()
    return ScalarResult(value, error, counter.num_matvecs, method)


def _zero(A: LinearOperator) -> Any:
    return A.xp.zeros((), dtype=A.dtype, device=A.device)


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
    """Mean and standard error of the quadratic forms ``gᵢᵀ A gᵢ`` (rows of ``G`` and ``A G``)."""
    return mean_and_error(xp, xp.sum(G * AG, axis=1))


def _hutchinson(counter: MatvecCounter, m: int, gen: Any) -> tuple[Any, Any]:
    # m Rademacher quadratic forms gᵀ A g, each unbiased for tr A.
    A = counter.op
    G = probes(gen, m, A.size_in, like_array(A), "rademacher")
    return kernel(A, _quadratic_forms)(G, counter.matmat(G))


def deflate(xp: Any, G: Any, Q: Any) -> Any:
    """``G (I − QᵀQ)``: the rows of ``G`` with the row space of orthonormal ``Q`` removed."""
    return G - (G @ xp.matrix_transpose(Q)) @ Q


def _hutchpp_total(xp: Any, Q: Any, AQ: Any, G: Any, AG: Any) -> tuple[Any, Any]:
    mean, se = _quadratic_forms(xp, G, AG)
    return xp.sum(Q * AQ) + mean, se


def _hutchpp(counter: MatvecCounter, m: int, gen: Any) -> tuple[Any, Any]:
    # Meyer et al.: Q = orth(A S) from m/3 sketch vectors, tr(Qᵀ A Q) exactly, and
    # Hutchinson on the deflated (I − QQᵀ) A (I − QQᵀ) with the remaining m/3.
    A = counter.op
    n, like = A.size_in, like_array(A)
    k = m // 3
    g = m - 2 * k
    S = probes(gen, k, n, like, "rademacher")
    Q = kernel(A, orthonormal_rows)(counter.matmat(S))
    AQ = counter.matmat(Q)
    G = kernel(A, deflate)(probes(gen, g, n, like, "rademacher"), Q)
    return kernel(A, _hutchpp_total)(Q, AQ, G, counter.matmat(G))


def _range_basis(xp: Any, Y: Any) -> tuple[Any, Any]:
    """Rows ``Q`` (s, n), orthonormal, and ``R`` (s, s) with ``Yᵀ = Qᵀ R`` (QR of ``Yᵀ``)."""
    Qm, R = xp.linalg.qr(xp.matrix_transpose(Y))  # (n, s), (s, s)
    return xp.matrix_transpose(Qm), R


def _numerical_rank(xp: Any, R: Any) -> Any:
    s = R.shape[0]
    sig = xp.linalg.svdvals(R)
    return xp.count_nonzero(sig > s * float(xp.finfo(R.dtype).eps) * xp.max(sig))


def _xtrace_full_rank(xp: Any, Om: Any, Y: Any, Q: Any, Z: Any, R: Any) -> Any:
    H = Q @ xp.matrix_transpose(Z)  # H[j, l] = q_jᵀ A q_l
    W = Q @ xp.matrix_transpose(Om)  # columns w_i = Qᵀ ω_i
    T = Z @ xp.matrix_transpose(Om)  # columns t_i = (ω_iᵀ A Q)ᵀ
    S = xp.matrix_transpose(xp.linalg.inv(R))  # columns ∝ R⁻ᵀ e_i
    S = S / xp.linalg.vector_norm(S, axis=0)[None, :]
    C = W - S * xp.sum(S * W, axis=0)[None, :]  # c_i = (I − s_i s_iᵀ) w_i
    return (
        xp.linalg.trace(H)
        - xp.sum(S * (H @ S), axis=0)
        + xp.sum(Om * Y, axis=1)
        - xp.sum(T * C, axis=0)
        - xp.sum(C * R, axis=0)
        + xp.sum(C * (H @ C), axis=0)
    )


def xtrace_estimates(counter: MatvecCounter, s: int, gen: Any) -> Any:
    """The ``s`` exchangeable XTrace estimates (2s matvecs); their mean is the estimate.

    Estimate ``i`` is ``tr(Qᵢᵀ A Qᵢ) + ωᵢᵀ (I − QᵢQᵢᵀ) A (I − QᵢQᵢᵀ) ωᵢ`` with
    ``Qᵢ`` an orthonormal basis of ``A Ω₋ᵢ`` (all test vectors but ``ωᵢ``).
    ``range(Qᵢ)`` is ``range(Q)`` minus the direction ``Q sᵢ`` with
    ``sᵢ ∝ R⁻ᵀ eᵢ`` (``A Ω = Q R``), so every leave-one-out basis comes from one
    QR and one block ``A Q`` (Epperly, Tropp, Webber 2024).
    """
    A = counter.op
    Om = probes(gen, s, A.size_in, like_array(A), "gaussian")  # rows ω_i
    Y = counter.matmat(Om)  # rows y_i = A ω_i
    Q, R = kernel(A, _range_basis)(Y)  # A Ω = (Q R)ᵀ: Q (s, n) rows, R (s, s)
    Z = counter.matmat(Q)  # rows z_j = A q_j
    rank = int(kernel(A, _numerical_rank)(R))  # the one host sync: which formula applies
    if rank < s:
        return kernel(A, _xtrace_rank_deficient, rank)(Om, Y, Q, Z, R)
    return kernel(A, _xtrace_full_rank)(Om, Y, Q, Z, R)


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


def _xtrace(counter: MatvecCounter, m: int, gen: Any) -> tuple[Any, Any]:
    ests = xtrace_estimates(counter, m // 2, gen)
    return kernel(counter.op, mean_and_error)(ests)


def _nystrom_factors(xp: Any, Om: Any, Y: Any) -> tuple[Any, Any, Any, Any]:
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
    Q, R = _range_basis(xp, Yn)
    return Q, R @ xp.matrix_transpose(X), X, nu


def nystrom_sketch(counter: MatvecCounter, s: int, gen: Any) -> dict[str, Any]:
    """A stable (shifted) Nyström sketch of a PSD ``A`` with ``s`` matvecs.

    ``A + νI ≈ Q B Bᵀ Qᵀ`` with ``Y_ν = (A + νI) Ω = Q R`` and
    ``B = R Xᵀ``, where ``Xᵀ X = (Ωᵀ Y_ν)⁻¹`` comes from an eigendecomposition
    (robust where a Cholesky factorisation would fail in float32).  The shift ``ν``
    is a 0-d array.
    """
    A = counter.op
    Om = probes(gen, s, A.size_in, like_array(A), "gaussian")
    Y = counter.matmat(Om)
    Q, B, X, nu = kernel(A, _nystrom_factors)(Om, Y)
    return {"Q": Q, "B": B, "X": X, "nu": nu, "n": A.size_in}


def _xnystrace_total(xp: Any, n: int, B: Any, X: Any, nu: Any) -> tuple[Any, Any]:
    # Leave-one-out Nyström: Â₍ᵢ₎ = Â − zᵢzᵢᵀ with zᵢ = Y gᵢ/√Gᵢᵢ, G = (ΩᵀY)⁻¹, so
    # estimate i is tr Â − ‖zᵢ‖² + 1/Gᵢᵢ (the quadratic forms ωᵢᵀAωᵢ and ωᵢᵀÂωᵢ cancel).
    g = xp.sum(X * X, axis=0)  # G_ii
    BX = B @ X
    mean, se = mean_and_error(xp, xp.sum(B * B) - xp.sum(BX * BX, axis=0) / g + 1.0 / g)
    return mean - nu * n, se


def _xnystrace(counter: MatvecCounter, m: int, gen: Any) -> tuple[Any, Any]:
    sk = nystrom_sketch(counter, m, gen)
    return kernel(counter.op, _xnystrace_total, sk["n"])(sk["B"], sk["X"], sk["nu"])


_ESTIMATORS = {
    "hutchinson": _hutchinson,
    "hutch++": _hutchpp,
    "xtrace": _xtrace,
    "xnystrace": _xnystrace,
}
