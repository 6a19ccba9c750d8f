"""Programs compiled once per model settings and shapes, on backends that compile per shape (jax).

:class:`Config` makes a model a static argument of a compiled program: two models of one class
with equal settings share the program, so that a second run of the same sizes (a second
``kpflow spectrum`` in one process) compiles nothing.  :func:`compiled` is the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

__all__ = ["Config", "compiled"]


class Config:
    """A model as a static argument of a compiled program: equal when its settings are equal.

    Two models of one class whose attributes are equal plain values (numbers, strings,
    tuples, nested models of such) run the same forward map, so that one compiled program
    serves both (a new ``kpflow spectrum`` run of the same sizes compiles nothing).  A model
    holding anything else (a user's function or module) is only equal to itself.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.key = _plain(model, {id(model)})

    def __hash__(self) -> int:
        return hash(self.key) if self.key is not None else id(self.model)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        if self.key is None or other.key is None:
            return self.model is other.model
        return self.key == other.key


def _plain(value: Any, seen: set[int]) -> Any:
    """``value`` as a hashable tuple of plain values, or None where it holds anything else."""
    if value is None or isinstance(value, (bool, int, float, str, type)):
        return value
    if isinstance(value, (tuple, list, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, frozenset) else value
        parts = [_plain(v, seen) for v in items]
        if any(p is None and v is not None for p, v in zip(parts, items, strict=True)):
            return None
        return (type(value).__name__, *parts)
    if not callable(getattr(value, "unroll", None)):  # a model (nested: the transformer's attention)
        return None
    inner = []
    for name, v in sorted(vars(value).items()):
        if callable(getattr(v, "unroll", None)) and id(v) in seen:
            return None
        p = _plain(v, seen | {id(v)})
        if p is None and v is not None:
            return None
        inner.append((name, p))
    return (type(value), tuple(inner))


@lru_cache(maxsize=64)
def compiled(adapter: Any, fn: Callable[..., Any], config: Config, *static: Any) -> Callable[..., Any]:
    """``adapter.jit(partial(fn, config, *static))``, made once per (function, settings, static values).

    Examples
    --------
    >>> from kpflow.backends.numpy import adapter
    >>> from kpflow.models import GRU
    >>> from kpflow.models._compiled import Config, compiled
    >>> def width(config, a):
    ...     return config.model.n_hidden + a
    >>> compiled(adapter, width, Config(GRU(2, 3)))(1)
    4
    >>> compiled(adapter, width, Config(GRU(2, 3))) is compiled(adapter, width, Config(GRU(2, 3)))
    True
    """
    return adapter.jit(partial(fn, config, *static))
