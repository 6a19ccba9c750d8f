"""K term by term: each weight site's exact trace, effective rank and rank, and its rank bound.

K = Σ_w K_w with K_w = D_w (G_w ⊗ I) D_wᵀ = F_w F_wᵀ, F_w = D_w (A_w ⊗ I) the site's
parameter-to-state map (:class:`kpflow.ntk.ParameterMap` of that site alone).  K_w's nonzero
spectrum is the squared singular values of F_w, so every number here is exact, for any kind
of site.  ``rank_bound`` = rank(G_w)·k_w is the self-referential bound: K_w can move the
states only inside a space that the site variables' own Gram G_w = A_w A_wᵀ limits.

No p_w k_w × p_w k_w matrix is formed for a site whose D_w acts unit by unit (the built-in
RNN, GRU, LSTM, leaky RNN and MLP sites): there F_w is block-diagonal over the units i, with
blocks Φ_i[(s, a), (g, p)] = D_w[s, i, a, g] · A_w[s, p] of shape (m·a, g·p_w), so its
singular values are those of the Φ_i (one batched SVD per chunk of units, or one of c·A_w
for D_w = c·I), and

    tr K_w = Σ_s ‖a_w(s)‖² ‖D_w(s)‖_F²,    rank(G_w) = rank(A_w)  (m × p_w).

A general D_w (:class:`kpflow.models.LinearSite`: self-attention's coupled tokens, hooks)
is formed densely, as the (states, p_w k_w) matrix F_w, up to ``MAX_TERM_PARAMETERS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kpflow._array import to_host
from kpflow.models.base import Trajectory

__all__ = ["SiteTerm", "site_terms"]

#: A site with a general D_w (:class:`kpflow.models.LinearSite`) and more parameters than this
#: (p_w k_w) is refused: its F_w is formed densely.  Unit-structured sites have no limit.
MAX_TERM_PARAMETERS = 8192

#: The per-unit blocks Φ_i of a unit-structured site go through the SVD in chunks of units
#: holding at most this many entries (128 MiB in float64).
UNIT_BLOCK_ENTRIES = 2**24


@dataclass(frozen=True)
class SiteTerm:
    """One weight site's term K_w of K (host floats and ints).

    Attributes
    ----------
    name : str
    p, k : int
        The site-variable dimension p_w (columns of A_w) and the pre-activation width k_w.
    gram_rank : int
        rank(G_w) = rank(A_w), numerical (singular values above σ_max·max(shape)·ε, numpy's
        ``matrix_rank`` convention).
    rank_bound : int
        rank(G_w)·k_w ≥ rank K_w.
    rank : int
        rank K_w = rank F_w (numerical, the same convention, with F_w's shape (states,
        p_w k_w) in the threshold).
    trace : float
        tr K_w = ‖F_w‖_F².
    effective_rank : float
        tr(K_w)² / ‖K_w‖_F².
    eigenvalues : numpy.ndarray
        K_w's nonzero-spectrum candidates, descending: the squared singular values of F_w
        (``min`` of the two sides of each unit block Φ_i for a unit-structured site, else
        ``min(states, p_w k_w)``), with K_w's exact zeros among them.
    """

    name: str
    p: int
    k: int
    gram_rank: int
    rank_bound: int
    rank: int
    trace: float
    effective_rank: float
    eigenvalues: np.ndarray


def _rank_of(sv: np.ndarray, shape: tuple[int, ...]) -> int:
    """Numerical rank from singular values, numpy's convention: above σ_max · max(shape) · ε."""
    if sv.size == 0 or not np.max(sv) > 0:
        return 0
    return int(np.sum(sv > np.max(sv) * max(shape) * np.finfo(sv.dtype).eps))


def _rank(M: np.ndarray) -> int:
    """Numerical rank of the matrix ``M`` (numpy's ``matrix_rank`` convention)."""
    return _rank_of(np.linalg.svd(M, compute_uv=False), M.shape)


