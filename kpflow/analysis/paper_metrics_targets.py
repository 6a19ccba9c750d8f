"""The paper's target modes: the SVD of the targets, τ_i, and NTK_S's Rayleigh quotient on a mode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kpflow import linalg
from kpflow._array import array_namespace, check_array
from kpflow.analysis.paper_metrics_temporal import check_recurrent, targets_by_mode
from kpflow.linalg import ScalarResult
from kpflow.models.base import Trajectory
from kpflow.ntk import global_ntk

__all__ = ["TargetModes", "target_mode_rayleigh", "target_modes"]


@dataclass(frozen=True)
class TargetModes:
    """The SVD of targets over ``(batch·time, out)``: Y = Σ_i σ_i u_i w_iᵀ.

    Attributes
    ----------
    modes : array of shape (r, B, T)
        u_i, the unit left singular vectors over ``(batch, time)``, in order of σ_i.
    singular_values : array of shape (r,)
        σ_1 >= ... >= σ_r > 0 (r the numerical rank of Y).
    directions : array of shape (r, p)
        w_i, the unit output directions.
    tau : array of shape (r,) or None
        τ_i = ‖u_iᵀ Ŷ‖ / σ_i for the ``outputs`` Ŷ given (1 for Ŷ = Y), else None.
    """

    modes: Any
    singular_values: Any
    directions: Any
    tau: Any


def _as_columns(a: Any, name: str, where: str) -> tuple[Any, tuple[int, int]]:
    shape = tuple(getattr(a, "shape", ()))
    if len(shape) not in (2, 3):
        msg = f"{where}: expected {name} of shape (B, T) or (B, T, p), got {shape or type(a).__name__}"
        raise ValueError(msg)
    xp = array_namespace(a, where=where)
    p = 1 if len(shape) == 2 else shape[2]
    return xp.reshape(a, (shape[0] * shape[1], p)), (shape[0], shape[1])


def target_modes(y: Any, outputs: Any = None, *, rtol: float | None = None) -> TargetModes:
    """The target modes (SVD of the targets) and τ_i = ‖u_iᵀ Ŷ‖ / σ_i of an output Ŷ.

    The targets ``(B, T, p)`` form the matrix Y of shape ``(B·T, p)`` (rows the
    ``(batch, time)`` sites); Y = U Σ Wᵀ.  u_i (a temporal pattern over ``(batch, time)``)
    is target mode i, σ_i its strength, w_i its output direction.  For an output Ŷ of the
    same shape, τ_i = ‖u_iᵀ Ŷ‖ / σ_i is how much of mode i the output carries: τ_i = 1 for
    Ŷ = Y, 0 for an output orthogonal to u_i (gradient descent on a linear model learns
    the modes in order of σ_i, so τ_i rises from 0 to 1 one mode after another).

    Parameters
    ----------
    y : array of shape (B, T) or (B, T, p)
        Targets (any array-API namespace).
    outputs : array of the shape of ``y``, optional
        The network's outputs Ŷ, in the namespace and dtype of ``y``.
    rtol : float, optional
        Singular values below ``rtol · σ_1`` are dropped (default ``max(B·T, p) · eps``).

    Returns
    -------
    TargetModes
        Arrays in the namespace of ``y``.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.analysis import target_modes
    >>> y = np.zeros((2, 3, 1)); y[:, 2, 0] = 1.0
    >>> m = target_modes(y, outputs=0.5 * y)
    >>> m.modes.shape, m.singular_values.round(6).tolist(), m.tau.round(6).tolist()
    ((1, 2, 3), [1.414214], [0.5])
    """
    where = "target_modes"
    Y, (B, T) = _as_columns(y, "y", where)
    xp = array_namespace(Y, where=where)
    if not xp.isdtype(Y.dtype, "real floating"):
        msg = f"{where}: expected y of a real floating dtype, got {Y.dtype}"
        raise TypeError(msg)
    U, s, Wt = xp.linalg.svd(Y, full_matrices=False)
    if rtol is None:
        rtol = max(Y.shape) * float(xp.finfo(Y.dtype).eps)
    smax = float(s[0]) if s.shape[0] else 0.0
    if smax == 0.0:
        msg = f"{where}: y is zero; it has no target modes"
        raise ValueError(msg)
    r = int(xp.sum(xp.astype(s > rtol * smax, xp.int64)))
    U, s, W = U[:, :r], s[:r], Wt[:r, :]
    modes = xp.reshape(xp.matrix_transpose(U), (r, B, T))
    tau = None
    if outputs is not None:
        if tuple(outputs.shape) != tuple(y.shape):
            msg = f"{where}: expected outputs of the shape of y, {tuple(y.shape)}, got {tuple(outputs.shape)}"
            raise ValueError(msg)
        check_array(outputs, xp=xp, dtype=Y.dtype, device=None, shape=None, name="outputs", where=where)
        Yhat, _ = _as_columns(outputs, "outputs", where)
        proj = xp.matrix_transpose(U) @ Yhat  # (r, p): u_iᵀ Ŷ
        tau = xp.sqrt(xp.sum(proj * proj, axis=1)) / s
    return TargetModes(modes, s, W, tau)


def _readout_weight(readout: Any, traj: Trajectory, where: str) -> Any:
    C = readout.get("weight") if isinstance(readout, dict) else readout
    lo, hi = traj.feature_columns
    shape = tuple(getattr(C, "shape", ()))
    if len(shape) != 2 or shape[1] != hi - lo:
        msg = (
            f"{where}: expected readout to be a weight C of shape (p, {hi - lo}) or a readout params dict "
            f"with 'weight', got {shape or type(C).__name__}"
        )
        raise ValueError(msg)
    check_array(C, xp=traj.xp, dtype=traj.dtype, device=traj.device, shape=None, name="readout", where=where)
    return C


def target_mode_rayleigh(
    traj: Trajectory,
    y: Any,
    readout: Any,
    mode: int | None = None,
    *,
    normalize: str = "op_norm",
    rng: Any = None,
) -> ScalarResult:
    """The Rayleigh quotient of NTK_S on a target mode mapped to state space.

    The target (mode ``i``: σ_i u_i w_iᵀ of :func:`target_modes`; ``mode=None``: the
    whole target y) is read back into state space through the readout weight C, as the
    gradient of the loss reaches the states: q[b, t, features] = y[b, t] C (zeros on
    other state columns, e.g. an LSTM's c).  The quotient is taken there,
    ρ = qᵀ NTK_S q / qᵀ q, and divided by ‖NTK_S‖₂ = λ_max (``normalize="op_norm"``, the
    research code's choice; in ``[0, 1]``) or left raw (``normalize="none"``).

    Parameters
    ----------
    traj : Trajectory
        A recurrent run.
    y : array of shape (B, T) or (B, T, p)
        Targets, in the trajectory's namespace, dtype and device.
    readout : array of shape (p, F) or dict
        The readout weight C (``Linear`` params dict: its ``"weight"``), F the feature width.
    mode : int, optional
        Which target mode (0-based, by decreasing σ); None for the whole target.
    normalize : {"op_norm", "none"}
    rng : int, numpy.random.Generator or None
        Seeds :func:`kpflow.linalg.eigsh` for λ_max when it is not exact.

    Returns
    -------
    ScalarResult
        ``.error`` 0 when λ_max is exact (dense or a structured rule), else the relative
        residual of its eigenpair times the value.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN, Linear
    >>> from kpflow.analysis import target_mode_rayleigh
    >>> model, readout = RNN(1, 3), Linear(3, 2)
    >>> traj = model.run(model.init(0), np.ones((2, 4, 1)))
    >>> y = np.random.default_rng(0).normal(size=(2, 4, 2))
    >>> r = target_mode_rayleigh(traj, y, readout.init(1), mode=0)
    >>> 0.0 < float(r) <= 1.0
    True
    """
    where = "target_mode_rayleigh"
    check_recurrent(traj, where)
    if normalize not in ("op_norm", "none"):
        msg = f"{where}: expected normalize to be 'op_norm' or 'none', got {normalize!r}"
        raise ValueError(msg)
    xp = traj.xp
    C = _readout_weight(readout, traj, where)
    Y = targets_by_mode(traj, y, where)  # (p, B, T)
    p = Y.shape[0]
    if p != C.shape[0]:
        msg = f"{where}: y has {p} output columns but the readout weight C has {C.shape[0]} rows"
        raise ValueError(msg)
    target = xp.permute_dims(Y, (1, 2, 0))  # (B, T, p)
    if mode is not None:
        m = target_modes(target)
        r = m.singular_values.shape[0]
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode < r:
            msg = f"{where}: expected mode to be None or an int in [0, {r}) (the targets' rank), got {mode!r}"
            raise ValueError(msg)
        target = (
            m.singular_values[mode] * m.modes[mode, :, :][:, :, None] * m.directions[mode, :][None, None, :]
        )
    lo, hi = traj.feature_columns
    B, T, S = traj.state_shape
    parts = [target @ C]
    if lo > 0:
        parts.insert(0, xp.zeros((B, T, lo), dtype=traj.dtype, device=traj.device))
    if hi < S:
        parts.append(xp.zeros((B, T, S - hi), dtype=traj.dtype, device=traj.device))
    q = xp.concat(parts, axis=2) if len(parts) > 1 else parts[0]
    qq = xp.sum(q * q)
    if float(qq) == 0.0:
        msg = f"{where}: the target maps to zero in state space (y C = 0); the quotient is undefined"
        raise ValueError(msg)
    ntk = global_ntk(traj)
    rho = xp.sum(q * ntk.matvec(q)) / qq
    if normalize == "none":
        return ScalarResult(rho, xp.zeros((), dtype=traj.dtype, device=traj.device), 1, "exact")
    top = linalg.eigsh(ntk, 1, rng=rng)
    lam = top.eigenvalues[0]
    value = xp.clip(rho / lam, 0.0, 1.0)
    error = value * top.residual_norms[0] / lam
    return ScalarResult(value, error, 1 + top.num_matvecs, "exact")
