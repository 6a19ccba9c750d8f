"""Frobenius norm and alignment of operators (effective rank: :mod:`kpflow.linalg.rank`).

Cost comparison (``m`` = budget of products with the operator(s)):

* ``fro_norm``: exact from a rule, or ``min(n_in, n_out)`` unit probes; otherwise Hutch++ on
  ``‖A‖²_F = tr(AᵀA)`` deflated by a sketch of A's range (or plain Hutchinson).  A Gram
  operator ``A = F Fᵀ`` whose factor has fewer columns ``r < n`` (``rules.gram_factor``:
  NTK_S = J_S J_Sᵀ with fewer parameters than states) is handled on the smaller side,
  ``‖F Fᵀ‖_F = ‖Fᵀ F‖_F``: ``r`` unit probes, or Hutch++ with ``r``-long probes
  (see :func:`gram_small_side`).
* ``alignment``: exact from rules for ``⟨A,B⟩_F`` and both norms; else exact from the
  cheaper of ``2 min(n_in, n_out)`` unit probes and, for two Gram operators ``F Fᵀ``,
  ``G Gᵀ``, ``(3r + 2s)/2`` products on the factors' sides (whenever that costs at most
  five times the default budget); otherwise one deflated sketch shared by A and B, whose
  cosine is scale-free and in range by construction.
"""

from __future__ import annotations

import math
from typing import Any, cast

from kpflow.linalg import rules
from kpflow.linalg._common import (
    DENSE_LIMIT,
    UNIT_BLOCK,
    MatvecCounter,
    ScalarResult,
    check_budget,
    check_method,
    check_operator,
    host_rng,
    kernel,
    like_array,
    mean_and_error,
    orthonormal_rows,
    probes,
    unit_rows,
    without_graph,
)
from kpflow.linalg._scaling import ScaledProducts
from kpflow.linalg._statistics import student_factor
from kpflow.operators.base import LinearOperator, common_meta
from kpflow.operators.functions import is_symmetric

__all__ = ["alignment", "fro_norm", "gram_small_side"]

DEFAULT_BUDGET = 200


def _zero(A: LinearOperator) -> Any:
    return A.xp.zeros((), dtype=A.dtype, device=A.device)


# -- the smaller side of a Gram operator --------------------------------------------------------
def gram_small_side(A: LinearOperator) -> LinearOperator | None:
    """``Fᵀ F`` when ``A = F Fᵀ`` (:func:`~kpflow.linalg.rules.gram_factor`) and ``F`` has fewer
    columns than ``A`` has rows; else ``None``.

    ``Fᵀ F`` has ``A``'s nonzero spectrum, so ``tr``, ``‖·‖_F`` and the participation ratio
    are the same, and one product with it costs one with ``F`` and one with ``Fᵀ``, as one
    with ``A`` does; its probes are ``F.size_in`` long instead of ``A.size_in``.  For
    NTK_S = J_S J_Sᵀ this is the parameter side J_Sᵀ J_S (the Gauss–Newton matrix).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg.norms import gram_small_side
    >>> F = kpflow.Dense(xp.ones((5, 2)))
    >>> gram_small_side(F.gram()).shape_in, gram_small_side(F.T.gram())
    ((2,), None)
    """
    if A.shape_in != A.shape_out:
        return None
    F = rules.gram_factor(A)
    if F is None or F.size_in >= A.size_in:
        return None
    return F.T.gram()


