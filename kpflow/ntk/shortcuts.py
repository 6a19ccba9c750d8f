"""Exact linear algebra on the Kronecker core of K, registered as :mod:`kpflow.linalg` rules.

For K = Σ_w D_w (G_w ⊗ I) D_wᵀ with unit-structured D (docs/theory.md, "Exact shortcuts"),
nothing iterative is needed:

- **Spectrum.** Sites that write the same state columns form a group; within a group
  hidden unit i only couples to itself, through the per-unit site matrix
  Φ_i[(s, a), (w, g, p)] = D_w[s, i, a, g] · A_w[s, p].  Then K restricted to unit i is
  Φ_i Φ_iᵀ and spec(K) = ∪_groups ∪_i eig(Φ_iᵀ Φ_i) (the smaller of Φ_iᵀΦ_i and Φ_iΦ_iᵀ
  is diagonalised).  With D = c·I (leaky RNN) every Φ_i is c·A, so one eigendecomposition
  of the p × p matrix c² AᵀA serves every unit, each eigenvalue repeated ``n_units``
  times: the multiplicities are exact by construction.
- **Trace.** tr K = Σ_w Σ_s ‖a_w(s)‖² ‖D_w(s)‖_F² (G_ss times the squared D entries).
- **Frobenius norm.** ‖K‖_F² = tr K² = Σ_groups Σ_i ‖Φ_iᵀ Φ_i‖_F².
- **Partial traces.** Tracing any of the site axes and/or the state axis gives a small
  dense matrix computed from the site variables and D alone
  (:func:`kernel_partial_trace`); effective ranks along an axis are then exact too.

- **Gram factors.** NTK_S = J_S J_Sᵀ with J_S = P F (:mod:`kpflow.ntk.jacobian`), and so
  are its LSTM blocks and the output NTK: ``rules.gram_factor`` returns the factor, so
  that trace, norms, effective ranks and eigsh can work on the parameter side J_Sᵀ J_S.

Participation ratios follow: pr(K) = tr(K)² / ‖K‖_F².  Every result stays in the
kernel's namespace, dtype and device; the eigenvalue selection runs on-device with
``argsort``.  Each rule is a pure function of the sites' arrays, so that on jax it runs
as one compiled program (:func:`kpflow.linalg._common.kernel`) rather than as dozens of
primitives compiled one by one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from kpflow._array import device_of, prod
from kpflow.linalg import rules
from kpflow.linalg._common import EighResult, MatvecCounter, kernel
from kpflow.models.sites import Site
from kpflow.ntk.global_ntk import GlobalNTK, OutputNTK, StateBlockNTK
from kpflow.ntk.kernel import AutodiffKernel, KroneckerCoreKernel
from kpflow.operators.base import LinearOperator
from kpflow.operators.basic import Dense
from kpflow.operators.functions import _partial_trace

__all__ = ["UNIT_GRAM_ENTRIES_LIMIT", "kernel_partial_trace", "unit_grams"]

#: Per-unit site matrices Φ_i are built in chunks of units holding at most this many entries.
UNIT_GRAM_ENTRIES_LIMIT = 2**24


def _unit_structured(K: KroneckerCoreKernel) -> bool:
    """Whether every site has per-unit D (not a :class:`~kpflow.models.sites.LinearSite`).

    The rules below read ``unit_D``/``scale``; a general D_w (self-attention) couples sites
    and units, so for it they answer None and the matrix-free algorithms take over.
    """
    return all(getattr(site, "unit_structured", True) for site in K.sites)


def _groups(K: KroneckerCoreKernel) -> list[list[Site]] | None:
    """Sites grouped by the state columns they write; None if a group mixes unit layouts."""
    groups: dict[tuple[int, int], list[Site]] = {}
    for site in K.sites:
        groups.setdefault(tuple(site.columns), []).append(site)  # type: ignore[arg-type]
    out = list(groups.values())
    for group in out:
        first = group[0]
        if any((s.n_units, s.a, s.m) != (first.n_units, first.a, first.m) for s in group):
            return None
    return out


def _is_scaled(group: list[Site]) -> bool:
    return all(s.unit_D is None for s in group)


class _SiteInfo(NamedTuple):
    """The static (hashable) description of a site: what compiled kernels may branch on."""

    scale: float | None
    n_units: int
    a: int
    g: int
    m: int
    p: int
    lo: int  # the first state column the site writes
    size: int  # the per-site state size S


def _infos(sites: list[Site]) -> tuple[_SiteInfo, ...]:
    return tuple(
        _SiteInfo(s.scale, s.n_units, s.a, s.g, s.m, s.p, int(s.columns[0]), s.site_state_size) for s in sites
    )


def _arrays(sites: list[Site]) -> tuple[tuple[Any, Any], ...]:
    """The sites' arrays ``(A_w, unit_D or None)``: the arguments of the compiled kernels."""
    return tuple((s.variables, s.unit_D) for s in sites)


