"""The masked mean-squared loss through a linear readout, and its gradients.

L(θ, C, c) = Σ_s m_s ‖C z_feat(s) + c − y*(s)‖² / (n_out · Σ_s m_s), the sum over sites s
(every (batch, time) pair of a recurrent model, every batch row of an MLP) with the task's
mask m (1 where the step counts).  Its gradients come either from kpflow itself or from the
framework's autodiff:

- ``method="kpflow"`` (every backend, numpy and cupy included): backpropagation through time
  with no framework.  With g_z = ∂L/∂z (the readout's Cᵀ ∂L/∂y on the feature columns),
  the θ-gradient is J_Sᵀ g_z = Fᵀ Pᵀ g_z (:func:`kpflow.state_jacobian`: Pᵀ backpropagates
  through time, Fᵀ gathers each weight site's A_wᵀ D_wᵀ), returned in the model's parameter
  names.
- ``method="autodiff"`` (torch, jax): one vector-Jacobian product of the loss through
  ``model.unroll`` (for :class:`~kpflow.models.Implicit`, whose ``unroll`` is a solve, by
  the implicit function theorem: the iterations are never differentiated).

The two agree to rounding, and with central finite differences on every model
(tests/training/test_gradients.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kpflow._array import array_namespace, check_array, device_of, prod
from kpflow.models.base import Model
from kpflow.models.linear import Linear
from kpflow.models.registry import check_readout

__all__ = ["LossAndGradients", "loss_and_gradients", "masked_mse"]

_METHODS = ("auto", "kpflow", "autodiff")


@dataclass(frozen=True)
class LossAndGradients:
    """The loss (a 0-d array) and its gradients, in the model's and the readout's names.

    Attributes
    ----------
    loss : array of shape ()
    grads : dict of str to array
        ∂L/∂θ for every parameter of the model (its own names and shapes).
    readout_grads : dict of str to array
        ∂L/∂C (``weight``) and ∂L/∂c (``bias``, when the readout has one).
    outputs : array
        The readout's outputs y = C z_feat + c, shape ``(*site_shape, n_out)``.
    state_gradient : array
        g_z = ∂L/∂z in the state shape: Cᵀ ∂L/∂y on the feature columns, zero elsewhere.
        A gradient step on θ alone moves the states by Δz ≈ −η NTK_S g_z.
    """

    loss: Any
    grads: dict[str, Any]
    readout_grads: dict[str, Any]
    outputs: Any
    state_gradient: Any


def masked_mse(outputs: Any, targets: Any, mask: Any = None) -> tuple[Any, Any]:
    """The masked mean squared error and its gradient with respect to ``outputs``.

    L = Σ m (y − y*)² / (n_out · Σ m), with ``mask`` m of the shape of ``outputs`` without its
    last axis (None: every entry counts).  Returns ``(L, ∂L/∂y)``.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.training import masked_mse
    >>> y, target = np.array([[1.0, 2.0], [3.0, 4.0]]), np.zeros((2, 2))
    >>> loss, grad = masked_mse(y, target, np.array([1.0, 0.0]))
    >>> float(loss), grad.tolist()
    (2.5, [[1.0, 2.0], [0.0, 0.0]])
    """
    xp = array_namespace(outputs, targets, mask)
    _check_sites(tuple(outputs.shape), targets, mask, "masked_mse")
    err = outputs - targets
    if mask is None:
        count = float(prod(err.shape)) if err.ndim else 1.0
        return xp.sum(err * err) / count, (2.0 / count) * err
    m = mask[..., None]
    total = xp.sum(mask) * float(err.shape[-1])
    masked = m * err
    return xp.sum(masked * err) / total, (2.0 / total) * masked


def _check_sites(shape: tuple[int, ...], targets: Any, mask: Any, where: str) -> None:
    """Targets of the outputs' ``shape`` ``(*sites, n_out)`` and a mask of ``sites``, or a ValueError.

    A mismatch is never broadcast: for a transformer (sites ``(B, S, N)``, every layer's
    states) targets of shape ``(B, N, n_out)`` would silently broadcast against the outputs
    when ``S == B``.
    """
    if tuple(targets.shape) != tuple(shape):
        msg = (
            f"{where}: expected targets of shape {tuple(shape)} (the model's sites × the "
            f"readout's n_out), got {tuple(targets.shape)}"
        )
        raise ValueError(msg)
    if mask is not None and tuple(mask.shape) != tuple(shape[:-1]):
        got = tuple(mask.shape)
        msg = f"{where}: expected a mask of shape {tuple(shape[:-1])} (the model's sites), got {got}"
        raise ValueError(msg)


def _check_data(model: Model, readout: Linear, x: Any, targets: Any, mask: Any, where: str) -> None:
    check_readout(readout, where)
    xp = array_namespace(x, where=where)
    meta = {"xp": xp, "dtype": x.dtype, "device": device_of(x)}
    # the shapes are checked against the model's sites once its states are known (_check_sites)
    check_array(targets, **meta, shape=None, name="targets", where=where)
    if mask is not None:
        check_array(mask, **meta, shape=None, name="mask", where=where)
    lo, hi = model.feature_columns
    if readout.n_in != hi - lo:
        msg = f"{where}: expected a readout with n_in = {hi - lo} (the model's features), got {readout.n_in}"
        raise ValueError(msg)


def loss_and_gradients(
    model: Model,
    readout: Linear,
    params: dict[str, Any],
    readout_params: dict[str, Any],
    x: Any,
    targets: Any,
    mask: Any = None,
    *,
    h0: Any = None,
    method: str = "auto",
) -> LossAndGradients:
    """The masked MSE of ``readout(model(x))`` against ``targets``, and its exact gradients.

    Parameters
    ----------
    model : Model
        Any kpflow model (recurrent: ``x`` of shape (B, T, n_in); MLP, FeedForward,
        Implicit: (B, n_in); attention: (B, N, d_model)).  ``"kpflow"`` needs the named
        site layout of :func:`kpflow.ntk.site_parameters`.
    readout : Linear
        The linear readout, reading ``model.feature_columns`` of the state.
    params, readout_params : dict of str to array
        The model's and the readout's parameters, all in ``x``'s namespace, dtype and device.
    x, targets, mask : arrays
        Inputs, targets ``(*sites, n_out)`` and an optional mask ``sites`` of 0/1 (a task's
        :class:`~kpflow.tasks.TaskBatch` unpacks as ``x, targets, mask``).
    h0 : array, optional
        Initial state of a recurrent model.
    method : {"auto", "kpflow", "autodiff"}
        ``"kpflow"``: J_Sᵀ g_z through the sites (every backend); ``"autodiff"``: the
        framework's vjp (torch, jax); ``"auto"``: autodiff where the backend has it, else
        kpflow.

    Returns
    -------
    LossAndGradients

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN, Linear
    >>> from kpflow.training import loss_and_gradients
    >>> model, readout = RNN(2, 4), Linear(4, 1)
    >>> x, y = np.ones((3, 5, 2)), np.zeros((3, 5, 1))
    >>> out = loss_and_gradients(model, readout, model.init(0), readout.init(1), x, y)
    >>> sorted(out.grads), out.readout_grads["weight"].shape, out.loss.shape
    (['bias_hh', 'bias_ih', 'weight_hh', 'weight_ih'], (1, 4), ())
    """
    where = "loss_and_gradients"
    if method not in _METHODS:
        msg = f"{where}: expected method to be one of {_METHODS}, got {method!r}"
        raise ValueError(msg)
    _check_data(model, readout, x, targets, mask, where)
    readout.check_params(readout_params, where, like=x)
    from kpflow.backends import get_backend

    adapter = get_backend(x)
    if method == "auto":
        method = "autodiff" if adapter.has_autodiff else "kpflow"
    if method == "autodiff":
        if not adapter.has_autodiff:
            raise adapter._no_autodiff(f'{where}(method="autodiff")')
        out = _autodiff(model, readout, params, readout_params, x, targets, mask, h0, adapter)
    else:
        out = _kpflow(model, readout, params, readout_params, x, targets, mask, h0)
    if not model.frozen:
        return out
    # frozen parameters (Model.with_frozen) do not move: zero gradients, under every optimizer
    xp = array_namespace(x)
    grads = {k: xp.zeros_like(params[k]) if k in model.frozen else out.grads[k] for k in params}
    return replace(out, grads=grads)


def _readout_grads(xp: Any, readout: Linear, feats: Any, gy: Any) -> dict[str, Any]:
    """∂L/∂C = Σ_s g_y(s) z_feat(s)ᵀ and ∂L/∂c = Σ_s g_y(s), from (m, F) features and (m, n_out) g_y."""
    grads = {"weight": xp.matrix_transpose(gy) @ feats}
    if readout.bias:
        grads["bias"] = xp.sum(gy, axis=0)
    return grads


def _kpflow(
    model: Model,
    readout: Linear,
    params: dict[str, Any],
    readout_params: dict[str, Any],
    x: Any,
    targets: Any,
    mask: Any,
    h0: Any,
) -> LossAndGradients:
    from kpflow.ntk.jacobian import state_jacobian

    traj = model.run(params, x, h0)
    xp = traj.xp
    feats = traj.features()  # (m, F)
    site_shape, m = traj.site_shape, traj.m
    outputs = xp.reshape(readout.apply(readout_params, feats), (*site_shape, readout.n_out))
    _check_sites(tuple(outputs.shape), targets, mask, "loss_and_gradients")
    loss, gy = masked_mse(outputs, targets, mask)
    gy = xp.reshape(gy, (m, readout.n_out))
    readout_grads = _readout_grads(xp, readout, feats, gy)
    g_z = _state_gradient(xp, gy, readout_params["weight"], traj.feature_columns, traj.states)
    J = state_jacobian(traj)
    grads = J.to_params(J.rmatvec(g_z))  # Fᵀ Pᵀ g_z: BPTT through the sites
    return LossAndGradients(loss, grads, readout_grads, outputs, g_z)


def _state_gradient(xp: Any, gy: Any, C: Any, columns: tuple[int, int], states: Any) -> Any:
    """g_z = ∂L/∂z: Cᵀ g_y (g_y of shape (m, n_out)) on the feature columns of each site's state."""
    m = gy.shape[0]
    S = prod(states.shape) // m
    lo, hi = columns
    parts = [gy @ C]  # (m, F)
    zeros = {"dtype": states.dtype, "device": device_of(states)}
    if lo > 0:
        parts.insert(0, xp.zeros((m, lo), **zeros))
    if hi < S:
        parts.append(xp.zeros((m, S - hi), **zeros))
    return xp.reshape(parts[0] if len(parts) == 1 else xp.concat(parts, axis=1), states.shape)


