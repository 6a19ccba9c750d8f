"""The adapter interface every backend implements.

An adapter is the one place where kpflow touches a framework directly: its
namespace, its devices, conversion of host random numbers (SPEC 7), and, for
frameworks that have them, ``jvp``, ``vjp``, ``vmap``, ``jacrev`` and ``jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["AUTODIFF_BACKENDS", "AutodiffUnavailableError", "Backend"]

#: The built-in backends whose adapters provide autodiff.
AUTODIFF_BACKENDS = ("torch", "jax")


class AutodiffUnavailableError(TypeError):
    """Raised when autodiff is asked of a backend that has none (numpy, array_api_strict, cupy)."""


class Backend:
    """Base adapter; subclasses set ``name`` and override what their framework supports.

    Subclasses must implement :meth:`owns` and :meth:`namespace`.
    """

    name: str = "base"
    has_autodiff: bool = False

    def owns(self, x: Any) -> bool:
        """Whether array ``x`` belongs to this backend (without importing the framework)."""
        msg = f"backend adapter {type(self).__name__} does not define owns(); please report this bug"
        raise TypeError(msg)

    def namespace(self) -> Any:
        """The array-API namespace (array-api-compat's wrapper where one is needed)."""
        msg = f"backend adapter {type(self).__name__} does not define namespace(); please report this bug"
        raise TypeError(msg)

    # -- devices ---------------------------------------------------------------------------
    def device(self, x: Any) -> Any:
        """The device array ``x`` lives on."""
        import array_api_compat

        return array_api_compat.device(x)

    def default_device(self) -> Any:
        """The device new arrays go to when none is given."""
        xp = self.namespace()
        return self.device(xp.zeros(1))

    def to_device(self, x: Any, device: Any) -> Any:
        """Move ``x`` to ``device`` (an explicit transfer; kpflow never calls this implicitly)."""
        import array_api_compat

        return array_api_compat.to_device(x, device)

    # -- random numbers (SPEC 7) -------------------------------------------------------------
    def from_host(self, array: np.ndarray, *, dtype: Any, device: Any = None) -> Any:
        """Convert a host numpy sample to this backend's array with ``dtype`` on ``device``."""
        xp = self.namespace()
        return xp.asarray(array, dtype=dtype, device=device)

    # -- autodiff ----------------------------------------------------------------------------
    def _no_autodiff(self, what: str) -> AutodiffUnavailableError:
        msg = (
            f"the {self.name} backend has no automatic differentiation, so {what} is unavailable; "
            f"use arrays from one of: {', '.join(AUTODIFF_BACKENDS)}"
        )
        return AutodiffUnavailableError(msg)

    def jvp(self, f: Callable, primals: tuple, tangents: tuple) -> tuple[Any, Any]:
        """Forward-mode product: ``(f(*primals), J_f(primals) · tangents)``."""
        raise self._no_autodiff("jvp")

    def vjp(self, f: Callable, *primals: Any) -> tuple[Any, Callable]:
        """Reverse mode: ``(f(*primals), v ↦ tuple of vᵀ J_f)``."""
        raise self._no_autodiff("vjp")

    def vmap(self, f: Callable, in_axes: Any = 0, out_axes: Any = 0) -> Callable:
        """Vectorise ``f`` over the given axes."""
        raise self._no_autodiff("vmap")

    def jacrev(self, f: Callable, argnums: int | tuple[int, ...] = 0) -> Callable:
        """The Jacobian of ``f`` by reverse mode."""
        raise self._no_autodiff("jacrev")

    def jit(self, f: Callable) -> Callable:
        """Compile ``f`` where the framework can; otherwise return ``f`` unchanged."""
        return f

    def __repr__(self) -> str:
        return f"<kpflow backend {self.name!r}>"
