"""Effective rank (participation ratio) of operators, globally or along axes.

* ``effective_rank``: exact from rules for ``tr`` and ``‖·‖_F`` of ``A`` (or of its exact
  partial trace), or ``n`` unit probes; otherwise ``t₁ t₂ / f²`` with two independent trace
  estimates and an independent ``f² ≈ tr(M²)``.  The global ratio of a Gram operator
  ``A = F Fᵀ`` whose factor has fewer columns ``r < n`` (NTK_S = J_S J_Sᵀ with fewer
  parameters than states) is computed on ``Fᵀ F``, which has the same nonzero spectrum:
  ``r`` unit probes for the exact ratio, ``r``-long probes for the estimate.

Ratios of estimates use independent probes for numerator and denominator
(the numerator ``tr(M)²`` as a product of two independent unbiased trace
estimates), so that no correlation biases them; the ratio itself still has
the usual ``O(1/m)`` ratio bias, much smaller than its standard error.
With ``keep``, ``tr(M²)`` of the partial trace ``M = Tr_other(A)`` comes from
Hutch++ on ``M`` itself when the budget allows at least 8 exact products with
``M`` (each costs ``n_traced`` products with ``A``); otherwise it is
estimated with independent probe pairs: for ``x`` on the kept axes and two
independent Rademacher ``z₁, z₂`` on the traced axes,
``uᵢ = (I ⊗ zᵢᵀ) A (x ⊗ zᵢ)`` has mean ``M x``, so ``u₁·u₂`` is unbiased for
``‖M x‖²`` and its mean over ``x`` for ``‖M‖²_F``; a single ``z`` would add
the positive variance of ``u`` and bias the ratio upward.  For PSD operators
(NTK_S = P K Pᵀ) the pairs act only on the residual of a Nyström approximation
``Â`` (half the budget), whose partial trace is exact: ``M = Tr_other(Â) + R``
(see :func:`_partial_fro_sq_nystrom`), so with decaying spectra the variance
falls with the spectral tail, as in Hutch++.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

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
    probes,
    unit_rows,
    without_graph,
)
from kpflow.linalg._scaling import ScaledProducts
from kpflow.linalg._statistics import calibrated_mean, student_factor
from kpflow.linalg.norms import DEFAULT_BUDGET, _fro_sq_estimate, _zero, gram_small_side
from kpflow.linalg.trace import trace
from kpflow.operators.base import LinearOperator

__all__ = ["MIN_ESTIMATE_BUDGET", "effective_rank"]

#: The smallest ``num_matvecs`` of an ``"estimate"``: two trace estimates and the probes of
#: ``tr(M²)`` each need a few products.
MIN_ESTIMATE_BUDGET = 16


def _axis_index(A: LinearOperator, name: str, where: str) -> int:
    """The index of the axis called ``name`` in ``A.axis_names``."""
    names = getattr(A, "axis_names", None)
    if names is None:
        msg = (
            f"{where}: keep={name!r} names an axis, but this {type(A).__name__} has no axis names "
            f"(shape_in={A.shape_in}); pass axis indices instead"
        )
        raise ValueError(msg)
    if name not in names:
        msg = f"{where}: keep={name!r} is not an axis of this operator; its axes are {tuple(names)}"
        raise ValueError(msg)
    return tuple(names).index(name)


def _keep_axes(A: LinearOperator, keep: Any, where: str) -> tuple[int, ...]:
    if isinstance(keep, str) or (isinstance(keep, int) and not isinstance(keep, bool)):
        keep = (keep,)
    if not isinstance(keep, Iterable):
        msg = f"{where}: expected keep to be an int, an axis name or a tuple of them, got {keep!r}"
        raise TypeError(msg)
    keep = tuple(_axis_index(A, a, where) if isinstance(a, str) else a for a in keep)
    nd = len(A.shape_in)
    out = []
    for a in keep:
        if isinstance(a, bool) or not isinstance(a, int):
            msg = f"{where}: expected keep to hold ints or axis names, got {a!r}"
            raise TypeError(msg)
        if not -nd <= a < nd:
            msg = f"{where}: keep axis {a} is out of range for shape {A.shape_in} (valid: {-nd} to {nd - 1})"
            raise ValueError(msg)
        out.append(a % nd)
    if len(set(out)) != len(out):
        msg = f"{where}: keep axes must not repeat, got {tuple(keep)}"
        raise ValueError(msg)
    if not out:
        msg = f"{where}: expected keep to name at least one axis, got {keep!r}"
        raise ValueError(msg)
    return tuple(sorted(out))


@without_graph
def effective_rank(
    A: LinearOperator,
    keep: Any = None,
    *,
    method: str = "auto",
    num_matvecs: int | None = None,
    rng: Any = None,
    progress: Any = None,
    traces: Any = None,
) -> ScalarResult:
    """The participation ratio ``tr(M)² / tr(M²)`` of a symmetric operator or of a partial trace.

    With ``keep=None``, ``M = A``; with ``keep`` (axes of ``A.shape_in``),
    ``M = Tr_other(A)``, the partial trace over the other axes (for NTK_S on
    states ``(B, T, H)``, ``keep=1`` gives the effective rank along time).
    ``tr(M²) = ‖M‖²_F`` (``A`` is assumed symmetric).

    Parameters
    ----------
    A : LinearOperator
        Square and symmetric (e.g. K or NTK_S = P K Pᵀ).
    keep : int, str or tuple of them, optional
        The axes to keep: indices, or names from ``A.axis_names`` (operators built from
        a trajectory name theirs: ``"batch"``, ``"time"``, ``"hidden"``; MLP ``"units"``).
    method : {"auto", "exact", "estimate"}
        ``"auto"``: exact from rules when ``exact_trace`` and ``exact_fro_norm``
        apply to ``M`` (``M`` from :meth:`~kpflow.LinearOperator.partial_trace`,
        which keeps Kronecker structure); else ``"exact"`` through ``n`` unit
        probes of ``A``, or with ``keep`` and a Gram operator ``A = F Fᵀ`` of ``r < n``
        columns through the ``r`` columns of ``F``, when the budget reaches that count
        (without a budget: when it is at most ``DENSE_LIMIT``); else ``"estimate"`` (see
        the module docstring):
        half the budget for two independent XTrace/XNysTrace estimates of
        ``tr M = tr A``, half for ``tr(M²)``.  With ``keep=None`` and a Gram operator
        ``A = F Fᵀ`` whose factor has fewer columns ``r`` than ``n``
        (:func:`~kpflow.linalg.rules.gram_factor`; NTK_S = J_S J_Sᵀ), every method runs
        on ``Fᵀ F`` instead (the same ratio, the same cost per product, ``r`` in place of
        ``n`` above; the estimate is clamped into ``[1, r]``), the estimate only when a
        quarter of its budget is at most ``r`` (else it runs on ``A``).
    num_matvecs : int, optional
        Budget of products with ``A`` (default 200; ``"estimate"`` needs 16).
    rng : int, numpy.random.Generator or None
    progress : None, bool or callable
    traces : pair of ScalarResult, optional
        Two independent estimates of ``tr M = tr A`` (from :func:`~kpflow.linalg.trace` with
        independent probes, e.g. two calls with one generator), for the numerator
        ``t₁ t₂`` of an ``"estimate"``, which then spends its whole budget on ``tr(M²)``
        with fresh probes.  Every partial trace has the trace of ``A``, so one pair serves
        the global ratio and the ratio along every axis (as
        :func:`~kpflow.analysis.spectrum_report` does); ``.num_matvecs`` then counts only
        the products this call ran.  Ignored where the ratio is exact.

    Returns
    -------
    ScalarResult
        ``.error`` is a first-order standard error of the estimate.  Every participation
        ratio of a symmetric ``M`` of dimension ``n_M`` lies in ``[0, n_M]``, and in
        ``[1, n_M]`` when ``M`` is PSD; an ``"estimate"`` that strays outside is clamped
        into that range (``[1, n_M]`` when :func:`~kpflow.linalg.rules.is_psd` knows ``A``
        is PSD, as for K and NTK_S), and ``.error`` stays that of the unclamped ratio.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import effective_rank
    >>> A = kpflow.kron(kpflow.Identity((3,), like=xp.zeros(1)), kpflow.Diagonal(xp.asarray([1.0, 0.0])))
    >>> round(float(effective_rank(A)), 12), round(float(effective_rank(A, keep=1)), 12)
    (3.0, 1.0)

    Operators built from a trajectory name their axes:

    >>> import numpy as np
    >>> from kpflow.models import RNN
    >>> traj = RNN(1, 4).run(RNN(1, 4).init(0), np.ones((2, 5, 1)))
    >>> K = kpflow.parameter_kernel(traj)
    >>> K.axis_names
    ('batch', 'time', 'hidden')
    >>> float(effective_rank(K, keep="time")) == float(effective_rank(K, keep=1))
    True

    One pair of trace estimates shared by several ratios (of an operator known only by its
    products, so that no exact rule applies):

    >>> from kpflow.linalg import trace
    >>> class Scale(kpflow.operators.SymmetricOperator):
    ...     def _matmat(self, X):
    ...         return X * np.arange(1.0, 49.0).reshape(4, 12)
    >>> A = Scale((4, 12), (4, 12), xp=K.xp, dtype=K.dtype, device=K.device)
    >>> gen = np.random.default_rng(0)
    >>> pair = (trace(A, num_matvecs=24, rng=gen), trace(A, num_matvecs=24, rng=gen))
    >>> ranks = [effective_rank(A, keep, method="estimate", num_matvecs=16, rng=gen, traces=pair)
    ...          for keep in (None, 0, 1)]
    >>> [r.num_matvecs for r in ranks]
    [16, 16, 16]
    """
    where = "kpflow.linalg.effective_rank"
    check_operator(A, where)
    check_square(A, where)
    check_method(method, ("auto", "exact", "estimate"), where)
    gen = host_rng(rng, where)
    if num_matvecs is not None:
        check_budget(num_matvecs, 0, where, method)
    if traces is not None:
        traces = _check_traces(A, traces, where)
    _xp, n = A.xp, A.size_in
    keep_axes = tuple(range(len(A.shape_in))) if keep is None else _keep_axes(A, keep, where)
    traced = tuple(a for a in range(len(A.shape_in)) if a not in keep_axes)
    M = A.partial_trace(traced) if traced else A
    if method in ("auto", "exact"):
        t, f = rules.exact_trace(M), rules.exact_fro_norm(M)
        if t is not None and f is not None and _norm_is_sound(A.xp, t, f):
            return ScalarResult(kernel(A, _ratio_of_exact)(t, f), _zero(A), 0, "exact")
    gram = None if traced else gram_small_side(A)
    if gram is not None and _fits(gram.size_in, method, num_matvecs):
        # tr(F Fᵀ)²/‖F Fᵀ‖²_F = tr(Fᵀ F)²/‖Fᵀ F‖²_F, on the smaller side
        return effective_rank(
            gram, method=method, num_matvecs=num_matvecs, rng=gen, progress=progress, traces=traces
        )
    if method in ("auto", "exact"):
        # exactly: n unit probes of A, or (for A = F Fᵀ with r < n columns) r columns of F
        factor = rules.gram_factor(A) if traced else None
        cost = n if factor is None else min(n, factor.size_in)
        budget_ok = cost <= DENSE_LIMIT if num_matvecs is None else num_matvecs >= cost
        if method == "exact" or budget_ok:
            if factor is not None and factor.size_in < n:
                return _partial_ratio_from_factor(A, factor, traced, progress)
            return _effective_rank_dense(A, M, n, progress)
        method = "estimate"
    budget = check_budget(
        DEFAULT_BUDGET if num_matvecs is None else num_matvecs, MIN_ESTIMATE_BUDGET, where, method
    )
    return _effective_rank_estimate(A, traced, budget, gen, progress, traces)


def _check_traces(A: LinearOperator, traces: Any, where: str) -> tuple[ScalarResult, ScalarResult]:
    """``traces`` must be two distinct ScalarResults with values of ``A``'s dtype."""
    if (
        not isinstance(traces, (tuple, list))
        or len(traces) != 2
        or not all(isinstance(t, ScalarResult) for t in traces)
    ):
        msg = (
            f"{where}: expected traces to be a pair of ScalarResult (two independent estimates of "
            f"tr A from kpflow.linalg.trace), got {traces!r}"
        )
        raise TypeError(msg)
    if traces[0] is traces[1]:
        msg = (
            f"{where}: traces holds the same estimate twice; the numerator t₁ t₂ needs two "
            "independent estimates (a square of one is biased upward by its variance)"
        )
        raise ValueError(msg)
    for t in traces:
        dtype = getattr(t.value, "dtype", None)
        if dtype != A.dtype:
            msg = f"{where}: expected traces of dtype {A.dtype} (the operator's), got one of dtype {dtype}"
            raise TypeError(msg)
    return traces[0], traces[1]


