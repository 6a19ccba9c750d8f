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

For the built-in models, whose P, D_w and readout never mix two batch rows (docs/theory.md:
P is block-diagonal over the batch), the unit outputs of all B rows at one position are
sent as one probe (k = m·n_out / B probes instead of m·n_out): its BPTT and Dᵀ land in
disjoint batch rows, which are read apart.  Other models (hook cells, which may mix rows)
send every unit output on its own (B = 1 above).
"""

from __future__ import annotations

import math

from typing import Any

from kpflow.models.sites import apply_site_DT
from kpflow.ntk.kernel import KroneckerCoreKernel, _terms, product_operands

__all__ = ["output_ntk_gram"]


def _rows_never_mix(traj: Any) -> bool:
    """Whether the model's batch rows are independent: a built-in model (exact types only), or
    one that says so with a true ``_batch_rows_independent`` (the torch layer stacks of
    ``from_module``, whose step is written row by row)."""
    from kpflow.models import GRU, LSTM, MLP, RNN, LeakyRNN, SelfAttention, TransformerEncoder

    builtin = (GRU, LSTM, MLP, RNN, LeakyRNN, SelfAttention, TransformerEncoder)
    declared = type(traj.model) in builtin or getattr(traj.model, "_batch_rows_independent", False) is True
    return declared and traj.axis_names[0] == "batch"


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
    B = int(traj.site_shape[0]) if _rows_never_mix(traj) else 1
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
        DtX = apply_site_DT(xp, group[0].spec, D, X)
        if int(A.shape[0]) != m or math.prod(DtX.shape) % (k * m) != 0:
            # a site over other positions than the trajectory's m (a transformer's learned
            # positions, say): densify by products instead
            return None
        U = xp.reshape(DtX, (k, B, R, -1))  # (k, B, R, k_w)
        out = out + _contract(xp, A, U, B, R)
    out = out + _readout_term(xp, N, B, R, n_out)
    # (b, q=(r, o)) is unit output (b, r, o)
    out = xp.reshape(out, (m * n_out, m * n_out))
    return xp.reshape(out, (*N.shape_out, *N.shape_in))


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
