"""The torch adapter: array-api-compat's torch namespace and ``torch.func`` autodiff.

torch is imported only when this module is imported, which kpflow does only
when it meets a torch tensor or is asked for this backend by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from kpflow.backends._base import Backend

__all__ = ["TorchBackend", "adapter"]


def _match_dtype(tangents: tuple, primals: tuple) -> tuple:
    return tuple(t.to(p.dtype) if t.dtype != p.dtype else t for t, p in zip(tangents, primals, strict=True))


class TorchBackend(Backend):
    """torch tensors on any device, with ``torch.func`` transforms.

    ``jit`` returns the function unchanged: kpflow runs torch eagerly, where
    ``torch.func`` transforms compose without recompilation.

    Examples
    --------
    >>> import torch
    >>> from kpflow.backends.torch import adapter
    >>> out, tangent = adapter.jvp(torch.sin, (torch.zeros(2, dtype=torch.float64),),
    ...                            (torch.ones(2, dtype=torch.float64),))
    >>> tangent
    tensor([1., 1.], dtype=torch.float64)
    """

    name = "torch"
    has_autodiff = True

    def owns(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor)

    def namespace(self) -> Any:
        import array_api_compat.torch

        return array_api_compat.torch

    def jvp(self, f: Callable, primals: tuple, tangents: tuple) -> tuple[Any, Any]:
        # torch accepts mismatched tangent dtypes silently; kpflow makes them match.
        result = torch.func.jvp(f, tuple(primals), _match_dtype(tuple(tangents), tuple(primals)))
        return result[0], result[1]

    def vjp(self, f: Callable, *primals: Any) -> tuple[Any, Callable]:
        result = torch.func.vjp(f, *primals)
        return result[0], result[1]

    def vmap(self, f: Callable, in_axes: Any = 0, out_axes: Any = 0) -> Callable:
        return torch.func.vmap(f, in_dims=in_axes, out_dims=out_axes)

    def jacrev(self, f: Callable, argnums: int | tuple[int, ...] = 0) -> Callable:
        return torch.func.jacrev(f, argnums=argnums)


adapter = TorchBackend()
