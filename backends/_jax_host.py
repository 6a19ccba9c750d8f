"""The jax adapter's host kernels: small dense algebra on one CPU device run by numpy, not compiled.

See :meth:`kpflow.backends.jax.JaxBackend.dense_kernel`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import array_api_compat.numpy
import jax
import numpy as np
from jax.sharding import SingleDeviceSharding

__all__ = ["HOST_KERNEL_ENTRIES", "host_or_compiled", "one_blas_thread"]

#: The default of :attr:`kpflow.backends.jax.JaxBackend.host_kernel_entries`: the most entries
#: (all array arguments together) of a kernel that numpy runs on the host; larger ones are
#: compiled, where their run time outweighs the compilation and numpy's copies of the results
#: would cost more.
HOST_KERNEL_ENTRIES = 2**22


def host_or_compiled(adapter: Any, compiled: Callable, fn: Callable, static: tuple) -> Callable:
    """``fn(numpy, *static, ...)`` on the host where :func:`_host_device` allows, else ``compiled``.

    The host run holds numpy's BLAS to one thread (:func:`one_blas_thread`).
    """
    host = functools.partial(fn, array_api_compat.numpy, *static)

    def run(*args: Any) -> Any:
        device = _host_device(args, adapter.host_kernel_entries)
        if device is None:
            return compiled(*args)
        with one_blas_thread():
            out = host(*jax.tree_util.tree_map(_to_host, args))
        return jax.tree_util.tree_map(lambda v: _to_device(v, device), out)

    run.compiled = compiled  # type: ignore[attr-defined]  # the program off the host route
    return run


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

    The host kernels are small (at most :data:`HOST_KERNEL_ENTRIES` entries; eigenproblems of a
    few hundred rows): there a BLAS thread pool's synchronisation costs more than it gains, and
    on a machine whose cores are busy (jax's own threads, other processes) each LAPACK call
    waits for descheduled threads, up to a hundred times slower (an eigendecomposition of
    300 × 300 in 1.5 s instead of 10 ms).  It takes threadpoolctl (installed with the ``jax``
    extra); without it the context does nothing.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.backends._jax_host import one_blas_thread
    >>> with one_blas_thread():
    ...     w = np.linalg.eigvalsh(np.eye(3))
    >>> w.tolist()
    [1.0, 1.0, 1.0]
    """
    controller = _blas_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1)


def _host_device(args: tuple, limit: int) -> Any:
    """The CPU device of every jax array in ``args`` when a host kernel may run them, else None."""
    device = None
    entries = 0
    for leaf in jax.tree_util.tree_leaves(args):
        if not isinstance(leaf, jax.Array):
            continue
        if isinstance(leaf, jax.core.Tracer):
            return None
        sharding = leaf.sharding
        if not isinstance(sharding, SingleDeviceSharding):
            return None
        (here,) = sharding.device_set
        if getattr(here, "platform", None) != "cpu" or (device is not None and here != device):
            return None
        device = here
        entries += leaf.size
    return device if entries <= limit else None


def _to_host(value: Any) -> Any:
    """A jax array as numpy's view of its memory (no copy on the CPU); anything else as it is."""
    return np.asarray(value) if isinstance(value, jax.Array) else value


def _to_device(value: Any, device: Any) -> Any:
    return jax.device_put(value, device) if isinstance(value, (np.ndarray, np.generic)) else value