def _scaled_products(op: LinearOperator, progress: Any, budget: int) -> ScaledProducts:
    """Counted products of ``op`` in units of ``op / s`` (``s`` a power of 4 from the first
    nonzero product), checked for NaN and inf: the estimators square them, and in float32
    squares of entries below about 1e-19 underflow."""
    return ScaledProducts(
        MatvecCounter(op, progress, budget, "kpflow.linalg.effective_rank"), "kpflow.linalg.effective_rank"
    )


def _fits(r: int, method: str, num_matvecs: int | None) -> bool:
    """Whether the ratio runs as well on a Gram operator's ``r``-dimensional side ``Fᵀ F``.

    Exactly, always; as an estimate, when each trace estimate's quarter of the budget fits
    in ``r`` probes (XNysTrace's sketch cannot be larger than the dimension, and on ``A``
    a larger sketch would catch the whole range of a rank-``r`` operator).
    """
    if method == "exact" or (
        method == "auto" and (r <= DENSE_LIMIT if num_matvecs is None else num_matvecs >= r)
    ):
        return True
    return (DEFAULT_BUDGET if num_matvecs is None else num_matvecs) // 4 <= r


def _effective_rank_dense(A: LinearOperator, M: LinearOperator, n: int, progress: Any) -> ScalarResult:
    xp = A.xp
    nk = M.size_in
    if rules.has_cheap_dense(M):
        from kpflow.operators.functions import todense

        D = xp.reshape(todense(M, max_size=None), (nk, nk))  # small: has_cheap_dense
        used = 0
    else:
        counter = MatvecCounter(M, progress, nk, "kpflow.linalg.effective_rank")
        blocks = []
        try:
            for start in range(0, nk, UNIT_BLOCK):
                blocks.append(counter.matmat(unit_rows(M, start, min(nk, start + UNIT_BLOCK), nk)))
        finally:
            counter.close()
        D = blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=0)
        used = n  # each product with M is n / nk products with A
    return ScalarResult(kernel(A, _dense_ratio)(D), _zero(A), used, "exact")