# -- Frobenius norm ------------------------------------------------------------------------------
def _fro_exact_scaled(A: LinearOperator, progress: Any, where: str) -> tuple[Any, Any, int]:
    """``(s, q, products)`` with ``‖A‖²_F = s² q`` from unit probes on the smaller side.

    The sum of squares is kept in units of the largest entry seen (:func:`_scaled_update`),
    so that ``‖A‖_F = s √q`` neither underflows nor overflows in float32 for operators of
    any scale.
    """
    xp = A.xp
    tiny = float(xp.finfo(A.dtype).smallest_normal)
    counter = MatvecCounter(A, progress, min(A.size_in, A.size_out), where)
    s, q = _zero(A), _zero(A)
    update = kernel(A, _scaled_update, tiny)
    try:
        small_in = A.size_in <= A.size_out
        n = A.size_in if small_in else A.size_out
        for start in range(0, n, UNIT_BLOCK):
            E = unit_rows(A, start, min(n, start + UNIT_BLOCK), n)
            s, q = update(s, q, counter.matmat(E) if small_in else counter.rmatmat(E))
    finally:
        counter.close()
    return s, q, counter.num_matvecs


def _fro_sq_exact(A: LinearOperator, progress: Any, where: str = "kpflow.linalg.fro_norm") -> tuple[Any, int]:
    """``‖A‖²_F`` from unit probes on the smaller side."""
    s, q, used = _fro_exact_scaled(A, progress, where)
    return s * s * q, used


def _squared_norms(xp: Any, AG: Any) -> tuple[Any, Any]:
    """Mean and standard error of ``‖A gᵢ‖²`` over the rows of ``A G``."""
    return mean_and_error(xp, xp.sum(AG * AG, axis=1))


def _deflated_total(xp: Any, Z: Any, AG: Any) -> tuple[Any, Any]:
    mean, se = _squared_norms(xp, AG)
    return xp.sum(Z * Z) + mean, se


def _fro_sq_estimate(
    counter: MatvecCounter, m: int, gen: Any, method: str, symmetric: bool
) -> tuple[Any, Any]:
    """Unbiased ``‖A‖²_F`` and its standard error; ``hutch++`` deflates a sketch of A's row space."""
    A = counter.op
    n, like = A.size_in, like_array(A)
    if method == "hutchinson":
        G = probes(gen, m, n, like, "rademacher")
        return kernel(A, _squared_norms)(counter.matmat(G))
    # ‖A‖² = ‖AQ‖² + tr((I−P) AᵀA (I−P)) with P = QQᵀ onto (an approximation of) A's top
    # right singular space: A's range for symmetric A, else the range of AᵀA Ω.
    k = m // 3 if symmetric else m // 4
    k = min(k, n)
    S = probes(gen, k, n, like, "rademacher")
    Y = counter.matmat(S) if symmetric else counter.rmatmat(counter.matmat(S))
    Q = kernel(A, orthonormal_rows)(Y)
    Z = counter.matmat(Q)
    g = m - counter.num_matvecs
    G = kernel(A, _deflate)(probes(gen, g, n, like, "rademacher"), Q)
    return kernel(A, _deflated_total)(Z, counter.matmat(G))


def _fro_minimum(method: str, symmetric: bool) -> int:
    if method == "hutchinson":
        return 1
    return 3 if symmetric else 4


