"""Exact linear algebra on the Kronecker core of K, registered as :mod:`kpflow.linalg` rules.

For K = Σ_w D_w (G_w ⊗ I) D_wᵀ with unit-structured D (THEORY.md section 3), nothing
iterative is needed:

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

Participation ratios follow: pr(K) = tr(K)² / ‖K‖_F².  Every result stays in the
kernel's namespace, dtype and device; the eigenvalue selection runs on-device with
``argsort``.
"""

from __future__ import annotations

from typing import Any

from kpflow._array import array_namespace, prod
from kpflow.linalg import rules
from kpflow.linalg._common import EighResult
from kpflow.models.sites import Site
from kpflow.ntk.global_ntk import GlobalNTK
from kpflow.ntk.kernel import AutodiffKernel, KroneckerCoreKernel
from kpflow.operators.base import LinearOperator
from kpflow.operators.basic import Dense
from kpflow.operators.functions import _partial_trace

__all__ = ["UNIT_GRAM_ENTRIES_LIMIT", "kernel_partial_trace", "unit_grams"]

#: Per-unit site matrices Φ_i are built in chunks of units holding at most this many entries.
UNIT_GRAM_ENTRIES_LIMIT = 2**24


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


def _phi(group: list[Site], units: Any | None) -> Any:
    """Φ for the selected units: shape (n_sel, m·a, Σ_w g_w p_w); all units when ``units`` is None.

    A scaled group (D = c·I) has one Φ shared by all units: shape (1, m, Σ_w p_w).
    """
    first = group[0]
    xp = array_namespace(first.variables)
    blocks = []
    if _is_scaled(group):
        for s in group:
            blocks.append(s.scale * s.variables[None, :, :])
        return xp.concat(blocks, axis=-1) if len(blocks) > 1 else blocks[0]
    m, a = first.m, first.a
    for s in group:
        ud = s.dense_unit_D()  # (m, n, a, g)
        if units is not None:
            ud = xp.take(ud, units, axis=1)
        n_sel, g, p = ud.shape[1], ud.shape[3], s.p
        ud = xp.permute_dims(ud, (1, 0, 2, 3))  # (n_sel, m, a, g)
        phi = ud[:, :, :, :, None] * s.variables[None, :, None, None, :]  # (n_sel, m, a, g, p)
        blocks.append(xp.reshape(phi, (n_sel, m * a, g * p)))
    return xp.concat(blocks, axis=-1) if len(blocks) > 1 else blocks[0]


