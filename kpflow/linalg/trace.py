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
    MatvecCounter,
    ScalarResult,
    check_budget,
    check_method,
    check_operator,
    check_square,
    dtype_eps,
    host_rng,
    like_array,
    orthonormal_rows,
    probes,
    unit_rows,
)
from kpflow.operators.base import LinearOperator

__all__ = ["trace"]

_METHODS = ("auto", "exact", "hutchinson", "hutch++", "xtrace", "xnystrace")
_MIN_BUDGET = {"hutchinson": 1, "hutch++": 3, "xtrace": 4, "xnystrace": 2}

#: The budget used when ``num_matvecs`` is not given and the operator is too large to
#: be traced exactly.
DEFAULT_BUDGET = 100


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
    num_matvecs : int, optional
        The budget of products with ``A``; default ``min(n, 100)``.
    rng : int, numpy.random.Generator or None
        Seed or generator for the probes (drawn on the host, SPEC 7).
    progress : None, bool or callable
        ``True`` shows a tqdm bar (if tqdm is installed); a callable is
        called as ``progress(done, total)``.

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
    if method == "auto":
        exact = rules.exact_trace(A)
        if exact is not None:
            return ScalarResult(exact, _zero(A), 0, "exact")
        if (num_matvecs is None and n <= DENSE_LIMIT) or (num_matvecs is not None and num_matvecs >= n):
            method = "exact"
        else:
            method = "xnystrace" if rules.is_psd(A) else "xtrace"
    if method == "exact":
        exact = rules.exact_trace(A)
        if exact is not None:
            return ScalarResult(exact, _zero(A), 0, "exact")
        return _exact_by_probes(A, progress)
    budget = min(n, DEFAULT_BUDGET) if num_matvecs is None else int(num_matvecs)
    budget = check_budget(budget, _MIN_BUDGET[method], where, method)
    limit = 2 * n if method == "xtrace" else (3 * n if method == "hutch++" else n)
    if method != "hutchinson" and budget > limit:
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


def _exact_by_probes(A: LinearOperator, progress: Any) -> ScalarResult:
    """``Σ_j e_jᵀ A e_j`` with unit vectors pushed through in chunks."""
    xp, n = A.xp, A.size_in
    counter = MatvecCounter(A, progress, n, "kpflow.linalg.trace")
    total = _zero(A)
    chunk = 256
    try:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            E = unit_rows(A, start, stop, n)
            total = total + xp.sum(counter.matmat(E) * E)
    finally:
        counter.close()
    return ScalarResult(total, _zero(A), counter.num_matvecs, "exact")


def _std_error(xp: Any, samples: Any) -> Any:
    m = samples.shape[0]
    if m < 2:
        return None
    return xp.std(samples, correction=1) / math.sqrt(m)


def hutchinson_samples(counter: MatvecCounter, m: int, gen: Any) -> Any:
    """``m`` Rademacher quadratic forms ``gᵀ A g`` (each unbiased for ``tr A``)."""
    A = counter.op
    G = probes(gen, m, A.size_in, like_array(A), "rademacher")
    return A.xp.sum(G * counter.matmat(G), axis=1)


def _hutchinson(counter: MatvecCounter, m: int, gen: Any) -> tuple[Any, Any]:
    xp = counter.op.xp
    samples = hutchinson_samples(counter, m, gen)
    return xp.mean(samples), _std_error(xp, samples)


def _hutchpp(counter: MatvecCounter, m: int, gen: Any) -> tuple[Any, Any]:
    # Meyer et al.: Q = orth(A S) from m/3 sketch vectors, tr(Qᵀ A Q) exactly, and
    # Hutchinson on the deflated (I − QQᵀ) A (I − QQᵀ) with the remaining m/3.
    A = counter.op
    xp, n, like = A.xp, A.size_in, like_array(A)
    k = m // 3
    g = m - 2 * k
    S = probes(gen, k, n, like, "rademacher")
    Q = orthonormal_rows(xp, counter.matmat(S))
    low_rank = xp.sum(Q * counter.matmat(Q))
    G = probes(gen, g, n, like, "rademacher")
    G = G - (G @ xp.matrix_transpose(Q)) @ Q
    samples = xp.sum(G * counter.matmat(G), axis=1)
    return low_rank + xp.mean(samples), _std_error(xp, samples)


