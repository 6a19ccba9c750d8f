"""Gradient descent with momentum, and Adam, on dicts of arrays (pure array-API code).

An optimizer is a frozen configuration with ``init(params) -> state`` and
``update(params, grads, state) -> (params, state)``; it never modifies an array in place, so
a checkpoint that holds earlier parameters stays as it was.  Hyper-parameters are Python
floats, which combine with arrays of any floating dtype without casting them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kpflow._array import array_namespace

__all__ = ["SGD", "Adam"]


def _positive(value: Any, name: str, where: str, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or float(value) < 0 or (float(value) == 0 and not allow_zero):
        want = "a finite float ≥ 0" if allow_zero else "a finite float > 0"
        msg = f"{where}: expected {name} to be {want}, got {value!r}"
        raise ValueError(msg)
    return float(value)


def _fraction(value: Any, name: str, where: str) -> float:
    v = _positive(value, name, where, allow_zero=True)
    if v >= 1.0:
        msg = f"{where}: expected {name} in [0, 1), got {value!r}"
        raise ValueError(msg)
    return v


@dataclass(frozen=True)
class SGD:
    """Gradient descent, with heavy-ball momentum: v ← μ v + g, θ ← θ − η v.

    ``momentum=0`` (the default) is plain gradient descent θ ← θ − η g.

    Parameters
    ----------
    lr : float
        The learning rate η > 0.
    momentum : float
        μ in [0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.training import SGD
    >>> opt = SGD(lr=0.1, momentum=0.5)
    >>> params, grads = {"w": np.ones(2)}, {"w": np.ones(2)}
    >>> state = opt.init(params)
    >>> params, state = opt.update(params, grads, state)   # v = g
    >>> params, state = opt.update(params, grads, state)   # v = 0.5 g + g
    >>> params["w"].tolist()
    [0.75, 0.75]
    """

    lr: float
    momentum: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _positive(self.lr, "lr", "SGD"))
        object.__setattr__(self, "momentum", _fraction(self.momentum, "momentum", "SGD"))

    def init(self, params: dict[Any, Any]) -> dict[Any, Any]:
        """The velocity v = 0 for every parameter (empty without momentum)."""
        if self.momentum == 0.0:
            return {}
        return {k: array_namespace(v).zeros_like(v) for k, v in params.items()}

    def update(
        self, params: dict[Any, Any], grads: dict[Any, Any], state: dict[Any, Any]
    ) -> tuple[dict[Any, Any], dict[Any, Any]]:
        """One step: new parameters and state (nothing is modified in place)."""
        _check_keys(params, grads, "SGD.update")
        if self.momentum == 0.0:
            return {k: params[k] - self.lr * grads[k] for k in params}, state
        velocity = {k: self.momentum * state[k] + grads[k] for k in params}
        return {k: params[k] - self.lr * velocity[k] for k in params}, velocity


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba 2015) with bias correction.

    m ← β₁ m + (1 − β₁) g, v ← β₂ v + (1 − β₂) g², θ ← θ − η m̂ / (√v̂ + ε), with
    m̂ = m / (1 − β₁ᵗ) and v̂ = v / (1 − β₂ᵗ) at step t = 1, 2, …

    Parameters
    ----------
    lr : float
    beta1, beta2 : float
        In [0, 1).
    eps : float

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.training import Adam
    >>> opt = Adam(lr=0.01)
    >>> params = {"w": np.zeros(2)}
    >>> params, state = opt.update(params, {"w": np.array([3.0, -0.2])}, opt.init(params))
    >>> np.round(params["w"], 6).tolist()   # step 1 moves each entry by lr against its gradient
    [-0.01, 0.01]
    """

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _positive(self.lr, "lr", "Adam"))
        object.__setattr__(self, "beta1", _fraction(self.beta1, "beta1", "Adam"))
        object.__setattr__(self, "beta2", _fraction(self.beta2, "beta2", "Adam"))
        object.__setattr__(self, "eps", _positive(self.eps, "eps", "Adam", allow_zero=True))

    def init(self, params: dict[Any, Any]) -> dict[Any, Any]:
        """Zero first and second moments and the step count t = 0."""
        zeros = {k: array_namespace(v).zeros_like(v) for k, v in params.items()}
        return {"t": 0, "m": zeros, "v": dict(zeros)}

    def update(
        self, params: dict[Any, Any], grads: dict[Any, Any], state: dict[Any, Any]
    ) -> tuple[dict[Any, Any], dict[Any, Any]]:
        """One step: new parameters and state (nothing is modified in place)."""
        _check_keys(params, grads, "Adam.update")
        t = int(state["t"]) + 1
        b1, b2 = self.beta1, self.beta2
        m = {k: b1 * state["m"][k] + (1.0 - b1) * grads[k] for k in params}
        v = {k: b2 * state["v"][k] + (1.0 - b2) * (grads[k] * grads[k]) for k in params}
        c1, c2 = 1.0 - b1**t, 1.0 - b2**t
        new = {}
        for k, p in params.items():
            xp = array_namespace(p)
            new[k] = p - self.lr * (m[k] / c1) / (xp.sqrt(v[k] / c2) + self.eps)
        return new, {"t": t, "m": m, "v": v}


def _check_keys(params: dict[Any, Any], grads: dict[Any, Any], where: str) -> None:
    if set(params) != set(grads):
        msg = f"{where}: expected grads with the keys of params {sorted(params)}, got {sorted(grads)}"
        raise ValueError(msg)
