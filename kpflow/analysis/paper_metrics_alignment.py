"""The paper's alignments: the core alignment (self-referential bias) and target alignment.

:func:`core_alignment` is the cosine ⟨M, V Vᵀ⟩_F / (‖M‖_F ‖V Vᵀ‖_F) of the temporal NTK M
and the joint activity Gram, exact or estimated from probe pairs;
:func:`target_alignment` is ρ(M, y) / tr(NTK_S).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from kpflow import linalg
from kpflow._array import host_rng, to_host
from kpflow.analysis.paper_metrics_temporal import (
    BLOCK_FLOATS,
    activity,
    check_recurrent,
    targets_by_mode,
    temporal_ntk_dense,
    temporal_quadratic,
)
from kpflow.linalg import ScalarResult
from kpflow.linalg._backend import without_graph
from kpflow.models.base import Trajectory
from kpflow.ntk import global_ntk
from kpflow.operators.base import LinearOperator

__all__ = ["core_alignment", "target_alignment"]


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
    check_recurrent(traj, where)
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
    V = activity(traj)
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


@without_graph
def _core_exact(ntk: LinearOperator, G: Any) -> ScalarResult:
    xp = ntk.xp
    B, T, S = ntk.shape_in
    m = B * T
    M = temporal_ntk_dense(ntk)
    value = xp.sum(M * G) / (xp.linalg.matrix_norm(M) * xp.linalg.matrix_norm(G))
    zero = xp.zeros((), dtype=ntk.dtype, device=ntk.device)
    return ScalarResult(xp.clip(value, 0.0, 1.0), zero, m * S, "exact")


@without_graph
def _core_estimate(ntk: LinearOperator, G: Any, budget: int, gen: Any) -> ScalarResult:
    xp = ntk.xp
    B, T, S = ntk.shape_in
    m, n = B * T, ntk.size_in
    probes = max(4, budget // 2)
    per_block = max(1, min(probes, BLOCK_FLOATS // (2 * n)))
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
    check_recurrent(traj, where)
    xp = traj.xp
    Y = targets_by_mode(traj, y, where)
    den = xp.sum(Y * Y)
    if float(den) == 0.0:
        msg = f"{where}: y is zero; the Rayleigh quotient yᵀ M y / yᵀ y is undefined"
        raise ValueError(msg)
    ntk = global_ntk(traj)
    rho = temporal_quadratic(ntk, Y) / den
    t = linalg.trace(ntk, num_matvecs=num_matvecs, rng=rng)
    value = rho / t.value
    error = None if t.error is None else xp.abs(value) * t.error / xp.abs(t.value)
    S = ntk.shape_in[2]
    return ScalarResult(value, error, S * Y.shape[0] + t.num_matvecs, t.method)