def _partial_ratio_from_factor(
    A: LinearOperator, F: LinearOperator, traced: tuple[int, ...], progress: Any
) -> ScalarResult:
    """The exact ratio of ``M = Tr_traced(F Fᵀ)`` from the ``r`` columns of ``F`` (``r`` products).

    ``M[k, k'] = Σ_j Σ_c F[(k, j), c] F[(k', j), c]`` (``j`` the traced indices), so ``M`` is
    the sum over chunks of columns ``C = F E`` of ``G Gᵀ`` with ``G`` the ``(n_kept, c · n_traced)``
    rearrangement of ``C``; the products are scaled (:func:`_scaled_products`) so that the
    squares do not underflow.
    """
    r = F.size_in
    counter = _scaled_products(F, progress, r)
    total = None
    try:
        for start in range(0, r, UNIT_BLOCK):
            C = counter.matmat(unit_rows(F, start, min(r, start + UNIT_BLOCK), r))
            part = kernel(A, _partial_gram, A.shape_in, traced)(C)
            total = part if total is None else total + part
    finally:
        counter.close()
    return ScalarResult(kernel(A, _dense_ratio)(total), _zero(A), r, "exact")


def _partial_gram(xp: Any, shape: tuple, traced: tuple, C: Any) -> Any:
    """``Σ_c Tr_traced(c cᵀ)`` over the rows ``c`` of ``C`` (k, n): an ``(n_kept, n_kept)`` array."""
    keep = tuple(a for a in range(len(shape)) if a not in traced)
    nk, nt = math.prod(shape[a] for a in keep), math.prod(shape[a] for a in traced)
    k = C.shape[0]
    Ck = xp.permute_dims(xp.reshape(C, (k, *shape)), (0, *(1 + a for a in keep), *(1 + a for a in traced)))
    G = xp.reshape(xp.permute_dims(xp.reshape(Ck, (k, nk, nt)), (1, 0, 2)), (nk, k * nt))
    return G @ xp.matrix_transpose(G)