def _autodiff(
    model: Model,
    readout: Linear,
    params: dict[str, Any],
    readout_params: dict[str, Any],
    x: Any,
    targets: Any,
    mask: Any,
    h0: Any,
    adapter: Any,
) -> LossAndGradients:
    xp = array_namespace(x)
    lo, hi = model.feature_columns

    def loss_only(p: dict[str, Any], rp: dict[str, Any]) -> Any:
        states = model.unroll(p, x, h0)
        outputs = readout.apply(rp, states[..., lo:hi])
        _check_sites(tuple(outputs.shape), targets, mask, "loss_and_gradients")
        return masked_mse(outputs, targets, mask)[0]

    loss, pullback = adapter.vjp(loss_only, dict(params), dict(readout_params))
    grads, readout_grads = pullback(xp.ones_like(loss))
    with adapter.no_grad():
        states = model.unroll(params, x, h0)
        outputs = readout.apply(readout_params, states[..., lo:hi])
        gy = masked_mse(outputs, targets, mask)[1]
        m = prod(gy.shape) // readout.n_out
        g_z = _state_gradient(
            xp, xp.reshape(gy, (m, readout.n_out)), readout_params["weight"], (lo, hi), states
        )
    return LossAndGradients(loss, dict(grads), dict(readout_grads), outputs, g_z)
