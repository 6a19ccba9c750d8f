"""Plots of kpflow's results (matplotlib, the optional ``plot`` extra: ``pip install kpflow[plot]``).

Importing this module imports nothing; each function imports matplotlib when called and
raises an ImportError that says how to install it.  Every function draws on the given
matplotlib ``ax`` (a new figure when None) and returns the axes.

- :func:`plot_losses`: a training loss curve (log scale);
- :func:`plot_spectra`: top eigenvalues of several operators or checkpoints (log scale);
- :func:`plot_effective_ranks`: effective ranks globally and along each axis, side by side;
- :func:`plot_over_training`: any scalar (an effective rank, an alignment) over checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_effective_ranks", "plot_losses", "plot_over_training", "plot_spectra"]


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
        import numpy as np

        out = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=float).ravel()
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
    steps: Sequence[int], values: Mapping[str, Any], *, ax: Any = None, ylabel: str = ""
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
