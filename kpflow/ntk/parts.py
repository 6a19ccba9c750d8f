"""Parts of the per-site state: the ``part=`` argument of the NTKs and the state Jacobian.

A model names column ranges of its per-site state in ``model.state_parts`` (the LSTM's
[h; c]: ``{"h": (0, H), "c": (H, 2H)}``; one part ``"h"``, the whole state, elsewhere).
"""

from __future__ import annotations

from typing import Any

from kpflow.models.base import Trajectory

__all__ = ["part_columns"]


def part_columns(traj: Trajectory, part: Any, where: str) -> tuple[int, int] | None:
    """The per-site state columns of ``part`` of ``traj``'s state, None for the whole state.

    ``"all"`` is the whole state; any other name must be one of ``traj.model.state_parts``.

    Raises
    ------
    ValueError
        For a part the model does not name.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import LSTM, RNN
    >>> from kpflow.ntk.parts import part_columns
    >>> traj = LSTM(1, 2).run(LSTM(1, 2).init(0), np.ones((1, 3, 1)))
    >>> part_columns(traj, "c", "f"), part_columns(traj, "all", "f")
    ((2, 4), None)
    >>> rnn = RNN(1, 2).run(RNN(1, 2).init(0), np.ones((1, 3, 1)))
    >>> part_columns(rnn, "h", "f") is None                    # one part: the whole state
    True
    """
    parts = dict(traj.model.state_parts)
    if part != "all" and (not isinstance(part, str) or part not in parts):
        known = ("all", *parts)
        if part == "c":
            msg = (
                f"{where}: part='c' needs an LSTM-like state with a part 'c' ([h; c]); "
                f"{type(traj.model).__name__} has no cell state, its parts are {known}"
            )
        else:
            msg = f"{where}: expected part to be one of {known}, got {part!r}"
        raise ValueError(msg)
    if part == "all":
        return None
    lo, hi = (int(c) for c in parts[part])
    return None if (lo, hi) == (0, traj.site_state_size) else (lo, hi)
