"""Namespace, dtype and device bookkeeping shared by the whole core.

Every public entry point calls these once, at the boundary, so that the
numerical code below it can assume one namespace, one dtype and one device.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import array_api_compat

__all__ = [
    "array_namespace",
    "as_shape",
    "check_array",
    "device_of",
    "host_rng",
    "namespace_name",
    "prod",
    "same_device",
    "to_host",
]


def namespace_name(xp: Any) -> str:
    """A short human name for an array namespace, used in error messages."""
    name = getattr(xp, "__name__", repr(xp))
    return name.removeprefix("array_api_compat.")


def array_namespace(*arrays: Any, where: str = "kpflow") -> Any:
    """Return the one array-API namespace of ``arrays``.

    Raises
    ------
    TypeError
        If the arrays come from two libraries; the message names both.
    """
    present = [a for a in arrays if a is not None and not isinstance(a, int | float | complex)]
    if not present:
        msg = f"{where}: expected at least one array, got none"
        raise TypeError(msg)
    spaces: list[Any] = []
    for a in present:
        try:
            xp = array_api_compat.array_namespace(a)
        except TypeError as err:
            msg = f"{where}: expected an array-API array, got {type(a).__module__}.{type(a).__qualname__}"
            raise TypeError(msg) from err
        if all(xp is not s for s in spaces):
            spaces.append(xp)
    if len(spaces) > 1:
        names = " and ".join(namespace_name(s) for s in spaces)
        msg = f"{where}: arrays from two namespaces were mixed: {names}"
        raise TypeError(msg)
    return spaces[0]


def device_of(x: Any) -> Any:
    """The device of array ``x`` (array-api-compat's ``device``)."""
    return array_api_compat.device(x)


def same_device(a: Any, b: Any) -> bool:
    """Whether devices ``a`` and ``b`` agree; ``None`` (a traced jax array's) agrees with any.

    Inside ``jax.jit``, ``jax.vmap`` and ``jax.grad`` an array is a tracer whose device is
    not known (``device(x)`` is ``None``); jax places it itself, so only two known devices
    can disagree.

    Examples
    --------
    >>> from kpflow._array import same_device
    >>> same_device("cpu", "cpu"), same_device(None, "cpu"), same_device("cpu", "cuda:0")
    (True, True, False)
    """
    return a is None or b is None or a == b


def prod(shape: Sequence[int]) -> int:
    """The number of elements of a tensor of this shape (1 for ``()``)."""
    return math.prod(shape)


def as_shape(shape: Any, name: str, where: str) -> tuple[int, ...]:
    """Validate and normalise a shape argument to a tuple of non-negative ints."""
    if isinstance(shape, int):
        shape = (shape,)
    try:
        out = tuple(int(s) for s in shape)
    except TypeError as err:
        msg = f"{where}: expected {name} to be a tuple of ints, got {shape!r}"
        raise TypeError(msg) from err
    if any(s < 0 for s in out) or any(int(s) != s for s in shape):
        msg = f"{where}: expected {name} to hold non-negative ints, got {shape!r}"
        raise ValueError(msg)
    return out


def check_array(
    x: Any,
    *,
    xp: Any,
    dtype: Any,
    device: Any,
    shape: tuple[int, ...] | None,
    name: str,
    where: str,
    leading: int = 0,
) -> None:
    """Check that ``x`` has the namespace, dtype, device and shape expected.

    ``leading`` is the number of free leading (batch) axes before ``shape``.

    Raises
    ------
    TypeError
        For a foreign namespace, another dtype or another device.
    ValueError
        For a wrong shape.
    """
    x_xp = array_namespace(x, where=where)
    if x_xp is not xp:
        msg = (
            f"{where}: {name} comes from {namespace_name(x_xp)} but the operator works in "
            f"{namespace_name(xp)}; mixing namespaces is not allowed"
        )
        raise TypeError(msg)
    if x.dtype != dtype:
        msg = (
            f"{where}: expected {name} of dtype {dtype}, got {x.dtype}; "
            "kpflow never casts silently, convert explicitly with xp.astype"
        )
        raise TypeError(msg)
    x_dev = device_of(x)
    if not same_device(x_dev, device):
        msg = f"{where}: {name} lives on device {x_dev} but the operator lives on {device}"
        raise TypeError(msg)
    if shape is not None:
        got = tuple(x.shape)
        if len(got) != leading + len(shape) or got[leading:] != shape:
            lead = "(k, " if leading else "("
            expected = (
                lead + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 and not leading else ")")
            )
            if leading and not shape:
                expected = "(k,)"
            msg = f"{where}: expected {name} of shape {expected}, got {got}"
            raise ValueError(msg)


def host_rng(rng: Any, where: str) -> Any:
    """A ``numpy.random.Generator`` from ``rng``: an int seed, a Generator (used as is) or None.

    kpflow draws every random number on the host from such a generator (seeded results are
    the same on every backend); this is the one place that parses the ``rng`` argument.

    Raises
    ------
    TypeError
        For anything else (a bool included), naming ``where``.

    Examples
    --------
    >>> from kpflow._array import host_rng
    >>> float(host_rng(0, "f").random()) == float(host_rng(0, "f").random())
    True
    >>> host_rng(1.5, "f")
    Traceback (most recent call last):
    ...
    TypeError: f: expected rng to be an int, a numpy.random.Generator or None, got float
    """
    import numpy as np

    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        return np.random.default_rng(None if rng is None else int(rng))
    if isinstance(rng, np.random.Generator):
        return rng
    msg = f"{where}: expected rng to be an int, a numpy.random.Generator or None, got {type(rng).__name__}"
    raise TypeError(msg)


def to_host(a: Any) -> Any:
    """``a`` as a float64 ``numpy.ndarray`` on the host: an explicit copy, for reports and plots.

    torch tensors are detached first; arrays on another device are moved to the backend's
    default host device explicitly (array-api-strict's other devices, cupy, GPUs).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow._array import to_host
    >>> to_host(xp.asarray([1.0, 2.0], device=xp.Device("device1"))).tolist()
    [1.0, 2.0]
    """
    import numpy as np

    if isinstance(a, np.ndarray) or not array_api_compat.is_array_api_obj(a):  # numpy, lists, floats
        return np.asarray(a, dtype=np.float64)
    if hasattr(a, "detach"):  # torch
        return a.detach().cpu().numpy().astype(np.float64)
    if array_api_compat.is_array_api_strict_namespace(array_api_compat.array_namespace(a)):
        import array_api_strict

        a = array_api_strict.asarray(a, device=array_api_strict.Device("CPU_DEVICE"))
        return np.asarray(a, dtype=np.float64)
    if array_api_compat.is_cupy_array(a):
        return np.asarray(a.get(), dtype=np.float64)
    return np.asarray(a, dtype=np.float64)
