"""The submodules of an Equinox / Flax NNX module: paths, state selection, marking wrappers, leaves.

Used by :mod:`kpflow.backends._jax_modules_graph`; equinox and flax are passed in as ``api``
(never imported here).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import sys
from collections.abc import Callable
from typing import Any

import jax
from kpflow.backends._jax_modules_trace import mark

__all__: list[str] = []

_WHERE = "kpflow.backends.jax.from_module"
_INNER = "kpflow_inner"


def _library(module: Any) -> tuple[str, Any]:
    eqx, nnx = sys.modules.get("equinox"), sys.modules.get("flax.nnx")
    if eqx is not None and isinstance(module, eqx.Module):
        return "eqx", eqx
    if nnx is not None and isinstance(module, nnx.Module):
        return "nnx", nnx
    msg = (
        f"{_WHERE}: expected module to be an equinox.Module or a flax.nnx.Module, got {type(module).__name__}"
    )
    raise TypeError(msg)


def _submodules(module: Any, lib: str, api: Any) -> list[tuple[str, Any, bool]]:
    """Every submodule as (dotted path, module, top-level child), parents before children."""
    out: list[tuple[str, Any, bool]] = []
    if lib == "nnx":
        containers = tuple(
            c for c in (getattr(api, "List", None), getattr(api, "Dict", None)) if c is not None
        )
        for path, sub in api.iter_modules(module):
            if path == () or isinstance(sub, containers):
                continue
            names = ".".join(str(p) for p in path)
            parents = [
                p for p in range(1, len(path)) if not isinstance(_resolve(module, path[:p]), containers)
            ]
            out.append((names, sub, not parents))
        return sorted(out, key=lambda e: e[0].count("."))

    def walk(node: Any, prefix: str, top: bool) -> None:
        if not dataclasses.is_dataclass(node):
            return
        for field in dataclasses.fields(node):
            value = getattr(node, field.name, None)
            items = list(enumerate(value)) if isinstance(value, list | tuple) else [(None, value)]
            for i, item in items:
                if isinstance(item, api.Module):
                    path = f"{prefix}{field.name}" + ("" if i is None else f".{i}")
                    out.append((path, item, top))
                    walk(item, path + ".", False)

    walk(module, "", True)
    return out


def _resolve(node: Any, parts: tuple) -> Any:
    for p in parts:
        node = node[p] if isinstance(p, int) else getattr(node, p)
    return node


def _parts(path: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def _default_states(module: Any, lib: str, api: Any, subs: list) -> list[str]:
    if (lib == "eqx" and isinstance(module, api.nn.MLP | api.nn.Sequential)) or (
        lib == "nnx" and isinstance(module, api.Sequential)
    ):
        return [p for p, _, top in subs if p.startswith("layers.") and p.count(".") == 1]
    return [p for p, _, top in subs if top]


def _select_states(module: Any, lib: str, api: Any, states: Any) -> list[str]:
    subs = _submodules(module, lib, api)
    paths = [p for p, _, _ in subs]
    if states is None:
        return _default_states(module, lib, api, subs)
    if callable(states):
        return [p for p, sub, _ in subs if states(p, sub)]
    items = (
        [states] if isinstance(states, str) else list(states) if isinstance(states, list | tuple) else None
    )
    if items is None or not all(isinstance(s, str) for s in items):
        msg = (
            f"{_WHERE}: expected states to be a submodule path, a pattern, a list of them or a callable "
            f"(path, submodule) -> bool, got {states!r}; the submodules are {paths}"
        )
        raise TypeError(msg)
    chosen: list[str] = []
    for s in items:
        found = [p for p in paths if fnmatch.fnmatchcase(p, s)]
        if not found:
            msg = f"{_WHERE}: states names {s!r}, which matches no submodule; the submodules are {paths}"
            raise ValueError(msg)
        chosen += [p for p in found if p not in chosen]
    return chosen


def _wrapper(lib: str, api: Any) -> type:
    """The module class that marks its inner module's output (one per library, made once)."""
    cls = _WRAPPERS.get(lib)
    if cls is not None:
        return cls

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = getattr(self, _INNER)(*args, **kwargs)
        if isinstance(out, tuple):  # a submodule returning a tuple: its first array is the state
            return (mark(out[0], self.kpflow_index), *out[1:])
        return mark(out, self.kpflow_index)

    def attribute(self: Any, name: str) -> Any:
        # the module's own code may read the submodule's fields (a tied readout reads
        # self.embed.weight): the wrapper answers with its inner module's
        if name == _INNER or name.startswith("__"):
            raise AttributeError(name)
        return getattr(getattr(self, _INNER), name)

    if lib == "eqx":

        class EqxState(api.Module):  # type: ignore[name-defined]
            kpflow_inner: Any
            kpflow_index: int = api.field(static=True)
            __call__ = call
            __getattr__ = attribute

        cls = EqxState
    else:

        class NnxState(api.Module):  # type: ignore[name-defined]
            def __init__(self, inner: Any, index: int) -> None:
                self.kpflow_inner = inner
                self.kpflow_index = index

            __call__ = call
            __getattr__ = attribute

        cls = NnxState
    _WRAPPERS[lib] = cls
    return cls