@without_graph
def fro_norm(
    A: LinearOperator,
    *,
    method: str = "auto",
    num_matvecs: int | None = None,
    rng: Any = None,
    progress: Any = None,
) -> ScalarResult:
    """The Frobenius norm ``‖A‖_F = √tr(AᵀA)`` from matrix-vector products.

    Parameters
    ----------
    A : LinearOperator
        Any shapes (K, P, NTK_S, J, ...).
    method : {"auto", "exact", "hutchinson", "hutch++"}
        ``"auto"``: a structured rule (:func:`kpflow.linalg.rules.exact_fro_norm`),
        else ``"exact"`` (unit probes on the smaller side) when the budget
        reaches ``min(n_in, n_out)`` (without a budget: when that is at most
        ``DENSE_LIMIT``), else ``"hutch++"``.  Every method runs on ``Fᵀ F`` instead
        when ``A = F Fᵀ`` is a Gram operator whose factor has fewer columns ``r`` than
        ``A`` has rows (:func:`gram_small_side`; NTK_S with fewer parameters than
        states): the same norm at the same cost per product, with probes of length
        ``r`` and ``"exact"`` in ``r`` products.  Hutch++'s Rademacher probes then see
        the diagonal of ``Fᵀ F`` instead of that of ``A``, so its error (reported in
        ``.error``) is not the state side's: neither larger nor smaller in general.
    num_matvecs : int, optional
        Budget of products with ``A`` or ``Aᵀ`` (default 200).  ``hutch++``
        needs 3 (4 for operators not known to be symmetric).
    rng : int, numpy.random.Generator or None
    progress : None, bool or callable

    Returns
    -------
    ScalarResult
        ``.value`` (0-d array), ``.error`` (standard error by the delta method),
        ``.num_matvecs``, ``.method``.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import fro_norm
    >>> float(fro_norm(kpflow.Dense(xp.asarray([[3.0, 0.0], [0.0, 4.0]]))))
    5.0
    """
    where = "kpflow.linalg.fro_norm"
    check_operator(A, where)
    check_method(method, ("auto", "exact", "hutchinson", "hutch++"), where)
    gen = host_rng(rng, where)
    if num_matvecs is not None:
        check_budget(num_matvecs, 0, where, method)
    small = min(A.size_in, A.size_out)
    if method in ("auto", "exact"):
        exact = rules.exact_fro_norm(A)
        if exact is not None:
            return ScalarResult(exact, _zero(A), 0, "exact")
    gram = gram_small_side(A)
    if gram is not None:  # ‖F Fᵀ‖_F = ‖Fᵀ F‖_F, on the smaller side
        return fro_norm(gram, method=method, num_matvecs=num_matvecs, rng=gen, progress=progress)
    if method in ("auto", "exact"):
        budget_ok = small <= DENSE_LIMIT if num_matvecs is None else num_matvecs >= small
        if method == "exact" or budget_ok:
            scale, q, used = _fro_exact_scaled(A, progress, where)
            return ScalarResult(scale * A.xp.sqrt(q), _zero(A), used, "exact")
        method = "hutch++"
    symmetric = A.shape_in == A.shape_out and (is_symmetric(A) or rules.is_psd(A))
    budget = DEFAULT_BUDGET if num_matvecs is None else int(num_matvecs)
    check_budget(budget, _fro_minimum(method, symmetric), where, method)
    # in units of A / s (ScaledProducts): the squares of float32 entries below about 1e-19
    # underflow; ‖A‖_F = s ‖A / s‖_F
    counter = ScaledProducts(MatvecCounter(A, progress, budget, where), where)
    try:
        sq, se = _fro_sq_estimate(cast(Any, counter), budget, gen, method, symmetric)  # duck-typed
    finally:
        counter.close()
    xp = A.xp
    value = xp.sqrt(xp.maximum(sq, 0.0))
    error = None if se is None else se / (2 * xp.maximum(value, float(xp.finfo(A.dtype).smallest_normal)))
    return ScalarResult(counter.unscale(value), counter.unscale(error), counter.num_matvecs, method)


# -- alignment -----------------------------------------------------------------------------------
#: Without a budget, ``alignment`` takes an exact route when it costs at most this many
#: times the estimate's default budget: the estimate's error at that budget is of the order
#: of 0.1 on NTKs with slowly decaying spectra, and the exact value costs only a few times more.
EXACT_FACTOR = 5

#: The smallest budget of the estimate: a sketch and at least a few residual probes.
ALIGNMENT_MINIMUM = 30


def _scaled_update(xp: Any, tiny: float, s: Any, q: Any, Y: Any) -> tuple[Any, Any]:
    """``(s, q)`` with ``Σ Y²`` added to the sum of squares ``s² q``, rescaled so that ``|Y/s| <= 1``.

    Sums of squares kept in units of the largest entry seen cannot overflow or underflow
    in float32 for operators of any scale (LAPACK's ``nrm2`` does the same).
    """
    s_new = xp.maximum(xp.maximum(s, xp.max(xp.abs(Y))), tiny)
    Y = Y / s_new
    return s_new, q * (s / s_new) ** 2 + xp.sum(Y * Y)