def _dense_D(xp: Any, info: _SiteInfo, A: Any, unit_D: Any) -> Any:
    """``unit_D`` (m, n_units, a, g), also for a scaled site (D = scale·I)."""
    if unit_D is not None:
        return unit_D
    return xp.full((info.m, info.n_units, 1, 1), info.scale, dtype=A.dtype, device=device_of(A))


def _left(infos: tuple[_SiteInfo, ...], scaled: bool) -> bool:
    """Whether Φ Φᵀ (rows m·a) is smaller than Φᵀ Φ (columns Σ_w g_w p_w)."""
    first = infos[0]
    width = sum(i.p for i in infos) if scaled else sum(i.g * i.p for i in infos)
    return first.m * (1 if scaled else first.a) < width


def _phi(xp: Any, infos: tuple, arrays: tuple, units: Any | None) -> Any:
    """Φ for the selected units: shape (n_sel, m·a, Σ_w g_w p_w); all units when ``units`` is None.

    A scaled group (D = c·I) has one Φ shared by all units: shape (1, m, Σ_w p_w).
    """
    blocks = []
    if all(D is None for _, D in arrays):
        for info, (A, _) in zip(infos, arrays, strict=True):
            blocks.append(info.scale * A[None, :, :])
        return xp.concat(blocks, axis=-1) if len(blocks) > 1 else blocks[0]
    for info, (A, D) in zip(infos, arrays, strict=True):
        ud = _dense_D(xp, info, A, D)  # (m, n, a, g)
        if units is not None:
            ud = xp.take(ud, units, axis=1)
        n_sel, g = ud.shape[1], ud.shape[3]
        ud = xp.permute_dims(ud, (1, 0, 2, 3))  # (n_sel, m, a, g)
        phi = ud[:, :, :, :, None] * A[None, :, None, None, :]  # (n_sel, m, a, g, p)
        blocks.append(xp.reshape(phi, (n_sel, info.m * info.a, g * info.p)))
    return xp.concat(blocks, axis=-1) if len(blocks) > 1 else blocks[0]


