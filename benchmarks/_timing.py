"""The round-robin timer the product benchmarks share (run them as scripts: this folder is on sys.path)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def timed_round_robin(
    routes: dict[str, Callable[[], Any]], repeat: int, *, warmups: int = 1
) -> dict[str, tuple[float, float, Any]]:
    """(median, best, output) of each route: ``warmups`` untimed calls each, then ``repeat`` rounds.

    Every round times each route once, in turn, so a change in machine load during the run
    hits all routes alike.  The output is the last warm-up call's.
    """
    outputs = {}
    for name, fn in routes.items():
        for _ in range(warmups):
            outputs[name] = fn()
    times: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(repeat):
        for name, fn in routes.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(t), min(t), outputs[name]) for name, t in times.items()}
