"""The cupy adapter: NVIDIA GPUs through array-api-compat's cupy namespace, no autodiff."""

from __future__ import annotations

from typing import Any

from kpflow.backends._base import Backend

__all__ = ["CupyBackend", "adapter"]


class CupyBackend(Backend):
    """cupy arrays (through ``array_api_compat.cupy``).

    Examples
    --------
    >>> from kpflow.backends.cupy import adapter
    >>> adapter.name, adapter.has_autodiff
    ('cupy', False)
    """

    name = "cupy"

    def owns(self, x: Any) -> bool:
        import array_api_compat

        return bool(array_api_compat.is_cupy_array(x))

    def namespace(self) -> Any:
        import array_api_compat.cupy

        return array_api_compat.cupy

    def from_host(self, array: Any, *, dtype: Any, device: Any = None) -> Any:
        import cupy

        if device is None:
            return cupy.asarray(array, dtype=dtype)
        with device:
            return cupy.asarray(array, dtype=dtype)


adapter = CupyBackend()
