"""Dynamics of the recurrence: Lyapunov exponents, finite-time ones, and the singular values of P.

The step Jacobians J_t = ∂z_t/∂z_{t−1} (``traj.step_jvp``, ``traj.step_vjp``) are
block-diagonal over the batch; batch element b's tangent dynamics over the trajectory is the
product Φ_b = J_{T−1} ⋯ J_1 (S × S; J at t = 0 acts on h0, which is not a state).  Two
numbers per direction come from it, and they differ at finite T:

- :func:`finite_time_lyapunov_exponents`: the finite-time Lyapunov exponents (FTLEs)
  λ_i = log σ_i(Φ_b) / (T − 1), σ_i the singular values of the product.  A function of the
  trajectory alone.  Computed without forming Φ_b, by orthogonal iteration on Φ_bᵀ Φ_b:
  alternate QR passes forward (J_t, Jacobian-vector products) and backward (J_tᵀ,
  vector-Jacobian products), re-orthonormalising after every step, until the exponents stop
  changing (Stewart, "On graded QR decompositions of products of matrices", ETNA 3, 1995).
  The logs add up step by step, so nothing over- or underflows and the small exponents keep
  their accuracy even where σ_i/σ_1 is far below the machine epsilon, which a dense product
  followed by an SVD loses.
- :func:`lyapunov_exponents`: the QR (Benettin) iteration from one starting frame Q_0,
  J_t Q_{t−1} = Q_t R_t, λ_i = Σ_t log|R_t[i, i]| / (T − 1) (Benettin, Galgani, Giorgilli &
  Strelcyn, Meccanica 1980).  As T → ∞ it converges to the Lyapunov exponents (for almost
  every Q_0); at finite T it depends on Q_0 by O(1/T) and lies below the FTLEs: the first
  exponent is log‖Φ_b q_1‖/(T − 1) ≤ log σ_1/(T − 1), and the sums of the first j exponents
  (in the frame's order) are at most those of the top j FTLEs.  With the full frame (k = S)
  both sums equal Σ_t log|det J_t| / (T − 1), whatever Q_0.

The propagator P = (I − L)⁻¹ holds every product J_t ⋯ J_{s+1} as its blocks; its singular
values summarise them all at once.
"""

from __future__ import annotations

import warnings
from typing import Any

from kpflow import linalg
from kpflow._array import host_rng
from kpflow.analysis.modes import check_k
from kpflow.models.base import RecurrentTrajectory, Trajectory
from kpflow.ntk import propagator
from kpflow.ntk.kernel import check_trajectory

__all__ = ["finite_time_lyapunov_exponents", "lyapunov_exponents", "propagator_singular_values"]

#: The default seed of :func:`lyapunov_exponents`' starting frame, and the fixed seed of
#: :func:`finite_time_lyapunov_exponents`' (whose result does not depend on it).
FRAME_SEED = 0


def _check_recurrent(traj: Any, where: str) -> tuple[int, int, int]:
    check_trajectory(traj, where)
    if not isinstance(traj, RecurrentTrajectory):
        got = type(traj).__name__
        msg = f"{where}: expected traj to be a recurrent trajectory (states (B, T, S)), got {got}"
        raise TypeError(msg)
    B, T, S = traj.state_shape
    if T < 2:
        msg = f"{where}: expected traj to have at least 2 time steps, got T = {T}"
        raise ValueError(msg)
    return B, T, S


def _frame(traj: Trajectory, B: int, S: int, k: int, rng: Any, where: str) -> Any:
    """An orthonormal frame of shape (B, S, k), drawn on the host (SPEC 7)."""
    xp = traj.xp
    gen = host_rng(rng, where)
    Q = xp.asarray(gen.standard_normal((B, S, k)), dtype=traj.dtype, device=traj.device)
    return xp.linalg.qr(Q)[0]


def _qr_pass(traj: Trajectory, Q: Any, *, backward: bool) -> tuple[Any, Any]:
    """One QR pass of the frame Q (B, S, k) through Φ (forward) or Φᵀ (backward).

    Returns the final frame and Σ_t log|R_t[i, i]| (B, k), in the frame's column order.
    """
    xp = traj.xp
    T = traj.n_steps
    total = xp.zeros((Q.shape[0], Q.shape[2]), dtype=traj.dtype, device=traj.device)
    steps = range(T - 1, 0, -1) if backward else range(1, T)
    for t in steps:
        V = xp.permute_dims(Q, (2, 0, 1))  # (k, B, S)
        Y = traj.step_vjp(t, V) if backward else traj.step_jvp(t, V)
        Q, R = xp.linalg.qr(xp.permute_dims(Y, (1, 2, 0)))
        total = total + xp.log(xp.abs(xp.linalg.diagonal(R)))
    return Q, total


#: Rayleigh–Ritz blocks of :func:`finite_time_lyapunov_exponents`: this many adjacent frame
#: columns, rotated together when their exponents span less than ``_RITZ_SPAN`` (in log σ),
#: so that their block of the product is well conditioned enough for a plain SVD.
_RITZ_WIDTH = 4
_RITZ_SPAN = 30.0


