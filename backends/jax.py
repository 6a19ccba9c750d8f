"""The jax adapter: ``jax.numpy`` and jax's transforms.

kpflow never turns on ``jax_enable_x64``: that is the user's choice.  Without
it jax has no float64 arrays, and kpflow computes in the float32 it is given.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from kpflow.backends._base import Backend

__all__ = ["JaxBackend", "adapter"]

#: Random draws are made in pieces of this many entries, each from ``fold_in(key, i)`` with one
#: compiled generator (jax compiles its generator for every new shape, which would cost a
#: compilation for nearly every probe block), then joined and cut to shape.
_PIECE = 2**16


@functools.partial(jax.jit, static_argnames=("kind", "dtype"))
def _piece(key: Any, i: Any, kind: str, dtype: Any) -> Any:
    key = jax.random.fold_in(key, i)
    if kind == "normal":
        return jax.random.normal(key, (_PIECE,), dtype=dtype)
    return jax.random.rademacher(key, (_PIECE,), dtype=jnp.int8).astype(dtype)


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
    compiles_per_shape = True

    def owns(self, x: Any) -> bool:
        return isinstance(x, jax.Array)

    def namespace(self) -> Any:
        return jnp

    def from_host(self, array: Any, *, dtype: Any, device: Any = None) -> Any:
        return jnp.asarray(array, dtype=dtype, device=device)

    def _draw(self, kind: str, seed: int, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
        # Drawn where the key lives (jax computes where the data is): nothing crosses from the host.
        key = jax.random.key(seed)
        if device is not None:
            key = jax.device_put(key, device)
        size = math.prod(shape)
        pieces = [_piece(key, i, kind, dtype) for i in range(max(1, -(-size // _PIECE)))]
        flat = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)
        return jnp.reshape(flat[:size], shape)

    def random_normal(self, seed: int, shape: tuple[int, ...], *, dtype: Any, device: Any = None) -> Any:
        return self._draw("normal", seed, tuple(shape), dtype, device)

    def random_rademacher(self, seed: int, shape: tuple[int, ...], *, dtype: Any, device: Any = None) -> Any:
        return self._draw("rademacher", seed, tuple(shape), dtype, device)

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
