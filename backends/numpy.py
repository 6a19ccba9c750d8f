"""The numpy adapter: array-api-compat's numpy namespace, CPU only, no autodiff."""

from __future__ import annotations

from typing import Any

from kpflow.backends._base import Backend

__all__ = ["NumpyBackend", "adapter"]


class NumpyBackend(Backend):
    """numpy arrays (through ``array_api_compat.numpy``).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.backends.numpy import adapter
    >>> adapter.owns(np.zeros(2)), adapter.has_autodiff
    (True, False)
    """

    name = "numpy"

    def owns(self, x: Any) -> bool:
        import array_api_compat

        return bool(array_api_compat.is_numpy_array(x))

    def namespace(self) -> Any:
        import array_api_compat.numpy

        return array_api_compat.numpy


adapter = NumpyBackend()
