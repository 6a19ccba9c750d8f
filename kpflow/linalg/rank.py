"""Effective rank (participation ratio) of operators, globally or along axes.

* ``effective_rank``: exact from rules for ``tr`` and ``‖·‖_F`` of ``A`` (or of its exact
  partial trace), or ``n`` unit probes; otherwise ``t₁ t₂ / f²`` with two independent trace
  estimates and an independent ``f² ≈ tr(M²)``.

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
    host_rng,
    like_array,
    probes,
    unit_rows,
)
from kpflow.linalg.norms import DEFAULT_BUDGET, _fro_sq_estimate, _se, _zero
from kpflow.linalg.trace import trace
from kpflow.operators.base import LinearOperator

__all__ = ["effective_rank"]


def _keep_axes(A: LinearOperator, keep: Any, where: str) -> tuple[int, ...]:
    if isinstance(keep, int) and not isinstance(keep, bool):
        keep = (keep,)
    if not isinstance(keep, Iterable):
        msg = f"{where}: expected keep to be an int or a tuple of ints, got {keep!r}"
        raise TypeError(msg)
    nd = len(A.shape_in)
    out = []
    for a in keep:
        if isinstance(a, bool) or not isinstance(a, int):
            msg = f"{where}: expected keep to hold ints, got {a!r}"
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


def effective_rank(
    A: LinearOperator,
    keep: Any = None,
    *,
    method: str = "auto",
    num_matvecs: int | None = None,
    rng: Any = None,
    progress: Any = None,
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
    keep : int or tuple of int, optional
        The axes to keep.
    method : {"auto", "exact", "estimate"}
        ``"auto"``: exact from rules when ``exact_trace`` and ``exact_fro_norm``
        apply to ``M`` (``M`` from :meth:`~kpflow.LinearOperator.partial_trace`,
        which keeps Kronecker structure); else ``"exact"`` through ``n`` unit
        probes of ``A`` when the budget reaches ``n`` (without a budget: when
        ``n <= DENSE_LIMIT``); else ``"estimate"`` (see the module docstring):
        half the budget for two independent XTrace/XNysTrace estimates of
        ``tr M = tr A``, half for ``tr(M²)``.
    num_matvecs : int, optional
        Budget of products with ``A`` (default 200; ``"estimate"`` needs 16).
    rng : int, numpy.random.Generator or None
    progress : None, bool or callable

    Returns
    -------
    ScalarResult
        ``.error`` is a first-order standard error of the estimate.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import effective_rank
    >>> A = kpflow.kron(kpflow.Identity((3,), like=xp.zeros(1)), kpflow.Diagonal(xp.asarray([1.0, 0.0])))
    >>> round(float(effective_rank(A)), 12), round(float(effective_rank(A, keep=1)), 12)
    (3.0, 1.0)
    """
    where = "kpflow.linalg.effective_rank"
    check_operator(A, where)
    check_square(A, where)
    check_method(method, ("auto", "exact", "estimate"), where)
    gen = host_rng(rng, where)
    if num_matvecs is not None:
        check_budget(num_matvecs, 0, where, method)
    _xp, n = A.xp, A.size_in
    keep_axes = tuple(range(len(A.shape_in))) if keep is None else _keep_axes(A, keep, where)
    traced = tuple(a for a in range(len(A.shape_in)) if a not in keep_axes)
    M = A.partial_trace(traced) if traced else A
    if method in ("auto", "exact"):
        t, f = rules.exact_trace(M), rules.exact_fro_norm(M)
        if t is not None and f is not None:
            return ScalarResult(t * t / (f * f), _zero(A), 0, "exact")
        budget_ok = n <= DENSE_LIMIT if num_matvecs is None else num_matvecs >= n
        if method == "exact" or budget_ok:
            return _effective_rank_dense(A, M, n, progress)
        method = "estimate"
    budget = check_budget(DEFAULT_BUDGET if num_matvecs is None else num_matvecs, 16, where, method)
    return _effective_rank_estimate(A, traced, budget, gen, progress)


def _effective_rank_dense(A: LinearOperator, M: LinearOperator, n: int, progress: Any) -> ScalarResult:
    xp = A.xp
    nk = M.size_in
    if rules.has_cheap_dense(M):
        from kpflow.operators.functions import todense

        D = xp.reshape(todense(M), (nk, nk))
        used = 0
    else:
        counter = MatvecCounter(M, progress, nk, "kpflow.linalg.effective_rank")
        blocks = []
        try:
            for start in range(0, nk, 256):
                blocks.append(counter.matmat(unit_rows(M, start, min(nk, start + 256), nk)))
        finally:
            counter.close()
        D = blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=0)
        used = n  # each product with M is n / nk products with A
    t = xp.linalg.trace(D)
    return ScalarResult(t * t / xp.sum(D * D), _zero(A), used, "exact")


