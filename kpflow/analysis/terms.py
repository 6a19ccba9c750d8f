"""K term by term: each weight site's exact trace, effective rank and rank, and its rank bound.

K = Σ_w K_w with K_w = D_w (G_w ⊗ I) D_wᵀ = F_w F_wᵀ, F_w = D_w (A_w ⊗ I) the site's
parameter-to-state map (:class:`kpflow.ntk.ParameterMap` of that site alone).  K_w's nonzero
spectrum is that of the small p_w k_w × p_w k_w matrix F_wᵀ F_w, so every number here is
exact, for any kind of site (self-attention's token-coupling D's and user-defined cells
included).  ``rank_bound`` = rank(G_w)·k_w is the self-referential bound: K_w can move the
states only inside a space that the site variables' own Gram G_w = A_w A_wᵀ limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kpflow._array import to_host
from kpflow.models.base import Trajectory

__all__ = ["SiteTerm", "site_terms"]

#: Sites with more parameters than this (p_w k_w) are refused: F_wᵀ F_w is formed densely.
MAX_TERM_PARAMETERS = 8192


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
        rank K_w = rank F_w (numerical, the same convention).
    trace : float
        tr K_w = ‖F_w‖_F².
    effective_rank : float
        tr(K_w)² / ‖K_w‖_F².
    eigenvalues : numpy.ndarray
        K_w's nonzero-spectrum candidates, descending (those of F_wᵀ F_w).
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


def _rank(M: np.ndarray) -> int:
    """Numerical rank, numpy's convention: singular values above σ_max · max(shape) · ε."""
    sv = np.linalg.svd(M, compute_uv=False)
    if sv.size == 0 or sv[0] <= 0:
        return 0
    return int(np.sum(sv > sv[0] * max(M.shape) * np.finfo(np.float64).eps))


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
        For a site with more than ``MAX_TERM_PARAMETERS`` parameters (p_w k_w).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import SelfAttention
    >>> from kpflow.analysis import site_terms
    >>> model = SelfAttention(4, 2)
    >>> traj = model.run(model.init(0), np.random.default_rng(0).standard_normal((2, 3, 4)))
    >>> [(t.name, t.rank_bound) for t in site_terms(traj)]
    [('in_proj.q', 20), ('in_proj.k', 16), ('in_proj.v', 20), ('out_proj', 20)]
    """
    from kpflow.backends import get_backend
    from kpflow.ntk.kernel import check_trajectory

    where = "site_terms"
    check_trajectory(traj, where)
    with get_backend(traj.states).no_grad():
        return [_term(site, traj, where) for site in traj.sites]


def _term(site: Any, traj: Trajectory, where: str) -> SiteTerm:
    """K_w's numbers from F_w = D_w (A_w ⊗ I), formed densely: (states, p_w k_w)."""
    from kpflow.ntk.jacobian import ParameterMap

    n_params = site.p * site.width
    if n_params > MAX_TERM_PARAMETERS:
        msg = (
            f"{where}: site {site.name!r} has p_w·k_w = {n_params} parameters; at most "
            f"{MAX_TERM_PARAMETERS} are formed densely"
        )
        raise ValueError(msg)
    Fd = to_host(ParameterMap([site], like=traj.states).todense()).reshape(-1, n_params)
    w = np.clip(np.linalg.eigvalsh(Fd.T @ Fd)[::-1], 0.0, None)  # K_w's nonzero spectrum
    trace = float(np.sum(Fd * Fd))
    fro2 = float(np.sum(w**2))
    gram_rank = _rank(to_host(site.variables))
    return SiteTerm(
        name=site.name,
        p=int(site.p),
        k=int(site.width),
        gram_rank=gram_rank,
        rank_bound=gram_rank * int(site.width),
        rank=_rank(Fd),
        trace=trace,
        effective_rank=trace**2 / fro2 if fro2 > 0 else 0.0,
        eigenvalues=w,
    )
