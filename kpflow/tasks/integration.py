"""Context-dependent integration (Mante, Sussillo, Shenoy & Newsome 2013)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpflow.tasks._base import Task, nonnegative_int, positive_int, real, set_field

__all__ = ["ContextIntegration"]


@dataclass(frozen=True, kw_only=True)
class ContextIntegration(Task):
    """Integrate the cued one of two noisy evidence channels and report the sign of its mean.

    A trial has a fixation period (``T_fix`` steps), a stimulus period (``T_stim``), a delay
    (``T_delay``) and a response period (``T_resp``).  Each of the two sensory channels
    ("motion" and "colour") carries a coherence c_k = ±m (sign and magnitude m drawn
    uniformly, m from ``coherences``) plus Gaussian noise of standard deviation ``noise``
    at every stimulus step, and 0 outside the stimulus period.  One of two context cues
    (one-hot, uniform) is on for the whole trial and says which channel counts.

    The target is 0 outside the response period and, in it, the sign of the mean of the
    cued channel's input over the stimulus period (what a perfect integrator of the noisy
    input reports; it equals sign(c_cued) when the noise is small).

    Parameters
    ----------
    T_fix, T_stim, T_delay, T_resp : int
        Period lengths (defaults 0, 50, 0, 10; ``T_stim`` and ``T_resp`` positive).
    coherences : tuple of float
        The positive coherence magnitudes (default (0.05, 0.15, 0.5)).  A list is stored
        as a tuple.
    noise : float
        Standard deviation of the evidence noise per step (default 1.0).

    Notes
    -----
    Inputs ``(B, T, 4)``: [channel 1, channel 2, context 1, context 2]; targets
    ``(B, T, 1)``; mask of ones ``(B, T)``; ``T = T_fix + T_stim + T_delay + T_resp``.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.tasks import ContextIntegration
    >>> task = ContextIntegration(T_stim=20, T_resp=5, noise=0.01)
    >>> x, y, mask = task.sample(8, 0)
    >>> x.shape, y.shape, mask.shape
    ((8, 25, 4), (8, 25, 1), (8, 25))
    >>> cued = np.where(x[:, 0, 2] == 1.0, x[:, 0, 0], x[:, 0, 1])
    >>> bool((y[:, -1, 0] == np.sign(cued)).all())
    True
    """

    T_fix: int = 0
    T_stim: int = 50
    T_delay: int = 0
    T_resp: int = 10
    coherences: tuple[float, ...] = (0.05, 0.15, 0.5)
    noise: float = 1.0

    def __post_init__(self) -> None:
        where = "ContextIntegration"
        for name in ("T_fix", "T_delay"):
            set_field(self, name, nonnegative_int(getattr(self, name), name, where))
        for name in ("T_stim", "T_resp"):
            set_field(self, name, positive_int(getattr(self, name), name, where))
        coh = self.coherences
        if isinstance(coh, str) or not isinstance(coh, tuple | list) or not coh:
            msg = f"{where}: expected coherences to be a non-empty tuple of positive floats, got {coh!r}"
            raise TypeError(msg)
        values = tuple(real(c, "every coherence", where, low=0.0, open_low=True) for c in coh)
        set_field(self, "coherences", values)
        set_field(self, "noise", real(self.noise, "noise", where, low=0.0))

    @property
    def T(self) -> int:
        """The trial length ``T_fix + T_stim + T_delay + T_resp``."""
        return self.T_fix + self.T_stim + self.T_delay + self.T_resp

    @property
    def n_in(self) -> int:
        """4: two evidence channels and two context cues."""
        return 4

    @property
    def n_out(self) -> int:
        """1: the decision."""
        return 1

    def _draw(self, batch: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        T = self.T
        t = np.arange(T)
        stim = ((t >= self.T_fix) & (t < self.T_fix + self.T_stim)).astype(np.float64)
        respond = (t >= T - self.T_resp).astype(np.float64)

        magnitude = np.asarray(self.coherences)[gen.integers(0, len(self.coherences), size=(batch, 2))]
        coherence = magnitude * (2.0 * gen.integers(0, 2, size=(batch, 2)) - 1.0)  # (B, 2)
        context = gen.integers(0, 2, size=batch)
        evidence = coherence[:, None, :] + self.noise * gen.standard_normal((batch, T, 2))
        evidence = evidence * stim[None, :, None]
        cues = np.broadcast_to(np.eye(2)[context][:, None, :], (batch, T, 2))
        x = np.concatenate([evidence, cues], axis=-1)

        cued = np.take_along_axis(evidence, context[:, None, None], axis=2)[..., 0]  # (B, T)
        decision = np.sign(cued.sum(axis=1) / self.T_stim)  # sign of the mean over the stimulus
        y = (decision[:, None] * respond[None, :])[..., None]
        return x, y, np.ones((batch, T))
