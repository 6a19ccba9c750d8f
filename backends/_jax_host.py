"""The jax adapter's host kernels: small dense algebra on one CPU device run by numpy, not compiled.

See :meth:`kpflow.backends.jax.JaxBackend.dense_kernel`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import array_api_compat.numpy
import jax
import numpy as np
from jax.sharding import SingleDeviceSharding

from kpflow._threads import one_blas_thread

__all__ = ["HOST_KERNEL_ENTRIES", "host_or_compiled"]

#: The default of :attr:`kpflow.backends.jax.JaxBackend.host_kernel_entries`: the most entries
#: (all array arguments together) of a kernel that numpy runs on the host; larger ones are
#: compiled, where their run time outweighs the compilation and numpy's copies of the results
#: would cost more.
HOST_KERNEL_ENTRIES = 2**22


def host_or_compiled(adapter: Any, compiled: Callable, fn: Callable, static: tuple) -> Callable:
    """``fn(numpy, *static, ...)`` on the host where :func:`_host_device` allows, else ``compiled``.

    The host run holds numpy's BLAS to one thread (:func:`kpflow._threads.one_blas_thread`):
    beside jax's own threads a BLAS pool makes each small LAPACK call wait.
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
