"""CPU thread pools of the libraries under kpflow (BLAS, OpenMP, torch), held for a stretch of work.

Small dense algebra gains nothing from a thread pool and, on a machine whose cores are busy,
loses a great deal: every BLAS, LAPACK or OpenMP call waits for threads that the scheduler
is not running.  :func:`one_blas_thread` holds numpy's BLAS to one thread around a small
kernel; :func:`cpu_threads` holds every pool to ``n`` threads around a whole command (the
CLI's ``--threads``).  Both take threadpoolctl (a dependency of kpflow) and restore the
previous counts afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["cpu_threads", "one_blas_thread"]


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's controller of the BLAS libraries loaded at the first call (numpy's among
    them: numpy loads its BLAS when imported); None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


def one_blas_thread() -> Any:
    """A context in which numpy's BLAS and LAPACK run on one thread (the previous count after it).

    For small kernels (eigenproblems of a few hundred rows, products of thin blocks), where a
    BLAS thread pool's synchronisation costs more than it gains and, beside other busy
    threads, each LAPACK call waits for descheduled ones (an eigendecomposition of 300 × 300
    in 1.5 s instead of 10 ms).  Without threadpoolctl the context does nothing.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow._threads import one_blas_thread
    >>> with one_blas_thread():
    ...     w = np.linalg.eigvalsh(np.eye(3))
    >>> w.tolist()
    [1.0, 1.0, 1.0]
    """
    controller = _blas_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1)


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Hold the BLAS and OpenMP pools loaded now (numpy's, torch's) and torch's own to ``n`` threads.

    ``n`` of ``None`` or ``0`` leaves every pool as it is.  The counts are restored on exit.

    Parameters
    ----------
    n : int or None
        Threads per pool while the context is open.

    Examples
    --------
    >>> from kpflow._threads import cpu_threads
    >>> with cpu_threads(1):
    ...     pass
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        msg = f"kpflow._threads.cpu_threads: expected n to be None or an int >= 0, got {n!r}"
        raise ValueError(msg)
    if not n:
        yield
        return
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limits: Any = contextlib.nullcontext()
    else:
        limits = threadpool_limits(limits=n)
    with limits:
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch is not None and before is not None:
                torch.set_num_threads(before)
