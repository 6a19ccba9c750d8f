"""The dominant modes of NTK_S, K and P, with their (batch, time) and hidden profiles.

A mode v of shape ``state_shape`` reads as ``(*site_shape, S)``: a site s = (b, t) and a
state coordinate i.  Its *site profile* is the energy per site, Σ_i v(s, i)², and its
*hidden profile* the energy per state coordinate, Σ_s v(s, i)²; each sums to ‖v‖² = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kpflow import linalg
from kpflow.models.base import Trajectory
from kpflow.ntk import global_ntk, parameter_kernel, propagator
from kpflow.ntk.kernel import check_trajectory

__all__ = ["Modes", "ntk_modes", "profiles"]

_OPERATORS = ("ntk", "K", "P")


@dataclass(frozen=True)
class Modes:
    """The top-k modes of an operator and where their energy lies.

    Attributes
    ----------
    values : array of shape (k,)
        Eigenvalues (NTK_S, K) or singular values (P), descending.
    vectors : array of shape (k, *state_shape)
        Unit eigenvectors; for P the left singular vectors (eigenvectors of P Pᵀ).
    site_profiles : array of shape (k, *site_shape)
        Σ_i v(s, i)² for each site s = (b, t): the mode's (batch, time) profile.
    hidden_profiles : array of shape (k, S)
        Σ_s v(s, i)² for each state coordinate i (hidden unit).
    operator : str
        ``"ntk"``, ``"K"`` or ``"P"``.
    right_vectors : array of shape (k, *state_shape) or None
        For P, the right singular vectors (P V[j] = values[j] U[j]); None otherwise.
    """

    values: Any
    vectors: Any
    site_profiles: Any
    hidden_profiles: Any
    operator: str
    right_vectors: Any = None


def profiles(traj: Trajectory, vectors: Any) -> tuple[Any, Any]:
    """Site and hidden energy profiles of state vectors ``(k, *state_shape)``.

    Returns ``(site, hidden)`` of shapes ``(k, *site_shape)`` and ``(k, S)``: the squared
    entries summed over the state coordinates, and over the sites.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN
    >>> from kpflow.analysis import profiles
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0), np.ones((1, 3, 1)))
    >>> site, hidden = profiles(traj, np.ones((1, 1, 3, 2)))
    >>> site.tolist(), hidden.tolist()
    ([[[2.0, 2.0, 2.0]]], [[3.0, 3.0]])
    """
    xp = traj.xp
    k = vectors.shape[0]
    sq = xp.reshape(vectors * vectors, (k, traj.m, traj.site_state_size))
    site = xp.reshape(xp.sum(sq, axis=2), (k, *traj.site_shape))
    return site, xp.sum(sq, axis=1)


def check_k(k: Any, where: str, limit: int | None = None) -> int:
    """``k`` as a positive int (at most ``limit``), else a ValueError naming ``where``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        msg = f"{where}: expected k to be a positive int, got {k!r}"
        raise ValueError(msg)
    if limit is not None and k > limit:
        msg = f"{where}: expected k <= {limit}, got {k}"
        raise ValueError(msg)
    return k


def ntk_modes(
    traj: Trajectory, k: int, *, operator: str = "ntk", rng: Any = None, tol: float = 1e-10
) -> Modes:
    """The top-k eigenmodes of NTK_S (or K), or the top-k singular modes of P.

    Parameters
    ----------
    traj : Trajectory
        From ``model.run``.
    k : int
        How many modes, ``1 <= k <= prod(state_shape)``.
    operator : {"ntk", "K", "P"}
        ``"ntk"``: NTK_S = P K Pᵀ (block Lanczos, on the parameter side when smaller);
        ``"K"``: the parameter kernel (exact from the site Grams where the rule applies);
        ``"P"``: the propagator, which is not symmetric: its top singular triplets
        (:func:`kpflow.linalg.svds`), ``vectors`` the left ones.
    rng : int, numpy.random.Generator or None
        Seeds the Krylov starting block (SPEC 7).
    tol : float
        Residual tolerance of :func:`kpflow.linalg.eigsh`.

    Returns
    -------
    Modes
        Arrays in the trajectory's namespace, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import LeakyRNN
    >>> from kpflow.analysis import ntk_modes
    >>> model = LeakyRNN(1, 3, dt=0.5)
    >>> traj = model.run(model.init(0), np.ones((2, 4, 1)))
    >>> modes = ntk_modes(traj, 2, rng=0)
    >>> modes.values.shape, modes.site_profiles.shape, modes.hidden_profiles.shape
    ((2,), (2, 2, 4), (2, 3))
    >>> bool(np.allclose(modes.site_profiles.sum(axis=(1, 2)), 1.0))
    True
    """
    where = "ntk_modes"
    check_trajectory(traj, where)
    if operator not in _OPERATORS:
        msg = f"{where}: expected operator to be one of {_OPERATORS}, got {operator!r}"
        raise ValueError(msg)
    n = traj.m * traj.site_state_size
    check_k(k, where, n)
    right = None
    if operator == "P":
        U, s, V = linalg.svds(propagator(traj), k, rng=rng, tol=tol)
        values, vectors, right = s, U, V
    else:
        op = global_ntk(traj) if operator == "ntk" else parameter_kernel(traj)
        values, vectors = linalg.eigsh(op, k, rng=rng, tol=tol)
    site, hidden = profiles(traj, vectors)
    return Modes(values, vectors, site, hidden, operator, right)
