"""Effective ranks of K, P Pᵀ and NTK_S, globally and along each axis, and over training.

The effective rank is the participation ratio pr(M) = tr(M)² / tr(M²) of
:func:`kpflow.linalg.effective_rank`; along an axis (``"batch"``, ``"time"``, ``"hidden"``)
M is the partial trace over the other axes.  For K every value is exact (the Kronecker-core
rules); for P Pᵀ and NTK_S the values are exact from unit probes when the state space is
small (``prod(state_shape) <= kpflow.linalg.DENSE_LIMIT`` or within ``num_matvecs``), and
randomized estimates otherwise, with their standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kpflow import linalg
from kpflow._array import host_rng
from kpflow.models.base import Model, Trajectory
from kpflow.ntk import global_ntk, parameter_kernel, propagator
from kpflow.ntk.kernel import check_trajectory
from kpflow.operators.base import LinearOperator

__all__ = ["EffectiveRanks", "RanksOverTraining", "effective_ranks", "effective_ranks_over_training"]

_OPERATORS = ("K", "PPT", "NTK")


@dataclass(frozen=True)
class EffectiveRanks:
    """Participation ratios of K, P Pᵀ and NTK_S for one trajectory (host floats).

    Attributes
    ----------
    axes : tuple of str
        The state axes, e.g. ``("batch", "time", "hidden")``.
    K, PPT, NTK : dict of str to float
        ``"global"`` and one entry per axis name: the effective rank of the operator (of its
        partial trace keeping that axis).
    errors : dict of str to dict of str to float
        ``errors[op][key]``: the standard error of each value (0 when exact, NaN where the
        estimate has no error bar); ±2 errors cover the truth at least 90% of the time
        (``benchmarks/bench_calibration.py``).
    """

    axes: tuple[str, ...]
    K: dict[str, float]
    PPT: dict[str, float]
    NTK: dict[str, float]
    errors: dict[str, dict[str, float]]

    def __getitem__(self, operator: str) -> dict[str, float]:
        """The entry of ``"K"``, ``"PPT"`` or ``"NTK"``."""
        if operator not in _OPERATORS:
            msg = f"EffectiveRanks: expected one of {_OPERATORS}, got {operator!r}"
            raise KeyError(msg)
        return dict(getattr(self, operator))


def _ratio(op: LinearOperator, keep: Any, num_matvecs: int | None, gen: Any) -> tuple[float, float]:
    r = linalg.effective_rank(op, keep, num_matvecs=num_matvecs, rng=gen)
    return float(r), math.nan if r.error is None else float(r.error)


def effective_ranks(
    traj: Trajectory,
    *,
    operators: Sequence[str] = _OPERATORS,
    num_matvecs: int | None = None,
    rng: Any = None,
) -> EffectiveRanks:
    """Effective ranks of K, P Pᵀ and NTK_S = P K Pᵀ, globally and along each axis.

    Parameters
    ----------
    traj : Trajectory
        From ``model.run``.
    operators : sequence of {"K", "PPT", "NTK"}
        Which operators to analyse (the others' entries are left empty).
    num_matvecs : int, optional
        Budget of products per value, as in :func:`kpflow.linalg.effective_rank`.
    rng : int, numpy.random.Generator or None
        Seeds the estimators (SPEC 7).

    Returns
    -------
    EffectiveRanks
        Host floats.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import LeakyRNN
    >>> from kpflow.analysis import effective_ranks
    >>> model = LeakyRNN(1, 3, dt=0.5)
    >>> r = effective_ranks(model.run(model.init(0), np.ones((2, 4, 1))), rng=0)
    >>> sorted(r.NTK), round(r.K["hidden"], 12)
    (['batch', 'global', 'hidden', 'time'], 3.0)
    """
    where = "effective_ranks"
    check_trajectory(traj, where)
    ops = tuple(operators) if not isinstance(operators, str) else (operators,)
    bad = [o for o in ops if o not in _OPERATORS]
    if bad or not ops:
        msg = f"{where}: expected operators to be a non-empty sequence of {_OPERATORS}, got {operators!r}"
        raise ValueError(msg)
    gen = host_rng(rng, where)
    axes = tuple(traj.axis_names)
    values: dict[str, dict[str, float]] = {o: {} for o in _OPERATORS}
    errors: dict[str, dict[str, float]] = {o: {} for o in _OPERATORS}
    for name in ops:
        if name == "K":
            op = parameter_kernel(traj)
        elif name == "NTK":
            op = global_ntk(traj)
        else:
            P = propagator(traj)
            op = P @ P.T
        for key, keep in (("global", None), *((a, i) for i, a in enumerate(axes))):
            values[name][key], errors[name][key] = _ratio(op, keep, num_matvecs, gen)
    return EffectiveRanks(axes, values["K"], values["PPT"], values["NTK"], errors)


@dataclass(frozen=True)
class RanksOverTraining:
    """Effective ranks tracked over checkpoints (host numpy float64 arrays).

    Attributes
    ----------
    steps : numpy.ndarray of shape (n,)
        The checkpoints' steps (their positions when they have no ``step``).
    axes : tuple of str
    K, PPT, NTK : dict of str to numpy.ndarray of shape (n,)
        ``"global"`` and one entry per axis name, one value per checkpoint.
    """

    steps: np.ndarray
    axes: tuple[str, ...]
    K: dict[str, np.ndarray]
    PPT: dict[str, np.ndarray]
    NTK: dict[str, np.ndarray]


def effective_ranks_over_training(
    model: Model,
    checkpoints: Sequence[Any],
    x: Any,
    *,
    h0: Any = None,
    operators: Sequence[str] = _OPERATORS,
    num_matvecs: int | None = None,
    rng: Any = None,
) -> RanksOverTraining:
    """:func:`effective_ranks` at every checkpoint, on the same inputs ``x``.

    Parameters
    ----------
    model : Model
    checkpoints : sequence of Checkpoint or of parameter dicts
        :class:`kpflow.training.Checkpoint` (its ``.params`` and ``.step`` are used), or plain
        parameter dicts (steps 0, 1, ...).
    x : array
        The inputs the model is run on at every checkpoint.
    h0, operators, num_matvecs, rng
        As in ``model.run`` and :func:`effective_ranks`.

    Returns
    -------
    RanksOverTraining

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN, Linear
    >>> from kpflow.training import SGD, train
    >>> from kpflow.analysis import effective_ranks_over_training
    >>> model, readout = RNN(1, 3), Linear(3, 1)
    >>> x = np.ones((2, 4, 1))
    >>> r = train(model, readout, model.init(0), readout.init(1), (x, np.zeros((2, 4, 1)), None),
    ...           steps=2, optimizer=SGD(0.1), checkpoints=[0, 2])
    >>> ranks = effective_ranks_over_training(model, r.checkpoints, x, operators=["K"])
    >>> ranks.steps.tolist(), ranks.K["time"].shape
    ([0, 2], (2,))
    """
    where = "effective_ranks_over_training"
    if not isinstance(model, Model):
        msg = f"{where}: expected model to be a kpflow Model, got {type(model).__name__}"
        raise TypeError(msg)
    if isinstance(checkpoints, dict) or not isinstance(checkpoints, Sequence) or not checkpoints:
        msg = f"{where}: expected checkpoints to be a non-empty sequence of Checkpoint or parameter dicts"
        raise ValueError(msg)
    gen = host_rng(rng, where)
    steps, runs = [], []
    for i, c in enumerate(checkpoints):
        params = c if isinstance(c, dict) else getattr(c, "params", None)
        if not isinstance(params, dict):
            got = type(c).__name__
            msg = f"{where}: expected checkpoints[{i}] to be a Checkpoint or a parameter dict, got {got}"
            raise TypeError(msg)
        steps.append(int(getattr(c, "step", i)) if not isinstance(c, dict) else i)
        traj = model.run(params, x, h0)
        runs.append(effective_ranks(traj, operators=operators, num_matvecs=num_matvecs, rng=gen))
    axes = runs[0].axes
    keys = ("global", *axes)

    def series(op: str) -> dict[str, np.ndarray]:
        if not getattr(runs[0], op):
            return {}
        return {key: np.asarray([getattr(r, op)[key] for r in runs], dtype=np.float64) for key in keys}

    return RanksOverTraining(np.asarray(steps), axes, series("K"), series("PPT"), series("NTK"))
