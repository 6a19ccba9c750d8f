"""Per-backend adapters, found from an array's type and imported lazily.

``get_backend(x)`` returns the adapter for array ``x``; ``get_backend("torch")``
the adapter by name.  Only frameworks already imported (present in
``sys.modules``) are looked at when matching an array, so this module never
imports torch, jax or cupy by itself.  Third-party adapters register under the
entry-point group ``kpflow.backends``: the entry point names an object with
the :class:`Backend` interface.

Examples
--------
>>> import numpy as np
>>> from kpflow.backends import get_backend
>>> get_backend(np.zeros(3)).name
'numpy'
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from kpflow.backends._base import AUTODIFF_BACKENDS, AutodiffUnavailableError, Backend

from kpflow._array import host_rng

__all__ = [
    "AUTODIFF_BACKENDS",
    "AutodiffUnavailableError",
    "Backend",
    "available_backends",
    "get_backend",
    "random_normal",
    "random_rademacher",
]

# name -> (module that must already be imported for an array to be of this kind, adapter module)
_BUILTIN: dict[str, tuple[str, str]] = {
    "numpy": ("numpy", "kpflow.backends.numpy"),
    "array_api_strict": ("array_api_strict", "kpflow.backends.array_api_strict"),
    "torch": ("torch", "kpflow.backends.torch"),
    "jax": ("jax", "kpflow.backends.jax"),
    "cupy": ("cupy", "kpflow.backends.cupy"),
}

_ENTRY_POINT_GROUP = "kpflow.backends"
_third_party: dict[str, Backend] | None = None


def _load_builtin(name: str) -> Backend:
    return importlib.import_module(_BUILTIN[name][1]).adapter


def _load_third_party() -> dict[str, Backend]:
    global _third_party
    if _third_party is None:
        from importlib.metadata import entry_points

        found: dict[str, Backend] = {}
        for ep in entry_points(group=_ENTRY_POINT_GROUP):
            if ep.name not in _BUILTIN:
                found[ep.name] = ep.load()
        _third_party = found
    return _third_party


def get_backend(x: Any) -> Backend:
    """The adapter for array ``x``, or for the backend named ``x``.

    Parameters
    ----------
    x : array or str
        An array of any supported library, or a backend name (``"numpy"``,
        ``"array_api_strict"``, ``"torch"``, ``"jax"``, ``"cupy"`` or a
        registered third-party name).

    Raises
    ------
    ValueError
        For an unknown name.
    TypeError
        For an object no adapter owns.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.backends import get_backend
    >>> get_backend(xp.ones(1)).name, get_backend("numpy").name
    ('array_api_strict', 'numpy')
    """
    if isinstance(x, str):
        if x in _BUILTIN:
            return _load_builtin(x)
        third = _load_third_party()
        if x in third:
            return third[x]
        known = sorted(set(_BUILTIN) | set(third))
        msg = f"get_backend: unknown backend name {x!r}; expected one of {known}"
        raise ValueError(msg)
    for name, (module, _) in _BUILTIN.items():
        if module in sys.modules:
            adapter = _load_builtin(name)
            if adapter.owns(x):
                return adapter
    for adapter in _load_third_party().values():
        if adapter.owns(x):
            return adapter
    msg = (
        f"get_backend: no kpflow backend handles objects of type {type(x).__module__}.{type(x).__qualname__}"
    )
    raise TypeError(msg)


def available_backends() -> list[str]:
    """Names of the built-in backends whose framework can be imported here.

    Importing is attempted only for frameworks that are installed; this may be slow
    the first time (it imports them).

    Examples
    --------
    >>> from kpflow.backends import available_backends
    >>> "numpy" in available_backends()
    True
    """
    from importlib.util import find_spec

    return [name for name, (module, _) in _BUILTIN.items() if find_spec(module) is not None]


def _seed(rng: Any, where: str) -> int:
    """One integer seed drawn from the host generator (SPEC 7); below 2³¹ for every framework."""
    return int(host_rng(rng, where).integers(0, 2**31))


def random_normal(rng: Any, shape: tuple[int, ...], *, like: Any) -> Any:
    """Standard normal samples made on ``like``'s device from a host-drawn seed (SPEC 7).

    The host generator supplies one integer seed per call; the adapter's
    :meth:`~kpflow.backends.Backend.random_normal` draws with it on the array's device
    (torch: a ``torch.Generator`` there, jax on an accelerator: ``jax.random.key(seed)``,
    cupy: ``cupy.random.default_rng(seed)``), so no sample is copied from the host.  numpy,
    array_api_strict and jax on the CPU draw on the host with ``numpy.random.default_rng(seed)``.

    A seeded call is reproducible on each backend; numpy and array_api_strict give
    identical numbers, other backends their own (the same in distribution).

    Parameters
    ----------
    rng : int, numpy.random.Generator or None
        The seed, or a generator that is advanced by one draw.
    shape : tuple of int
    like : array
        The result takes its namespace, dtype and device.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.backends import random_normal
    >>> random_normal(0, (2,), like=xp.zeros(1, device=xp.Device("device1"))).device
    array_api_strict.Device('device1')
    """
    seed = _seed(rng, "random_normal")
    return get_backend(like).random_normal(seed, tuple(shape), dtype=like.dtype, device=_device(like))


def random_rademacher(rng: Any, shape: tuple[int, ...], *, like: Any) -> Any:
    """Random ±1 entries made on ``like``'s device from a host-drawn seed (see :func:`random_normal`).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.backends import random_rademacher
    >>> sorted(set(random_rademacher(1, (50,), like=np.zeros(1)).tolist()))
    [-1.0, 1.0]
    """
    seed = _seed(rng, "random_rademacher")
    return get_backend(like).random_rademacher(seed, tuple(shape), dtype=like.dtype, device=_device(like))


def _device(x: Any) -> Any:
    import array_api_compat

    return array_api_compat.device(x)
