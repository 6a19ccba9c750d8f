"""Dense references by autodiff: the full Jacobian of the unrolled map θ ↦ z.

These are the ground truth the structured operators are tested against
(neural-tangents' ``testNTKAgainstDirect`` idea): J_full = dz/dθ by ``jacrev``
through ``model.unroll``, then NTK = J_full J_fullᵀ.  Only for small models.
"""

from __future__ import annotations

from typing import Any

from kpflow._array import prod
from kpflow.models.base import Trajectory
from kpflow.models.linear import Linear
from kpflow.ntk.kernel import autodiff_adapter, check_trajectory

# Largest number of entries of J_full (states × parameters) or of the dense NTK: the limit
# of every densification (kpflow.operators.todense, numpy.asarray of an operator).
from kpflow.operators.base import DEFAULT_MAX_DENSE_SIZE

__all__ = ["DEFAULT_MAX_DENSE_SIZE", "dense_global_ntk", "dense_output_ntk"]


def _check_size(n_rows: int, n_params: int, max_size: int, where: str) -> None:
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        msg = f"{where}: expected max_size to be a positive int, got {max_size!r}"
        raise ValueError(msg)
    size = max(n_rows * n_params, n_rows * n_rows)
    if size > max_size:
        msg = (
            f"{where}: the dense reference needs {size} entries ({n_rows} outputs × "
            f"{n_params} parameters, or {n_rows}²), more than max_size={max_size}; use "
            "global_ntk (matrix-free) or pass a larger max_size"
        )
        raise ValueError(msg)


def _jacobian_gram(adapter: Any, xp: Any, f: Any, theta: tuple, out_shape: tuple[int, ...]) -> Any:
    jac = adapter.jacrev(f, argnums=tuple(range(len(theta))))(*theta)
    n = prod(out_shape)
    J = xp.concat([xp.reshape(j, (n, prod(tuple(t.shape)))) for j, t in zip(jac, theta, strict=True)], axis=1)
    return xp.reshape(J @ xp.matrix_transpose(J), (*out_shape, *out_shape))


def dense_global_ntk(traj: Trajectory, *, max_size: int = DEFAULT_MAX_DENSE_SIZE) -> Any:
    """The dense NTK_S = J_full J_fullᵀ, J_full = dz/dθ by ``jacrev`` of ``model.unroll``.

    For a non-triangular ∂F/∂z (``traj.triangular`` False: an implicit model, whose solve
    is not differentiated) J_full = (∂F/∂z)⁻¹ ∂f/∂θ by the implicit function theorem, both
    factors dense by ``jacrev`` of ``model.update_map`` f = z − F at the solution.

    Parameters
    ----------
    traj : Trajectory
        On torch or jax arrays.
    max_size : int
        The largest allowed number of entries of J_full (and of the result).

    Returns
    -------
    array of shape ``(*state_shape, *state_shape)``

    Raises
    ------
    AutodiffUnavailableError
        (a ``TypeError``) on numpy, array_api_strict or cupy.
    ValueError
        When the model is too large to densify (see ``max_size``).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow.ntk as ntk
    >>> from kpflow.models import RNN
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0, like=xp.zeros(1)), xp.ones((1, 2, 1)))
    >>> ntk.dense_global_ntk(traj)
    Traceback (most recent call last):
    ...
    kpflow.backends._base.AutodiffUnavailableError: dense_global_ntk needs automatic ...
    """
    where = "dense_global_ntk"
    check_trajectory(traj, where)
    fixed = _frozen_params(traj)
    names = sorted(set(traj.params) - set(fixed))
    theta = tuple(traj.params[n] for n in names)
    _check_size(prod(traj.state_shape), sum(prod(tuple(t.shape)) for t in theta), max_size, where)
    adapter = autodiff_adapter(traj.states, where)
    model, x, h0 = traj.model, traj.x, traj.h0
    if not traj.triangular:
        return _implicit_dense_ntk(adapter, traj, names, theta)

    def f(*th: Any) -> Any:
        return model.unroll(dict(zip(names, th, strict=True)) | fixed, x, h0)

    return _jacobian_gram(adapter, traj.xp, f, theta, traj.state_shape)


