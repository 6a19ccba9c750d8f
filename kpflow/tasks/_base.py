"""The task interface: a frozen configuration that samples a :class:`TaskBatch`.

Every task draws on the host with numpy, from a seed or a ``numpy.random.Generator``,
in float64, and converts once at the end to the caller's namespace, dtype and device
(``like=``, ``dtype=``, ``device=``; numpy float64 by default).  Nothing is cast
silently: ``dtype`` must be a real floating dtype and is used as given.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from kpflow._array import array_namespace, device_of, host_rng, namespace_name

__all__ = ["Task", "TaskBatch"]


@dataclass(frozen=True, eq=False)
class TaskBatch:
    """One sampled batch of a task: ``inputs``, ``targets`` and ``mask``.

    All three arrays share one namespace, dtype and device.  For the recurrent tasks
    ``inputs`` has shape ``(B, T, n_in)``, ``targets`` ``(B, T, n_out)`` and ``mask``
    ``(B, T)``; for :class:`~kpflow.tasks.Disk` they are ``(B, 2)``, ``(B, n_out)`` and
    ``(B,)``.  The mask holds 0 and 1 in the arrays' floating dtype (1: the step counts
    in the loss), so a masked mean squared error is
    ``sum(mask[..., None] * (out - targets)**2) / (sum(mask) * n_out)`` in any namespace.

    The batch unpacks as ``x, y, mask = batch``.  It compares by identity (arrays have
    no value equality).

    Examples
    --------
    >>> from kpflow.tasks import FlipFlop
    >>> x, y, mask = FlipFlop(T=5).sample(2, 0)
    >>> x.shape, y.shape, mask.shape
    ((2, 5, 3), (2, 5, 3), (2, 5))
    """

    inputs: Any
    targets: Any
    mask: Any

    def __iter__(self) -> Iterator[Any]:
        return iter((self.inputs, self.targets, self.mask))


class Task(abc.ABC):
    """Base class of the tasks: frozen, hashable configurations with a :meth:`sample` method.

    Subclasses are frozen keyword-only dataclasses whose fields are the task's
    parameters (validated at construction) and which define ``n_in``, ``n_out`` and
    ``_draw(batch, gen)``, the host (numpy float64) sampler.

    Examples
    --------
    >>> from kpflow.tasks import FlipFlop, Task
    >>> task = FlipFlop(n_bits=2)
    >>> isinstance(task, Task), task.n_in, task.n_out
    (True, 2, 2)
    """

    @property
    @abc.abstractmethod
    def n_in(self) -> int:
        """The number of input channels."""

    @property
    @abc.abstractmethod
    def n_out(self) -> int:
        """The number of output channels."""

    @abc.abstractmethod
    def _draw(self, batch: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Host float64 ``(inputs, targets, mask)`` of ``batch`` trials drawn from ``gen``."""

    def sample(
        self, batch: int, rng: Any = None, *, like: Any = None, dtype: Any = None, device: Any = None
    ) -> TaskBatch:
        """Draw ``batch`` trials.

        Parameters
        ----------
        batch : int
            The number of trials B (positive).
        rng : int, numpy.random.Generator or None
            The seed or the host generator (advanced by the draw); None draws fresh entropy.
            The same seed gives the same batch on every backend.
        like : array, optional
            The arrays take its namespace, and its dtype and device unless given.
        dtype : dtype, optional
            A real floating dtype of that namespace (default: ``like``'s, or numpy float64).
        device : device, optional
            The device (default: ``like``'s; numpy: the CPU).

        Returns
        -------
        TaskBatch

        Raises
        ------
        ValueError
            For a batch that is not a positive int.
        TypeError
            For an ``rng`` that is not an int, a Generator or None, a ``like`` that is not an
            array, or a ``dtype`` that is not a real floating dtype.

        Examples
        --------
        >>> import array_api_strict as xp
        >>> from kpflow.tasks import FlipFlop
        >>> b = FlipFlop(T=10).sample(4, 0, like=xp.zeros(1), dtype=xp.float32)
        >>> b.inputs.shape, b.inputs.dtype, b.mask.dtype
        ((4, 10, 3), array_api_strict.float32, array_api_strict.float32)
        """
        where = f"{type(self).__name__}.sample"
        batch = positive_int(batch, "batch", where)
        gen = host_rng(rng, where)
        convert = converter(like, dtype, device, where)
        inputs, targets, mask = self._draw(batch, gen)
        return TaskBatch(convert(inputs), convert(targets), convert(mask))


