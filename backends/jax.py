"""The jax adapter: ``jax.numpy`` and jax's transforms.

kpflow never turns on ``jax_enable_x64``: that is the user's choice.  Without
it jax has no float64 arrays, and kpflow computes in the float32 it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from kpflow.backends._base import Backend

__all__ = ["JaxBackend", "adapter"]


class JaxBackend(Backend):
    """jax arrays, with ``jax.jvp``, ``jax.vjp``, ``jax.vmap``, ``jax.jacrev``, ``jax.jit``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from kpflow.backends.jax import adapter
    >>> out, tangent = adapter.jvp(jnp.sin, (jnp.zeros(2),), (jnp.ones(2),))
    >>> [float(t) for t in tangent]
    [1.0, 1.0]
    """

    name = "jax"
    has_autodiff = True

    def owns(self, x: Any) -> bool:
        return isinstance(x, jax.Array)

    def namespace(self) -> Any:
        return jnp

    def from_host(self, array: Any, *, dtype: Any, device: Any = None) -> Any:
        return jnp.asarray(array, dtype=dtype, device=device)

    def jvp(self, f: Callable, primals: tuple, tangents: tuple) -> tuple[Any, Any]:
        # jax rejects tangents whose dtype differs from the primal's; cast them here.
        tangents = tuple(
            t.astype(p.dtype) if t.dtype != p.dtype else t for t, p in zip(tangents, primals, strict=True)
        )
        return jax.jvp(f, tuple(primals), tangents)

    def vjp(self, f: Callable, *primals: Any) -> tuple[Any, Callable]:
        return jax.vjp(f, *primals)

    def vmap(self, f: Callable, in_axes: Any = 0, out_axes: Any = 0) -> Callable:
        return jax.vmap(f, in_axes=in_axes, out_axes=out_axes)

    def jacrev(self, f: Callable, argnums: int | tuple[int, ...] = 0) -> Callable:
        return jax.jacrev(f, argnums=argnums)

    def jit(self, f: Callable) -> Callable:
        return jax.jit(f)


adapter = JaxBackend()
