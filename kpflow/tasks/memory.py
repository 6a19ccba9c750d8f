"""The memory and delay tasks of Yang et al. (2019), with a (cos θ, sin θ) stimulus.

A trial has four periods of fixed lengths, in this order: fixation (``T_fix`` steps),
stimulus (``T_stim``), memory (``T_mem``) and response (``T_resp``); T is their sum.

Inputs (``n_in = 3``): [fixation, cos θ, sin θ].

- fixation is 1 in the first three periods and 0 in the response period (the go cue);
- the stimulus (cos θ, sin θ), θ uniform on [0, 2π), is on during the stimulus period.
  In the *memory* tasks it is off during the memory period (it must be remembered); in
  the *delay* tasks it stays on through the memory period until the go cue.  It is off
  during the fixation and response periods in both.

Targets (``n_out = 3``): [fixation, cos φ, sin φ]: fixation is 1 before the response
period and 0 in it; (cos φ, sin φ) is 0 before the response period and, in it, the
stimulus direction φ = θ (*pro*) or the opposite direction φ = θ + π (*anti*), written as
−(cos θ, sin θ) so that an anti target is exactly the negative of the pro one.

Options for the research code's conventions (meeree/kpflow; :meth:`MemoryTask.research`,
:meth:`MultiMemory.research`): ``stim_in_response`` keeps a delay task's stimulus on
through the response period as well; ``angles="even"`` places the B trials' θ evenly on
the circle (θ_k = 2πk/B, for analysis) instead of drawing them uniformly; MultiMemory's
``T_context`` adds a context period before the trial in which alone the cue is on, and
``blocks`` orders the trials in one block per task.

The mask, shape (B, T), is 1 except on the first ``grace`` steps of the response period
(0 there, Yang et al.'s grace period; default 0).  ``noise`` adds independent Gaussian
noise of that standard deviation to every input entry (default 0).

These follow Yang et al. (2019), "Task representations in neural networks trained to
perform many cognitive tasks", with the stimulus as (cos θ, sin θ) instead of a ring of
tuned units and with fixed period lengths, as in Driscoll et al. (2024), "Flexible
multitask computation in recurrent networks utilizes shared dynamical motifs".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kpflow.tasks._base import Task, boolean, nonnegative_int, positive_int, real, set_field

__all__ = ["MEMORY_TASKS", "MemoryTask", "MultiMemory"]

#: The four variants, in the default order of :class:`MultiMemory`'s context cue.
MEMORY_TASKS = ("memory_pro", "memory_anti", "delay_pro", "delay_anti")

_VARIANTS = {name: (name.startswith("delay"), name.endswith("anti")) for name in MEMORY_TASKS}
_ANGLES = ("random", "even")

#: The research code's input noise for training: σ = 0.1·√2 on every input entry.
RESEARCH_NOISE = 0.1 * 2**0.5


def _check_periods(obj: Any, where: str) -> None:
    for name in ("T_fix", "T_mem", "grace"):
        set_field(obj, name, nonnegative_int(getattr(obj, name), name, where))
    for name in ("T_stim", "T_resp"):
        set_field(obj, name, positive_int(getattr(obj, name), name, where))
    set_field(obj, "noise", real(obj.noise, "noise", where, low=0.0))
    set_field(obj, "stim_in_response", boolean(obj.stim_in_response, "stim_in_response", where))
    if obj.angles not in _ANGLES:
        msg = f"{where}: expected angles to be one of {_ANGLES}, got {obj.angles!r}"
        raise ValueError(msg)
    if obj.grace > obj.T_resp:
        msg = f"{where}: expected grace to be at most T_resp={obj.T_resp}, got {obj.grace!r}"
        raise ValueError(msg)


def _trials(
    gen: np.random.Generator,
    delay: np.ndarray,
    anti: np.ndarray,
    periods: tuple[int, int, int, int],
    noise: float,
    grace: int,
    *,
    stim_in_response: bool = False,
    angles: str = "random",
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host (inputs, targets, mask) for trials of variants ``delay``, ``anti`` (bool arrays (B,)).

    With ``angles="even"`` the trials of each group (``groups``, labels (B,); one group
    when None) get θ = 2πk/n, k = 0 … n−1 in order, n the group's size.
    """
    T_fix, T_stim, T_mem, T_resp = periods
    batch = delay.shape[0]
    T = T_fix + T_stim + T_mem + T_resp
    go = T_fix + T_stim + T_mem  # first response step
    t = np.arange(T)
    fixating = (t < go).astype(np.float64)  # (T,)
    stim = (t >= T_fix) & (t < T_fix + T_stim)
    memory = (t >= T_fix + T_stim) & (t < go)
    held = memory | (t >= go) if stim_in_response else memory
    visible = (stim[None, :] | (delay[:, None] & held[None, :])).astype(np.float64)  # (B, T)
    respond = 1.0 - fixating

    if angles == "even":
        labels = np.zeros(batch, dtype=np.int64) if groups is None else groups
        theta: np.ndarray = np.empty(batch)
        for g in np.unique(labels):
            idx = np.nonzero(labels == g)[0]
            theta[idx] = 2.0 * np.pi * np.arange(idx.size) / idx.size
    else:
        theta = np.asarray(gen.uniform(0.0, 2.0 * np.pi, size=batch))
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    x = np.stack([np.broadcast_to(fixating, (batch, T)), visible * cos, visible * sin], axis=-1)
    if noise > 0:
        x = x + noise * gen.standard_normal(x.shape)
    sign = np.where(anti, -1.0, 1.0)[:, None]
    y = np.stack(
        [np.broadcast_to(fixating, (batch, T)), respond * (sign * cos), respond * (sign * sin)], axis=-1
    )
    mask = np.broadcast_to(((t < go) | (t >= go + grace)).astype(np.float64), (batch, T)).copy()
    return x, y, mask


