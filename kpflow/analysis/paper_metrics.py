"""The paper's metrics: core and target alignment, target modes, variance ranks.

Notation (docs/theory.md): NTK_S = P K Pᵀ on states ``(B, T, S)`` with axes
``("batch", "time", "hidden")``.  The *temporal NTK* is the true partial trace over the
hidden axis, ``M[(b,t),(b',t')] = Σ_h NTK_S[(b,t,h),(b',t',h)]`` (keeping batch and time);
the *spatial NTK* keeps hidden.

- :func:`core_alignment`: the self-referential bias, the cosine ⟨M, V Vᵀ⟩_F / (‖M‖_F ‖V Vᵀ‖_F)
  between the temporal NTK and the joint activity Gram of V = [h_{t−1}, x_t] over
  ``(batch, time)``.  Both are PSD, so it lies in ``[0, 1]``.
- :func:`target_alignment`: ρ(M, y) / tr(NTK_S), ρ(A, y) = yᵀ A y / yᵀ y, in ``[0, 1]``.
- :func:`target_modes`: the SVD of the targets, Y = U Σ Wᵀ over ``(batch·time, out)``, and
  τ_i = ‖u_iᵀ Ŷ‖ / σ_i of an output Ŷ (the fraction of target mode i it reproduces).
- :func:`target_mode_rayleigh`: the Rayleigh quotient of NTK_S on a target mode read back
  into state space through the readout, normalised by ‖NTK_S‖₂.
- :func:`rank_at_variance`: how many eigenmodes of an operator (or of a partial trace)
  reach a fraction of its trace.
- :func:`temporal_spatial_ranks`: participation ratios of NTK_S (or K, P Pᵀ) keeping
  ``(batch, time)``, keeping hidden, and globally.

Where the research code (meeree/kpflow) defines these differently (its effective rank of
K is pr(K²), and its "partial trace" sums every block) docs/analysis.md works an example.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from kpflow import linalg
from kpflow._array import array_namespace, check_array, host_rng, to_host
from kpflow.linalg import ScalarResult
from kpflow.linalg._backend import without_graph
from kpflow.models.base import Trajectory
from kpflow.ntk import global_ntk, parameter_kernel, propagator
from kpflow.ntk.kernel import check_trajectory
from kpflow.operators.base import LinearOperator, is_operator
from kpflow.operators.basic import Dense

__all__ = [
    "TargetModes",
    "TemporalSpatialRanks",
    "VarianceRank",
    "core_alignment",
    "rank_at_variance",
    "target_alignment",
    "target_mode_rayleigh",
    "target_modes",
    "temporal_ntk",
    "temporal_spatial_ranks",
]

_OPERATORS = ("NTK", "K", "PPT")


def _check_recurrent(traj: Trajectory, where: str) -> None:
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
    _check_recurrent(traj, "temporal_ntk")
    return global_ntk(traj).partial_trace(2)


def _activity(traj: Trajectory) -> Any:
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


def core_alignment(
    traj: Trajectory,
    *,
    method: str = "auto",
    num_matvecs: int | None = None,
    rng: Any = None,
) -> ScalarResult:
    """The self-referential bias: the cosine between the temporal NTK and V Vᵀ.

    ``⟨M, G⟩_F / (‖M‖_F ‖G‖_F)`` with M = :func:`temporal_ntk` (NTK_S traced over hidden,
    on ``(B, T)``) and G = V Vᵀ, V = [h_{t−1}, x_t] the joint activity over
    ``(batch, time)`` (h_{−1} = ``traj.h0``, zeros when None; h the readout's feature
    columns, e.g. h of an LSTM's (h, c)).  For a vanilla RNN without bias K = (V Vᵀ) ⊗ I
    at D = I, so the value measures how much of the NTK's temporal structure is the
    network's own activity.

    Parameters
    ----------
    traj : Trajectory
        A recurrent run.
    method : {"auto", "exact", "estimate"}
        ``"exact"``: M formed densely from n = B·T·S unit products with NTK_S (in blocks).
        ``"estimate"``: probe pairs; for Rademacher x on the sites and independent
        Rademacher z₁, z₂ on hidden, u_i = (I ⊗ z_iᵀ) NTK_S (x ⊗ z_i) has mean M x, so
        u_i·G x is unbiased for xᵀ M G x (mean tr(M G) = ⟨M, G⟩) and u₁·u₂ for ‖M x‖² (mean
        ‖M‖²_F); two products per probe, the ratio's error by the delta method.  ``"auto"``:
        exact when n is at most the budget (without one: n <= 5000), else the estimate.
    num_matvecs : int, optional
        Budget of products with NTK_S (default 200 for the estimate; at least 8).
    rng : int, numpy.random.Generator or None

    Returns
    -------
    ScalarResult
        In ``[0, 1]`` (both kernels are PSD; an estimate is clipped into it);
        ``.error`` 0 when exact.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN
    >>> from kpflow.analysis import core_alignment
    >>> model = RNN(1, 3, bias=False)
    >>> traj = model.run(model.init(0), np.ones((2, 4, 1)))
    >>> r = core_alignment(traj)
    >>> 0.0 < float(r) <= 1.0, r.method
    (True, 'exact')
    """
    where = "core_alignment"
    _check_recurrent(traj, where)
    if method not in ("auto", "exact", "estimate"):
        msg = f"{where}: expected method to be 'auto', 'exact' or 'estimate', got {method!r}"
        raise ValueError(msg)
    if num_matvecs is not None and (
        isinstance(num_matvecs, bool) or not isinstance(num_matvecs, int) or num_matvecs < 8
    ):
        msg = f"{where}: expected num_matvecs to be an int >= 8 (products with NTK_S), got {num_matvecs!r}"
        raise ValueError(msg)
    gen = host_rng(rng, where)
    xp = traj.xp
    V = _activity(traj)
    G = V @ xp.matrix_transpose(V)
    ntk = global_ntk(traj)
    n = ntk.size_in
    exact = method == "exact" or (
        method == "auto" and n <= (_EXACT_STATES if num_matvecs is None else num_matvecs)
    )
    if exact:
        return _core_exact(ntk, G)
    return _core_estimate(ntk, G, 200 if num_matvecs is None else num_matvecs, gen)


_EXACT_STATES = 5000
_BLOCK_FLOATS = 1 << 22


@without_graph
def _core_exact(ntk: LinearOperator, G: Any) -> ScalarResult:
    xp = ntk.xp
    B, T, S = ntk.shape_in
    m = B * T
    M = _temporal_ntk_dense(ntk)
    value = xp.sum(M * G) / (xp.linalg.matrix_norm(M) * xp.linalg.matrix_norm(G))
    zero = xp.zeros((), dtype=ntk.dtype, device=ntk.device)
    return ScalarResult(xp.clip(value, 0.0, 1.0), zero, m * S, "exact")


def _temporal_ntk_dense(ntk: LinearOperator) -> Any:
    """The temporal NTK as a dense ``(B·T, B·T)`` matrix, from unit products in blocks."""
    xp = ntk.xp
    B, T, S = ntk.shape_in
    m, n = B * T, ntk.size_in
    per_block = max(1, _BLOCK_FLOATS // n)
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


@without_graph
def _core_estimate(ntk: LinearOperator, G: Any, budget: int, gen: Any) -> ScalarResult:
    xp = ntk.xp
    B, T, S = ntk.shape_in
    m, n = B * T, ntk.size_in
    probes = max(4, budget // 2)
    per_block = max(1, min(probes, _BLOCK_FLOATS // (2 * n)))
    a_all, b_all = [], []
    done = 0
    while done < probes:
        k = min(per_block, probes - done)
        x = xp.asarray(gen.choice([-1.0, 1.0], size=(k, m)), dtype=ntk.dtype, device=ntk.device)
        z = xp.asarray(gen.choice([-1.0, 1.0], size=(2, k, S)), dtype=ntk.dtype, device=ntk.device)
        X = xp.reshape(x, (1, k, m, 1)) * xp.reshape(z, (2, k, 1, S))
        Y = xp.reshape(ntk.matmat(xp.reshape(X, (2 * k, B, T, S))), (2, k, m, S))
        u = xp.sum(Y * xp.reshape(z, (2, k, 1, S)), axis=3)  # (2, k, m): two unbiased M x
        Gx = x @ G  # G symmetric
        a_all.append(xp.sum((u[0, ...] + u[1, ...]) * Gx, axis=1) / 2)
        b_all.append(xp.sum(u[0, ...] * u[1, ...], axis=1))
        done += k
    a = np.asarray(to_host(xp.concat(a_all)), dtype=np.float64)
    b = np.asarray(to_host(xp.concat(b_all)), dtype=np.float64)
    g = float(to_host(xp.linalg.matrix_norm(G)))
    ma, mb = a.mean(), b.mean()
    if mb <= 0 or g == 0:
        value, err = math.nan, math.nan
    else:
        value = ma / (math.sqrt(mb) * g)
        grad = np.array([1.0 / (math.sqrt(mb) * g), -ma / (2.0 * mb**1.5 * g)])
        cov = np.cov(np.stack([a, b])) / a.size
        err = math.sqrt(max(float(grad @ cov @ grad), 0.0))
    as_array = functools.partial(xp.asarray, dtype=ntk.dtype, device=ntk.device)
    return ScalarResult(xp.clip(as_array(value), 0.0, 1.0), as_array(err), 2 * probes, "estimate")


def _targets_by_mode(traj: Trajectory, y: Any, where: str) -> Any:
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


def target_alignment(
    traj: Trajectory,
    y: Any,
    *,
    num_matvecs: int | None = None,
    rng: Any = None,
) -> ScalarResult:
    """The target–NTK alignment ρ(M, y) / tr(NTK_S), ρ(A, y) = yᵀ A y / yᵀ y.

    M is the temporal NTK (:func:`temporal_ntk`).  Targets ``(B, T, p)`` count as p
    columns y_j over ``(batch, time)``: ρ = Σ_j y_jᵀ M y_j / Σ_j y_jᵀ y_j (for p = 1, the
    research code's ``(B, T, 1)`` targets, this is yᵀ M y / yᵀ y).  Since ρ(M, y) <=
    λ_max(M) <= tr M = tr NTK_S, the value lies in ``[0, 1]``: 1 when the targets span
    M's only mode, 1/(B·T) for M ∝ I.  The numerator is exact, from p·S products with
    NTK_S (unit vectors on hidden times each y_j), run in blocks of bounded memory.

    Parameters
    ----------
    traj : Trajectory
        A recurrent run.
    y : array of shape (B, T) or (B, T, p)
        Targets in the trajectory's namespace, dtype and device.
    num_matvecs, rng
        Passed to :func:`kpflow.linalg.trace` for tr(NTK_S) (exact when affordable).

    Returns
    -------
    ScalarResult
        ``.error`` from the trace's error (0 when exact).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN
    >>> from kpflow.analysis import target_alignment
    >>> traj = RNN(1, 3).run(RNN(1, 3).init(0), np.ones((2, 4, 1)))
    >>> 0.0 < float(target_alignment(traj, np.ones((2, 4, 1)))) <= 1.0
    True
    """
    where = "target_alignment"
    _check_recurrent(traj, where)
    xp = traj.xp
    Y = _targets_by_mode(traj, y, where)
    den = xp.sum(Y * Y)
    if float(den) == 0.0:
        msg = f"{where}: y is zero; the Rayleigh quotient yᵀ M y / yᵀ y is undefined"
        raise ValueError(msg)
    ntk = global_ntk(traj)
    rho = _temporal_quadratic(ntk, Y) / den
    t = linalg.trace(ntk, num_matvecs=num_matvecs, rng=rng)
    value = rho / t.value
    error = None if t.error is None else xp.abs(value) * t.error / xp.abs(t.value)
    S = ntk.shape_in[2]
    return ScalarResult(value, error, S * Y.shape[0] + t.num_matvecs, t.method)


@without_graph
def _temporal_quadratic(ntk: LinearOperator, Y: Any) -> Any:
    """Σ_j y_jᵀ M y_j = Σ_{j,h} (y_j ⊗ e_h)ᵀ NTK_S (y_j ⊗ e_h), in blocks of products."""
    xp = ntk.xp
    S = ntk.shape_in[2]
    p = Y.shape[0]
    per_block = max(1, _BLOCK_FLOATS // ntk.size_in)
    eye = xp.eye(S, dtype=ntk.dtype, device=ntk.device)
    total = xp.zeros((), dtype=ntk.dtype, device=ntk.device)
    for start in range(0, p * S, per_block):
        idx = xp.arange(start, min(p * S, start + per_block), device=ntk.device)
        cols = xp.take(Y, idx // S, axis=0)  # (k, B, T)
        E = cols[:, :, :, None] * xp.reshape(xp.take(eye, idx % S, axis=0), (idx.shape[0], 1, 1, S))
        total = total + xp.sum(E * ntk.matmat(E))
    return total


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
    _check_recurrent(traj, where)
    if normalize not in ("op_norm", "none"):
        msg = f"{where}: expected normalize to be 'op_norm' or 'none', got {normalize!r}"
        raise ValueError(msg)
    xp = traj.xp
    C = _readout_weight(readout, traj, where)
    Y = _targets_by_mode(traj, y, where)  # (p, B, T)
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


@dataclass(frozen=True)
class VarianceRank:
    """The number of eigenmodes that reach a fraction of the variance (trace).

    Attributes
    ----------
    rank : int
        The smallest k with λ_1 + ... + λ_k >= fraction · tr M (eigenvalues descending).
    fraction : float
    cumulative : numpy.ndarray
        The cumulative variance fractions of the modes found (host float64), ``rank`` first
        entries at least up to ``fraction``.
    low, high : int
        The rank at tr M ± 2 standard errors of the trace (equal to ``rank`` when exact).
    exact : bool
        True when every eigenvalue and the trace are exact (dense or structured rules).
    """

    rank: int
    fraction: float
    cumulative: np.ndarray
    low: int
    high: int
    exact: bool

    def __int__(self) -> int:
        return self.rank

    def __index__(self) -> int:
        return self.rank


def _count(cum: np.ndarray, level: float) -> int | None:
    hit = np.nonzero(cum >= level * (1.0 - 1e-12))[0]
    return int(hit[0]) + 1 if hit.size else None


def _kept_and_traced(op: LinearOperator, axis: Any, where: str) -> tuple[int, ...]:
    nd = len(op.shape_in)
    if axis is None:
        return ()
    keep = (axis,) if isinstance(axis, (str, int)) else tuple(axis)
    names = getattr(op, "axis_names", None)
    out = []
    for a in keep:
        if isinstance(a, str):
            if names is None or a not in names:
                msg = f"{where}: axis={a!r} is not an axis of this operator; its axes are {names}"
                raise ValueError(msg)
            a = tuple(names).index(a)
        if isinstance(a, bool) or not isinstance(a, int) or not -nd <= a < nd:
            msg = f"{where}: expected axis to be None, an axis name or an index in [{-nd}, {nd}), got {a!r}"
            raise ValueError(msg)
        out.append(a % nd)
    return tuple(i for i in range(nd) if i not in out)


def rank_at_variance(
    op: Any,
    fraction: float = 0.95,
    *,
    axis: Any = None,
    max_dense: int = 4096,
    max_modes: int = 256,
    rng: Any = None,
) -> VarianceRank:
    """The number of eigenmodes of a PSD operator, or of its partial trace, reaching ``fraction``.

    With eigenvalues λ_1 >= λ_2 >= ... of M (``op``, or with ``axis`` its partial trace
    keeping those axes), the result is the smallest k with Σ_{i<=k} λ_i >= fraction · tr M
    (the number of principal components explaining that fraction of the variance).

    Parameters
    ----------
    op : LinearOperator or 2-d array
        Symmetric PSD (K, P Pᵀ, NTK_S, a Gram matrix).
    fraction : float in (0, 1]
    axis : int, str or tuple of them, optional
        The axes to keep (e.g. ``("batch", "time")`` for the temporal modes, ``"hidden"``
        for the spatial ones); None for the whole operator.
    max_dense : int
        M is formed densely (all its eigenvalues, exact) when ``op`` has at most this many
        states; otherwise the top eigenvalues come from :func:`kpflow.linalg.eigsh` (doubling
        their number up to ``max_modes``) and tr M from :func:`kpflow.linalg.trace`.
    max_modes : int
    rng : int, numpy.random.Generator or None

    Returns
    -------
    VarianceRank
        ``int(result)`` is the rank.

    Raises
    ------
    ValueError
        When ``max_modes`` eigenvalues do not reach ``fraction`` of the trace.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.analysis import rank_at_variance
    >>> int(rank_at_variance(np.diag([5.0, 3.0, 1.0, 1.0]), 0.8))
    2
    """
    where = "rank_at_variance"
    if is_operator(op):
        A = op
    elif getattr(op, "ndim", None) == 2:
        A = Dense(op)
    else:
        msg = f"{where}: expected op to be a LinearOperator or a 2-d array, got {type(op).__name__}"
        raise TypeError(msg)
    if A.shape_in != A.shape_out:
        msg = f"{where}: expected a square op, got {A.shape_out}<-{A.shape_in}"
        raise ValueError(msg)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        msg = f"{where}: expected fraction to be a float in (0, 1], got {fraction!r}"
        raise ValueError(msg)
    gen = host_rng(rng, where)
    traced = _kept_and_traced(A, axis, where)
    M = A.partial_trace(traced) if traced else A
    xp = A.xp
    if A.size_in <= max_dense:
        D = xp.reshape(M.todense(max_size=None), (M.size_in, M.size_in))
        w = to_host(xp.linalg.eigvalsh((D + xp.matrix_transpose(D)) / 2))
        w = np.clip(np.sort(np.asarray(w, dtype=np.float64))[::-1], 0.0, None)
        cum = np.cumsum(w) / w.sum()
        k = _count(cum, float(fraction)) or int(w.size)  # the last entry is 1
        return VarianceRank(k, float(fraction), cum, k, k, True)
    t = linalg.trace(M, rng=gen)
    total = float(t.value)
    err = 0.0 if t.error is None else float(t.error)
    k = 8
    while True:
        k = min(k, M.size_in, max_modes)
        w = np.clip(np.asarray(to_host(linalg.eigsh(M, k, rng=gen).eigenvalues), dtype=np.float64), 0.0, None)
        cum = np.cumsum(w) / total
        hi_level = float(fraction) * (total + 2 * err) / total
        rank, high = _count(cum, float(fraction)), _count(cum, hi_level)
        if high is not None or k >= min(M.size_in, max_modes):
            break
        k *= 2
    if rank is None:
        msg = (
            f"{where}: the top {k} eigenvalues reach {cum[-1]:.3g} of the trace, short of "
            f"fraction={fraction}; raise max_modes or max_dense"
        )
        raise ValueError(msg)
    low = _count(cum, float(fraction) * max(total - 2 * err, 0.0) / total) or rank
    return VarianceRank(rank, float(fraction), cum, low, high if high is not None else rank, err == 0.0)


@dataclass(frozen=True)
class TemporalSpatialRanks:
    """The paper's ranks of one operator: participation ratios pr = tr(M)²/tr(M²).

    Attributes
    ----------
    temporal : ScalarResult
        Of the partial trace keeping ``(batch, time)`` (traced over hidden).
    spatial : ScalarResult
        Of the partial trace keeping hidden.
    overall : ScalarResult
        Of the whole operator.
    """

    temporal: ScalarResult
    spatial: ScalarResult
    overall: ScalarResult


def temporal_spatial_ranks(
    traj: Trajectory,
    operator: str = "NTK",
    *,
    num_matvecs: int | None = None,
    rng: Any = None,
) -> TemporalSpatialRanks:
    """Temporal, spatial and overall effective ranks of NTK_S (or K, or P Pᵀ).

    Unlike :func:`effective_ranks`, whose ``"time"`` entry keeps time alone, the temporal
    rank keeps batch and time together (the ``(B·T)²`` temporal NTK), as the paper does.

    Parameters
    ----------
    traj : Trajectory
        A recurrent run.
    operator : {"NTK", "K", "PPT"}
    num_matvecs, rng
        As in :func:`kpflow.linalg.effective_rank` (exact when affordable).

    Returns
    -------
    TemporalSpatialRanks

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import LeakyRNN
    >>> from kpflow.analysis import temporal_spatial_ranks
    >>> model = LeakyRNN(1, 3, dt=0.5)
    >>> r = temporal_spatial_ranks(model.run(model.init(0), np.ones((2, 4, 1))), "K")
    >>> round(float(r.spatial), 12)
    3.0
    """
    where = "temporal_spatial_ranks"
    _check_recurrent(traj, where)
    if operator not in _OPERATORS:
        msg = f"{where}: expected operator to be one of {_OPERATORS}, got {operator!r}"
        raise ValueError(msg)
    if operator == "NTK":
        op = global_ntk(traj)
    elif operator == "K":
        op = parameter_kernel(traj)
    else:
        P = propagator(traj)
        op = P @ P.T
    gen = host_rng(rng, where)

    def pr(keep: Any) -> ScalarResult:
        return linalg.effective_rank(op, keep, num_matvecs=num_matvecs, rng=gen)

    return TemporalSpatialRanks(pr((0, 1)), pr(2), pr(None))