def _norm_is_sound(xp: Any, t: Any, f: Any) -> bool:
    """Whether a rule's ``‖M‖_F`` can be trusted: not a sum of squares that underflowed.

    ``|tr M| <= √n ‖M‖_F``, so ``f = 0`` with ``t ≠ 0`` means the squares of tiny entries
    flushed to zero, and ``f² < smallest_normal / ε`` that they lost digits in subnormal
    numbers (float32 entries below about 1e-16); the dense route then scales before
    squaring (one host sync).
    """
    finfo = xp.finfo(f.dtype)
    fv = float(f)
    return fv >= math.sqrt(float(finfo.smallest_normal) / float(finfo.eps)) or (fv == 0 and float(t) == 0)


def _ratio_of_exact(xp: Any, t: Any, f: Any) -> Any:
    """``(t / f)²`` (no square of a tiny ``t`` or ``f`` to underflow); ``0`` when ``f = 0``."""
    safe = xp.where(f == 0, xp.ones_like(f), f)
    return xp.where(f == 0, xp.zeros_like(f), (t / safe) ** 2)


def _dense_ratio(xp: Any, D: Any) -> Any:
    """``tr(D)² / ‖D‖²_F`` of a dense ``D`` scaled by its largest entry first, so that squares of
    tiny entries (float32 below about 1e-19) do not underflow; ``0`` for ``D = 0``."""
    big = xp.max(xp.abs(D))
    Dn = D / xp.where(big == 0, xp.ones_like(big), big)
    return _ratio_of_exact(xp, xp.linalg.trace(Dn), xp.linalg.vector_norm(Dn))