@dataclass(frozen=True, kw_only=True)
class MemoryTask(Task):
    """Memory-pro and its anti and delay variants (see the conventions below).

    Parameters
    ----------
    anti : bool
        Respond in the direction opposite to the stimulus (default False: pro).
    delay : bool
        Keep the stimulus on through the memory period (default False: memory).
    T_fix, T_stim, T_mem, T_resp : int
        Lengths of the fixation, stimulus, memory and response periods (defaults 10, 20,
        40, 20; ``T_stim`` and ``T_resp`` positive, the others non-negative).
    noise : float
        Standard deviation of the Gaussian noise added to the inputs (default 0).
    grace : int
        Response steps masked out at the go cue, at most ``T_resp`` (default 0).
    stim_in_response : bool
        With ``delay``, keep the stimulus on through the response period too (the research
        code's delay tasks; default False: off at the go cue).
    angles : {"random", "even"}
        θ uniform on [0, 2π) per trial (default), or evenly spaced, θ_k = 2πk/B (analysis).

    Notes
    -----
    Inputs [fixation, cos θ, sin θ] and targets [fixation, cos φ, sin φ] have shape
    ``(B, T, 3)``, the mask ``(B, T)``, with ``T = T_fix + T_stim + T_mem + T_resp``.
    The fixation input is 1 until the response period; the stimulus is on in the
    stimulus period, and also in the memory period when ``delay``.  The target direction
    φ is θ (pro) or θ + π (anti) during the response period, 0 before; the target
    fixation is 1 before the response period, 0 in it.  The conventions are those of Yang
    et al. (2019) with the stimulus as (cos θ, sin θ) (as in Driscoll et al. 2024).

    Examples
    --------
    >>> from kpflow.tasks import MemoryTask
    >>> task = MemoryTask(anti=True, delay=True, T_fix=5, T_stim=10, T_mem=20, T_resp=10)
    >>> task.name, task.T, task.n_in, task.n_out
    ('delay_anti', 45, 3, 3)
    >>> x, y, mask = task.sample(8, 0)
    >>> x.shape, y.shape, mask.shape
    ((8, 45, 3), (8, 45, 3), (8, 45))
    >>> bool((x[:, 34, 1:] == x[:, 5, 1:]).all()), bool((y[:, 40, 1:] == -x[:, 5, 1:]).all())
    (True, True)
    """

    anti: bool = False
    delay: bool = False
    T_fix: int = 10
    T_stim: int = 20
    T_mem: int = 40
    T_resp: int = 20
    noise: float = 0.0
    grace: int = 0
    stim_in_response: bool = False
    angles: str = "random"

    def __post_init__(self) -> None:
        where = "MemoryTask"
        set_field(self, "anti", boolean(self.anti, "anti", where))
        set_field(self, "delay", boolean(self.delay, "delay", where))
        _check_periods(self, where)

    @classmethod
    def research(cls, name: str = "memory_pro", *, analysis: bool = False) -> MemoryTask:
        """The research code's task (meeree/kpflow): periods 30/30/30, no fixation period.

        Stimulus, memory and response periods of 30 steps each (T = 90; the fixation input
        is 1 until the response period); a delay task's stimulus stays on through the
        response period.  Training (default): θ uniform and input noise σ = 0.1·√2.
        ``analysis=True``: evenly spaced θ and no noise.

        Parameters
        ----------
        name : {"memory_pro", "memory_anti", "delay_pro", "delay_anti"}
        analysis : bool

        Examples
        --------
        >>> from kpflow.tasks import MemoryTask
        >>> task = MemoryTask.research("delay_anti", analysis=True)
        >>> task.T, task.noise, task.angles
        (90, 0.0, 'even')
        >>> x, y, _ = task.sample(4)
        >>> x[:, 89, 1].round(6).tolist(), y[:, 89, 1].round(6).tolist()
        ([1.0, 0.0, -1.0, -0.0], [-1.0, -0.0, 1.0, 0.0])
        """
        if name not in _VARIANTS:
            msg = f"MemoryTask.research: expected name to be one of {MEMORY_TASKS}, got {name!r}"
            raise ValueError(msg)
        delay, anti = _VARIANTS[name]
        return cls(
            anti=anti,
            delay=delay,
            T_fix=0,
            T_stim=30,
            T_mem=30,
            T_resp=30,
            noise=0.0 if analysis else RESEARCH_NOISE,
            stim_in_response=True,
            angles="even" if analysis else "random",
        )

    @property
    def name(self) -> str:
        """``"memory_pro"``, ``"memory_anti"``, ``"delay_pro"`` or ``"delay_anti"``."""
        return f"{'delay' if self.delay else 'memory'}_{'anti' if self.anti else 'pro'}"

    @property
    def T(self) -> int:
        """The trial length ``T_fix + T_stim + T_mem + T_resp``."""
        return self.T_fix + self.T_stim + self.T_mem + self.T_resp

    @property
    def n_in(self) -> int:
        """3: fixation, cos θ, sin θ."""
        return 3

    @property
    def n_out(self) -> int:
        """3: fixation, cos φ, sin φ."""
        return 3

    def _draw(self, batch: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        delay = np.full(batch, self.delay)
        anti = np.full(batch, self.anti)
        periods = (self.T_fix, self.T_stim, self.T_mem, self.T_resp)
        return _trials(
            gen,
            delay,
            anti,
            periods,
            self.noise,
            self.grace,
            stim_in_response=self.stim_in_response,
            angles=self.angles,
        )


@dataclass(frozen=True, kw_only=True)
class MultiMemory(Task):
    """A mix of the memory tasks, each trial cued by a one-hot context input.

    Each trial picks one of ``tasks`` uniformly at random (or, with ``blocks``, the batch
    is split into one contiguous block per task, in order, sizes differing by at most one)
    and is that task's trial (see :class:`MemoryTask`); the one-hot context cue (the
    task's position in ``tasks``) is appended to the inputs and stays on for the whole
    trial, or, with ``T_context > 0``, a context period of that many steps comes first
    (fixation input and target 1, stimulus 0) and the cue is on in it alone.

    Parameters
    ----------
    tasks : tuple of str
        Distinct names among ``"memory_pro"``, ``"memory_anti"``, ``"delay_pro"``,
        ``"delay_anti"`` (default: all four, in that order).  A list is stored as a tuple.
    T_fix, T_stim, T_mem, T_resp, noise, grace, stim_in_response, angles
        As for :class:`MemoryTask`, shared by all tasks (``angles="even"``: evenly spaced
        within each task's trials).
    T_context : int
        Length of the context period before the trial (default 0: none, the cue on
        throughout).
    blocks : bool
        Trials in task blocks instead of random tasks (default False).
    cue_noise : bool
        Add the input noise to the cue channels too (default False).

    Notes
    -----
    Inputs ``(B, T, 3 + len(tasks))``: [fixation, cos θ, sin θ, cue_0, …]; targets
    ``(B, T, 3)``; mask ``(B, T)`` (1 in the context period); T = T_context + T_fix +
    T_stim + T_mem + T_resp.

    Examples
    --------
    >>> from kpflow.tasks import MultiMemory
    >>> task = MultiMemory(T_fix=5, T_stim=10, T_mem=20, T_resp=10)
    >>> task.tasks, task.n_in, task.n_out
    (('memory_pro', 'memory_anti', 'delay_pro', 'delay_anti'), 7, 3)
    >>> x, y, mask = task.sample(8, 0)
    >>> x.shape, y.shape, mask.shape
    ((8, 45, 7), (8, 45, 3), (8, 45))
    >>> x[:, 0, 3:].sum(axis=-1).tolist() == [1.0] * 8
    True
    """

    tasks: tuple[str, ...] = MEMORY_TASKS
    T_fix: int = 10
    T_stim: int = 20
    T_mem: int = 40
    T_resp: int = 20
    noise: float = 0.0
    grace: int = 0
    stim_in_response: bool = False
    angles: str = "random"
    T_context: int = 0
    blocks: bool = False
    cue_noise: bool = False

    def __post_init__(self) -> None:
        where = "MultiMemory"
        tasks = self.tasks
        if isinstance(tasks, str) or not isinstance(tasks, tuple | list):
            msg = f"{where}: expected tasks to be a tuple of task names from {MEMORY_TASKS}, got {tasks!r}"
            raise TypeError(msg)
        tasks = tuple(tasks)
        unknown = [t for t in tasks if t not in _VARIANTS]
        if not tasks or unknown or len(set(tasks)) != len(tasks):
            msg = (
                f"{where}: expected tasks to be distinct names from {MEMORY_TASKS} (at least one), "
                f"got {tasks!r}"
            )
            raise ValueError(msg)
        set_field(self, "tasks", tasks)
        _check_periods(self, where)
        set_field(self, "T_context", nonnegative_int(self.T_context, "T_context", where))
        set_field(self, "blocks", boolean(self.blocks, "blocks", where))
        set_field(self, "cue_noise", boolean(self.cue_noise, "cue_noise", where))

    @classmethod
    def research(cls, *, analysis: bool = False) -> MultiMemory:
        """The research code's mix (meeree/kpflow): a 30-step context period, then a 30/30/30 trial.

        T = 120; the cue is on during the context period only; the batch holds the four
        tasks in blocks (memory-pro, memory-anti, delay-pro, delay-anti); the periods and
        stimulus conventions are those of :meth:`MemoryTask.research`.  Training: θ uniform
        and noise σ = 0.1·√2 on every input entry, cue included; ``analysis=True``: evenly
        spaced θ within each task's block, no noise.

        Examples
        --------
        >>> from kpflow.tasks import MultiMemory
        >>> task = MultiMemory.research(analysis=True)
        >>> task.T, task.n_in
        (120, 7)
        >>> x, y, mask = task.sample(8)
        >>> x[:, 0, 3:].argmax(axis=1).tolist(), float(abs(x[:, 30:, 3:]).max())
        ([0, 0, 1, 1, 2, 2, 3, 3], 0.0)
        """
        return cls(
            T_fix=0,
            T_stim=30,
            T_mem=30,
            T_resp=30,
            noise=0.0 if analysis else RESEARCH_NOISE,
            stim_in_response=True,
            angles="even" if analysis else "random",
            T_context=30,
            blocks=True,
            cue_noise=True,
        )

    @property
    def T(self) -> int:
        """The trial length ``T_context + T_fix + T_stim + T_mem + T_resp``."""
        return self.T_context + self.T_fix + self.T_stim + self.T_mem + self.T_resp

    @property
    def n_in(self) -> int:
        """3 + len(tasks): fixation, cos θ, sin θ and the one-hot cue."""
        return 3 + len(self.tasks)

    @property
    def n_out(self) -> int:
        """3: fixation, cos φ, sin φ."""
        return 3

    def _draw(self, batch: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_tasks = len(self.tasks)
        if self.blocks:
            sizes = [len(b) for b in np.array_split(np.arange(batch), n_tasks)]
            which = np.repeat(np.arange(n_tasks), sizes)
        else:
            which = gen.integers(0, n_tasks, size=batch)
        delay = np.asarray([_VARIANTS[self.tasks[i]][0] for i in which.tolist()], dtype=bool)
        anti = np.asarray([_VARIANTS[self.tasks[i]][1] for i in which.tolist()], dtype=bool)
        periods = (self.T_fix, self.T_stim, self.T_mem, self.T_resp)
        x, y, mask = _trials(
            gen,
            delay,
            anti,
            periods,
            self.noise,
            self.grace,
            stim_in_response=self.stim_in_response,
            angles=self.angles,
            groups=which,
        )
        cue = np.eye(n_tasks)[which]  # (B, n_tasks)
        Tc = self.T_context
        if Tc:
            lead = np.zeros((batch, Tc, 3))
            lead[:, :, 0] = 1.0  # fixate through the context period
            x = np.concatenate([lead, x], axis=1)
            y = np.concatenate([lead, y], axis=1)
            mask = np.concatenate([np.ones((batch, Tc)), mask], axis=1)
            on = (np.arange(self.T) < Tc).astype(np.float64)
            cues = cue[:, None, :] * on[None, :, None]
            if self.noise > 0:  # the trial's inputs got theirs in _trials
                x[:, :Tc] = x[:, :Tc] + self.noise * gen.standard_normal((batch, Tc, 3))
        else:
            cues = np.broadcast_to(cue[:, None, :], (batch, self.T, n_tasks))
        if self.cue_noise and self.noise > 0:
            cues = cues + self.noise * gen.standard_normal(cues.shape)
        return np.concatenate([x, cues], axis=-1), y, mask
