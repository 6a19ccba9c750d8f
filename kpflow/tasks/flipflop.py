"""The n-bit flip-flop (Sussillo & Barak 2013)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpflow.tasks._base import Task, positive_int, real, set_field

__all__ = ["FlipFlop"]


@dataclass(frozen=True, kw_only=True)
class FlipFlop(Task):
    """The n-bit flip-flop: remember the sign of the last pulse on each channel.

    Each of the ``n_bits`` input channels independently receives, at each step, a pulse
    with probability ``p_pulse``, of sign +1 or −1 with equal probability (0 otherwise).
    Output channel i holds the sign of channel i's most recent pulse, that of step t
    included, and 0 before its first pulse.

    Parameters
    ----------
    n_bits : int
        Number of channels (inputs = outputs = ``n_bits``); default 3.
    p_pulse : float
        Pulse probability per channel and step, in [0, 1]; default 0.05.
    T : int
        Number of steps; default 100.

    Notes
    -----
    ``sample`` gives inputs and targets of shape ``(B, T, n_bits)`` and a mask of ones,
    shape ``(B, T)``.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.tasks import FlipFlop
    >>> task = FlipFlop(n_bits=3, p_pulse=0.05, T=100)
    >>> x, y, mask = task.sample(16, 0)
    >>> x.shape, y.shape, mask.shape, x.dtype
    ((16, 100, 3), (16, 100, 3), (16, 100), dtype('float64'))
    >>> sorted(np.unique(x).tolist()), sorted(np.unique(y).tolist())
    ([-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0])
    """

    n_bits: int = 3
    p_pulse: float = 0.05
    T: int = 100

    def __post_init__(self) -> None:
        where = "FlipFlop"
        set_field(self, "n_bits", positive_int(self.n_bits, "n_bits", where))
        set_field(self, "p_pulse", real(self.p_pulse, "p_pulse", where, low=0.0, high=1.0))
        set_field(self, "T", positive_int(self.T, "T", where))

    @property
    def n_in(self) -> int:
        """``n_bits``."""
        return self.n_bits

    @property
    def n_out(self) -> int:
        """``n_bits``."""
        return self.n_bits

    def _draw(self, batch: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shape = (batch, self.T, self.n_bits)
        pulse = gen.random(shape) < self.p_pulse
        sign = 2.0 * gen.integers(0, 2, size=shape) - 1.0
        x = np.where(pulse, sign, 0.0)
        # index of the last pulse at or before t (−1 before the first), carried forward in time
        steps = np.arange(self.T)[None, :, None]
        last = np.maximum.accumulate(np.where(pulse, steps, -1), axis=1)
        held = np.take_along_axis(x, np.maximum(last, 0), axis=1)
        y = np.where(last >= 0, held, 0.0)
        return x, y, np.ones((batch, self.T))
