"""Plots of kpflow's results (matplotlib, the optional ``plot`` extra: ``pip install kpflow[plot]``).

Importing this module imports nothing; each function imports matplotlib when called and
raises an ImportError that says how to install it.  Every function draws on the given
matplotlib ``ax`` (a new figure when None) and returns the axes.

- :func:`plot_losses`: a training loss curve (log scale);
- :func:`plot_spectra`: top eigenvalues of several operators or checkpoints (log scale);
- :func:`plot_effective_ranks`: effective ranks globally and along each axis, side by side;
- :func:`plot_over_training`: any scalar (an effective rank, an alignment) over checkpoints;
- :func:`plot_mode_profiles`: the time profile of each NTK mode (``analysis.ntk_modes``);
- :func:`plot_learnability`: the fraction of the task error in each top NTK mode;
- :func:`plot_sweep`: scalars against a swept parameter (e.g. the initial scale g).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kpflow._array import to_host

__all__ = [
    "plot_effective_ranks",
    "plot_learnability",
    "plot_losses",
    "plot_mode_profiles",
    "plot_over_training",
    "plot_spectra",
    "plot_sweep",
]


def _axes(ax: Any, where: str) -> Any:
    if ax is not None:
        return ax
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        msg = f"{where}: plotting needs matplotlib; install it with pip install 'kpflow[plot]'"
        raise ImportError(msg) from err
    _, ax = plt.subplots(figsize=(5, 3.5))
    return ax


def _floats(values: Any, name: str, where: str) -> list[float]:
    try:
        out = to_host(values).ravel()
    except (TypeError, ValueError) as err:
        msg = f"{where}: expected {name} to be a sequence of numbers, got {type(values).__name__}"
        raise TypeError(msg) from err
    return [float(v) for v in out]


def plot_losses(losses: Any, *, ax: Any = None, label: str | None = None) -> Any:
    """The loss per training step, on a log scale.

    Examples
    --------
    >>> from kpflow.plot import plot_losses
    >>> ax = plot_losses([1.0, 0.5, 0.2], label="GRU")
    >>> ax.get_yscale(), ax.get_xlabel()
    ('log', 'step')
    """
    ax = _axes(ax, "plot_losses")
    values = _floats(losses, "losses", "plot_losses")
    ax.plot(range(len(values)), values, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if label is not None:
        ax.legend()
    return ax


def plot_spectra(spectra: Mapping[str, Any], *, ax: Any = None) -> Any:
    """Top eigenvalues (descending) of each labelled operator, against their index, log scale.

    Examples
    --------
    >>> from kpflow.plot import plot_spectra
    >>> ax = plot_spectra({"init": [3.0, 1.0, 0.5], "trained": [5.0, 0.8, 0.1]})
    >>> [t.get_text() for t in ax.get_legend().get_texts()]
    ['init', 'trained']
    """
    if not isinstance(spectra, Mapping) or not spectra:
        msg = (
            f"plot_spectra: expected spectra to be a non-empty dict of label -> eigenvalues, got {spectra!r}"
        )
        raise TypeError(msg)
    ax = _axes(ax, "plot_spectra")
    for label, values in spectra.items():
        v = _floats(values, f"spectra[{label!r}]", "plot_spectra")
        ax.plot(range(1, len(v) + 1), v, marker="o", label=str(label))
    ax.set_yscale("log")
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    ax.legend()
    return ax


def plot_effective_ranks(ranks: Mapping[str, Mapping[str, float]], *, ax: Any = None) -> Any:
    """Grouped bars: for each label (e.g. init, trained), its effective rank per axis.

    ``ranks`` maps a label to ``{axis name or "global": value}``.

    Examples
    --------
    >>> from kpflow.plot import plot_effective_ranks
    >>> ranks = {"init": {"global": 9.0, "time": 3.0}, "trained": {"global": 4.0, "time": 2.0}}
    >>> ax = plot_effective_ranks(ranks)
    >>> [t.get_text() for t in ax.get_xticklabels()]
    ['global', 'time']
    """
    if not isinstance(ranks, Mapping) or not ranks:
        msg = f"plot_effective_ranks: expected ranks to be a dict of label -> {{axis: value}}, got {ranks!r}"
        raise TypeError(msg)
    ax = _axes(ax, "plot_effective_ranks")
    axes_names = list(next(iter(ranks.values())))
    width = 0.8 / len(ranks)
    for i, (label, entry) in enumerate(ranks.items()):
        xs = [j + i * width for j in range(len(axes_names))]
        ax.bar(xs, [float(entry[a]) for a in axes_names], width=width, label=str(label))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(axes_names))], axes_names)
    ax.set_ylabel("effective rank")
    ax.legend()
    return ax


def plot_over_training(
    steps: Sequence[float], values: Mapping[str, Any], *, ax: Any = None, ylabel: str = ""
) -> Any:
    """Scalars over training checkpoints: ``values`` maps a label to one value per step.

    Examples
    --------
    >>> from kpflow.plot import plot_over_training
    >>> ax = plot_over_training([0, 50, 100], {"NTK_S": [9.0, 6.0, 4.0]}, ylabel="effective rank")
    >>> ax.get_ylabel()
    'effective rank'
    """
    ax = _axes(ax, "plot_over_training")
    xs = _floats(steps, "steps", "plot_over_training")
    for label, v in values.items():
        ys = _floats(v, f"values[{label!r}]", "plot_over_training")
        if len(ys) != len(xs):
            msg = f"plot_over_training: expected {len(xs)} values for {label!r} (one per step), got {len(ys)}"
            raise ValueError(msg)
        ax.plot(xs, ys, marker="o", label=str(label))
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.legend()
    return ax


def plot_mode_profiles(modes: Any, *, ax: Any = None, time_axis: int = 1) -> Any:
    """Each mode's energy over time (summed over the other site axes), from :func:`kpflow.analysis.ntk_modes`.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow import analysis
    >>> from kpflow.models import RNN
    >>> from kpflow.plot import plot_mode_profiles
    >>> traj = RNN(2, 3).run(RNN(2, 3).init(0), np.ones((2, 6, 2)))
    >>> ax = plot_mode_profiles(analysis.ntk_modes(traj, 2, rng=0))
    >>> len(ax.get_lines()), ax.get_xlabel()
    (2, 'time step')
    """
    profiles = getattr(modes, "site_profiles", None)
    if profiles is None:
        msg = f"plot_mode_profiles: expected modes from kpflow.analysis.ntk_modes, got {type(modes).__name__}"
        raise TypeError(msg)
    P = to_host(profiles)  # (k, *site_shape)
    if P.ndim < 1 + time_axis + 1:
        msg = f"plot_mode_profiles: the modes have site shape {P.shape[1:]}, with no time axis {time_axis}"
        raise ValueError(msg)
    other = tuple(a + 1 for a in range(P.ndim - 1) if a != time_axis)
    over_time = P.sum(axis=other)  # (k, T)
    ax = _axes(ax, "plot_mode_profiles")
    values = to_host(modes.values)
    for j, row in enumerate(over_time):
        ax.plot(range(len(row)), row, label=f"mode {j + 1} ({values[j]:.3g})")
    ax.set_xlabel("time step")
    ax.set_ylabel("energy")
    ax.legend()
    return ax


def plot_learnability(result: Any, *, ax: Any = None) -> Any:
    """Bars: the fraction of the task error in each top output-NTK mode (``analysis.learnability``).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from kpflow.plot import plot_learnability
    >>> ax = plot_learnability(SimpleNamespace(eigenvalues=[4.0, 1.0], error_fractions=[0.7, 0.1]))
    >>> [round(float(p.get_height()), 2) for p in ax.patches]
    [0.7, 0.1]
    """
    fractions = getattr(result, "error_fractions", None)
    if fractions is None:
        msg = (
            f"plot_learnability: expected a kpflow.analysis.learnability result, got {type(result).__name__}"
        )
        raise TypeError(msg)
    f = to_host(fractions)
    ax = _axes(ax, "plot_learnability")
    ax.bar(range(1, len(f) + 1), f)
    ax.set_xlabel("output-NTK mode (by eigenvalue, descending)")
    ax.set_ylabel("fraction of the error")
    return ax


def plot_sweep(
    values: Sequence[float], series: Mapping[str, Any], *, ax: Any = None, xlabel: str = "g"
) -> Any:
    """Scalars (``series``: label -> one value per swept value) against a swept parameter.

    Examples
    --------
    >>> from kpflow.plot import plot_sweep
    >>> ax = plot_sweep([0.5, 1.0, 2.0], {"NTK_S rank": [7.1, 4.3, 2.0], "misdirection": [0.35, 0.43, 0.9]})
    >>> ax.get_xlabel(), len(ax.get_lines())
    ('g', 2)
    """
    ax = plot_over_training(values, series, ax=_axes(ax, "plot_sweep"))
    ax.set_xlabel(xlabel)
    return ax