def _scaled_cross(
    xp: Any, tiny: float, sa: Any, sb: Any, ab: Any, aa: Any, bb: Any, YA: Any, YB: Any
) -> tuple[Any, Any, Any, Any, Any]:
    """Add ``Σ YA·YB``, ``Σ YA²``, ``Σ YB²`` to sums kept in units of ``sa``, ``sb`` (see above)."""
    na = xp.maximum(xp.maximum(sa, xp.max(xp.abs(YA))), tiny)
    nb = xp.maximum(xp.maximum(sb, xp.max(xp.abs(YB))), tiny)
    ra, rb = sa / na, sb / nb
    YA, YB = YA / na, YB / nb
    return (
        na,
        nb,
        ab * (ra * rb) + xp.sum(YA * YB),
        aa * (ra * ra) + xp.sum(YA * YA),
        bb * (rb * rb) + xp.sum(YB * YB),
    )


def _cosine(xp: Any, ab: Any, aa: Any, bb: Any) -> Any:
    return ab / (xp.sqrt(aa) * xp.sqrt(bb))


def _in_range(xp: Any, value: Any, psd: bool) -> Any:
    """Clip to the alignment's range: ``[0, 1]`` for two PSD operators, else ``[-1, 1]``.

    The true value lies in that range, so clipping never moves an estimate away from it.
    """
    return xp.minimum(xp.maximum(value, 0.0 if psd else -1.0), 1.0)


def _both_psd(A: LinearOperator, B: LinearOperator) -> bool:
    return rules.is_psd(A) and rules.is_psd(B)


def _gram_pair(A: LinearOperator, B: LinearOperator) -> tuple[LinearOperator, LinearOperator] | None:
    """``(F, G)`` with ``A = F Fᵀ`` and ``B = G Gᵀ``, ``F`` with the fewer columns; else ``None``."""
    if A.shape_in != A.shape_out:
        return None
    F, G = rules.gram_factor(A), rules.gram_factor(B)
    if F is None or G is None:
        return None
    return (F, G) if F.size_in <= G.size_in else (G, F)


def _exact_costs(A: LinearOperator, B: LinearOperator) -> tuple[int, int | None]:
    """Products of the dense route (unit vectors on the smaller side through A and B) and of
    the Gram route (``None`` where it does not apply; see :func:`_alignment_gram`)."""
    dense = 2 * min(A.size_in, A.size_out)
    pair = _gram_pair(A, B)
    if pair is None:
        return dense, None
    r, s = pair[0].size_in, pair[1].size_in
    return dense, (3 * r + 2 * s + 1) // 2


def _alignment_dense(A: LinearOperator, B: LinearOperator, progress: Any, where: str) -> ScalarResult:
    """``⟨A,B⟩``, ``‖A‖²``, ``‖B‖²`` from unit vectors on the smaller side of A and B."""
    xp = A.xp
    n = min(A.size_in, A.size_out)
    by_rows = A.size_out < A.size_in  # push e_j through Aᵀ and Bᵀ: the same sums
    ca = MatvecCounter(A, progress, n, where)
    cb = MatvecCounter(B, None, n, where)
    state = (_zero(A),) * 5
    update = kernel(A, _scaled_cross, float(xp.finfo(A.dtype).smallest_normal))
    try:
        for start in range(0, n, UNIT_BLOCK):
            E = unit_rows(A, start, min(n, start + UNIT_BLOCK), n)
            YA, YB = (ca.rmatmat(E), cb.rmatmat(E)) if by_rows else (ca.matmat(E), cb.matmat(E))
            state = update(*state, YA, YB)
    finally:
        ca.close()
    value = _in_range(xp, _cosine(xp, *state[2:]), _both_psd(A, B))
    return ScalarResult(value, _zero(A), ca.num_matvecs + cb.num_matvecs, "exact")


