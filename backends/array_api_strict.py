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
        mod = sys.modules.get("array_api_strict")
        return mod is not None and isinstance(x, mod.Array)

    def namespace(self) -> Any:
        import array_api_strict

        return array_api_strict


adapter = ArrayApiStrictBackend()
