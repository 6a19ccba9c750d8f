"""A two-class task for feed-forward networks: inside or outside a disk."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kpflow.tasks._base import Task, boolean, real, set_field

__all__ = ["Disk"]


@dataclass(frozen=True, kw_only=True)
class Disk(Task):
    """Points uniform in the square [−h, h]², labelled by whether they lie inside a disk.

    The label is +1 when ‖x‖ < ``radius`` (inside) and −1 otherwise.  The default radius
    √(2/π) (for h = 1) makes the disk half of the square, so the classes are balanced.

    Parameters
    ----------
    radius : float
        The disk's radius, positive (default √(2/π) ≈ 0.798).
    half_width : float
        h, half the square's side, positive (default 1.0).
    one_hot : bool
        Give one-hot targets [inside, outside] of shape ``(B, 2)`` instead of ±1 of shape
        ``(B, 1)`` (default False).

    Notes
    -----
    ``sample`` gives inputs ``(B, 2)``, targets ``(B, 1)`` (or ``(B, 2)`` one-hot) and a
    mask of ones ``(B,)`` (every point counts; it is there so that every task returns the
    same :class:`~kpflow.tasks.TaskBatch`).  The shapes fit :class:`kpflow.models.MLP`
    with ``widths = (2, …, n_out)``.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.tasks import Disk
    >>> x, y, mask = Disk().sample(1000, 0)
    >>> x.shape, y.shape, mask.shape
    ((1000, 2), (1000, 1), (1000,))
    >>> bool((y[:, 0] == np.where(np.hypot(x[:, 0], x[:, 1]) < Disk().radius, 1.0, -1.0)).all())
    True
    >>> Disk(one_hot=True).sample(3, 0).targets.sum(axis=1).tolist()
    [1.0, 1.0, 1.0]
    """

    radius: float = math.sqrt(2.0 / math.pi)
    half_width: float = 1.0
    one_hot: bool = False

    def __post_init__(self) -> None:
        where = "Disk"
        set_field(self, "radius", real(self.radius, "radius", where, low=0.0, open_low=True))
        set_field(self, "half_width", real(self.half_width, "half_width", where, low=0.0, open_low=True))
        set_field(self, "one_hot", boolean(self.one_hot, "one_hot", where))

    @property
    def n_in(self) -> int:
        """2: the point's coordinates."""
        return 2

    @property
    def n_out(self) -> int:
        """1 (±1 labels) or 2 (one-hot)."""
        return 2 if self.one_hot else 1

    def _draw(self, batch: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = gen.uniform(-self.half_width, self.half_width, size=(batch, 2))
        inside = np.hypot(x[:, 0], x[:, 1]) < self.radius
        if self.one_hot:
            y = np.stack([inside, ~inside], axis=1).astype(np.float64)
        else:
            y = np.where(inside, 1.0, -1.0)[:, None]
        return x, y, np.ones(batch)