def xtrace_estimates(counter: MatvecCounter, s: int, gen: Any) -> Any:
    """The ``s`` exchangeable XTrace estimates (2s matvecs); their mean is the estimate.

    Estimate ``i`` is ``tr(Qᵢᵀ A Qᵢ) + ωᵢᵀ (I − QᵢQᵢᵀ) A (I − QᵢQᵢᵀ) ωᵢ`` with
    ``Qᵢ`` an orthonormal basis of ``A Ω₋ᵢ`` (all test vectors but ``ωᵢ``).
    ``range(Qᵢ)`` is ``range(Q)`` minus the direction ``Q sᵢ`` with
    ``sᵢ ∝ R⁻ᵀ eᵢ`` (``A Ω = Q R``), so every leave-one-out basis comes from one
    QR and one block ``A Q`` (Epperly, Tropp, Webber 2024).
    """
    A = counter.op
    xp, n = A.xp, A.size_in
    Om = probes(gen, s, n, like_array(A), "gaussian")  # rows ω_i
    Y = counter.matmat(Om)  # rows y_i = A ω_i
    Qm, R = xp.linalg.qr(xp.matrix_transpose(Y))  # (n, s), (s, s)
    Q = xp.matrix_transpose(Qm)
    Z = counter.matmat(Q)  # rows z_j = A q_j
    H = Q @ xp.matrix_transpose(Z)  # H[j, l] = q_jᵀ A q_l
    W = Q @ xp.matrix_transpose(Om)  # columns w_i = Qᵀ ω_i
    T = Z @ xp.matrix_transpose(Om)  # columns t_i = (ω_iᵀ A Q)ᵀ
    sig = xp.linalg.svdvals(R)
    rank = int(xp.sum(xp.astype(sig > s * dtype_eps(A) * xp.max(sig), xp.int64)))
    if rank < s:
        return _xtrace_rank_deficient(xp, Om, Y, Q, Z, R, rank)
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


def _xtrace_rank_deficient(xp: Any, Om: Any, Y: Any, Q: Any, Z: Any, R: Any, rank: int) -> Any:
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
    xp = counter.op.xp
    ests = xtrace_estimates(counter, m // 2, gen)
    return xp.mean(ests), _std_error(xp, ests)


def nystrom_sketch(counter: MatvecCounter, s: int, gen: Any) -> dict[str, Any]:
    """A stable (shifted) Nyström sketch of a PSD ``A`` with ``s`` matvecs.

    ``A + νI ≈ Q B Bᵀ Qᵀ`` with ``Y_ν = (A + νI) Ω = Q R`` and
    ``B = R Xᵀ``, where ``Xᵀ X = (Ωᵀ Y_ν)⁻¹`` comes from an eigendecomposition
    (robust where a Cholesky factorisation would fail in float32).
    """
    A = counter.op
    xp, n = A.xp, A.size_in
    eps = dtype_eps(A)
    Om = probes(gen, s, n, like_array(A), "gaussian")
    Y = counter.matmat(Om)
    nu = eps * float(xp.linalg.vector_norm(Y)) / math.sqrt(s)
    Yn = Y + nu * Om
    Hn = Om @ xp.matrix_transpose(Yn)
    h, V = xp.linalg.eigh((Hn + xp.matrix_transpose(Hn)) / 2)
    floor = max(float(xp.max(h)), 0.0) * eps * s + float(xp.finfo(A.dtype).smallest_normal)
    h = xp.maximum(h, floor)
    X = xp.matrix_transpose(V) / xp.sqrt(h)[:, None]  # XᵀX = Hν⁻¹
    Qm, R = xp.linalg.qr(xp.matrix_transpose(Yn))
    return {"Q": xp.matrix_transpose(Qm), "B": R @ xp.matrix_transpose(X), "X": X, "nu": nu, "n": n}


def _xnystrace(counter: MatvecCounter, m: int, gen: Any) -> tuple[Any, Any]:
    # Leave-one-out Nyström: Â₍ᵢ₎ = Â − zᵢzᵢᵀ with zᵢ = Y gᵢ/√Gᵢᵢ, G = (ΩᵀY)⁻¹, so
    # estimate i is tr Â − ‖zᵢ‖² + 1/Gᵢᵢ (the quadratic forms ωᵢᵀAωᵢ and ωᵢᵀÂωᵢ cancel).
    xp = counter.op.xp
    sk = nystrom_sketch(counter, m, gen)
    B, X = sk["B"], sk["X"]
    g = xp.sum(X * X, axis=0)  # G_ii
    BX = B @ X
    ests = xp.sum(B * B) - xp.sum(BX * BX, axis=0) / g + 1.0 / g
    return xp.mean(ests) - sk["nu"] * sk["n"], _std_error(xp, ests)


_ESTIMATORS = {
    "hutchinson": _hutchinson,
    "hutch++": _hutchpp,
    "xtrace": _xtrace,
    "xnystrace": _xnystrace,
}
