"""The temporal NTK (NTK_S traced over hidden) and its dense and quadratic forms.

Shared by the paper's metrics (:mod:`kpflow.analysis.paper_metrics`): the check that a
trajectory is recurrent, the joint activity V = [h_{t−1}, x_t], the temporal NTK as an
operator, densely from unit products, and Σ_j y_jᵀ M y_j from products in blocks.
"""

from __future__ import annotations

from typing import Any

from kpflow._array import check_array
from kpflow.linalg._backend import without_graph
from kpflow.models.base import Trajectory
from kpflow.ntk import global_ntk
from kpflow.ntk.kernel import check_trajectory
from kpflow.operators.base import LinearOperator

__all__ = ["temporal_ntk"]

# products run in blocks of at most this many floats
BLOCK_FLOATS = 1 << 22


def check_recurrent(traj: Trajectory, where: str) -> None:
    """Raise unless ``traj`` is a recurrent run with axes ``("batch", "time", "hidden")``."""
    check_trajectory(traj, where)
    axes = tuple(traj.axis_names)
    if axes[:2] != ("batch", "time") or len(axes) != 3:
        msg = (
            f"{where}: expected a recurrent trajectory with axes ('batch', 'time', 'hidden'), got axes "
            f"{axes}; the temporal NTK keeps batch and time"
        )
        raise ValueError(msg)


def temporal_ntk(traj: Trajectory) -> LinearOperator:
    """The temporal NTK: NTK_S's partial trace over the hidden axis, on ``(B, T)``.

    ``M[(b,t),(b',t')] = Σ_h NTK_S[(b,t,h),(b',t',h)]``; one product with M costs S
    (the per-site state size) products with NTK_S, in one batched call.

    Parameters
    ----------
    traj : Trajectory
        A recurrent run (axes ``("batch", "time", "hidden")``).

    Returns
    -------
    LinearOperator
        Square on ``(B, T)``, symmetric PSD, tr M = tr NTK_S.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN
    >>> from kpflow.analysis import temporal_ntk
    >>> traj = RNN(1, 3).run(RNN(1, 3).init(0), np.ones((2, 4, 1)))
    >>> temporal_ntk(traj).shape_in
    (2, 4)
    """
    check_recurrent(traj, "temporal_ntk")
    return global_ntk(traj).partial_trace(2)


def activity(traj: Trajectory) -> Any:
    """V = [h_{t−1}, x_t] as a ``(B·T, F + n_in)`` matrix (h_{−1} = h0, zeros when None)."""
    xp = traj.xp
    lo, hi = traj.feature_columns
    h = traj.states[:, :, lo:hi]
    B, T = h.shape[0], h.shape[1]
    if traj.h0 is None:
        first = xp.zeros((B, 1, hi - lo), dtype=traj.dtype, device=traj.device)
    else:
        first = xp.reshape(traj.h0[:, lo:hi], (B, 1, hi - lo))
    prev = xp.concat([first, h[:, :-1, :]], axis=1)
    x = traj.x
    V = xp.concat([prev, x], axis=2)
    return xp.reshape(V, (B * T, V.shape[2]))


def temporal_ntk_dense(ntk: LinearOperator) -> Any:
    """The temporal NTK as a dense ``(B·T, B·T)`` matrix, from unit products in blocks."""
    xp = ntk.xp
    B, T, S = ntk.shape_in
    m, n = B * T, ntk.size_in
    per_block = max(1, BLOCK_FLOATS // n)
    eye = xp.eye(S, dtype=ntk.dtype, device=ntk.device)
    rows = []
    for start in range(0, m * S, per_block):
        idx = xp.arange(start, min(m * S, start + per_block), device=ntk.device)
        k = idx.shape[0]
        site, unit = idx // S, idx % S
        E = xp.reshape(
            xp.astype(site[:, None] == xp.arange(m, device=ntk.device)[None, :], ntk.dtype), (k, m, 1)
        )
        E = E * xp.reshape(xp.take(eye, unit, axis=0), (k, 1, S))
        Y = xp.reshape(ntk.matmat(xp.reshape(E, (k, B, T, S))), (k, m, S))
        rows.append(xp.sum(Y * xp.reshape(xp.take(eye, unit, axis=0), (k, 1, S)), axis=2))
    # rows[(s, h)] = NTK[(·, h), (s, h)]; summing over h per site gives column s of M
    Mt = xp.reshape(xp.concat(rows, axis=0), (m, S, m))
    return xp.sum(Mt, axis=1)


def targets_by_mode(traj: Trajectory, y: Any, where: str) -> Any:
    """``y`` as columns ``(p, B, T)``: ``(B, T)`` is one column, ``(B, T, p)`` is p of them."""
    xp = traj.xp
    B, T = traj.state_shape[:2]
    got = tuple(getattr(y, "shape", ()))
    if got not in ((B, T),) and not (len(got) == 3 and got[:2] == (B, T)):
        msg = f"{where}: expected y of shape (B, T) = {(B, T)} or (B, T, p), got {got}"
        raise ValueError(msg)
    check_array(y, xp=xp, dtype=traj.dtype, device=traj.device, shape=None, name="y", where=where)
    if len(got) == 2:
        return xp.reshape(y, (1, B, T))
    return xp.permute_dims(y, (2, 0, 1))


@without_graph
def temporal_quadratic(ntk: LinearOperator, Y: Any) -> Any:
    """Σ_j y_jᵀ M y_j = Σ_{j,h} (y_j ⊗ e_h)ᵀ NTK_S (y_j ⊗ e_h), in blocks of products."""
    xp = ntk.xp
    S = ntk.shape_in[2]
    p = Y.shape[0]
    per_block = max(1, BLOCK_FLOATS // ntk.size_in)
    eye = xp.eye(S, dtype=ntk.dtype, device=ntk.device)
    total = xp.zeros((), dtype=ntk.dtype, device=ntk.device)
    for start in range(0, p * S, per_block):
        idx = xp.arange(start, min(p * S, start + per_block), device=ntk.device)
        cols = xp.take(Y, idx // S, axis=0)  # (k, B, T)
        E = cols[:, :, :, None] * xp.reshape(xp.take(eye, idx % S, axis=0), (idx.shape[0], 1, 1, S))
        total = total + xp.sum(E * ntk.matmat(E))
    return total