def _effective_rank_estimate(
    A: LinearOperator, traced: tuple[int, ...], budget: int, gen: Any, progress: Any
) -> ScalarResult:
    xp = A.xp
    tiny = float(xp.finfo(A.dtype).smallest_normal)
    t_exact = rules.exact_trace(A)
    used = 0
    if t_exact is not None:
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
    if traced and fro_budget // nt < 8:
        # Too few products to apply M = Tr_traced(A) exactly: independent probe pairs.
        counter = MatvecCounter(A, progress, fro_budget, "kpflow.linalg.effective_rank")
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
        counter = MatvecCounter(M, progress, fro_budget // nt, "kpflow.linalg.effective_rank")
        try:
            f2, ef = _fro_sq_estimate(counter, fro_budget // nt, gen, "hutch++", True)
        finally:
            counter.close()
        used += counter.num_matvecs * nt
    value = t1 * t2 / f2
    t = (t1 + t2) / 2
    rel = (e1 / xp.maximum(xp.abs(t), tiny)) ** 2 + (e2 / xp.maximum(xp.abs(t), tiny)) ** 2
    rel = rel + (ef / xp.maximum(xp.abs(f2), tiny)) ** 2
    return ScalarResult(value, xp.abs(value) * xp.sqrt(rel), used, "estimate")


def _partial_fro_sq_pairs(
    counter: MatvecCounter, traced: tuple[int, ...], p: int, gen: Any
) -> tuple[Any, Any]:
    """Unbiased ``‖Tr_traced(A)‖²_F`` from ``p`` independent probe pairs (``2p`` matvecs)."""
    A = counter.op
    xp, shape = A.xp, A.shape_in
    like = like_array(A)
    keep_shape = tuple(1 if a in traced else s for a, s in enumerate(shape))
    tr_shape = tuple(s if a in traced else 1 for a, s in enumerate(shape))
    nk, nt = math.prod(keep_shape), math.prod(tr_shape)
    x = xp.reshape(probes(gen, p, nk, like, "gaussian"), (p, *keep_shape))
    z = xp.reshape(probes(gen, 2 * p, nt, like, "rademacher"), (2 * p, *tr_shape))
    X = xp.concat([x, x], axis=0) * z  # x ⊗ z₁ for the first p, x ⊗ z₂ for the rest
    Y = xp.reshape(counter.matmat(xp.reshape(X, (2 * p, A.size_in))), (2 * p, *shape))
    axes = tuple(1 + a for a in traced)
    U = xp.sum(Y * z, axis=axes)  # (2p, *kept): unbiased for M x
    samples = xp.reshape(xp.sum(U[:p, ...] * U[p:, ...], axis=tuple(range(1, U.ndim))), (p,))
    return xp.mean(samples), _se(xp, samples)


def _partial_fro_sq_nystrom(
    counter: MatvecCounter, traced: tuple[int, ...], budget: int, gen: Any
) -> tuple[Any, Any]:
    """``‖Tr_traced(A)‖²_F`` for a PSD ``A``: exact on a Nyström sketch, unbiased pairs on the rest.

    With ``A + νI ≈ Fᵀ F`` from a stable Nyström sketch of ``s = budget/2`` probes,
    ``M = Tr_traced(A) = L + R`` where ``L = Tr_traced(Fᵀ F) − ν n_traced I`` is exact and
    cheap (``F`` has ``s`` rows) and ``R = Tr_traced(A − Â)``.  With independent probe pairs
    ``uᵢ = (I ⊗ zᵢᵀ)(A − Â)(x ⊗ zᵢ)`` (mean ``R x``), ``‖L‖² + ⟨L x, u₁ + u₂⟩ + ⟨u₁, u₂⟩`` is
    unbiased for ``‖M‖²_F`` given the sketch, and its variance is set by the residual only.
    """
    from kpflow.linalg.trace import nystrom_sketch

    A = counter.op
    xp, shape = A.xp, A.shape_in
    like = like_array(A)
    keep = tuple(a for a in range(len(shape)) if a not in traced)
    nk = math.prod(shape[a] for a in keep)
    nt = math.prod(shape[a] for a in traced)
    s = max(2, min(budget // 2, A.size_in))
    sk = nystrom_sketch(counter, s, gen)
    F = xp.matrix_transpose(sk["B"]) @ sk["Q"]  # (s, n): A + νI ≈ Fᵀ F
    nu = sk["nu"]
    Fk = xp.permute_dims(xp.reshape(F, (s, *shape)), (0, *(1 + a for a in keep), *(1 + a for a in traced)))
    G = xp.reshape(xp.permute_dims(xp.reshape(Fk, (s, nk, nt)), (1, 0, 2)), (nk, s * nt))
    L = G @ xp.matrix_transpose(G) - (nu * nt) * unit_rows(A, 0, nk, nk)
    low = xp.sum(L * L)
    p = (budget - s) // 2
    if p < 2:
        return low, None
    keep_shape = tuple(1 if a in traced else n for a, n in enumerate(shape))
    tr_shape = tuple(n if a in traced else 1 for a, n in enumerate(shape))
    x = probes(gen, p, nk, like, "gaussian")
    z = xp.reshape(probes(gen, 2 * p, nt, like, "rademacher"), (2 * p, *tr_shape))
    xs = xp.reshape(x, (p, *keep_shape))
    X = xp.reshape(xp.concat([xs, xs], axis=0) * z, (2 * p, A.size_in))
    resid = counter.matmat(X) - (X @ xp.matrix_transpose(F)) @ F + nu * X  # (A − Â) X
    axes = tuple(1 + a for a in traced)
    U = xp.reshape(xp.sum(xp.reshape(resid, (2 * p, *shape)) * z, axis=axes), (2 * p, nk))
    Lx = x @ xp.matrix_transpose(L)
    samples = xp.sum(Lx * (U[:p, :] + U[p:, :]) + U[:p, :] * U[p:, :], axis=1)
    return low + xp.mean(samples), _se(xp, samples)
