"""Frobenius norm and alignment of operators (effective rank: :mod:`kpflow.linalg.rank`).

Cost comparison (``m`` = budget of products with the operator(s)):

* ``fro_norm``: exact from a rule, or ``min(n_in, n_out)`` unit probes; otherwise Hutch++ on
  ``‖A‖²_F = tr(AᵀA)`` deflated by a sketch of A's range (or plain Hutchinson).  A Gram
  operator ``A = F Fᵀ`` whose factor has fewer columns ``r < n`` (``rules.gram_factor``:
  NTK_S = J_S J_Sᵀ with fewer parameters than states) is handled on the smaller side,
  ``‖F Fᵀ‖_F = ‖Fᵀ F‖_F``: ``r`` unit probes, or Hutch++ with ``r``-long probes
  (see :func:`gram_small_side`).
* ``alignment``: exact from rules for ``⟨A,B⟩_F`` and both norms, or ``2 n_in`` unit probes;
  otherwise polarisation ``⟨A,B⟩ = (‖A+B‖² − ‖A−B‖²)/4`` and the two norms, from four
  independent Hutch++ estimates.
"""

from __future__ import annotations

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
    host_rng,
    kernel,
    like_array,
    mean_and_error,
    orthonormal_rows,
    probes,
    unit_rows,
    without_graph,
)
from kpflow.operators.base import LinearOperator, common_meta
from kpflow.operators.functions import is_symmetric

__all__ = ["alignment", "fro_norm", "gram_small_side"]

DEFAULT_BUDGET = 200


def _zero(A: LinearOperator) -> Any:
    return A.xp.zeros((), dtype=A.dtype, device=A.device)


def _se(xp: Any, samples: Any) -> Any:
    return mean_and_error(xp, samples)[1]


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
def _fro_sq_exact(A: LinearOperator, progress: Any, where: str = "kpflow.linalg.fro_norm") -> tuple[Any, int]:
    """``‖A‖²_F`` from unit probes on the smaller side."""
    xp = A.xp
    counter = MatvecCounter(A, progress, min(A.size_in, A.size_out), where)
    total = _zero(A)
    try:
        if A.size_in <= A.size_out:
            for start in range(0, A.size_in, UNIT_BLOCK):
                stop = min(A.size_in, start + UNIT_BLOCK)
                Y = counter.matmat(unit_rows(A, start, stop, A.size_in))
                total = total + xp.sum(Y * Y)
        else:
            for start in range(0, A.size_out, UNIT_BLOCK):
                stop = min(A.size_out, start + UNIT_BLOCK)
                Y = counter.rmatmat(unit_rows(A, start, stop, A.size_out))
                total = total + xp.sum(Y * Y)
    finally:
        counter.close()
    return total, counter.num_matvecs


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
    from kpflow.linalg.trace import deflate

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
    G = kernel(A, deflate)(probes(gen, g, n, like, "rademacher"), Q)
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
            sq, used = _fro_sq_exact(A, progress)
            return ScalarResult(A.xp.sqrt(sq), _zero(A), used, "exact")
        method = "hutch++"
    symmetric = A.shape_in == A.shape_out and (is_symmetric(A) or rules.is_psd(A))
    budget = DEFAULT_BUDGET if num_matvecs is None else int(num_matvecs)
    check_budget(budget, _fro_minimum(method, symmetric), where, method)
    counter = MatvecCounter(A, progress, budget, where)
    try:
        sq, se = _fro_sq_estimate(counter, budget, gen, method, symmetric)
    finally:
        counter.close()
    xp = A.xp
    value = xp.sqrt(xp.maximum(sq, 0.0))
    error = None if se is None else se / (2 * xp.maximum(value, float(xp.finfo(A.dtype).smallest_normal)))
    return ScalarResult(value, error, counter.num_matvecs, method)


