"""Standard tasks to train and analyse networks on: inputs, targets and masks, sampled.

Each task is a frozen, hashable configuration (a keyword-only dataclass whose fields are
its parameters, checked at construction) with one method,
``sample(batch, rng=None, *, like=None, dtype=None, device=None) -> TaskBatch``.  It
draws on the host with numpy from ``rng`` (an int seed or a ``numpy.random.Generator``)
and converts once to ``like``'s namespace, dtype and device (numpy float64 by default);
the same seed gives the same batch on every backend.

- :class:`FlipFlop`: the n-bit flip-flop;
- :class:`MemoryTask`: memory-pro, memory-anti, delay-pro, delay-anti (Yang et al. 2019);
- :class:`MultiMemory`: a mix of those four with a one-hot context cue;
- :class:`LowRankForecast`: predict the next observation of a rotating 10-d latent seen in 100-d;
- :class:`ContextIntegration`: context-dependent integration (Mante et al. 2013);
- :class:`Disk`: inside or outside a disk, a two-class task for the MLP.

The research code's settings (meeree/kpflow) are options of these tasks, gathered by
``FlipFlop.research()``, ``MemoryTask.research(name, analysis=...)``,
``MultiMemory.research()`` and ``LowRankForecast.research(D_inp=..., D_targ=...)``.

A :class:`TaskBatch` holds ``inputs`` ``(B, T, n_in)``, ``targets`` ``(B, T, n_out)``
and ``mask`` ``(B, T)`` of 0/1 in the same dtype (Disk: ``(B, 2)``, ``(B, n_out)``,
``(B,)``).

Examples
--------
>>> import array_api_strict as xp
>>> from kpflow.tasks import FlipFlop
>>> batch = FlipFlop(n_bits=3, p_pulse=0.05, T=100).sample(8, 0, like=xp.zeros(1, dtype=xp.float32))
>>> batch.inputs.shape, batch.targets.shape, batch.mask.shape, batch.inputs.dtype
((8, 100, 3), (8, 100, 3), (8, 100), array_api_strict.float32)
"""

from kpflow.tasks._base import Task, TaskBatch
from kpflow.tasks.disk import Disk
from kpflow.tasks.flipflop import FlipFlop
from kpflow.tasks.forecast import LowRankForecast
from kpflow.tasks.integration import ContextIntegration
from kpflow.tasks.memory import MEMORY_TASKS, MemoryTask, MultiMemory

__all__ = [
    "MEMORY_TASKS",
    "ContextIntegration",
    "Disk",
    "FlipFlop",
    "LowRankForecast",
    "MemoryTask",
    "MultiMemory",
    "Task",
    "TaskBatch",
]
