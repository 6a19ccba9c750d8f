"""The array-api-strict adapter: the strictest namespace, with extra devices, no autodiff.

It exists to prove that the core uses nothing beyond the standard and never
moves data to the host behind the user's back.
"""

from __future__ import annotations

import sys
from typing import Any

from kpflow.backends._base import Backend

__all__ = ["ArrayApiStrictBackend", "adapter"]


class ArrayApiStrictBackend(Backend):
    """array_api_strict arrays.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.backends.array_api_strict import adapter
    >>> adapter.owns(xp.zeros(2)), adapter.namespace() is xp
    (True, True)
    """

    name = "array_api_strict"

    def owns(self, x: Any) -> bool:
        if "array_api_strict" not in sys.modules:
            return False
        from array_api_strict._array_object import Array

        return isinstance(x, Array)

    def namespace(self) -> Any:
        import array_api_strict

        return array_api_strict


adapter = ArrayApiStrictBackend()
