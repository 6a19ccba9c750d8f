"""Random probe blocks drawn on an operator's device, and the sample mean of per-probe estimates."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["mean_and_error", "probes"]


def mean_and_error(xp: Any, samples: Any) -> tuple[Any, Any]:
    """The mean of ``samples`` (m,) and its standard error (``None`` when ``m < 2``)."""
    m = samples.shape[0]
    se = xp.std(samples, correction=1) / math.sqrt(m) if m >= 2 else None
    return xp.mean(samples), se


def probes(gen: Any, k: int, n: int, like: Any, kind: str = "gaussian") -> Any:
    """``k`` random vectors of length ``n`` as a ``(k, n)`` block like ``like``, made on its device.

    One integer seed is drawn from the host generator ``gen``; the block is drawn with
    it on ``like``'s device (see :func:`kpflow.backends.random_normal`).
    """
    from kpflow.backends import random_normal, random_rademacher

    draw = random_normal if kind == "gaussian" else random_rademacher
    return draw(gen, (k, n), like=like)