def site_terms(traj: Trajectory) -> list[SiteTerm]:
    """Every weight site's term of K: exact trace, effective rank, rank and rank bound.

    Parameters
    ----------
    traj : Trajectory
        From any model's ``run``.

    Returns
    -------
    list of SiteTerm
        In the order of ``traj.sites``.  Σ_w trace equals tr K.

    Raises
    ------
    ValueError
        For a site with a general D_w (:class:`kpflow.models.LinearSite`) and more than
        ``MAX_TERM_PARAMETERS`` parameters (p_w k_w); unit-structured sites (RNN, GRU, LSTM,
        leaky RNN, MLP) are never refused.

    Notes
    -----
    The cost of a unit-structured site is one SVD of each (m·a, g·p_w) block Φ_i, that is
    about 4 k_w · m · p_w · min(m·a, g·p_w) operations in all, on the host.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import GRU, SelfAttention
    >>> from kpflow.analysis import site_terms
    >>> model = SelfAttention(4, 2)
    >>> traj = model.run(model.init(0), np.random.default_rng(0).standard_normal((2, 3, 4)))
    >>> [(t.name, t.rank_bound) for t in site_terms(traj)]
    [('in_proj.q', 20), ('in_proj.k', 16), ('in_proj.v', 20), ('out_proj', 20)]

    A GRU of the paper's width, H = 256: its r gate's site has p_w k_w = 261 · 256 = 66,816
    parameters, and no matrix of that size is formed.

    >>> gru = GRU(3, 256)
    >>> terms = site_terms(gru.run(gru.init(0), np.ones((1, 2, 3))))
    >>> [(t.name, t.p * t.k, t.rank_bound, t.rank) for t in terms][:1]
    [('r', 66816, 512, 512)]
    """
    from kpflow.backends import get_backend
    from kpflow.ntk.kernel import check_trajectory

    where = "site_terms"
    check_trajectory(traj, where)
    with get_backend(traj.states).no_grad():
        return [_term(site, traj, where) for site in traj.sites]


def _unit_singular_values(site: Any) -> np.ndarray:
    """The singular values of F_w for a unit-structured site, from its blocks Φ_i (host)."""
    A = to_host(site.variables)
    if site.unit_D is None:  # D = c·I: every Φ_i is c·A
        sv = np.linalg.svd(abs(site.scale) * A, compute_uv=False)
        return np.tile(sv, site.n_units)
    ud = to_host(site.unit_D)  # (m, n_units, a, g)
    m, n, a, g = ud.shape
    per_unit = m * a * g * A.shape[1]
    step = max(1, UNIT_BLOCK_ENTRIES // max(per_unit, 1))
    parts = []
    for lo in range(0, n, step):
        d = np.transpose(ud[:, lo : lo + step], (1, 0, 2, 3))  # (units, m, a, g)
        phi = d[..., None] * A[None, :, None, None, :]  # (units, m, a, g, p)
        phi = phi.reshape(phi.shape[0], m * a, g * A.shape[1])
        parts.append(np.linalg.svd(phi, compute_uv=False).reshape(-1))
    return np.concatenate(parts)


def _unit_trace(site: Any) -> float:
    """tr K_w = Σ_s ‖a_w(s)‖² ‖D_w(s)‖_F² (host)."""
    A = to_host(site.variables)
    row_sq = np.sum(A * A, axis=1)
    if site.unit_D is None:
        return float(site.scale**2 * site.width * np.sum(row_sq))
    ud = to_host(site.unit_D)
    return float(np.sum(row_sq * np.sum((ud * ud).reshape(ud.shape[0], -1), axis=1)))


def _term(site: Any, traj: Trajectory, where: str) -> SiteTerm:
    """K_w's numbers, from F_w = D_w (A_w ⊗ I): per unit block, or formed densely for a general D_w."""
    from kpflow.ntk.jacobian import ParameterMap

    n_params = site.p * site.width
    n_states = int(np.prod(traj.state_shape))
    if getattr(site, "unit_structured", True):
        sv = _unit_singular_values(site)
        trace = _unit_trace(site)
    else:
        if n_params > MAX_TERM_PARAMETERS:
            msg = (
                f"{where}: site {site.name!r} has a general D_w (a LinearSite) and p_w·k_w = "
                f"{n_params} parameters; at most {MAX_TERM_PARAMETERS} are formed densely"
            )
            raise ValueError(msg)
        Fd = to_host(ParameterMap([site], like=traj.states).todense(max_size=None)).reshape(-1, n_params)
        sv = np.linalg.svd(Fd, compute_uv=False)
        trace = float(np.sum(Fd * Fd))
    w = np.sort(sv * sv)[::-1]  # K_w's nonzero spectrum, and zeros
    fro2 = float(np.sum(w**2))
    gram_rank = _rank(to_host(site.variables))
    return SiteTerm(
        name=site.name,
        p=int(site.p),
        k=int(site.width),
        gram_rank=gram_rank,
        rank_bound=gram_rank * int(site.width),
        rank=_rank_of(sv, (n_states, n_params)),
        trace=trace,
        effective_rank=trace**2 / fro2 if fro2 > 0 else 0.0,
        eigenvalues=w,
    )
