"""Initialisations for training: a recurrent-weight scale g (Gaussian or torch-uniform), fixed points.

Both draw on the host from one seeded generator (the model's default initialisation first,
then the changes), in float64, and convert once to the caller's namespace, dtype and device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kpflow._array import host_rng
from kpflow.models.base import Model, convert_host
from kpflow.models.registry import fixed_point_system

__all__ = ["init_params"]

_SCALES = ("gaussian", "torch")


def init_params(
    model: Model,
    rng: Any = None,
    *,
    g: float | None = None,
    scale: str = "gaussian",
    fixed_points: Any = None,
    like: Any = None,
    dtype: Any = None,
    device: Any = None,
) -> dict[str, Any]:
    """The model's parameters, with an optional recurrent scale ``g`` and embedded fixed points.

    Parameters
    ----------
    model : Model
        A built-in model; ``g`` and ``fixed_points`` need a recurrent one (``weight_hh``).
    rng : int, numpy.random.Generator or None
        One host generator for everything drawn here.
    g : float, optional
        Redraw ``weight_hh`` with i.i.d. N(0, g²/H) entries (each gate block of the GRU and
        LSTM alike): g < 1 gives decaying, g > 1 chaotic dynamics of a tanh RNN at
        initialisation.  Default: the model's own initialisation.
    scale : {"gaussian", "torch"}
        How ``g`` redraws ``weight_hh`` (used only with ``g``).  ``"gaussian"``: N(0, g²/H),
        so g is the spectral radius scale of random-matrix theory.  ``"torch"``: g times
        torch's default U(−1/√H, 1/√H) on every gate block, the research code's choice
        (meeree/kpflow multiplies ``nn.RNN``'s ``weight_hh_l0`` by g); its variance is
        g²/(3H), so research g = 2 is ``scale="gaussian"`` g = 2/√3 ≈ 1.15.
    fixed_points : array of shape (K, H), optional
        States h*_1 … h*_K made exact fixed points of the autonomous dynamics (x = 0).
        The models that take them are the registry entries with a fixed-point rule
        (:func:`kpflow.models.registry.fixed_point_system`): for :class:`~kpflow.models.RNN`
        (tanh) h* = tanh(W h* + b) needs entries in (−1, 1);
        for :class:`~kpflow.models.LeakyRNN`, W φ(h*) + b = h*.  W_hh gets the
        minimum-Frobenius-norm correction W ← W + (R − W Φ) Φ⁺ that makes them hold, where
        Φ stacks the h*_k (φ(h*_k) for the leaky RNN) as columns and R their targets, so
        K ≤ H points in general position are embedded exactly.
    like, dtype, device
        The namespace (an array of it), dtype and device of the result; numpy float64 by
        default.

    Returns
    -------
    dict of str to array

    Raises
    ------
    ValueError
        For g ≤ 0, an unknown ``scale``, fixed points of the wrong shape or outside (−1, 1)
        for a tanh RNN, more points than H or points in degenerate position, or a model
        without ``weight_hh``.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN
    >>> from kpflow.training import init_params
    >>> model = RNN(1, 8)
    >>> points = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 8))
    >>> params = init_params(model, 0, g=1.5, fixed_points=points)
    >>> traj = model.run(params, np.zeros((2, 20, 1)), points)   # start at the points, no input
    >>> bool(np.allclose(traj.states[:, -1], points))
    True

    The research code's initialisation, g × U(−1/√H, 1/√H):

    >>> W = init_params(RNN(1, 400), 0, g=2.0, scale="torch")["weight_hh"]
    >>> bool(np.abs(W).max() <= 2.0 / np.sqrt(400)), round(float(W.var() * 3 * 400 / 4), 1)
    (True, 1.0)
    """
    where = "init_params"
    if not isinstance(model, Model):
        msg = f"{where}: expected model to be a kpflow model, got {type(model).__name__}"
        raise TypeError(msg)
    gen = host_rng(rng, where)
    host = {k: np.asarray(v, dtype=np.float64) for k, v in model.init(gen).items()}
    if (g is not None or fixed_points is not None) and "weight_hh" not in host:
        msg = f"{where}: g and fixed_points need a recurrent model with weight_hh, got {model!r}"
        raise ValueError(msg)
    if scale not in _SCALES:
        msg = f"{where}: expected scale to be one of {_SCALES}, got {scale!r}"
        raise ValueError(msg)
    if g is not None:
        if isinstance(g, bool) or not isinstance(g, int | float) or not np.isfinite(g) or g <= 0:
            msg = f"{where}: expected g to be a finite float > 0, got {g!r}"
            raise ValueError(msg)
        shape = host["weight_hh"].shape
        bound = 1.0 / np.sqrt(shape[1])
        if scale == "torch":
            host["weight_hh"] = float(g) * gen.uniform(-bound, bound, shape)
        else:
            host["weight_hh"] = gen.standard_normal(shape) * (float(g) * bound)
    if fixed_points is not None:
        host["weight_hh"] = _embed_fixed_points(model, host, fixed_points, where)
    return convert_host(host, like=like, dtype=dtype, device=device)


def _embed_fixed_points(model: Model, host: dict[str, np.ndarray], points: Any, where: str) -> np.ndarray:
    H = host["weight_hh"].shape[1]
    pts = np.asarray(points.detach().cpu() if hasattr(points, "detach") else points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != H:
        msg = f"{where}: expected fixed_points of shape (K, {H}), got {tuple(pts.shape)}"
        raise ValueError(msg)
    if pts.shape[0] > H:
        msg = f"{where}: expected at most H = {H} fixed points, got {pts.shape[0]}"
        raise ValueError(msg)
    W = host["weight_hh"]
    Phi, R = fixed_point_system(model, host, pts, where)  # the model's own fixed-point equation
    s = np.linalg.svd(Phi, compute_uv=False)
    if s.min() <= 1e-10 * max(s.max(), 1e-300):
        msg = (
            f"{where}: the fixed points (their rates, for the leaky RNN) are linearly dependent; "
            "choose points in general position"
        )
        raise ValueError(msg)
    return W + (R - W @ Phi) @ np.linalg.pinv(Phi)