def _ritz_pass(traj: Trajectory, Q: Any, *, backward: bool, offset: int) -> tuple[Any, Any]:
    """A QR pass (see :func:`_qr_pass`) followed by Rayleigh–Ritz on blocks of adjacent columns.

    Φ Q = Q_end R with R = R_{T−1} ⋯ R_1 upper triangular, so R's diagonal blocks are the
    products of the R_t's diagonal blocks: accumulated here (rescaled every step), their
    SVDs X Σ Yᵀ give the block's singular values and rotate Q_end by X, which aligns the next
    pass's start with the product's singular vectors inside the block.  Returns the rotated
    final frame and the log singular-value estimates (B, k), in the frame's column order.
    """
    xp = traj.xp
    meta = {"dtype": traj.dtype, "device": traj.device}
    B, S, k = Q.shape
    w = min(_RITZ_WIDTH, k)
    n = (k - offset) // w
    lo, hi = offset, offset + n * w
    total = xp.zeros((B, k), **meta)
    eye_w = xp.eye(w, **meta)
    pick = xp.eye(n, **meta)[None, :, None, :, None]  # selects R's diagonal blocks
    P = xp.zeros((B, n, w, w), **meta) + eye_w
    steps = range(traj.n_steps - 1, 0, -1) if backward else range(1, traj.n_steps)
    for t in steps:
        V = xp.permute_dims(Q, (2, 0, 1))  # (k, B, S)
        Y = traj.step_vjp(t, V) if backward else traj.step_jvp(t, V)
        Q, R = xp.linalg.qr(xp.permute_dims(Y, (1, 2, 0)))
        total = total + xp.log(xp.abs(xp.linalg.diagonal(R)))
        if n:
            blocks = xp.sum(xp.reshape(R[:, lo:hi, lo:hi], (B, n, w, n, w)) * pick, axis=3)
            P = blocks @ P
            P = P / xp.max(xp.abs(P), axis=(2, 3), keepdims=True)
    if not n:
        return Q, total
    logs = xp.reshape(total[:, lo:hi], (B, n, w))
    X, sv, _ = xp.linalg.svd(P, full_matrices=False)
    log_sv = xp.log(sv)
    # Σ_i log σ_i(R_block) = Σ_i log|R_ii| (its determinant): that fixes the dropped scale
    ritz = log_sv + ((xp.sum(logs, axis=2) - xp.sum(log_sv, axis=2)) / w)[..., None]
    span = xp.max(logs, axis=2) - xp.min(logs, axis=2)
    ok = xp.isfinite(span) & (span < _RITZ_SPAN)
    X = xp.where(ok[..., None, None], X, eye_w)
    logs = xp.where(ok[..., None], ritz, logs)
    mid = xp.permute_dims(xp.reshape(Q[:, :, lo:hi], (B, S, n, w)), (0, 2, 1, 3)) @ X
    mid = xp.reshape(xp.permute_dims(mid, (0, 2, 1, 3)), (B, S, n * w))
    Q = xp.concat([Q[:, :, :lo], mid, Q[:, :, hi:]], axis=2)
    total = xp.concat([total[:, :lo], xp.reshape(logs, (B, n * w)), total[:, hi:]], axis=1)
    return Q, total


def _descending(xp: Any, lam: Any) -> Any:
    return xp.flip(xp.sort(lam, axis=1), axis=1)


def lyapunov_exponents(traj: Trajectory, *, k: int | None = None, rng: Any = FRAME_SEED) -> Any:
    """Lyapunov exponents of each batch element by the QR (Benettin) iteration on J_t.

    The estimate from one forward pass of an orthonormal frame Q_0 through the step
    Jacobians: J_t Q_{t−1} = Q_t R_t, λ_i = Σ_t log|R_t[i, i]| / (T − 1).  It converges to
    the Lyapunov exponents as T → ∞; at finite T it depends on Q_0 by O(1/T) and is not the
    finite-time exponents log σ_i(J_{T−1} ⋯ J_1) / (T − 1) of the trajectory: those are
    :func:`finite_time_lyapunov_exponents`.  With ``k = S`` the sum of the exponents is
    exactly the mean of log|det J_t|, whatever Q_0.

    Parameters
    ----------
    traj : Trajectory
        A recurrent trajectory with at least two time steps (the exponents use
        J_1 … J_{T−1}; J at t = 0 acts on h0, which is not a state).
    k : int, optional
        How many exponents (the frame's width), ``1 <= k <= S``; default all ``S``.
    rng : int, numpy.random.Generator or None
        Seeds the random orthonormal starting frame Q_0 (drawn on the host, SPEC 7).  The
        default, the fixed seed 0, makes the result a function of the trajectory and ``k``;
        pass other seeds to see how much it depends on Q_0.

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
    >>> lam = lyapunov_exponents(traj)
    >>> np.round(np.exp(lam), 2).tolist(), round(float(np.exp(lam.sum())), 12)
    ([[0.5, 0.25]], 0.125)
    """
    where = "lyapunov_exponents"
    B, T, S = _check_recurrent(traj, where)
    k = S if k is None else check_k(k, where, S)
    _, total = _qr_pass(traj, _frame(traj, B, S, k, rng, where), backward=False)
    return _descending(traj.xp, total / (T - 1))


