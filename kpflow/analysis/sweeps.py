"""Sweeps: how the NTK at initialisation depends on the recurrent scale g, and how the trained
NTK depends on the dimensionality of a task's inputs or targets.

Both return a :class:`Sweep`: the swept values and one host float64 array per measured
quantity, ready to tabulate or plot (:func:`kpflow.plot.plot_sweep`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Sweep", "dimension_sweep", "g_sweep"]


@dataclass(frozen=True)
class Sweep:
    """Quantities measured at each value of a swept parameter.

    Attributes
    ----------
    name : str
        The swept parameter ("g", "dimension").
    values : numpy.ndarray of shape (n,)
    table : dict of str to numpy.ndarray of shape (n,)
        One host float64 array per quantity (NaN where a quantity is undefined); an estimated
        quantity ``q`` has its standard error in ``table["q error"]`` (0 where exact).
    """

    name: str
    values: np.ndarray
    table: dict[str, np.ndarray] = field(default_factory=dict)

    def rows(self) -> list[dict[str, float]]:
        """The sweep as one dict per value (``{name: value, quantity: ...}``).

        Examples
        --------
        >>> import numpy as np
        >>> from kpflow.analysis import Sweep
        >>> Sweep("g", np.array([1.0, 2.0]), {"rank": np.array([3.0, 2.0])}).rows()[1]
        {'g': 2.0, 'rank': 2.0}
        """
        return [
            {self.name: float(v), **{q: float(a[i]) for q, a in self.table.items()}}
            for i, v in enumerate(self.values)
        ]


def _values(values: Any, name: str, where: str, *, positive: bool) -> np.ndarray:
    try:
        out = np.asarray(list(values), dtype=float)
    except (TypeError, ValueError) as err:
        msg = f"{where}: expected {name} to be a sequence of numbers, got {values!r}"
        raise TypeError(msg) from err
    if out.ndim != 1 or out.size == 0 or not np.all(np.isfinite(out)) or (positive and np.any(out <= 0)):
        want = "positive finite numbers" if positive else "finite numbers"
        msg = f"{where}: expected {name} to be a non-empty sequence of {want}, got {values!r}"
        raise ValueError(msg)
    return out


#: The seed of ``g_sweep``'s estimators when ``rng`` is not given: the same call gives the
#: same table.
DEFAULT_SEED = 0


def _ntk_measures(traj: Any, num_matvecs: int | None, rng: Any) -> dict[str, float]:
    """The effective ranks and the misdirection, each with its ``"<name> error"`` column."""
    from kpflow.analysis.alignment import misdirection
    from kpflow.analysis.ranks import effective_ranks

    r = effective_ranks(traj, num_matvecs=num_matvecs, rng=rng)
    out: dict[str, float] = {}
    for name, op, key in (
        ("K", "K", "global"),
        ("PPT", "PPT", "global"),
        ("NTK", "NTK", "global"),
        *((f"NTK {axis}", "NTK", axis) for axis in r.axes),
    ):
        out[name] = r[op][key]
        out[f"{name} error"] = r.errors[op][key]
    m = misdirection(traj, num_matvecs=num_matvecs, rng=rng)
    out["misdirection"] = float(m)
    out["misdirection error"] = math.nan if m.error is None else float(m.error)
    return out


def g_sweep(
    model: Any,
    x: Any,
    gs: Sequence[float],
    *,
    seed: int = 0,
    k: int = 3,
    num_matvecs: int | None = None,
    rng: Any = None,
) -> Sweep:
    """The NTK at initialisation against the recurrent scale g (W_hh entries N(0, g²/H)).

    For each g, the same seed draws the model's parameters with that scale
    (:func:`kpflow.training.init_params`), runs it on ``x``, and measures the effective ranks
    of K, P Pᵀ and NTK_S (global, and NTK_S along each axis), the misdirection (alignment
    of NTK_S with P Pᵀ) and the self-referential bias (the smallest overlap over the sites;
    NaN where it is not defined).  Exact for small state spaces, else randomized estimates
    with ``num_matvecs`` products each.  Every estimated quantity ``q`` has a column
    ``"q error"``: its standard error (0 when exact; ±2 errors cover the truth at least 90%
    of the time, ``benchmarks/bench_calibration.py``; NaN where the method gives none).

    Parameters
    ----------
    model : RecurrentModel
        A built-in recurrent model with ``weight_hh``.
    x : array
        Inputs (B, T, n_in); their namespace, dtype and device are the run's.
    gs : sequence of float
        Positive scales.
    seed : int
        Seed of the parameters (the same for every g).
    k : int
        Modes of the self-referential-bias measure.
    num_matvecs : int, optional
        Budget of products per estimated quantity.
    rng : int, numpy.random.Generator or None
        Seeds the estimators (SPEC 7).  ``None`` means the fixed seed ``DEFAULT_SEED`` (0), so
        that a sweep is reproducible; pass a ``Generator`` for fresh draws.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.analysis import g_sweep
    >>> from kpflow.models import RNN
    >>> s = g_sweep(RNN(2, 4), np.random.default_rng(0).standard_normal((2, 5, 2)), [0.5, 2.0])
    >>> sorted(s.table)[:4], s.values.tolist()
    (['K', 'K error', 'NTK', 'NTK batch'], [0.5, 2.0])
    """
    from kpflow._array import host_rng
    from kpflow.analysis.sites import self_referential_bias
    from kpflow.training import init_params

    where = "g_sweep"
    values = _values(gs, "gs", where, positive=True)
    gen = host_rng(DEFAULT_SEED if rng is None else rng, where)
    columns: dict[str, list[float]] = {}
    for g in values:
        traj = model.run(init_params(model, seed, g=float(g), like=x), x)
        row = _ntk_measures(traj, num_matvecs, gen)
        try:
            overlaps = self_referential_bias(traj, min(k, traj.m)).overlaps
            row["self-referential bias"] = min(float(v) for v in overlaps.values())
        except ValueError:
            row["self-referential bias"] = math.nan
        for q, v in row.items():
            columns.setdefault(q, []).append(float(v))
    return Sweep("g", values, {q: np.asarray(v) for q, v in columns.items()})


def dimension_sweep(
    task_for: Callable[[int], Any],
    model_for: Callable[[int, int], Any],
    dims: Sequence[int],
    *,
    batch: int,
    steps: int,
    lr: float = 0.01,
    seed: int = 0,
    num_matvecs: int | None = None,
    like: Any = None,
) -> Sweep:
    """The trained NTK against a task's dimensionality (inputs, targets or a latent size).

    For each d: ``task = task_for(d)`` (e.g. ``lambda d: FlipFlop(n_bits=d)`` or
    ``lambda d: LowRankForecast(n_latent=d)``), ``model = model_for(task.n_in, task.n_out)``
    with a linear readout of its features, trained with Adam (kpflow's BPTT) for ``steps`` on
    ``batch`` trials from ``seed``; then the final loss and the effective ranks of K, P Pᵀ
    and NTK_S (global and along each axis) and the misdirection of the trained network, each
    with its ``"q error"`` column as in :func:`g_sweep`.  The estimators draw from the same
    generator (seeded by ``seed``), so a sweep is reproducible.

    Examples
    --------
    >>> from kpflow.analysis import dimension_sweep
    >>> from kpflow.models import GRU
    >>> from kpflow.tasks import FlipFlop
    >>> s = dimension_sweep(lambda d: FlipFlop(n_bits=d, T=6), lambda n_in, n_out: GRU(n_in, 4),
    ...                     [1, 2], batch=3, steps=2)
    >>> s.name, len(s.table["final loss"]), s.table["K error"].tolist()
    ('dimension', 2, [0.0, 0.0])
    """
    from kpflow.models.registry import readout_for
    from kpflow.training import Adam, init_params, loss_and_gradients, train

    where = "dimension_sweep"
    values = _values(dims, "dims", where, positive=True)
    if not np.all(values == np.round(values)):
        msg = f"{where}: expected dims to be positive ints, got {dims!r}"
        raise ValueError(msg)
    like = np.zeros(1) if like is None else like
    columns: dict[str, list[float]] = {}
    for d in values.astype(int):
        rng = np.random.default_rng(seed)
        task = task_for(int(d))
        data = task.sample(batch, rng, like=like)
        model = model_for(task.n_in, task.n_out)
        readout = readout_for(model, task.n_out)
        params, rp = init_params(model, rng, like=like), readout.init(rng, like=like)
        result = train(model, readout, params, rp, data, steps=steps, optimizer=Adam(lr), method="kpflow")
        final = float(loss_and_gradients(model, readout, result.params, result.readout_params, *data).loss)
        row = {"final loss": final} | _ntk_measures(model.run(result.params, data.inputs), num_matvecs, rng)
        for q, v in row.items():
            columns.setdefault(q, []).append(float(v))
    return Sweep("dimension", values, {q: np.asarray(v) for q, v in columns.items()})
