"""The dense output NTK from Jᵀ on unit outputs: the Gram of the per-output factors.

``todense`` of an :class:`~kpflow.ntk.OutputNTK` could apply NTK_out = C̃ P K Pᵀ C̃ᵀ to every
unit output (BPTT, K, the forward recursion, C̃: the generic rule).  With few outputs it is
cheaper to stop half-way, as the torch.func NTK recipe and nngeometry do: take
U_w(e) = D_wᵀ Pᵀ C̃ᵀ e for every unit output e (one BPTT for all of them) and contract

    NTK_out[e, e′] = Σ_w Σ_{s,s′} G_w[s, s′] ⟨U_w(e)_s, U_w(e′)_{s′}⟩ + (readout term),

so P and the second half of K are never applied.  The contraction takes the cheapest of three
orders (counted in multiply-adds, per term w with m sites, p columns of A_w, k_w units):

=============  ===================================================  ============================
route          work                                                 formula
=============  ===================================================  ============================
parameters     V = A_wᵀ U_w, then the Gram of V                     k·m·p·k_w + (k·B)²·p·k_w
sites          G_w = A_w A_wᵀ, G_w U_w per batch row, then ⟨U, ·⟩    m²·p + m²·k·k_w + m·B·k²·k_w
pairs          G_w, the Gram of all U_w rows, times G_w, summed     m²·p + (m·k)²·(k_w + 1)
=============  ===================================================  ============================

Where the model declares that its batch rows never mix (``traj.layout.independent_rows``:
P, every D_w and the readout are block-diagonal over the batch, docs/theory.md) and every
site declares its rows batch-major (``site.batch_major``: each A_w row in one batch row),
the unit outputs of all B rows at one position are sent as one probe (k = m·n_out / B
probes instead of m·n_out): its BPTT and Dᵀ land in disjoint batch rows, which are read
apart.  Otherwise (a model that does not declare it, such as a hook cell that may mix rows,
or a site whose rows are not declared per batch row) every unit output is sent on its own
(B = 1 above).  A site's rows need not be the trajectory's m sites: a transformer's sites
are its B·N tokens, a weight used at c calls stacks c blocks of rows; each term is
contracted over its own rows.
"""

from __future__ import annotations

from typing import Any

from kpflow.models.sites import apply_site_DT
from kpflow.ntk.kernel import KroneckerCoreKernel, _terms, product_operands

__all__ = ["output_ntk_gram", "probe_rows"]


def probe_rows(traj: Any, sites: Any) -> int:
    """How many batch rows one probe covers: B where the rows are declared independent, else 1.

    B = ``traj.layout.shape[0]`` when the layout declares ``independent_rows`` and every one of
    ``sites`` declares ``batch_major`` (see :class:`~kpflow.models.layout.Layout` and
    :class:`~kpflow.models.sites.Site`); 1 otherwise.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import MLP
    >>> from kpflow.ntk.output_gram import probe_rows
    >>> traj = MLP((2, 4)).run(MLP((2, 4)).init(0, like=xp.zeros(1)), xp.ones((3, 2)))
    >>> probe_rows(traj, traj.sites)  # an MLP declares its 3 rows independent
    3
    """
    layout = traj.layout
    if not layout.independent_rows or not all(site.batch_major for site in sites):
        return 1
    B = int(layout.shape[0])
    for site in sites:
        if int(site.m) % B != 0:
            msg = (
                f"output_ntk_gram: site {site.name!r} declares batch_major, so its m = {site.m} sites "
                f"should split into the B = {B} batch rows; they do not"
            )
            raise ValueError(msg)
    return B


def output_ntk_gram(N: Any) -> Any | None:
    """The dense NTK_out of ``N`` (an :class:`~kpflow.ntk.OutputNTK`) from Jᵀ on unit outputs.

    Parameters
    ----------
    N : OutputNTK
        With a Kronecker-core K (``method="kronecker"``, the default of
        :func:`~kpflow.ntk.output_ntk`).

    Returns
    -------
    array of shape ``(*N.shape_out, *N.shape_in)`` or None
        None when K has no weight sites (``method="autodiff"``): densify by products then.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.models import MLP, Linear
    >>> from kpflow.ntk.output_gram import output_ntk_gram
    >>> traj = MLP((2, 4)).run(MLP((2, 4)).init(0, like=xp.zeros(1)), xp.ones((3, 2)))
    >>> N = kpflow.output_ntk(traj, Linear(4, 1).init(1, like=xp.zeros(1)))
    >>> fast, slow = output_ntk_gram(N), N @ kpflow.Identity(N.shape_in, like=xp.zeros(1))
    >>> fast.shape, bool(xp.max(xp.abs(fast - slow.todense())) < 1e-12)
    ((3, 1, 3, 1), True)
    """
    K = N.state_ntk.K
    if not isinstance(K, KroneckerCoreKernel):
        return None
    xp, C = N.xp, N.readout_map
    traj = C.traj
    m, n_out = traj.m, int(C.weight.shape[0])
    B = probe_rows(traj, K.sites)
    R = m // B  # the sites of one batch row (all of them when B = 1)
    k = R * n_out
    meta = {"dtype": N.dtype, "device": N.device}
    # probe (r, o): unit output o at position r of every batch row at once
    E = xp.reshape(xp.eye(k, **meta), (k, 1, R, n_out))
    E = xp.reshape(E * xp.ones((1, B, 1, 1), **meta), (k, *C.shape_out))
    X = N.state_ntk.P._rmatmat(C._rmatmat(E))  # Pᵀ C̃ᵀ E, (k, *state_shape)
    out = xp.zeros((B, k, B, k), **meta)  # (row b, probe q; row c, probe Q)
    terms = _terms(K.sites)
    arrays = tuple((tuple(s.variables for s in group), group[0].D_operand()) for group in terms)
    for group, (As, D) in zip(terms, product_operands(xp, arrays), strict=True):
        A = As[0] if len(As) == 1 else xp.concat(As, axis=1)
        A, U = _by_batch_row(xp, A, apply_site_DT(xp, group[0].spec, D, X), int(group[0].m), B)
        out = out + _contract(xp, A, U, B, int(U.shape[2]))
    out = out + _readout_term(xp, N, B, R, n_out)
    # (b, q=(r, o)) is unit output (b, r, o)
    out = xp.reshape(out, (m * n_out, m * n_out))
    return xp.reshape(out, (*N.shape_out, *N.shape_in))