def _unit_chunks(group: list[Site]) -> list[tuple[int, int]]:
    first = group[0]
    if _is_scaled(group):
        return [(0, 1)]
    width = sum(s.g * s.p for s in group)
    per_unit = first.m * first.a * width
    step = max(1, UNIT_GRAM_ENTRIES_LIMIT // max(per_unit, 1))
    return [(lo, min(lo + step, first.n_units)) for lo in range(0, first.n_units, step)]


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
    groups = _groups(K)
    if groups is None:
        msg = "unit_grams: the kernel's sites mix unit layouts within one group of state columns"
        raise ValueError(msg)
    xp = K.xp
    out = []
    for group in groups:
        parts = []
        left = False
        for lo, hi in _unit_chunks(group):
            units = None if _is_scaled(group) else xp.arange(lo, hi, device=K.device)
            phi = _phi(group, units)
            left = phi.shape[1] < phi.shape[2]
            if left:
                parts.append(phi @ xp.matrix_transpose(phi))
            else:
                parts.append(xp.matrix_transpose(phi) @ phi)
        out.append((group, parts[0] if len(parts) == 1 else xp.concat(parts, axis=0), left))
    return out


# -- trace and Frobenius norm ----------------------------------------------------------------------
@rules.exact_trace.register
def _(op: KroneckerCoreKernel) -> Any:
    xp = op.xp
    total = xp.zeros((), dtype=op.dtype, device=op.device)
    for s in op.sites:
        row_sq = xp.sum(s.variables * s.variables, axis=1)  # G_ss, (m,)
        if s.scale is not None:
            d_sq = xp.full((s.m,), s.scale * s.scale * s.width, dtype=op.dtype, device=op.device)
        else:
            d_sq = xp.sum(xp.reshape(s.unit_D * s.unit_D, (s.m, -1)), axis=1)
        total = total + xp.sum(row_sq * d_sq)
    return xp.asarray(total)  # numpy reductions give scalars; keep a 0-d array


@rules.exact_fro_norm.register
def _(op: KroneckerCoreKernel) -> Any:
    if _groups(op) is None:
        return None
    xp = op.xp
    total = xp.zeros((), dtype=op.dtype, device=op.device)
    for group, M, _ in unit_grams(op):
        sq = xp.sum(M * M)
        if _is_scaled(group):
            sq = sq * group[0].n_units
        total = total + sq
    return xp.asarray(xp.sqrt(total))


# -- spectrum ---------------------------------------------------------------------------------------
@rules.exact_eigsh.register
def _(op: KroneckerCoreKernel, k: int) -> EighResult | None:
    groups = _groups(op)
    if groups is None:
        return None
    xp = op.xp
    values, owners = [], []  # per group: all eigenvalues (flat), and their (unit, index) layout
    decomps = []
    for gi, (group, M, left) in enumerate(unit_grams(op)):
        w, U = xp.linalg.eigh(M)  # ascending, (n_or_1, r), (n_or_1, r, r)
        if _is_scaled(group):
            n = group[0].n_units
            w = xp.reshape(xp.broadcast_to(w, (n, w.shape[1])), (n * w.shape[1],))
        else:
            w = xp.reshape(w, (-1,))
        values.append(w)
        owners.append(xp.full(w.shape, gi, dtype=xp.int64, device=op.device))
        decomps.append((group, U, left))
    allw = xp.concat(values) if len(values) > 1 else values[0]
    owner = xp.concat(owners) if len(owners) > 1 else owners[0]
    if k > allw.shape[0]:
        return None  # K has more zero eigenvalues than the unit Grams show: leave it to Krylov
    order = xp.argsort(allw, descending=True, stable=True)[:k]
    top = xp.take(allw, order)
    wmax = float(xp.max(xp.abs(allw))) if allw.shape[0] else 0.0
    eps = 1e3 * float(xp.finfo(op.dtype).eps) * max(wmax, 1e-300)
    vectors = xp.zeros((k, *op.shape_in), dtype=op.dtype, device=op.device)
    offsets = [0]
    for v in values:
        offsets.append(offsets[-1] + v.shape[0])
    for gi, (group, U, left) in enumerate(decomps):
        mask = xp.take(owner, order) == gi
        if not bool(xp.any(mask)):
            continue
        local = xp.take(order, xp.nonzero(mask)[0]) - offsets[gi]
        rows = xp.nonzero(mask)[0]
        vecs = _group_vectors(op, group, U, left, local, xp.take(top, rows), eps)
        if vecs is None:
            return None
        sel = xp.astype(rows[:, None] == xp.arange(k, device=op.device)[None, :], op.dtype)  # (q, k)
        vectors = vectors + xp.reshape(
            xp.matrix_transpose(sel) @ xp.reshape(vecs, (vecs.shape[0], -1)), vectors.shape
        )
    residual = op.matmat(vectors) - xp.reshape(top, (k,) + (1,) * len(op.shape_in)) * vectors
    norms = xp.linalg.vector_norm(xp.reshape(residual, (k, -1)), axis=1)
    return EighResult(top, vectors, norms, k)


def _group_vectors(
    op: KroneckerCoreKernel, group: list[Site], U: Any, left: bool, local: Any, lam: Any, eps: float
) -> Any:
    """State-space eigenvectors (q, *state_shape) for the group's selected flat eigen-indices."""
    xp = op.xp
    first = group[0]
    n, a, m = first.n_units, first.a, first.m
    r = U.shape[-1]
    unit = local // r
    idx = local % r
    # eigh is ascending; the flat index counts within each unit's ascending list.
    if _is_scaled(group):
        u = xp.take(U[0, ...], idx, axis=1)  # (r, q)
        u = xp.matrix_transpose(u)  # (q, r)
        phi = _phi(group, None)[0, ...]  # (m, r)
        phis = None
    else:
        Ut = xp.permute_dims(U, (0, 2, 1))  # (n, r_vec, r) rows = eigenvectors
        flat = xp.reshape(Ut, (U.shape[0] * r, r))
        u = xp.take(flat, unit * r + idx, axis=0)  # (q, r)
        phis = _phi(group, unit)  # (q, m·a, r)
        phi = None
    if left:
        vec = u  # (q, m·a) already in state space
    else:
        if bool(xp.any(lam <= eps)):
            return None  # a null direction of Φᵀ Φ does not lift to K; let Krylov handle it
        if phis is None:
            vec = u @ xp.matrix_transpose(phi)  # (q, m)
        else:
            vec = xp.sum(phis * u[:, None, :], axis=-1)  # (q, m·a)
        vec = vec / xp.sqrt(lam)[:, None]
    q = vec.shape[0]
    vec = xp.reshape(vec, (q, m, a))
    S = first.site_state_size
    lo = first.columns[0]
    # state column of (unit i, output j) is lo + j·n + i
    cols = lo + xp.arange(a, device=op.device)[None, :] * n + unit[:, None]  # (q, a)
    onehot = xp.astype(cols[:, :, None] == xp.arange(S, device=op.device)[None, None, :], op.dtype)
    full = vec @ onehot  # (q, m, S)
    return xp.reshape(full, (q, *op.shape_in))


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
    xp = K.xp
    first = K.sites[0]
    site_shape = tuple(K.shape_in[:-1])
    if prod(site_shape) != first.m or any(s.m != first.m for s in K.sites):
        return None
    nsite = len(site_shape)
    S = K.shape_in[-1]
    tau = tuple(a for a in traced if a < nsite)
    kappa = tuple(a for a in range(nsite) if a not in tau)
    trace_state = nsite in traced
    n_tau = prod([site_shape[a] for a in tau])
    kshape = tuple(site_shape[a] for a in kappa)
    n_kappa = prod(kshape)
    out = None
    for s in K.sites:
        ud = s.dense_unit_D()  # (m, n, a, g)
        n, a, g = s.n_units, s.a, ud.shape[3]
        perm = kappa + tau
        A = _site_permuted(xp, s.variables, site_shape, perm, n_kappa, n_tau)  # (n_tau, n_kappa, p)
        Ud = _site_permuted(xp, xp.reshape(ud, (s.m, -1)), site_shape, perm, n_kappa, n_tau)
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
            eye = xp.eye(n, dtype=K.dtype, device=K.device)
            Z = Y[:, :, :, :, :, None] * xp.reshape(eye, (n, 1, 1, 1, 1, n))  # (i, κ, a, κ', a', i')
            Z = xp.reshape(xp.permute_dims(Z, (1, 2, 0, 3, 4, 5)), (n_kappa, a * n, n_kappa, a * n))
            Z = _embed_columns(xp, Z, s.columns[0], S, K)
            term = Z
            shape = (*kshape, S)
        term = xp.reshape(term, shape + shape)
        out = term if out is None else out + term
    # numpy turns 0-d sums into scalars; asarray keeps an array for the full trace.
    return Dense(xp.asarray(out), shape_in=shape)


def _site_permuted(xp: Any, M: Any, site_shape: tuple, perm: tuple, n_kappa: int, n_tau: int) -> Any:
    """Rows of ``M`` (m, c) regrouped as (n_tau, n_kappa, c): traced site axes first."""
    c = M.shape[1]
    T = xp.reshape(M, (*site_shape, c))
    T = xp.permute_dims(T, (*perm, len(site_shape)))
    T = xp.reshape(T, (n_kappa, n_tau, c))
    return xp.permute_dims(T, (1, 0, 2))


def _embed_columns(xp: Any, Z: Any, lo: int, S: int, K: KroneckerCoreKernel) -> Any:
    """Place the (κ, w, κ', w) block at state columns lo..lo+w of (κ, S, κ', S)."""
    w = Z.shape[1]
    if w == S:
        return Z
    E = xp.astype(
        (lo + xp.arange(w, device=K.device))[:, None] == xp.arange(S, device=K.device)[None, :], K.dtype
    )  # (w, S)
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
