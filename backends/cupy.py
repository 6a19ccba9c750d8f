"""The cupy adapter: NVIDIA GPUs through array-api-compat's cupy namespace, no autodiff.

Random numbers come from ``cupy.random.default_rng(seed)`` on the target device.
"""

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

    def is_accelerator(self, device: Any) -> bool:
        return True

    def from_host(self, array: Any, *, dtype: Any, device: Any = None) -> Any:
        import cupy

        if device is None:
            return cupy.asarray(array, dtype=dtype)
        with device:
            return cupy.asarray(array, dtype=dtype)

    def random_normal(self, seed: int, shape: tuple[int, ...], *, dtype: Any, device: Any = None) -> Any:
        # cupy's generator draws on the current device: no host sample, no copy.
        import cupy

        with cupy.cuda.Device() if device is None else device:
            return cupy.random.default_rng(seed).standard_normal(tuple(shape), dtype=dtype)

    def random_rademacher(self, seed: int, shape: tuple[int, ...], *, dtype: Any, device: Any = None) -> Any:
        import cupy

        with cupy.cuda.Device() if device is None else device:
            uniform = cupy.random.default_rng(seed).random(tuple(shape))
            return cupy.where(uniform < 0.5, -1.0, 1.0).astype(dtype)


adapter = CupyBackend()