def _effective_rank_estimate(
    A: LinearOperator, traced: tuple[int, ...], budget: int, gen: Any, progress: Any, traces: Any = None
) -> ScalarResult:
    t_exact = rules.exact_trace(A)
    used = 0
    if traces is not None and t_exact is None:
        t1, t2 = traces[0].value, traces[1].value
        e1, e2 = traces[0].error, traces[1].error
        fro_budget = budget
    elif t_exact is not None:
        t1 = t2 = t_exact
        e1 = e2 = _zero(A)
        fro_budget = budget
    else:
        quarter = budget // 4
        method = "xnystrace" if rules.is_psd(A) else "xtrace"
        quarter = min(quarter, A.size_in if method == "xnystrace" else 2 * A.size_in)
        r1 = trace(A, method=method, num_matvecs=quarter, rng=gen, progress=progress)
        r2 = trace(A, method=method, num_matvecs=quarter, rng=gen, progress=progress)
        t1, t2, e1, e2 = r1.value, r2.value, r1.error, r2.error
        used += r1.num_matvecs + r2.num_matvecs
        fro_budget = budget - used
    nt = math.prod(A.shape_in[a] for a in traced)
    # The products for tr(M²) are divided by a power of 4 s (ScaledProducts) so that their
    # squares neither underflow nor overflow; f² comes in units of s², the traces are put in
    # units of s below (the ratio is scale-free).
    if traced and fro_budget // nt < 8:
        # Too few products to apply M = Tr_traced(A) exactly: independent probe pairs.
        counter = _scaled_products(A, progress, fro_budget)
        try:
            if rules.is_psd(A) and fro_budget >= 8:
                f2, ef = _partial_fro_sq_nystrom(counter, traced, fro_budget, gen)
            else:
                f2, ef = _partial_fro_sq_pairs(counter, traced, fro_budget // 2, gen)
        finally:
            counter.close()
        used += counter.num_matvecs
    else:
        # Apply M exactly (one product with M costs nt products with A) and run Hutch++
        # on tr(M²) = ‖M‖²_F; effective_rank assumes a symmetric operator.
        M = A.partial_trace(traced) if traced else A
        counter = _scaled_products(M, progress, fro_budget // nt)
        m_fro = fro_budget // nt
        try:
            f2, ef = _fro_sq_estimate(cast(Any, counter), m_fro, gen, "hutch++", True)  # duck-typed
        finally:
            counter.close()
        # its error is the plain standard error of its residual samples (m − 2k of them)
        k = min(m_fro // 3, M.size_in)
        ef = None if ef is None else ef * student_factor(m_fro - 2 * k)
        used += counter.num_matvecs * nt
    nk = A.size_in // nt  # the dimension of M
    lowest = 1.0 if rules.is_psd(A) else 0.0
    t1, t2, e1, e2 = (None if v is None else v * (1.0 / counter.scale) for v in (t1, t2, e1, e2))
    # the range as arguments, not static values: one program for every axis and operator size
    value, error = kernel(A, _ratio_estimate)(lowest, float(nk), t1, t2, e1, e2, f2, ef)
    return ScalarResult(value, error, used, "estimate")


def _ratio_estimate(
    xp: Any, lowest: float, highest: float, t1: Any, t2: Any, e1: Any, e2: Any, f2: Any, ef: Any
) -> tuple[Any, Any]:
    """``t₁ t₂ / f²`` clamped into ``[lowest, highest]``, and its error.

    ``t₁``, ``t₂`` and ``f²`` are independent, so the first-order (delta-method) variance of
    the ratio ``r`` is ``r² ((e₁/t)² + (e₂/t)² + (e_f/f²)²)``; its second-order bias,
    ``r (e_f/f²)²`` (from ``E[1/f²] ≈ (1 + (e_f/f²)²)/E[f²]``), is added to the error in
    quadrature, so the bar covers the bias it does not remove.  The error is that of the raw
    ratio (the clamp only moves an estimate that strayed outside the range every
    participation ratio lies in); ``None`` when a part has none.  An ``f² = 0`` (every probe
    met the zero operator) gives 0, the participation ratio of the zero operator.
    """
    tiny = float(xp.finfo(f2.dtype).smallest_normal)
    zero = f2 == 0
    safe = xp.where(zero, xp.ones_like(f2), f2)
    raw = xp.where(zero, xp.zeros_like(f2), t1 * t2 / safe)
    value = xp.where(zero, raw, xp.clip(raw, lowest, highest))
    if e1 is None or e2 is None or ef is None:
        return value, None
    t = xp.maximum(xp.abs((t1 + t2) / 2), tiny)
    rf = ef / xp.maximum(xp.abs(f2), tiny)
    rel = (e1 / t) ** 2 + (e2 / t) ** 2 + rf**2 + rf**4
    return value, xp.where(zero, xp.zeros_like(f2), xp.abs(raw) * xp.sqrt(rel))


def _pair_probes(xp: Any, shape: tuple, traced: tuple, x: Any, z: Any) -> Any:
    """The flat probes ``x ⊗ z₁`` (first ``p`` rows) and ``x ⊗ z₂`` (the rest), ``(2p, n)``.

    ``x`` (p, n_kept) are Gaussian on the kept axes, ``z`` (2p, n_traced) Rademacher on the
    traced ones.
    """
    p = x.shape[0]
    keep_shape = tuple(1 if a in traced else s for a, s in enumerate(shape))
    tr_shape = tuple(s if a in traced else 1 for a, s in enumerate(shape))
    xs = xp.reshape(x, (p, *keep_shape))
    zs = xp.reshape(z, (2 * p, *tr_shape))
    return xp.reshape(xp.concat([xs, xs], axis=0) * zs, (2 * p, math.prod(shape)))


def _pair_contractions(xp: Any, shape: tuple, traced: tuple, Y: Any, z: Any) -> Any:
    """``uᵢ = (I ⊗ zᵢᵀ) yᵢ`` for the rows ``yᵢ`` of ``Y`` (2p, n): shape (2p, n_kept)."""
    tr_shape = tuple(s if a in traced else 1 for a, s in enumerate(shape))
    zs = xp.reshape(z, (z.shape[0], *tr_shape))
    U = xp.sum(xp.reshape(Y, (Y.shape[0], *shape)) * zs, axis=tuple(1 + a for a in traced))
    return xp.reshape(U, (Y.shape[0], -1))


def _pair_total(xp: Any, shape: tuple, traced: tuple, Y: Any, z: Any) -> tuple[Any, Any]:
    U = _pair_contractions(xp, shape, traced, Y, z)  # unbiased for M x
    p = U.shape[0] // 2
    return calibrated_mean(xp, xp.sum(U[:p, ...] * U[p:, ...], axis=1))


def _partial_fro_sq_pairs(counter: Any, traced: tuple[int, ...], p: int, gen: Any) -> tuple[Any, Any]:
    """Unbiased ``‖Tr_traced(A)‖²_F`` from ``p`` independent probe pairs (``2p`` matvecs)."""
    A = counter.op
    shape, like = A.shape_in, like_array(A)
    nt = math.prod(shape[a] for a in traced)
    x = probes(gen, p, A.size_in // nt, like, "gaussian")
    z = probes(gen, 2 * p, nt, like, "rademacher")
    X = kernel(A, _pair_probes, shape, traced)(x, z)
    return kernel(A, _pair_total, shape, traced)(counter.matmat(X), z)


def _partial_fro_sq_nystrom(counter: Any, traced: tuple[int, ...], budget: int, gen: Any) -> tuple[Any, Any]:
    """``‖Tr_traced(A)‖²_F`` for a PSD ``A``: exact on a Nyström sketch, unbiased pairs on the rest.

    With ``A + νI ≈ Fᵀ F`` from a stable Nyström sketch of ``s = budget/2`` probes,
    ``M = Tr_traced(A) = L + R`` where ``L = Tr_traced(Fᵀ F) − ν n_traced I`` is exact and
    cheap (``F`` has ``s`` rows) and ``R = Tr_traced(A − Â)``.  With independent probe pairs
    ``uᵢ = (I ⊗ zᵢᵀ)(A − Â)(x ⊗ zᵢ)`` (mean ``R x``), ``‖L‖² + ⟨L x, u₁ + u₂⟩ + ⟨u₁, u₂⟩`` is
    unbiased for ``‖M‖²_F`` given the sketch, and its variance is set by the residual only.
    """
    from kpflow.linalg.trace import nystrom_sketch

    A = counter.op
    shape, like = A.shape_in, like_array(A)
    nt = math.prod(shape[a] for a in traced)
    nk = A.size_in // nt
    s = max(2, min(budget // 2, A.size_in))
    sk = nystrom_sketch(counter, s, gen)
    F, L, low = kernel(A, _nystrom_partial, shape, traced)(sk["F"], sk["nu"])
    p = (budget - s) // 2
    if p < 2:
        return low, None
    x = probes(gen, p, nk, like, "gaussian")
    z = probes(gen, 2 * p, nt, like, "rademacher")
    X = kernel(A, _pair_probes, shape, traced)(x, z)
    total = kernel(A, _nystrom_pair_total, shape, traced)
    return total(X, counter.matmat(X), F, sk["nu"], z, x, L, low)


def _nystrom_partial(xp: Any, shape: tuple, traced: tuple, F: Any, nu: Any) -> tuple[Any, Any, Any]:
    """``F`` (s, n) with ``A + νI ≈ Fᵀ F``, ``L = Tr_traced(Fᵀ F) − ν n_traced I`` and ``‖L‖²_F``."""
    keep = tuple(a for a in range(len(shape)) if a not in traced)
    nk = math.prod(shape[a] for a in keep)
    nt = math.prod(shape[a] for a in traced)
    s = F.shape[0]
    Fk = xp.permute_dims(xp.reshape(F, (s, *shape)), (0, *(1 + a for a in keep), *(1 + a for a in traced)))
    G = xp.reshape(xp.permute_dims(xp.reshape(Fk, (s, nk, nt)), (1, 0, 2)), (nk, s * nt))
    L = G @ xp.matrix_transpose(G) - (nu * nt) * xp.eye(nk, dtype=F.dtype, device=device_of(F))
    return F, L, xp.sum(L * L)


def _nystrom_pair_total(
    xp: Any, shape: tuple, traced: tuple, X: Any, AX: Any, F: Any, nu: Any, z: Any, x: Any, L: Any, low: Any
) -> tuple[Any, Any]:
    resid = AX - (X @ xp.matrix_transpose(F)) @ F + nu * X  # (A − Â) X
    U = _pair_contractions(xp, shape, traced, resid, z)
    p = x.shape[0]
    Lx = x @ xp.matrix_transpose(L)
    samples = xp.sum(Lx * (U[:p, :] + U[p:, :]) + U[:p, :] * U[p:, :], axis=1)
    mean, se = calibrated_mean(xp, samples)
    return low + mean, se