def finite_time_lyapunov_exponents(
    traj: Trajectory, *, k: int | None = None, tol: float = 1e-12, max_passes: int = 100
) -> Any:
    """Finite-time Lyapunov exponents log σ_i(J_{T−1} ⋯ J_1) / (T − 1) of each batch element.

    σ_i are the singular values of the product Φ_b = J_{T−1} ⋯ J_1 of batch element b's
    step Jacobians, so the result is a function of the trajectory alone.  Φ_b is never
    formed: orthogonal iteration on Φ_bᵀ Φ_b, as QR passes alternately forward through J_t
    (Jacobian-vector products) and backward through J_tᵀ (vector-Jacobian products), each
    re-orthonormalising the frame after every step and adding up log|R_t[i, i]|.  A pass
    from a frame spanning the top right (or, backward, left) singular vectors returns the
    exact exponents; each pass closes the gap to them by the factor σ_{i+1}/σ_i of the
    product, so with distinct exponents two or three passes reach the machine precision.
    The logs accumulate step by step: nothing over- or underflows, and exponents whose
    singular values lie far below σ_1 · ε keep their accuracy.

    Parameters
    ----------
    traj : Trajectory
        A recurrent trajectory with at least two time steps.
    k : int, optional
        How many (the top k), ``1 <= k <= S``; default all ``S``.  The cost is
        ``2 (T − 1) · passes`` Jacobian products on blocks of k probes.
    tol : float
        Stop when no exponent changes by more than ``tol · max(1, max|λ|)`` from one pass to
        the next (raised to 100 ε of the dtype).
    max_passes : int
        At most this many passes; a :class:`RuntimeWarning` reports the last change if they
        did not meet ``tol``.  Two exponents closer than about 1/(T − 1) converge slowly;
        their sum is exact once it has separated from the rest, and each is then off by at
        most their difference.

    Returns
    -------
    array of shape (B, k)
        Descending along the last axis, in the trajectory's namespace, dtype and device.
        Summed over all S, the exact mean of log|det J_t|.

    See Also
    --------
    lyapunov_exponents : the QR (Benettin) estimate from one starting frame, which tends
        to the Lyapunov exponents as T → ∞.

    Examples
    --------
    A linear RNN (zero inputs and biases keep h = 0, so J_t = W) with a normal W: the
    singular values of W^{T−1} are |eig W|^{T−1}, for any T.

    >>> import numpy as np
    >>> from kpflow.models import RNN
    >>> from kpflow.analysis import finite_time_lyapunov_exponents
    >>> model = RNN(1, 2)
    >>> W = np.array([[0.5, 0.2], [0.2, -0.25]])
    >>> params = {**{n: np.zeros(s) for n, s in model.param_shapes().items()}, "weight_hh": W}
    >>> traj = model.run(params, np.zeros((1, 300, 1)))
    >>> lam = finite_time_lyapunov_exponents(traj)
    >>> bool(np.allclose(lam[0], np.sort(np.log(np.abs(np.linalg.eigvalsh(W))))[::-1], rtol=1e-12))
    True
    """
    where = "finite_time_lyapunov_exponents"
    B, T, S = _check_recurrent(traj, where)
    k = S if k is None else check_k(k, where, S)
    if isinstance(max_passes, bool) or not isinstance(max_passes, int) or max_passes < 2:
        msg = f"{where}: expected max_passes to be an int >= 2, got {max_passes!r}"
        raise ValueError(msg)
    if not tol >= 0:
        msg = f"{where}: expected tol >= 0, got {tol!r}"
        raise ValueError(msg)
    xp = traj.xp
    eps = float(xp.finfo(traj.dtype).eps)
    tol = max(float(tol), 100 * eps)
    Q = _frame(traj, B, S, k, FRAME_SEED, where)
    previous = None
    change = float("inf")
    for n in range(max_passes):
        offset = 0 if n % 2 == 0 else min(_RITZ_WIDTH, k) // 2  # blocks straddle the last cuts
        Q, total = _ritz_pass(traj, Q, backward=n % 2 == 1, offset=offset)
        lam = _descending(xp, total / (T - 1))
        if previous is not None:
            # equal values (−inf included, a singular J_t) count as no change
            diff = xp.where(lam == previous, xp.zeros_like(lam), xp.abs(lam - previous))
            finite = xp.where(xp.isfinite(lam), xp.abs(lam), xp.zeros_like(lam))
            change = float(xp.max(diff))
            if change <= tol * max(1.0, float(xp.max(finite))):
                return lam
        previous = lam
    warnings.warn(
        f"{where}: the exponents still changed by {change:.3g} after {max_passes} passes "
        f"(tol {tol:.3g}); raise max_passes, or read the near-equal ones as a group",
        RuntimeWarning,
        stacklevel=2,
    )
    return lam


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