def _unit_chunks(group: list[Site]) -> list[tuple[int, int]]:
    first = group[0]
    if _is_scaled(group):
        return [(0, 1)]
    width = sum(s.g * s.p for s in group)
    per_unit = first.m * first.a * width
    step = max(1, UNIT_GRAM_ENTRIES_LIMIT // max(per_unit, 1))
    return [(lo, min(lo + step, first.n_units)) for lo in range(0, first.n_units, step)]


def _grams(xp: Any, infos: tuple, chunks: tuple, arrays: tuple) -> Any:
    """The per-unit Grams of one group on the smaller side, (n_units or 1, r, r) (see unit_grams)."""
    scaled = all(D is None for _, D in arrays)
    left = _left(infos, scaled)
    parts = []
    for lo, hi in chunks:
        units = None if scaled else xp.arange(lo, hi, device=device_of(arrays[0][0]))
        phi = _phi(xp, infos, arrays, units)
        parts.append(phi @ xp.matrix_transpose(phi) if left else xp.matrix_transpose(phi) @ phi)
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def _specs(groups: list[list[Site]]) -> tuple:
    """Per group: the static ``(site infos, unit chunks)`` of its compiled kernels."""
    return tuple((_infos(group), tuple(_unit_chunks(group))) for group in groups)


def unit_grams(K: KroneckerCoreKernel) -> list[tuple[list[Site], Any, bool]]:
    """The small per-unit Gram matrices of K, on the smaller side, group by group.

    Returns, per group of sites writing the same state columns, ``(sites, M, left)``:
    ``M`` of shape ``(n_units, r, r)`` (``(1, r, r)`` for a scaled group, shared by every
    unit) with ``M_i = Φ_iᵀ Φ_i`` when ``left`` is False and ``Φ_i Φ_iᵀ`` when True.
    The nonzero eigenvalues of the M_i, over all units and groups, are those of K.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import LeakyRNN
    >>> from kpflow.ntk import parameter_kernel
    >>> from kpflow.ntk.shortcuts import unit_grams
    >>> model = LeakyRNN(2, 3, dt=0.5)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((2, 4, 2)))
    >>> [(M.shape, left) for _, M, left in unit_grams(parameter_kernel(traj))]
    [((1, 5, 5), False)]
    """
    if not _unit_structured(K):
        msg = "unit_grams: the kernel has a site with a general D_w (LinearSite), which has no per-unit Grams"
        raise ValueError(msg)
    groups = _groups(K)
    if groups is None:
        msg = "unit_grams: the kernel's sites mix unit layouts within one group of state columns"
        raise ValueError(msg)
    out = []
    for group, (infos, chunks) in zip(groups, _specs(groups), strict=True):
        M = kernel(K, _grams, infos, chunks)(_arrays(group))
        out.append((group, M, _left(infos, _is_scaled(group))))
    return out


# -- trace and Frobenius norm ----------------------------------------------------------------------
def _trace(xp: Any, infos: tuple, arrays: tuple) -> Any:
    total = None
    for info, (A, D) in zip(infos, arrays, strict=True):
        row_sq = xp.sum(A * A, axis=1)  # G_ss, (m,)
        if D is None:
            term = (info.scale * info.scale * info.g * info.n_units) * xp.sum(row_sq)
        else:
            term = xp.sum(row_sq * xp.sum(xp.reshape(D * D, (info.m, -1)), axis=1))
        total = term if total is None else total + term
    return xp.asarray(total)  # numpy reductions give scalars; keep a 0-d array


@rules.exact_trace.register
def _(op: KroneckerCoreKernel) -> Any:
    if not _unit_structured(op):
        return None
    return kernel(op, _trace, _infos(op.sites))(_arrays(op.sites))


def _fro_norm(xp: Any, specs: tuple, arrays: tuple) -> Any:
    total = None
    for (infos, chunks), group_arrays in zip(specs, arrays, strict=True):
        M = _grams(xp, infos, chunks, group_arrays)
        sq = xp.sum(M * M)
        if all(D is None for _, D in group_arrays):
            sq = sq * infos[0].n_units  # one Gram shared by every unit
        total = sq if total is None else total + sq
    return xp.asarray(xp.sqrt(total))


@rules.exact_fro_norm.register
def _(op: KroneckerCoreKernel) -> Any:
    if not _unit_structured(op):
        return None
    groups = _groups(op)
    if groups is None:
        return None
    return kernel(op, _fro_norm, _specs(groups))(tuple(_arrays(g) for g in groups))


# -- spectrum ---------------------------------------------------------------------------------------
def _counts(specs: tuple) -> list[int]:
    """How many eigenvalues each group's unit Grams hold (n_units · r)."""
    out = []
    for infos, _ in specs:
        scaled = all(i.scale is not None for i in infos)
        first = infos[0]
        rows = first.m * (1 if scaled else first.a)
        cols = sum(i.p for i in infos) if scaled else sum(i.g * i.p for i in infos)
        out.append(first.n_units * min(rows, cols))
    return out


def _top_pairs(xp: Any, specs: tuple, k: int, shape: tuple, arrays: tuple) -> tuple[Any, Any, Any]:
    """The top ``k`` eigenpairs of K, values (k,) and vectors (k, *shape), with fixed shapes.

    Every group builds vectors for all ``k`` selected indices (indices outside the group
    clipped into range) and keeps the rows it owns, so that nothing depends on the values'
    order at trace time.  The third output is True when a selected eigenvalue of a group
    diagonalised on the Φᵀ Φ side is (numerically) zero: its vector does not lift to K.
    """
    values, decomps = [], []
    for (infos, chunks), group_arrays in zip(specs, arrays, strict=True):
        scaled = all(D is None for _, D in group_arrays)
        w, U = xp.linalg.eigh(_grams(xp, infos, chunks, group_arrays))  # ascending
        if scaled:
            n = infos[0].n_units
            w = xp.reshape(xp.broadcast_to(w, (n, w.shape[1])), (n * w.shape[1],))
        else:
            w = xp.reshape(w, (-1,))
        values.append(w)
        decomps.append((infos, group_arrays, U, _left(infos, scaled), scaled))
    allw = xp.concat(values) if len(values) > 1 else values[0]
    order = xp.argsort(allw, descending=True, stable=True)[:k]
    top = xp.take(allw, order)
    eps = 1e3 * float(xp.finfo(allw.dtype).eps) * xp.maximum(xp.max(xp.abs(allw)), 1e-300)
    vectors = None
    lost = None
    offset = 0
    for (infos, group_arrays, U, left, scaled), w in zip(decomps, values, strict=True):
        count = w.shape[0]
        mine = (order >= offset) & (order < offset + count)
        local = xp.clip(order - offset, 0, count - 1)
        vecs, null = _group_vectors(xp, infos, group_arrays, U, left, scaled, local, top, eps, shape)
        vecs = xp.where(xp.reshape(mine, (k,) + (1,) * len(shape)), vecs, xp.zeros_like(vecs))
        vectors = vecs if vectors is None else vectors + vecs
        if null is not None:
            null = xp.any(mine & null)
            lost = null if lost is None else lost | null
        offset += count
    if lost is None:
        lost = xp.zeros((), dtype=xp.bool, device=device_of(allw))
    return top, vectors, lost


def _group_vectors(
    xp: Any,
    infos: tuple,
    arrays: tuple,
    U: Any,
    left: bool,
    scaled: bool,
    local: Any,
    lam: Any,
    eps: Any,
    shape: tuple,
) -> tuple[Any, Any]:
    """State-space eigenvectors (k, *shape) for the group's flat eigen-indices ``local`` (k,).

    Also the rows whose eigenvalue is too small to lift from the Φᵀ Φ side (None on the Φ Φᵀ side).
    """
    first = infos[0]
    n, a, m = first.n_units, first.a, first.m
    r = U.shape[-1]
    unit = local // r
    idx = local % r
    # eigh is ascending; the flat index counts within each unit's ascending list.
    if scaled:
        u = xp.matrix_transpose(xp.take(U[0, ...], idx, axis=1))  # (k, r)
    else:
        flat = xp.reshape(xp.permute_dims(U, (0, 2, 1)), (U.shape[0] * r, r))  # rows = eigenvectors
        u = xp.take(flat, unit * r + idx, axis=0)  # (k, r)
    null = None
    if left:
        vec = u  # (k, m·a) already in state space
    else:
        null = lam <= eps
        safe = xp.sqrt(xp.where(null, xp.ones_like(lam), lam))
        if scaled:
            vec = u @ xp.matrix_transpose(_phi(xp, infos, arrays, None)[0, ...])  # (k, m)
        else:
            vec = xp.sum(_phi(xp, infos, arrays, unit) * u[:, None, :], axis=-1)  # (k, m·a)
        vec = vec / safe[:, None]
    k = vec.shape[0]
    vec = xp.reshape(vec, (k, m, a))
    dev = device_of(vec)
    # state column of (unit i, output j) is lo + j·n + i
    cols = first.lo + xp.arange(a, device=dev)[None, :] * n + unit[:, None]  # (k, a)
    onehot = xp.astype(cols[:, :, None] == xp.arange(first.size, device=dev)[None, None, :], vec.dtype)
    return xp.reshape(vec @ onehot, (k, *shape)), null  # (k, m, S) -> (k, *shape)


def _residual_norms(xp: Any, AV: Any, vals: Any, V: Any) -> Any:
    return xp.linalg.vector_norm(AV - vals[:, None] * V, axis=1)


@rules.exact_eigsh.register
def _(op: KroneckerCoreKernel, k: int) -> EighResult | None:
    if not _unit_structured(op):
        return None
    groups = _groups(op)
    if groups is None:
        return None
    specs = _specs(groups)
    if k > sum(_counts(specs)):
        return None  # K has more zero eigenvalues than the unit Grams show: leave it to Krylov
    arrays = tuple(_arrays(g) for g in groups)
    top, vectors, lost = kernel(op, _top_pairs, specs, k, op.shape_in)(arrays)
    if bool(lost):
        return None  # a null direction of Φᵀ Φ does not lift to K; let Krylov handle it
    flat = op.xp.reshape(vectors, (k, op.size_in))
    norms = kernel(op, _residual_norms)(MatvecCounter(op).matmat(flat), top, flat)
    return EighResult(top, vectors, norms, k)


# -- partial traces ----------------------------------------------------------------------------------
def kernel_partial_trace(K: KroneckerCoreKernel, traced: tuple[int, ...]) -> LinearOperator | None:
    """The exact partial trace of K over ``traced`` axes, as a Dense operator; None if unsupported.

    The state reads as ``(*site_shape, S)``: site axes (batch, time) then the per-site
    state axis.  With τ the traced site axes and κ the kept ones,
    ``Tr K[(s_κ, c), (s'_κ, c')] = Σ_{s_τ} Σ_w G_w[(s_κ,s_τ), (s'_κ,s_τ)] H_w`` where H_w
    pairs the D entries; tracing the state axis sums H_w's diagonal.  The cost is one
    batched Gram of the site variables per traced-site slice, never a probe.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import RNN
    >>> from kpflow.ntk import parameter_kernel
    >>> model = RNN(1, 2)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((3, 4, 1)))
    >>> parameter_kernel(traj).partial_trace((1, 2)).shape_in
    (3,)
    """
    if not _unit_structured(K):
        return None
    first = K.sites[0]
    site_shape = tuple(K.shape_in[:-1])
    if prod(site_shape) != first.m or any(s.m != first.m for s in K.sites):
        return None
    nsite = len(site_shape)
    kept = tuple(site_shape[a] for a in range(nsite) if a not in traced)
    shape = kept if nsite in traced else (*kept, K.shape_in[-1])
    dense = kernel(K, _partial_trace_matrix, _infos(K.sites), site_shape, tuple(traced))
    return Dense(dense(_arrays(K.sites)), shape_in=shape)


def _partial_trace_matrix(xp: Any, infos: tuple, site_shape: tuple, traced: tuple, arrays: tuple) -> Any:
    """The dense partial trace of K (see :func:`kernel_partial_trace`), shape ``shape + shape``."""
    nsite = len(site_shape)
    S = infos[0].size
    tau = tuple(a for a in traced if a < nsite)
    kappa = tuple(a for a in range(nsite) if a not in tau)
    trace_state = nsite in traced
    n_tau = prod([site_shape[a] for a in tau])
    kshape = tuple(site_shape[a] for a in kappa)
    n_kappa = prod(kshape)
    perm = kappa + tau
    out = None
    for info, (A, D) in zip(infos, arrays, strict=True):
        ud = _dense_D(xp, info, A, D)  # (m, n, a, g)
        n, a, g = info.n_units, info.a, ud.shape[3]
        Ud = _site_permuted(xp, xp.reshape(ud, (info.m, -1)), site_shape, perm, n_kappa, n_tau)
        A = _site_permuted(xp, A, site_shape, perm, n_kappa, n_tau)  # (n_tau, n_kappa, p)
        G = A @ xp.matrix_transpose(A)  # (n_tau, n_kappa, n_kappa)
        if trace_state:
            H = Ud @ xp.matrix_transpose(Ud)  # Σ over (i, a, g)
            term = xp.sum(G * H, axis=0)  # (n_kappa, n_kappa)
            shape = kshape
        else:
            X = xp.reshape(Ud, (n_tau, n_kappa, n, a, g))
            X = xp.reshape(xp.permute_dims(X, (0, 2, 1, 3, 4)), (n_tau, n, n_kappa * a, g))
            Y = X @ xp.matrix_transpose(X)  # (n_tau, n, n_kappa·a, n_kappa·a)
            Y = xp.reshape(Y, (n_tau, n, n_kappa, a, n_kappa, a)) * xp.reshape(
                G, (n_tau, 1, n_kappa, 1, n_kappa, 1)
            )
            Y = xp.sum(Y, axis=0)  # (n, κ, a, κ', a')
            eye = xp.eye(n, dtype=A.dtype, device=device_of(A))
            Z = Y[:, :, :, :, :, None] * xp.reshape(eye, (n, 1, 1, 1, 1, n))  # (i, κ, a, κ', a', i')
            Z = xp.reshape(xp.permute_dims(Z, (1, 2, 0, 3, 4, 5)), (n_kappa, a * n, n_kappa, a * n))
            term = _embed_columns(xp, Z, info.lo, S)
            shape = (*kshape, S)
        term = xp.reshape(term, shape + shape)
        out = term if out is None else out + term
    # numpy turns 0-d sums into scalars; asarray keeps an array for the full trace.
    return xp.asarray(out)


def _site_permuted(xp: Any, M: Any, site_shape: tuple, perm: tuple, n_kappa: int, n_tau: int) -> Any:
    """Rows of ``M`` (m, c) regrouped as (n_tau, n_kappa, c): traced site axes first."""
    c = M.shape[1]
    T = xp.reshape(M, (*site_shape, c))
    T = xp.permute_dims(T, (*perm, len(site_shape)))
    T = xp.reshape(T, (n_kappa, n_tau, c))
    return xp.permute_dims(T, (1, 0, 2))


def _embed_columns(xp: Any, Z: Any, lo: int, S: int) -> Any:
    """Place the (κ, w, κ', w) block at state columns lo..lo+w of (κ, S, κ', S)."""
    w = Z.shape[1]
    if w == S:
        return Z
    dev = device_of(Z)
    E = xp.astype((lo + xp.arange(w, device=dev))[:, None] == xp.arange(S, device=dev)[None, :], Z.dtype)
    Z = xp.permute_dims(Z, (0, 2, 1, 3)) @ E  # (κ, κ', w, S)
    Z = xp.matrix_transpose(Z) @ E  # (κ, κ', S, S)
    return xp.permute_dims(Z, (0, 2, 1, 3))


@_partial_trace.register
def _(op: KroneckerCoreKernel, traced: tuple[int, ...]) -> LinearOperator:
    if not traced:
        return op
    exact = kernel_partial_trace(op, traced)
    if exact is not None:
        return exact
    from kpflow.operators.functions import PartialTrace

    return PartialTrace(op, traced)


# -- positive semi-definiteness ---------------------------------------------------------------------
@rules.is_psd.register(KroneckerCoreKernel)
@rules.is_psd.register(AutodiffKernel)
def _(op: LinearOperator) -> bool:
    return True  # K = J_θ J_θᵀ; as the core, Σ_w D_w (G_w ⊗ I) D_wᵀ with Gram matrices G_w


@rules.is_psd.register
def _(op: GlobalNTK) -> bool:
    return bool(rules.is_psd(op.K))  # P K Pᵀ is PSD whenever K is


# -- Gram factors: NTK_S = J_S J_Sᵀ ------------------------------------------------------------------
@rules.gram_factor.register
def _(op: GlobalNTK) -> LinearOperator | None:
    # K = F Fᵀ with the Kronecker core, so NTK_S = (P F)(P F)ᵀ; an autodiff K has no sites.
    return op.J if isinstance(op.K, KroneckerCoreKernel) else None


@rules.gram_factor.register
def _(op: StateBlockNTK) -> LinearOperator | None:
    return op.J if isinstance(op.full.K, KroneckerCoreKernel) else None  # E NTK_S Eᵀ = (E J_S)(E J_S)ᵀ


@rules.gram_factor.register
def _(op: OutputNTK) -> LinearOperator | None:
    # (C̃P) F Fᵀ (C̃P)ᵀ + F_ro F_roᵀ = [C̃ P F | F_ro][C̃ P F | F_ro]ᵀ
    return op.J if isinstance(op.state_ntk.K, KroneckerCoreKernel) else None