# -- helpers -------------------------------------------------------------------------------------
def converter(like: Any, dtype: Any, device: Any, where: str) -> Callable[[np.ndarray], Any]:
    """A function turning a host float64 array into the requested namespace, dtype and device.

    Everything is checked here, before anything is drawn.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.tasks._base import converter
    >>> converter(None, np.float32, None, "f")(np.ones(2)).dtype
    dtype('float32')
    """
    if like is None:
        try:
            dt = np.dtype(np.float64 if dtype is None else dtype)
        except TypeError as err:
            msg = f"{where}: expected dtype to be a real floating numpy dtype, got {dtype!r}"
            raise TypeError(msg) from err
        if dt.kind != "f":
            msg = f"{where}: expected dtype to be a real floating numpy dtype, got {dtype!r}"
            raise TypeError(msg)
        if device is not None and device != "cpu":
            msg = (
                f"{where}: expected device None or 'cpu' for numpy output (pass like= for another "
                f"namespace), got {device!r}"
            )
            raise ValueError(msg)
        return lambda host: np.asarray(host, dtype=dt)

    xp = array_namespace(like, where=where)
    from kpflow.backends import get_backend

    adapter = get_backend(like)
    dt = like.dtype if dtype is None else dtype
    try:
        ok = bool(xp.isdtype(dt, "real floating"))
    except Exception:
        ok = False
    if not ok:
        what = "like's dtype" if dtype is None else "dtype"
        msg = f"{where}: expected {what} to be a real floating dtype of {namespace_name(xp)}, got {dt!r}"
        raise TypeError(msg)
    dev = device_of(like) if device is None else device
    return lambda host: adapter.from_host(host, dtype=dt, device=dev)


def positive_int(n: Any, name: str, where: str) -> int:
    """Validate a positive int (not a bool); return it.

    Examples
    --------
    >>> from kpflow.tasks._base import positive_int
    >>> positive_int(3, "T", "FlipFlop")
    3
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        msg = f"{where}: expected {name} to be a positive int, got {n!r}"
        raise ValueError(msg)
    return int(n)


def nonnegative_int(n: Any, name: str, where: str) -> int:
    """Validate a non-negative int (not a bool); return it.

    Examples
    --------
    >>> from kpflow.tasks._base import nonnegative_int
    >>> nonnegative_int(0, "T_mem", "MemoryTask")
    0
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        msg = f"{where}: expected {name} to be a non-negative int, got {n!r}"
        raise ValueError(msg)
    return int(n)


def real(
    x: Any, name: str, where: str, *, low: float = -math.inf, high: float = math.inf, open_low: bool = False
) -> float:
    """Validate a finite real number in ``[low, high]`` (``(low, high]`` when ``open_low``).

    Examples
    --------
    >>> from kpflow.tasks._base import real
    >>> real(0.5, "p_pulse", "FlipFlop", low=0.0, high=1.0)
    0.5
    """
    if math.isfinite(high):
        span = f" in {'(' if open_low else '['}{low:g}, {high:g}]"
    elif math.isfinite(low):
        span = f" {'>' if open_low else '>='} {low:g}"
    else:
        span = ""
    if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating):
        msg = f"{where}: expected {name} to be a real number{span}, got {x!r}"
        raise TypeError(msg)
    v = float(x)
    if not math.isfinite(v) or v > high or v < low or (open_low and v == low):
        msg = f"{where}: expected {name} to be a finite real number{span}, got {x!r}"
        raise ValueError(msg)
    return v


def boolean(x: Any, name: str, where: str) -> bool:
    """Validate a bool.

    Examples
    --------
    >>> from kpflow.tasks._base import boolean
    >>> boolean(True, "anti", "MemoryTask")
    True
    """
    if not isinstance(x, bool | np.bool_):
        msg = f"{where}: expected {name} to be a bool, got {x!r}"
        raise TypeError(msg)
    return bool(x)


def set_field(obj: Any, name: str, value: Any) -> None:
    """Store a normalised value on a frozen dataclass during ``__post_init__``."""
    object.__setattr__(obj, name, value)