def _frozen_params(traj: Trajectory) -> dict[str, Any]:
    """The parameters held fixed (``traj.model.frozen``): the dense NTKs differentiate the others."""
    return {n: a for n, a in traj.params.items() if n in traj.model.frozen}


def _implicit_dense_ntk(adapter: Any, traj: Trajectory, names: list, theta: tuple) -> Any:
    """A non-triangular ∂F/∂z (an implicit model's solve is not differentiated): the
    implicit function theorem densely, dz/dθ = (∂F/∂z)⁻¹ ∂f/∂θ with F = z − f (``update_map``).
    """
    xp, model, x, h0, z = traj.xp, traj.model, traj.x, traj.h0, traj.states
    n = prod(traj.state_shape)
    fixed = _frozen_params(traj)
    params = dict(zip(names, theta, strict=True)) | fixed
    L = xp.reshape(adapter.jacrev(lambda s: model.update_map(params, s, x, h0))(z), (n, n))
    eye = xp.eye(n, dtype=z.dtype, device=traj.device)
    jac = adapter.jacrev(
        lambda *th: model.update_map(dict(zip(names, th, strict=True)) | fixed, z, x, h0),
        argnums=tuple(range(len(theta))),
    )(*theta)
    f_theta = xp.concat(
        [xp.reshape(j, (n, prod(tuple(t.shape)))) for j, t in zip(jac, theta, strict=True)], axis=1
    )
    J = xp.linalg.solve(eye - L, f_theta)
    return xp.reshape(J @ xp.matrix_transpose(J), (*traj.state_shape, *traj.state_shape))


def dense_output_ntk(
    traj: Trajectory, readout_params: dict[str, Any], *, max_size: int = DEFAULT_MAX_DENSE_SIZE
) -> Any:
    """The dense output-space NTK, by ``jacrev`` of (θ, C, c) ↦ C z(θ) + c.

    The readout reads ``traj.feature_columns`` of each site, as :func:`output_ntk`.

    Parameters
    ----------
    traj : Trajectory
        On torch or jax arrays.
    readout_params : dict
        ``weight`` (n_out, n_features) and optionally ``bias`` (n_out,).
    max_size : int

    Returns
    -------
    array of shape ``(*site_shape, n_out, *site_shape, n_out)``

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow.ntk as ntk
    >>> from kpflow.models import RNN, Linear
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0, like=xp.zeros(1)), xp.ones((1, 2, 1)))
    >>> ntk.dense_output_ntk(traj, Linear(2, 1).init(0, like=xp.zeros(1)))
    Traceback (most recent call last):
    ...
    kpflow.backends._base.AutodiffUnavailableError: dense_output_ntk needs automatic ...
    """
    where = "dense_output_ntk"
    check_trajectory(traj, where)
    lo, hi = traj.feature_columns
    weight = readout_params.get("weight") if isinstance(readout_params, dict) else None
    if weight is None or weight.ndim != 2:
        msg = f"{where}: expected readout_params with 'weight' of shape (n_out, {hi - lo})"
        raise ValueError(msg)
    readout = Linear(hi - lo, int(weight.shape[0]), bias="bias" in readout_params)
    readout.check_params(readout_params, where, like=traj.states)
    fixed = _frozen_params(traj)
    names = sorted(set(traj.params) - set(fixed))
    ro_names = sorted(readout_params)
    theta = tuple(traj.params[n] for n in names) + tuple(readout_params[n] for n in ro_names)
    out_shape = (*traj.site_shape, readout.n_out)
    _check_size(prod(out_shape), sum(prod(tuple(t.shape)) for t in theta), max_size, where)
    adapter = autodiff_adapter(traj.states, where)
    model, x, h0, xp = traj.model, traj.x, traj.h0, traj.xp
    n_model = len(names)

    def f(*th: Any) -> Any:
        z = model.unroll(dict(zip(names, th[:n_model], strict=True)) | fixed, x, h0)
        feats = xp.reshape(z, (traj.m, traj.site_state_size))[:, lo:hi]
        y = readout.apply(dict(zip(ro_names, th[n_model:], strict=True)), feats)
        return xp.reshape(y, out_shape)

    return _jacobian_gram(adapter, xp, f, theta, out_shape)
