"""The layout of a trajectory's state: its axes, its blocks along time or depth, its parts.

A :class:`Layout` is data: every trajectory's geometry (``site_shape``, ``n_steps``,
``block``, ``join``, ``axis_names``, ``site_state_size``, ``feature_columns``) is read from
it, and :func:`kpflow.ntk.propagator` picks how it applies P = (I − L)⁻¹ from its ``kind``:

============  ==========================================  ===============================
kind          blocks                                      P
============  ==========================================  ===============================
recurrent     the entries of one stacked axis (time for   a recursion over the steps
              a cell, the residual-stream states of a     (one compiled scan where the
              transformer), all of one shape              trajectory has a step kernel)
depth         column ranges of the last axis, of          a recursion over the layers
              different widths (an MLP's layers)
single        one block, the whole state (L = 0)          the identity
solved        one block; ∂F/∂z is not triangular         a linear solve (``traj.solve``)
============  ==========================================  ===============================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kpflow._array import prod

__all__ = ["KINDS", "Layout", "check_independent_rows"]

#: The block kinds of a layout (see the module docstring).
KINDS = ("recurrent", "depth", "single", "solved")


def check_independent_rows(value: Any, where: str) -> bool:
    """``value`` if it is True or False (a model's ``independent_rows`` declaration), else a TypeError.

    Examples
    --------
    >>> from kpflow.models.layout import check_independent_rows
    >>> check_independent_rows(True, "Recurrent")
    True
    >>> check_independent_rows(1, "Recurrent")
    Traceback (most recent call last):
    ...
    TypeError: Recurrent: expected independent_rows to be True or False, got 1
    """
    if not isinstance(value, bool):
        msg = f"{where}: expected independent_rows to be True or False, got {value!r}"
        raise TypeError(msg)
    return value


@dataclass(frozen=True)
class Layout:
    """The geometry of a state z: axes, sites, blocks and parts.

    Parameters
    ----------
    shape : tuple of int
        ``state_shape``, the shape of z.
    axes : tuple of str
        A name per axis of ``shape``, e.g. ``("batch", "time", "hidden")``.
    kind : {"recurrent", "depth", "single", "solved"}
        How the blocks chain (see :mod:`kpflow.models.layout`).
    site_axes : int
        The number of leading axes that index the sites: z reads as ``(m, site_state_size)``
        with m = prod(shape[:site_axes]).
    widths : tuple of int, optional
        The blocks' widths along the last axis for ``kind="depth"`` (they sum to it); unused
        by the other kinds.
    parts : mapping of str to (start, stop), optional
        Named column ranges of the per-site state (an LSTM's ``{"h": (0, H), "c": (H, 2H)}``);
        default one part, named after the last axis, covering every column.
    features : (start, stop), optional
        The per-site columns a readout reads; default every column.
    independent_rows : bool, optional
        The model declares that axis 0 indexes independent samples: no step, no weight
        site's D_w and no readout reads one row's state into another's, so P, every D_w and
        the readout are block-diagonal over axis 0 (each row's states depend on its own
        input only; the G_w = A_w A_wᵀ of K still couple rows).  Default False, the answer
        for a model that does not say (a user's step may mix rows, as a batch norm does).
        :func:`~kpflow.ntk.output_gram.output_ntk_gram` probes all rows at once when it is
        True.

    Attributes
    ----------
    block_axis : int or None
        The axis of ``shape`` the blocks run along (None for one block).
    n_steps : int
        The number of blocks.
    site_shape : tuple of int
    m, site_state_size : int

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models.layout import Layout
    >>> lay = Layout((2, 5, 3), ("batch", "time", "hidden"), "recurrent", site_axes=2)
    >>> lay.n_steps, lay.site_shape, lay.site_state_size, dict(lay.parts)
    (5, (2, 5), 3, {'hidden': (0, 3)})
    >>> V = np.zeros((4, 2, 5, 3))
    >>> lay.block(np, V, 1).shape, lay.join(np, [lay.block(np, V, t) for t in range(5)]).shape
    ((4, 2, 3), (4, 2, 5, 3))
    >>> mlp = Layout((2, 7), ("batch", "units"), "depth", site_axes=1, widths=(4, 3))
    >>> mlp.blocks, mlp.block(np, np.zeros((1, 2, 7)), 1).shape
    (((0, 4), (4, 7)), (1, 2, 3))
    >>> one = Layout((2, 7), ("batch", "units"), "single", site_axes=1, independent_rows=True)
    >>> lay.independent_rows, one.independent_rows
    (False, True)
    """

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    kind: str
    site_axes: int
    widths: tuple[int, ...] = ()
    parts: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    features: tuple[int, int] | None = None
    independent_rows: bool = False

    def __post_init__(self) -> None:
        where = "Layout"
        check_independent_rows(self.independent_rows, where)
        shape = tuple(int(n) for n in self.shape)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "axes", tuple(str(a) for a in self.axes))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.kind not in KINDS:
            msg = f"{where}: expected kind to be one of {KINDS}, got {self.kind!r}"
            raise ValueError(msg)
        if len(self.axes) != len(shape):
            msg = f"{where}: expected one axis name per axis of shape {shape}, got {self.axes}"
            raise ValueError(msg)
        if not 1 <= self.site_axes < len(shape):
            msg = f"{where}: expected site_axes in [1, {len(shape) - 1}] for shape {shape}, got "
            msg += str(self.site_axes)
            raise ValueError(msg)
        if self.kind == "depth":
            if not self.widths or sum(self.widths) != shape[-1] or self.site_axes != len(shape) - 1:
                msg = (
                    f"{where}: a depth layout needs widths summing to the last axis {shape[-1]} "
                    f"and site_axes={len(shape) - 1}, got widths={self.widths}, site_axes={self.site_axes}"
                )
                raise ValueError(msg)
        elif self.kind == "recurrent" and self.site_axes < 2:
            msg = f"{where}: a recurrent layout's steps (axis 1) are sites, so site_axes >= 2, got "
            msg += str(self.site_axes)
            raise ValueError(msg)
        size = self.site_state_size
        parts = dict(self.parts) or {self.axes[-1]: (0, size)}
        for name, (lo, hi) in parts.items():
            if not 0 <= lo < hi <= size:
                msg = f"{where}: part {name!r} = ({lo}, {hi}) is not a column range of the {size} per-site "
                msg += "columns"
                raise ValueError(msg)
        object.__setattr__(self, "parts", {str(k): (int(lo), int(hi)) for k, (lo, hi) in parts.items()})
        features = (0, size) if self.features is None else (int(self.features[0]), int(self.features[1]))
        if not 0 <= features[0] < features[1] <= size:
            msg = f"{where}: features {features} is not a column range of the {size} per-site columns"
            raise ValueError(msg)
        object.__setattr__(self, "features", features)

    # sites ------------------------------------------------------------------------------------
    @property
    def site_shape(self) -> tuple[int, ...]:
        """The site grid, the first ``site_axes`` axes of ``shape``."""
        return self.shape[: self.site_axes]

    @property
    def m(self) -> int:
        """The number of sites."""
        return prod(self.site_shape)

    @property
    def site_state_size(self) -> int:
        """The length of the per-site state vector."""
        return prod(self.shape[self.site_axes :])

    # blocks -----------------------------------------------------------------------------------
    @property
    def block_axis(self) -> int | None:
        """The axis of ``shape`` the blocks run along: 1 (recurrent), the last (depth), or None."""
        if self.kind == "recurrent":
            return 1
        if self.kind == "depth":
            return len(self.shape) - 1
        return None

    @property
    def blocks(self) -> tuple[tuple[int, int], ...]:
        """Each block's (start, stop) along ``block_axis`` (the whole state for one block)."""
        if self.kind == "recurrent":
            return tuple((t, t + 1) for t in range(self.shape[1]))
        if self.kind == "depth":
            stops = [sum(self.widths[: l + 1]) for l in range(len(self.widths))]
            return tuple(zip([0, *stops[:-1]], stops, strict=True))
        return ((0, prod(self.shape)),)

    @property
    def n_steps(self) -> int:
        """The number of blocks (time steps, layers; 1 for a single or solved state)."""
        if self.kind == "recurrent":
            return self.shape[1]
        if self.kind == "depth":
            return len(self.widths)
        return 1

    def block(self, xp: Any, V: Any, t: int) -> Any:
        """Block ``t`` of a probe block ``V`` of shape ``(k, *shape)``.

        Recurrent: ``V[:, :, t]`` (the step axis dropped); depth: layer t's columns; one
        block: ``V`` itself.
        """
        if self.kind == "recurrent":
            return V[:, :, t, ...]
        if self.kind == "depth":
            lo, hi = self.blocks[t]
            return V[..., lo:hi]
        return V

    def join(self, xp: Any, blocks: list[Any]) -> Any:
        """Glue ``n_steps`` blocks back into ``(k, *shape)`` (the inverse of :meth:`block`)."""
        if self.kind == "recurrent":
            return xp.stack(blocks, axis=2)
        if len(blocks) == 1:
            return blocks[0]
        return xp.concat(blocks, axis=-1)
