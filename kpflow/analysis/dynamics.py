"""Dynamics of the recurrence: finite-time Lyapunov exponents and the singular values of P.

The step Jacobians J_t = ∂z_t/∂z_{t−1} (``traj.step_jvp``) are block-diagonal over the batch.
The finite-time Lyapunov exponents of batch element b are the growth rates of the product
J_{T−1} ⋯ J_1 by the QR (Benettin) iteration: Q_0 an orthonormal frame, J_t Q_{t−1} = Q_t R_t,
λ_i = Σ_t log|R_t[i, i]| / (T − 1) (Benettin, Galgani, Giorgilli & Strelcyn, Meccanica 1980).
With the full frame (k = S), Σ_i λ_i = Σ_t log|det J_t| / (T − 1) exactly, whatever Q_0; a
single λ_i converges to its limit as O(1/T).  The propagator P = (I − L)⁻¹ holds every
product J_t ⋯ J_{s+1} as its blocks; its singular values summarise them all at once.
"""

from __future__ import annotations

from typing import Any

from kpflow import linalg
from kpflow._array import host_rng
from kpflow.analysis.modes import check_k
from kpflow.models.base import RecurrentTrajectory, Trajectory
from kpflow.ntk import propagator
from kpflow.ntk.kernel import check_trajectory

__all__ = ["lyapunov_exponents", "propagator_singular_values"]


def lyapunov_exponents(traj: Trajectory, *, k: int | None = None, rng: Any = None) -> Any:
    """Finite-time Lyapunov exponents of each batch element, from the QR iteration on J_t.

    Parameters
    ----------
    traj : Trajectory
        A recurrent trajectory with at least two time steps (the exponents use
        J_1 … J_{T−1}; J at t = 0 acts on h0, which is not a state).
    k : int, optional
        How many exponents (the frame's width), ``1 <= k <= S``; default all ``S``.
    rng : int, numpy.random.Generator or None
        Seeds the random orthonormal initial frame Q_0 (drawn on the host, SPEC 7).

    Returns
    -------
    array of shape (B, k)
        Descending along the last axis, in the trajectory's namespace, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN
    >>> from kpflow.analysis import lyapunov_exponents
    >>> model = RNN(1, 2)
    >>> W = np.diag([0.5, -0.25])
    >>> params = {**{n: np.zeros(s) for n, s in model.param_shapes().items()}, "weight_hh": W}
    >>> traj = model.run(params, np.zeros((1, 400, 1)))   # h stays 0, so J_t = W
    >>> lam = lyapunov_exponents(traj, rng=0)
    >>> np.round(np.exp(lam), 2).tolist(), round(float(np.exp(lam.sum())), 12)
    ([[0.5, 0.25]], 0.125)
    """
    where = "lyapunov_exponents"
    check_trajectory(traj, where)
    if not isinstance(traj, RecurrentTrajectory):
        got = type(traj).__name__
        msg = f"{where}: expected traj to be a recurrent trajectory (states (B, T, S)), got {got}"
        raise TypeError(msg)
    B, T, S = traj.state_shape
    if T < 2:
        msg = f"{where}: expected traj to have at least 2 time steps, got T = {T}"
        raise ValueError(msg)
    k = S if k is None else check_k(k, where, S)
    gen = host_rng(rng, where)
    xp = traj.xp
    meta = {"dtype": traj.dtype, "device": traj.device}
    Q = xp.asarray(gen.standard_normal((B, S, k)), **meta)
    Q, _ = xp.linalg.qr(Q)
    total = xp.zeros((B, k), **meta)
    for t in range(1, T):
        Y = traj.step_jvp(t, xp.permute_dims(Q, (2, 0, 1)))  # (k, B, S)
        Q, R = xp.linalg.qr(xp.permute_dims(Y, (1, 2, 0)))
        total = total + xp.log(xp.abs(xp.linalg.diagonal(R)))
    return xp.flip(xp.sort(total / (T - 1), axis=1), axis=1)


def propagator_singular_values(traj: Trajectory, k: int, *, rng: Any = None, tol: float = 1e-10) -> Any:
    """The ``k`` largest singular values of the propagator P = (I − L)⁻¹.

    Computed by :func:`kpflow.linalg.svds` (block Lanczos on P Pᵀ or Pᵀ P, products by
    the forward recursion and BPTT).

    Parameters
    ----------
    traj : Trajectory
    k : int
        ``1 <= k <= prod(state_shape)``.
    rng : int, numpy.random.Generator or None
    tol : float
        As in :func:`kpflow.linalg.eigsh`.

    Returns
    -------
    array of shape (k,)
        Descending, in the trajectory's namespace, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN
    >>> from kpflow.analysis import propagator_singular_values
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0), np.ones((1, 3, 1)))
    >>> s = propagator_singular_values(traj, 2, rng=0)
    >>> s.shape, bool(s[0] >= 1.0)
    ((2,), True)
    """
    where = "propagator_singular_values"
    check_trajectory(traj, where)
    check_k(k, where, traj.m * traj.site_state_size)
    return linalg.svds(propagator(traj), k, rng=rng, tol=tol).s
