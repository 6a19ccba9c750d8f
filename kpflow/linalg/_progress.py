"""Progress reporting for :mod:`kpflow.linalg`: a tqdm bar, a plain text line, or a callback.

``progress=True`` drives a tqdm bar when tqdm is installed and otherwise writes a
minimal text line to stderr (tqdm is not a dependency); a callable is called as
``progress(done, total)`` after every chunk of products; ``None`` or ``False`` is silent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "TextBar"]


class TextBar:
    """A minimal progress line on stderr, for ``progress=True`` when tqdm is not installed."""

    #: Seconds between redraws (the last update always draws).
    INTERVAL = 0.2

    def __init__(self, total: int, desc: str, unit: str = "matvecs") -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = 0
        self._last = -float("inf")
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.INTERVAL and self.done < self.total:
            return
        self._last = now
        frac = f" ({100 * self.done / self.total:.0f}%)" if self.total > 0 else ""
        sys.stderr.write(f"\r{self.desc}: {self.done}/{self.total} {self.unit}{frac}")
        sys.stderr.flush()

    def update(self, n: int) -> None:
        self.done += n
        self._draw()

    def close(self) -> None:
        self._draw(force=True)
        sys.stderr.write("\n")
        sys.stderr.flush()


class Progress:
    """``progress=True`` drives a tqdm bar when tqdm is installed, else a plain text line on
    stderr; a callable is called as ``progress(done, total)``; ``None``/``False`` is silent."""

    def __init__(self, progress: Any, total: int, desc: str, unit: str = "matvecs") -> None:
        self.total = int(total)
        self.done = 0
        self.bar: Any = None
        self.callback: Callable[[int, int], Any] | None = None
        if progress is True:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                self.bar = TextBar(self.total, desc, unit)
            else:
                self.bar = tqdm(total=self.total, desc=desc, leave=False)
        elif callable(progress):
            self.callback = progress
        elif progress not in (None, False):
            msg = f"{desc}: expected progress to be None, a bool or a callable, got {progress!r}"
            raise TypeError(msg)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