def _alignment_gram(
    F: LinearOperator, G: LinearOperator, like: LinearOperator, progress: Any, where: str
) -> ScalarResult:
    """``⟨F Fᵀ, G Gᵀ⟩ = ‖Gᵀ F‖²``, ``‖F Fᵀ‖ = ‖Fᵀ F‖``, ``‖G Gᵀ‖ = ‖Gᵀ G‖`` on the parameter sides.

    ``r`` unit vectors through F, then Fᵀ and Gᵀ; ``s`` through G and Gᵀ (``r <= s`` the
    factors' columns): ``3r + 2s`` factor products, counted as ``(3r + 2s)/2`` products
    of the Gram operators (one of those is one with the factor and one with its adjoint).
    For NTK_S = J_S J_Sᵀ the sides are the parameters, often far fewer than the states.
    """
    xp = like.xp
    r, s = F.size_in, G.size_in
    cf = MatvecCounter(F, progress, 3 * r, where)
    cg = MatvecCounter(G, None, 2 * s, where)
    tiny = float(xp.finfo(like.dtype).smallest_normal)
    update = kernel(like, _scaled_update, tiny)
    zero = _zero(like)
    ab, aa, bb = (zero, zero), (zero, zero), (zero, zero)
    try:
        for start in range(0, r, UNIT_BLOCK):
            U = cf.matmat(unit_rows(like, start, min(r, start + UNIT_BLOCK), r))
            aa = update(*aa, cf.rmatmat(U))
            ab = update(*ab, cg.rmatmat(U))
        for start in range(0, s, UNIT_BLOCK):
            bb = update(*bb, cg.rmatmat(cg.matmat(unit_rows(like, start, min(s, start + UNIT_BLOCK), s))))
    finally:
        cf.close()
    # ⟨A,B⟩/(‖A‖‖B‖) = s_ab² q_ab / (s_aa √q_aa · s_bb √q_bb), each factor of order one.
    value = (ab[0] / aa[0]) * (ab[0] / bb[0]) * ab[1] / (xp.sqrt(aa[1]) * xp.sqrt(bb[1]))
    used = (cf.num_matvecs + cg.num_matvecs + 1) // 2
    return ScalarResult(_in_range(xp, value, True), zero, used, "exact")


def _alignment_exact(A: LinearOperator, B: LinearOperator, progress: Any, where: str) -> ScalarResult:
    """The cheaper of the dense and the Gram route."""
    dense, gram = _exact_costs(A, B)
    pair = _gram_pair(A, B)
    if gram is not None and pair is not None and gram < dense:
        return _alignment_gram(*pair, A, progress, where)
    return _alignment_dense(A, B, progress, where)


def _sketch_sums(xp: Any, tiny: float, ZA: Any, ZB: Any, WA: Any, WB: Any) -> tuple[Any, Any]:
    """The cosine of the stacked sketches and its delta-method standard error.

    ``ZA = A Qᵀ`` and ``ZB`` (rows: a deflation basis, counted exactly), ``WA = A G̃ᵀ`` and
    ``WB`` (rows: deflated probes, averaged).  Each operator's rows are divided by one
    scale of its own, so the value and the error do not depend on the operators' scales.
    """
    sa = xp.maximum(xp.maximum(xp.max(xp.abs(ZA)), xp.max(xp.abs(WA))), tiny)
    sb = xp.maximum(xp.maximum(xp.max(xp.abs(ZB)), xp.max(xp.abs(WB))), tiny)
    ZA, WA, ZB, WB = ZA / sa, WA / sa, ZB / sb, WB / sb
    x, a, b = xp.sum(WA * WB, axis=1), xp.sum(WA * WA, axis=1), xp.sum(WB * WB, axis=1)
    ab = xp.sum(ZA * ZB) + xp.mean(x)
    aa = xp.sum(ZA * ZA) + xp.mean(a)
    bb = xp.sum(ZB * ZB) + xp.mean(b)
    value = _cosine(xp, ab, aa, bb)
    # influence of each probe on the ratio, to first order (delta method)
    u = x / (xp.sqrt(aa) * xp.sqrt(bb)) - value * (a / (2 * aa) + b / (2 * bb))
    m = u.shape[0]
    return value, xp.std(u, correction=1) * (student_factor(m) / math.sqrt(m))


