"""Array helpers of the model layer: size checks, host-drawn initialisation, owned copies, step-major caches.

Examples
--------
>>> from kpflow.models.arrays import check_size
>>> check_size(2, "n_in", "RNN")
2
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kpflow._array import array_namespace, device_of, host_rng, prod

__all__ = ["check_size", "convert_host", "draw_uniform", "owned_copy", "step_major"]


def check_size(n: Any, name: str, where: str) -> int:
    """Validate a positive integer size; return it.

    Examples
    --------
    >>> from kpflow.models.arrays import check_size
    >>> check_size(3, "n_hidden", "RNN")
    3
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        msg = f"{where}: expected {name} to be a positive int, got {n!r}"
        raise ValueError(msg)
    return int(n)


def draw_uniform(
    shapes: dict[str, tuple[int, ...]],
    bound: float,
    rng: Any,
    *,
    like: Any,
    dtype: Any,
    device: Any,
    where: str,
) -> dict[str, Any]:
    """Parameters drawn from U(−bound, bound) on the host (SPEC 7), converted like ``like``.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.arrays import draw_uniform
    >>> p = draw_uniform({"w": (2,)}, 1.0, 0, like=xp.zeros(1), dtype=None, device=None, where="f")
    >>> p["w"].shape
    (2,)
    """
    gen = host_rng(rng, where)
    host = {k: gen.uniform(-bound, bound, size=s) for k, s in shapes.items()}
    return convert_host(host, like=like, dtype=dtype, device=device)


def convert_host(host: dict[str, Any], *, like: Any, dtype: Any, device: Any) -> dict[str, Any]:
    """Host (numpy) arrays converted once to ``like``'s namespace (numpy without it), ``dtype``, ``device``.

    ``dtype`` and ``device`` default to ``like``'s (float64 on the host without ``like``).

    Examples
    --------
    >>> import numpy as np
    >>> import array_api_strict as xp
    >>> from kpflow.models.arrays import convert_host
    >>> like = xp.zeros(1, dtype=xp.float32)
    >>> convert_host({"w": np.ones(2)}, like=like, dtype=None, device=None)["w"].dtype
    array_api_strict.float32
    """
    if like is None:
        dt = np.float64 if dtype is None else dtype
        return {k: np.asarray(v, dtype=dt) for k, v in host.items()}
    from kpflow.backends import get_backend

    adapter = get_backend(like)
    dt = like.dtype if dtype is None else dtype
    dev = device_of(like) if device is None else device
    return {k: adapter.from_host(v, dtype=dt, device=dev) for k, v in host.items()}


def owned_copy(a: Any) -> Any:
    """A copy of array ``a`` that no one else can mutate (jax arrays are immutable: ``a`` itself).

    On torch the copy is ``a.clone()``, which keeps autograd: gradients of anything computed
    from the copy still flow into ``a`` (e.g. a module's ``nn.Parameter``).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models.arrays import owned_copy
    >>> a = np.zeros(2)
    >>> b = owned_copy(a)
    >>> a[0] = 1.0
    >>> b
    array([0., 0.])
    """
    import array_api_compat

    if array_api_compat.is_jax_array(a):
        return a
    if array_api_compat.is_torch_array(a):
        return a.clone()
    return array_namespace(a).asarray(a, copy=True)


def step_major(a: Any) -> Any:
    """The per-step cache ``a`` of shape ``(B, T, ...)``, its memory laid out step by step.

    The result equals ``a`` and has its shape, but is a view of a ``(T, B, ...)`` buffer, so
    that ``a[:, t]``, read at every step of P and Pᵀ, is one contiguous block instead of B
    rows strided T apart.  Measured on a GRU at 1,638,400 states (numpy, float32, one
    probe): P 45 → 42 ms and Pᵀ 55 → 44 ms (medians of 15).  One copy of ``a``; jax arrays
    come back as they are (XLA chooses its own layouts).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models.arrays import step_major
    >>> a = np.arange(24.0).reshape(2, 3, 4)
    >>> b = step_major(a)
    >>> bool(np.array_equal(a, b)), b[:, 1].flags["C_CONTIGUOUS"]
    (True, True)
    """
    import array_api_compat

    if array_api_compat.is_jax_array(a) or a.ndim < 2 or a.shape[0] == 1:
        return a
    xp = array_namespace(a)
    order = (1, 0, *range(2, a.ndim))
    steps_first = xp.permute_dims(a, order)
    # reshaping the permuted view to one axis copies it into a (T, B, ...) buffer (the array
    # API has no "ascontiguousarray"); the reshape back and the permutation are views
    buffer = xp.reshape(xp.reshape(steps_first, (prod(a.shape),)), steps_first.shape)
    return xp.permute_dims(buffer, order)