# -- alignment -----------------------------------------------------------------------------------
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

    Parameters
    ----------
    A, B : LinearOperator
        Of equal shapes, namespace, dtype and device (e.g. two NTKs, or K and
        a target kernel ``y yᵀ``).
    method : {"auto", "exact", "estimate"}
        ``"auto"``: structured rules (:func:`kpflow.linalg.rules.exact_inner` and
        ``exact_fro_norm``) when all apply, else ``"exact"`` (``2 n_in``
        unit-vector products) when the budget allows (without a budget: when
        ``n_in <= DENSE_LIMIT``), else ``"estimate"``: polarisation
        ``⟨A,B⟩ = (‖A+B‖² − ‖A−B‖²)/4`` and the two norms from four independent
        Hutch++ estimates (``m/6`` products of each of ``A+B``, ``A−B``, ``A``, ``B``).
    num_matvecs : int, optional
        Budget of products with ``A`` or ``B`` (default 200; ``"estimate"``
        needs at least 30).
    rng : int, numpy.random.Generator or None
    progress : None, bool or callable

    Returns
    -------
    ScalarResult
        The alignment in ``[-1, 1]`` (estimates may stray slightly outside);
        ``.error`` propagates the four standard errors to first order.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import alignment
    >>> A = kpflow.Diagonal(xp.asarray([1.0, 0.0]))
    >>> B = kpflow.Diagonal(xp.asarray([1.0, 1.0]))
    >>> round(float(alignment(A, B)), 6)
    0.707107
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
            return ScalarResult(ip / (fa * fb), _zero(A), 0, "exact")
        n = A.size_in
        budget_ok = n <= DENSE_LIMIT if num_matvecs is None else num_matvecs >= 2 * n
        if method == "exact" or budget_ok:
            return _alignment_exact(A, B, progress)
        method = "estimate"
    budget = check_budget(DEFAULT_BUDGET if num_matvecs is None else num_matvecs, 30, where, method)
    per = budget // 6
    sym = all(x.shape_in == x.shape_out and (is_symmetric(x) or rules.is_psd(x)) for x in (A, B))
    parts = []
    used = 0
    for op, cost in ((A + B, 2), (A - B, 2), (A, 1), (B, 1)):
        counter = MatvecCounter(op, progress, per, where)
        try:
            parts.append(_fro_sq_estimate(counter, per, gen, "hutch++", sym))
        finally:
            counter.close()
        used += cost * counter.num_matvecs
    (sp, ep), (sm, em), (sa, ea), (sb, eb) = parts
    inner = (sp - sm) / 4
    norm = xp.sqrt(xp.maximum(sa, 0.0) * xp.maximum(sb, 0.0))
    value = inner / norm
    tiny = float(xp.finfo(A.dtype).smallest_normal)
    rel = ((ep + em) / 4 / xp.maximum(xp.abs(inner), tiny)) ** 2
    rel = rel + (ea / (2 * xp.maximum(sa, tiny))) ** 2 + (eb / (2 * xp.maximum(sb, tiny))) ** 2
    return ScalarResult(value, xp.abs(value) * xp.sqrt(rel), used, "estimate")


def _alignment_exact(A: LinearOperator, B: LinearOperator, progress: Any) -> ScalarResult:
    xp, n = A.xp, A.size_in
    ca = MatvecCounter(A, progress, n, "kpflow.linalg.alignment")
    cb = MatvecCounter(B, None, n, "kpflow.linalg.alignment")
    ip, sa, sb = _zero(A), _zero(A), _zero(A)
    try:
        for start in range(0, n, UNIT_BLOCK):
            E = unit_rows(A, start, min(n, start + UNIT_BLOCK), n)
            YA, YB = ca.matmat(E), cb.matmat(E)
            ip = ip + xp.sum(YA * YB)
            sa = sa + xp.sum(YA * YA)
            sb = sb + xp.sum(YB * YB)
    finally:
        ca.close()
    return ScalarResult(ip / xp.sqrt(sa * sb), _zero(A), ca.num_matvecs + cb.num_matvecs, "exact")


# -- effective rank ------------------------------------------------------------------------------