def _alignment_estimate(
    A: LinearOperator, B: LinearOperator, budget: int, gen: Any, progress: Any, where: str
) -> ScalarResult:
    """A deflated sketch shared by A and B (see :func:`alignment`)."""
    xp, n, like = A.xp, A.size_in, like_array(A)
    sym = all(x.shape_in == x.shape_out and (is_symmetric(x) or rules.is_psd(x)) for x in (A, B))
    per_k = 6 if sym else 8  # sketch products per basis pair: A S, B S (and Aᵀ, Bᵀ), A Q, B Q
    k = min(budget * 2 // (3 * per_k), n // 2)
    ca = MatvecCounter(A, progress, budget // 2, where)
    cb = MatvecCounter(B, None, budget // 2, where)
    tiny = float(xp.finfo(A.dtype).smallest_normal)
    try:
        if k > 0:
            S = probes(gen, k, n, like, "gaussian")
            YA, YB = ca.matmat(S), cb.matmat(S)
            if not sym:  # the top right singular space: range of AᵀA S
                YA, YB = ca.rmatmat(YA), cb.rmatmat(YB)
            Q = kernel(A, _joint_basis, tiny)(YA, YB)
            ZA, ZB = ca.matmat(Q), cb.matmat(Q)
        g = (budget - ca.num_matvecs - cb.num_matvecs) // 2
        G = probes(gen, g, n, like, "rademacher")
        if k > 0:
            G = kernel(A, _deflate)(G, Q)
        else:
            ZA = ZB = xp.zeros((0, A.size_out), dtype=A.dtype, device=A.device)
        WA, WB = ca.matmat(G), cb.matmat(G)
    finally:
        ca.close()
    value, error = kernel(A, _sketch_sums, tiny)(ZA, ZB, WA, WB)
    value = _in_range(xp, value, _both_psd(A, B))
    return ScalarResult(value, error, ca.num_matvecs + cb.num_matvecs, "estimate")


def _joint_basis(xp: Any, tiny: float, YA: Any, YB: Any) -> Any:
    """An orthonormal basis (rows) of the rows of ``YA`` and ``YB``, each normalised first
    (so that the basis does not depend on the operators' relative scale)."""
    na = xp.maximum(xp.linalg.vector_norm(YA), tiny)
    nb = xp.maximum(xp.linalg.vector_norm(YB), tiny)
    return orthonormal_rows(xp, xp.concat([YA / na, YB / nb], axis=0))


def _deflate(xp: Any, G: Any, Q: Any) -> Any:
    """``G (I − QᵀQ)``: the rows of ``G`` with the row space of orthonormal ``Q`` removed."""
    return G - (G @ xp.matrix_transpose(Q)) @ Q


@without_graph
def alignment(
    A: LinearOperator,
    B: LinearOperator,
    *,
    method: str = "auto",
    num_matvecs: int | None = None,
    rng: Any = None,
    progress: Any = None,
) -> ScalarResult:
    """The alignment ``⟨A, B⟩_F / (‖A‖_F ‖B‖_F)``, the cosine similarity of two operators.

    It lies in ``[-1, 1]``, and in ``[0, 1]`` when both operators are known to be
    positive semi-definite (:func:`kpflow.linalg.rules.is_psd`: NTK_S, K, P Pᵀ, Gram
    operators); every route returns a value in that range.  It does not depend on the
    operators' scales: ``alignment(c A, d B) = sign(c d) · alignment(A, B)`` for every
    route, to rounding (sums are kept in units of each operator's largest entry, so
    float32 neither overflows nor underflows).

    Parameters
    ----------
    A, B : LinearOperator
        Of equal shapes, namespace, dtype and device (e.g. two NTKs, or K and
        a target kernel ``y yᵀ``).
    method : {"auto", "exact", "estimate"}
        ``"exact"``: structured rules (:func:`kpflow.linalg.rules.exact_inner` and
        ``exact_fro_norm``) when all apply, else the cheaper of two product routes:
        ``2 min(n_in, n_out)`` unit-vector products with A and B, or, when both are
        Gram operators ``F Fᵀ`` and ``G Gᵀ`` (NTK_S = J_S J_Sᵀ; r ≤ s the factors'
        columns, e.g. parameters), ``‖Gᵀ F‖²/(‖Fᵀ F‖ ‖Gᵀ G‖)`` in ``(3r + 2s)/2`` products.
        ``"estimate"``: one sketch shared by A and B.  A basis Q of the joint top range
        (``k`` Gaussian probes through each, normalised, ``k ≈ m/9``; through AᵀA for
        non-symmetric operators, ``k ≈ m/12``) is counted exactly, and the rest from
        Rademacher probes deflated by Q; the value is the cosine of the two stacked
        sketches, so the operators' scales cancel exactly, and Cauchy–Schwarz keeps it
        in ``[-1, 1]``.  ``"auto"``: ``"exact"`` when its cost is at most the budget, or,
        without a budget, at most ``EXACT_FACTOR`` (5) times the default budget
        (1000 products: ``n <= 500`` for the dense route); else ``"estimate"``.
    num_matvecs : int, optional
        Budget of products with ``A`` or ``B`` (default 200; ``"estimate"``
        needs at least 30).  An explicit budget is never exceeded by ``"auto"``.
    rng : int, numpy.random.Generator or None
    progress : None, bool or callable

    Returns
    -------
    ScalarResult
        ``.value`` in the range above; ``.error`` the delta-method standard error of the
        ratio over the residual probes (given the basis Q), widened by Student's factor for
        their number (at least 6), ``0`` for exact routes.  An
        estimate clipped to the range keeps its error bar (clipping moves it towards
        the true value).  Undefined (``nan``) when A or B is zero.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import alignment
    >>> A = kpflow.Diagonal(xp.asarray([1.0, 0.0]))
    >>> B = kpflow.Diagonal(xp.asarray([1.0, 1.0]))
    >>> round(float(alignment(A, B)), 6), round(float(alignment(A, 1e-8 * B)), 6)
    (0.707107, 0.707107)
    """
    where = "kpflow.linalg.alignment"
    check_operator(A, where, "A")
    check_operator(B, where, "B")
    common_meta([A, B], where)
    if A.shape_in != B.shape_in or A.shape_out != B.shape_out:
        msg = (
            f"{where}: A and B must have equal shapes, got {A.shape_out}<-{A.shape_in} "
            f"and {B.shape_out}<-{B.shape_in}"
        )
        raise ValueError(msg)
    check_method(method, ("auto", "exact", "estimate"), where)
    gen = host_rng(rng, where)
    if num_matvecs is not None:
        check_budget(num_matvecs, 0, where, method)
    xp = A.xp
    if method in ("auto", "exact"):
        ip, fa, fb = rules.exact_inner(A, B), rules.exact_fro_norm(A), rules.exact_fro_norm(B)
        if ip is not None and fa is not None and fb is not None:
            return ScalarResult(_in_range(xp, ip / fa / fb, _both_psd(A, B)), _zero(A), 0, "exact")
        dense, gram = _exact_costs(A, B)
        cost = dense if gram is None else min(dense, gram)
        limit = EXACT_FACTOR * DEFAULT_BUDGET if num_matvecs is None else num_matvecs
        if method == "exact" or cost <= limit:
            return _alignment_exact(A, B, progress, where)
        method = "estimate"
    budget = DEFAULT_BUDGET if num_matvecs is None else num_matvecs
    budget = check_budget(budget, ALIGNMENT_MINIMUM, where, method)
    return _alignment_estimate(A, B, budget, gen, progress, where)


# -- effective rank ------------------------------------------------------------------------------
