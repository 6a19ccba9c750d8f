"""Which submodules are the states of ``from_module(module, states=...)``, and their outputs.

``states`` names submodules by their ``named_modules`` name, a glob, a ``re.Pattern`` or a
callable; a submodule that returns a tuple (a list, a Hugging Face ``ModelOutput``)
contributes its first tensor.
"""

from __future__ import annotations

import re
from typing import Any

import torch

__all__ = ["WHERE", "select_states"]

WHERE = "kpflow.backends.torch.from_module"


# -- states: which submodules ----------------------------------------------------------------------
def select_states(module: Any, states: Any, where: str = WHERE) -> list[str]:
    """The names (``named_modules``) of the state modules ``states`` selects, in module order.

    ``states`` is a list of names, a pattern (a glob such as ``"h.*"``, whose ``*`` and
    ``?`` stay inside one dotted component and ``**`` crosses them, or a compiled
    ``re.Pattern`` matched in full), a callable ``(name, submodule) -> bool``, or None (for
    an ``nn.Sequential``: every top-level child).

    Examples
    --------
    >>> import torch
    >>> from kpflow.backends._torch_graph import select_states
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    >>> select_states(net, None), select_states(net, "?"), select_states(net, lambda n, m: n == "1")
    (['0', '1', '2'], ['0', '1', '2'], ['1'])
    """
    named = [(n, m) for n, m in module.named_modules() if n]
    names = [n for n, _ in named]
    accepted = (
        "a list of submodule names (named_modules), a glob pattern str, a compiled re.Pattern, a "
        "callable (name, submodule) -> bool, or None for an nn.Sequential (every top-level child)"
    )
    if states is None:
        if not isinstance(module, torch.nn.Sequential):
            msg = (
                f"{where}: states=None picks every top-level child of an nn.Sequential only; got a "
                f"{type(module).__name__}; give states= as {accepted}"
            )
            raise ValueError(msg)
        chosen = [n for n, _ in module.named_children()]
    elif isinstance(states, str):
        pattern = _glob(states)
        chosen = [n for n in names if pattern.fullmatch(n)]
    elif isinstance(states, re.Pattern):
        chosen = [n for n in names if states.fullmatch(n)]
    elif callable(states):
        chosen = [n for n, m in named if states(n, m)]
    elif isinstance(states, list | tuple) and all(isinstance(s, str) for s in states):
        unknown = [s for s in states if s not in names]
        if unknown:
            msg = (
                f"{where}: states names {unknown}, which are not submodules of the "
                f"{type(module).__name__}; its submodules are {names[:40]}"
                f"{' …' if len(names) > 40 else ''}"
            )
            raise ValueError(msg)
        chosen = list(dict.fromkeys(states))
    else:
        msg = f"{where}: expected states to be {accepted}; got {type(states).__name__}"
        raise TypeError(msg)
    if not chosen:
        msg = f"{where}: states={states!r} selects no submodule; the submodules are {names[:40]}"
        raise ValueError(msg)
    return chosen


def _glob(text: str) -> re.Pattern:
    """A module-name glob as a regex: ``*`` and ``?`` within one dotted component, ``**`` across."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        ch = text[i]
        out.append("[^.]*" if ch == "*" else "[^.]" if ch == "?" else re.escape(ch))
        i += 1
    return re.compile("".join(out))


def _first(out: Any) -> Any:
    """A state module's output: the tensor itself, or a tuple's (list's, ModelOutput's) first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "to_tuple"):
        return _first(out.to_tuple())
    return None


def _with_first(out: Any, new: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return new
    if isinstance(out, list):
        return [new, *out[1:]]
    if isinstance(out, tuple):
        return (new, *out[1:])
    out[next(iter(out.keys()))] = new  # a ModelOutput (an ordered dict)
    return out