def _by_batch_row(xp: Any, A: Any, DtX: Any, m_w: int, B: int) -> tuple[Any, Any]:
    """A_w ``(n, p)`` and Dᵀ X ``(k, n, k_w)`` over a site's n rows as ``(B·R, p)`` and ``(k, B, R, k_w)``.

    The n = c·m_w rows are c uses of the site's m_w sites (c = 1 but for a weight used at
    several calls), each use's sites batch-major when B > 1; the rows are regrouped batch
    row first (b, use, site of row b), the same order for A_w and Dᵀ X, which leaves the
    contraction Σ U G U unchanged.
    """
    k, n, k_w = int(DtX.shape[0]), int(DtX.shape[1]), int(DtX.shape[2])
    c, R = n // m_w, m_w // B
    if c == 1 or B == 1:
        return A, xp.reshape(DtX, (k, B, n // B, k_w))
    p = int(A.shape[1])
    A = xp.reshape(xp.permute_dims(xp.reshape(A, (c, B, R, p)), (1, 0, 2, 3)), (B * c * R, p))
    U = xp.permute_dims(xp.reshape(DtX, (k, c, B, R, k_w)), (0, 2, 1, 3, 4))
    return A, xp.reshape(U, (k, B, c * R, k_w))


def _contract(xp: Any, A: Any, U: Any, B: int, R: int, route: str | None = None) -> Any:
    """Σ_{r,s,j} U[q,b,r,j] G[(b,r),(c,s)] U[Q,c,s,j] as (B, k, B, k), G = A Aᵀ.

    ``route`` (``"parameters"``, ``"sites"`` or ``"pairs"``, see the module docstring): None
    takes the one of fewest multiply-adds.
    """
    k, k_w = int(U.shape[0]), int(U.shape[-1])
    m, p = B * R, int(A.shape[1])
    if route is None:
        costs = {
            "pairs": m * m * p + (m * k) ** 2 * (k_w + 1),
            "parameters": k * m * p * k_w + (k * B) ** 2 * p * k_w,
            "sites": m * m * p + m * m * k * k_w + m * B * k * k * k_w,
        }
        route = min(costs, key=costs.__getitem__)
    if route == "pairs":
        G = xp.reshape(A @ xp.matrix_transpose(A), (B, R, 1, B, R, 1))
        Uf = xp.reshape(xp.permute_dims(U, (1, 2, 0, 3)), (m * k, k_w))  # ((b, r, q), j)
        M = xp.reshape(Uf @ xp.matrix_transpose(Uf), (B, R, k, B, R, k))
        return xp.sum(G * M, axis=(1, 4))
    if route == "parameters":
        At = xp.permute_dims(xp.reshape(A, (B, R, p)), (0, 2, 1))  # (B, p, R)
        V = At[None, ...] @ U  # (k, B, p, k_w)
        V = xp.reshape(xp.permute_dims(V, (1, 0, 2, 3)), (B * k, p * k_w))
        return xp.reshape(V @ xp.matrix_transpose(V), (B, k, B, k))
    G = xp.reshape(A @ xp.matrix_transpose(A), (B, R, B, R))  # G[b, r, c, s]
    Gc = xp.reshape(xp.permute_dims(G, (2, 0, 1, 3)), (B, m, R))  # (c, (b, r), s)
    Uc = xp.reshape(xp.permute_dims(U, (1, 2, 0, 3)), (B, R, k * k_w))  # (c, s, (Q, j))
    GU = xp.reshape(Gc @ Uc, (B, B, R, k, k_w))  # (c, b, r, Q, j)
    GU = xp.reshape(xp.permute_dims(GU, (1, 2, 4, 0, 3)), (B, R * k_w, B * k))  # (b, (r, j), (c, Q))
    Ub = xp.reshape(xp.permute_dims(U, (1, 0, 2, 3)), (B, k, R * k_w))  # (b, q, (r, j))
    return xp.reshape(Ub @ GU, (B, k, B, k))


def _readout_term(xp: Any, N: Any, B: int, R: int, n_out: int) -> Any:
    """The readout's own term G_ro ⊗ I_out (scaled by its D = scale·I) as (B, k, B, k)."""
    (site,) = N.readout_kernel.sites
    A = site.variables  # (m, p_ro)
    G = (site.scale**2) * (A @ xp.matrix_transpose(A))  # (m, m)
    eye = xp.eye(n_out, dtype=N.dtype, device=N.device)
    term = xp.reshape(G, (B, R, 1, B, R, 1)) * xp.reshape(eye, (1, 1, n_out, 1, 1, n_out))
    return xp.reshape(term, (B, R * n_out, B, R * n_out))