_WRAPPERS: dict[str, type] = {}


def _wrap(module: Any, lib: str, api: Any, chosen: list[str]) -> Any:
    """A copy of the module whose chosen submodules mark their outputs (deepest first)."""
    Wrapper = _wrapper(lib, api)
    order = sorted(range(len(chosen)), key=lambda i: -chosen[i].count("."))
    if lib == "eqx":
        for i in order:
            parts = _parts(chosen[i])
            sub = _resolve(module, parts)
            module = api.tree_at(lambda m, parts=parts: _resolve(m, parts), module, Wrapper(sub, i))
        return module
    module = api.clone(module)
    for i in order:
        parts = _parts(chosen[i])
        parent = _resolve(module, parts[:-1])
        sub = _resolve(parent, parts[-1:])
        if isinstance(parts[-1], int):
            parent[parts[-1]] = Wrapper(sub, i)
        else:
            setattr(parent, parts[-1], Wrapper(sub, i))
    return module


def _leaf_name(path: tuple) -> str:
    parts = []
    for k in path:
        key = getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))
        parts.append(str(key))
    parts = [p for p in parts if p != _INNER]
    if parts and parts[-1] == "value":
        parts = parts[:-1]
    return ".".join(parts)


def _pure(module: Any, lib: str, api: Any) -> tuple[Callable, list, list[str]]:
    """(fn(leaves, *args), leaves, names) of the module's trained leaves."""
    if lib == "eqx":
        trained, static = api.partition(module, api.is_inexact_array)
        flat, treedef = jax.tree_util.tree_flatten_with_path(trained)

        def fn(leaves: list, *args: Any) -> Any:
            return api.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)(*args)

    else:
        graphdef, trained, rest = api.split(module, api.Param, ...)
        flat, treedef = jax.tree_util.tree_flatten_with_path(trained)

        def fn(leaves: list, *args: Any) -> Any:
            return api.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves), rest)(*args)

    return fn, [a for _, a in flat], [_leaf_name(p) for p, _ in flat]


def _frozen(model: Any, names: list[str], frozen: Any) -> Any:
    if frozen is None:
        return model
    if callable(frozen):
        chosen = [n for n in names if frozen(n)]
    elif isinstance(frozen, str | list | tuple) and all(
        isinstance(f, str) for f in ([frozen] if isinstance(frozen, str) else frozen)
    ):
        patterns = [frozen] if isinstance(frozen, str) else list(frozen)
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unmatched:
            msg = f"{_WHERE}: frozen names {unmatched}, which match no parameter; the parameters are {names}"
            raise ValueError(msg)
    else:
        msg = (
            f"{_WHERE}: expected frozen to be parameter names, patterns or a callable name -> bool, "
            f"got {frozen!r}"
        )
        raise TypeError(msg)
    return model.with_frozen(chosen) if chosen else model
