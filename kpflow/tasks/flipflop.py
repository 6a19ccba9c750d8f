"""The n-bit flip-flop (Sussillo & Barak 2013)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpflow.tasks._base import Task, boolean, positive_int, real, set_field

__all__ = ["FlipFlop"]


@dataclass(frozen=True, kw_only=True)
class FlipFlop(Task):
    """The n-bit flip-flop: remember the sign of the last pulse on each channel.

    Each of the ``n_bits`` input channels independently receives, at each step, a pulse
    with probability ``p_pulse``, of sign +1 or −1 with equal probability (0 otherwise).
    Output channel i holds the sign of channel i's most recent pulse, that of step t
    included, and 0 before its first pulse.

    The *anti* variant appends one input channel holding a sign s = ±1 (drawn per trial,
    constant over it) and multiplies every target by s.  ``noise`` adds independent
    Gaussian noise of that standard deviation to every input entry (the targets are the
    noiseless ones).  :meth:`research` gives the research code's settings.

    Parameters
    ----------
    n_bits : int
        Number of channels (inputs = outputs = ``n_bits``); default 3.
    p_pulse : float
        Pulse probability per channel and step, in [0, 1]; default 0.05.
    T : int
        Number of steps; default 100.
    noise : float
        Standard deviation of the input noise (default 0).
    anti : bool
        The anti variant: an extra ±1 input channel that flips the targets' sign (default
        False).

    Notes
    -----
    ``sample`` gives inputs of shape ``(B, T, n_bits)`` (``n_bits + 1`` with ``anti``),
    targets ``(B, T, n_bits)`` and a mask of ones, shape ``(B, T)``.

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
    noise: float = 0.0
    anti: bool = False

    def __post_init__(self) -> None:
        where = "FlipFlop"
        set_field(self, "n_bits", positive_int(self.n_bits, "n_bits", where))
        set_field(self, "p_pulse", real(self.p_pulse, "p_pulse", where, low=0.0, high=1.0))
        set_field(self, "T", positive_int(self.T, "T", where))
        set_field(self, "noise", real(self.noise, "noise", where, low=0.0))
        set_field(self, "anti", boolean(self.anti, "anti", where))

    @classmethod
    def research(cls, *, anti: bool = False, noise: bool = True) -> FlipFlop:
        """The research code's flip-flop (meeree/kpflow): T = 90, input noise σ = 0.03·√2.

        Three channels with pulses of probability 1/20 per step (the research code draws a
        Poisson number of pulses with that mean rate per channel).  ``noise=False`` gives
        the noiseless inputs the research code analyses.

        Examples
        --------
        >>> from kpflow.tasks import FlipFlop
        >>> task = FlipFlop.research(anti=True)
        >>> task.T, round(task.noise, 6), task.n_in
        (90, 0.042426, 4)
        """
        return cls(n_bits=3, p_pulse=0.05, T=90, noise=0.03 * 2**0.5 if noise else 0.0, anti=anti)

    @property
    def n_in(self) -> int:
        """``n_bits`` (+1 with ``anti``)."""
        return self.n_bits + int(self.anti)

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
        if self.anti:
            sign = 2.0 * gen.integers(0, 2, size=(batch, 1, 1)) - 1.0
            y = y * sign
            x = np.concatenate([x, np.broadcast_to(sign, (batch, self.T, 1))], axis=-1)
        if self.noise > 0:
            x = x + self.noise * gen.standard_normal(x.shape)
        return x, y, np.ones((batch, self.T))
