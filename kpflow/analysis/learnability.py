"""Learnability: what one gradient step, and each NTK mode, can do to a task's error.

With outputs y = C z + c read out at every site and the masked MSE L of
:func:`kpflow.training.masked_mse`, the parameter gradient is ∇_θ L = J_outᵀ g_y with
g_y = ∂L/∂y and J_out = dy/dθ, so one gradient-descent step of size η changes the loss by

    ΔL = −η ‖∇_θ L‖² + O(η²) = −η g_yᵀ NTK_out g_y + O(η²),   NTK_out = J_out J_outᵀ

(:func:`kpflow.output_ntk`, all parameters trained, the readout's included).  Under gradient
flow the output error decays along the eigenvectors of NTK_out at rates set by their
eigenvalues: a mode can remove the part of the error that lies in it.

With a mask m ≥ 0, L = ‖r‖² / (n_out Σ m) in the weighted error r = √m ⊙ (y − y*), and under
gradient flow dr/dt = −(2η / (n_out Σ m)) N_m r with the masked output NTK
N_m = W NTK_out W, W = diag(√m) (M NTK_out M for a 0/1 mask M): the modes that govern the
masked loss are N_m's, not NTK_out's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kpflow import linalg
from kpflow._array import array_namespace, check_array
from kpflow.analysis.modes import check_k
from kpflow.models.base import Model, Trajectory
from kpflow.models.linear import Linear
from kpflow.models.registry import check_readout
from kpflow.ntk import output_ntk
from kpflow.ntk.kernel import check_trajectory
from kpflow.operators import Diagonal, compose

__all__ = ["Learnability", "LossChange", "learnability", "predicted_loss_decrease"]


@dataclass(frozen=True)
class Learnability:
    """How well the output NTK serves a task (arrays in the trajectory's namespace).

    W = diag(√m) weights the sites by the mask m (the identity without one), and
    N_m = W NTK_out W is the masked output NTK, the operator that drives the weighted error
    r = W (y − y*) under gradient flow (:mod:`kpflow.analysis.learnability`).

    Attributes
    ----------
    eigenvalues : array of shape (k,)
        The top-k eigenvalues λ_j of N_m, descending (NTK_out's without a mask).
    error_fractions : array of shape (k,)
        ⟨v_j, r⟩² / ‖r‖², the fraction of the weighted error r lying in N_m's eigenvector
        v_j: what gradient flow along mode j can remove.
    error_quotient : array of shape ()
        The Rayleigh quotient rᵀ N_m r / rᵀ r of the error.
    target_quotients : array of shape (n_out,)
        For each output channel o, the Rayleigh quotient uᵀ N_m u / uᵀ u of the target mode
        u = W y*_o (channel o only, zero in the others); NaN for an all-zero channel.
    state_quotients : array of shape (n_out,)
        The Rayleigh quotient zᵀ NTK_S z / zᵀ z of the state NTK on the state direction
        z = C̃ᵀ W u (C̃ = I_m ⊗ C) that the target mode reads from: how fast gradient descent
        on the model's parameters θ moves the states along it.  It does not change when the
        readout is scaled (C → αC); NaN where z = 0.
    state_parts : array of shape (n_out,)
        The part of ``target_quotients`` that the model's parameters θ contribute through
        the states (the readout's own parameters excluded): zᵀ NTK_S z / uᵀ u, which is
        ``state_quotients`` · ‖z‖² / ‖u‖² and grows as ‖C_o‖² with the readout's row o.
    """

    eigenvalues: Any
    error_fractions: Any
    error_quotient: Any
    target_quotients: Any
    state_quotients: Any
    state_parts: Any


def _mask_meta(traj: Trajectory, targets: Any, mask: Any, n_out: int, where: str) -> None:
    meta = {"xp": traj.xp, "dtype": traj.dtype, "device": traj.device}
    check_array(targets, **meta, shape=(*traj.site_shape, n_out), name="targets", where=where)
    if mask is not None:
        check_array(mask, **meta, shape=tuple(traj.site_shape), name="mask", where=where)
        xp = traj.xp
        if not bool(xp.all(mask >= 0)):
            low = float(xp.min(mask))
            msg = f"{where}: expected mask to hold weights >= 0 (1 where a site counts), got a minimum {low}"
            raise ValueError(msg)


def _quotient(xp: Any, num: Any, den: Any) -> Any:
    ok = den > 0
    return xp.where(ok, num / xp.where(ok, den, xp.ones_like(den)), xp.full_like(den, float("nan")))


def learnability(
    traj: Trajectory,
    readout_params: dict[str, Any],
    targets: Any,
    mask: Any = None,
    *,
    k: int = 10,
    rng: Any = None,
) -> Learnability:
    """Rayleigh quotients of the (masked) output NTK on the task, and the error each top mode can remove.

    Without a mask the operator is NTK_out (:func:`kpflow.output_ntk`); with one it is the
    masked output NTK N_m = W NTK_out W, W = diag(√m), whose modes govern the masked loss
    (see :class:`Learnability`).

    Parameters
    ----------
    traj : Trajectory
        From ``model.run``.
    readout_params : dict
        ``weight`` C (n_out, n_features) and optionally ``bias`` c, as for
        :func:`kpflow.output_ntk`.
    targets : array of shape (*site_shape, n_out)
    mask : array of shape site_shape, optional
        Weights m ≥ 0 of the sites in the loss, 1 where a site counts and 0 where it does
        not (None: every site), as in :func:`kpflow.training.masked_mse`.
    k : int
        How many top modes of N_m.
    rng : int, numpy.random.Generator or None
        Seeds the eigensolver (SPEC 7).

    Returns
    -------
    Learnability

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN, Linear
    >>> from kpflow.analysis import learnability
    >>> model, readout = RNN(1, 3), Linear(3, 1)
    >>> traj = model.run(model.init(0), np.ones((2, 4, 1)))
    >>> out = learnability(traj, readout.init(1), np.ones((2, 4, 1)), k=3, rng=0)
    >>> out.eigenvalues.shape, out.target_quotients.shape
    ((3,), (1,))
    >>> bool(0.0 <= out.error_fractions.sum() <= 1.0 + 1e-12)
    True

    The state quotient is a Rayleigh quotient of NTK_S: scaling the readout leaves it as it is,
    while the state part of the target quotient grows as the readout's square.

    >>> big = {n: 3.0 * a for n, a in readout.init(1).items()}
    >>> out3 = learnability(traj, big, np.ones((2, 4, 1)), k=3, rng=0)
    >>> bool(np.allclose(out3.state_quotients, out.state_quotients, rtol=1e-12))
    True
    >>> bool(np.allclose(out3.state_parts, 9.0 * out.state_parts, rtol=1e-12))
    True
    """
    where = "learnability"
    check_trajectory(traj, where)
    N = output_ntk(traj, readout_params)
    xp = traj.xp
    n_out = N.shape_in[-1]
    _mask_meta(traj, targets, mask, n_out, where)
    check_k(k, where, N.size_in)
    m = N.readout_map.shape_out[:-1]
    weight = readout_params["weight"]
    feats = traj.features()
    y = feats @ xp.matrix_transpose(weight)
    if "bias" in readout_params:
        y = y + readout_params["bias"]
    y = xp.reshape(y, (*m, n_out))
    if mask is None:
        w = xp.ones(m, dtype=traj.dtype, device=traj.device)
        Nm: Any = N
    else:
        w = xp.sqrt(mask)
        Wd = Diagonal(xp.broadcast_to(w[..., None], (*m, n_out)))
        Nm = compose(Wd, N, Wd)
    r = w[..., None] * (y - targets)
    values, V = linalg.eigsh(Nm, k, rng=rng)
    axes = tuple(range(1, V.ndim))
    rr = xp.sum(r * r)
    coeff = xp.sum(V * r[None, ...], axis=axes)
    fractions = _quotient(xp, coeff * coeff, xp.broadcast_to(rr, coeff.shape))
    error_quotient = _quotient(xp, xp.sum(r * Nm.matvec(r)), rr)
    # the target modes: channel o of W y*, zero elsewhere; one probe per channel
    eye = xp.eye(n_out, dtype=traj.dtype, device=traj.device)
    wt = w[..., None] * targets
    U = xp.permute_dims(wt[..., None] * eye, (len(m) + 1, *range(len(m)), len(m)))  # (n_out, *m, n_out)
    sum_axes = tuple(range(1, U.ndim))
    den = xp.sum(U * U, axis=sum_axes)
    full = xp.sum(U * Nm.matmat(U), axis=sum_axes)
    # the state directions z = C̃ᵀ W u that the target modes read from
    Z = N.readout_map.rmatmat(w[None, ..., None] * U)
    z_axes = tuple(range(1, Z.ndim))
    state = xp.sum(Z * N.state_ntk.matmat(Z), axis=z_axes)
    return Learnability(
        values,
        fractions,
        error_quotient,
        _quotient(xp, full, den),
        _quotient(xp, state, xp.sum(Z * Z, axis=z_axes)),
        _quotient(xp, state, den),
    )


@dataclass(frozen=True)
class LossChange:
    """The predicted and the actual loss change of one gradient-descent step (0-d arrays).

    Attributes
    ----------
    loss : array of shape ()
        L before the step.
    predicted : array of shape ()
        −η g_yᵀ NTK_out g_y, the first-order change.
    actual : array of shape ()
        L after one :class:`kpflow.training.SGD` step of size η minus L before it.
    gradient_sq_norm : array of shape ()
        ‖∇_θ L‖² over every parameter (model and readout), from
        :func:`kpflow.training.loss_and_gradients`; equals g_yᵀ NTK_out g_y.
    """

    loss: Any
    predicted: Any
    actual: Any
    gradient_sq_norm: Any


def predicted_loss_decrease(
    model: Model,
    readout: Linear,
    params: dict[str, Any],
    readout_params: dict[str, Any],
    x: Any,
    targets: Any,
    mask: Any = None,
    *,
    lr: float,
    h0: Any = None,
    method: str = "auto",
) -> LossChange:
    """First-order predicted loss change of one GD step, ΔL ≈ −η g_yᵀ NTK_out g_y, and the actual one.

    g_y = ∂L/∂y of :func:`kpflow.training.masked_mse` (its 2/(n_out Σ m) scaling included),
    NTK_out from :func:`kpflow.output_ntk`.  The actual change takes one
    :class:`kpflow.training.SGD` step (``lr``) on the model and readout parameters with the
    gradients of :func:`kpflow.training.loss_and_gradients`; the two differ by O(η²).

    Parameters
    ----------
    model, readout, params, readout_params, x, targets, mask, h0, method
        As in :func:`kpflow.training.loss_and_gradients`.
    lr : float
        The step size η > 0.

    Returns
    -------
    LossChange

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN, Linear
    >>> from kpflow.analysis import predicted_loss_decrease
    >>> model, readout = RNN(1, 3), Linear(3, 1)
    >>> x, y = np.ones((2, 4, 1)), np.zeros((2, 4, 1))
    >>> c = predicted_loss_decrease(model, readout, model.init(0), readout.init(1), x, y, lr=1e-4)
    >>> bool(abs(c.actual - c.predicted) < 1e-3 * abs(c.predicted))
    True
    """
    from kpflow.training import SGD, loss_and_gradients, masked_mse

    where = "predicted_loss_decrease"
    if not isinstance(model, Model):
        msg = f"{where}: expected model to be a kpflow Model, got {type(model).__name__}"
        raise TypeError(msg)
    check_readout(readout, where)
    opt = SGD(lr)  # checks lr > 0
    out = loss_and_gradients(model, readout, params, readout_params, x, targets, mask, h0=h0, method=method)
    xp = array_namespace(x)
    gy = masked_mse(out.outputs, targets, mask)[1]
    N = output_ntk(model.run(params, x, h0), readout_params)
    quad = xp.sum(gy * N.matvec(gy))
    sq = sum(xp.sum(g * g) for g in (*out.grads.values(), *out.readout_grads.values()))
    new_params, _ = opt.update(params, out.grads, opt.init(params))
    new_readout, _ = opt.update(readout_params, out.readout_grads, opt.init(readout_params))
    traj = model.run(new_params, x, h0)
    y1 = readout.apply(new_readout, traj.features())
    y1 = xp.reshape(y1, tuple(out.outputs.shape))
    loss1 = masked_mse(y1, targets, mask)[0]
    return LossChange(out.loss, -opt.lr * quad, loss1 - out.loss, xp.asarray(sq))
