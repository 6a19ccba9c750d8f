"""An operator of one array library used from another, by DLPack.

:func:`via_dlpack` wraps an operator whose arrays live in one library (torch, say) as an
operator in another (jax, numpy, ...): each product hands its probe block to the
operator's library with ``from_dlpack``, applies the operator there, and hands the result
back the same way.  On one device DLPack shares the buffer, so nothing is copied.
"""

from __future__ import annotations

from typing import Any

from kpflow._array import array_namespace, device_of, namespace_name
from kpflow.operators.base import LinearOperator
from kpflow.operators.functions import adjoint, is_symmetric, todense

__all__ = ["ViaDLPack", "via_dlpack"]


def _exchange(x: Any, xp: Any, device: Any, where: str) -> Any:
    """``x`` as an array of namespace ``xp`` on ``device``, by DLPack (a view where it can be one)."""
    if hasattr(x, "detach"):  # torch: DLPack carries no autograd graph, and refuses one
        x = x.detach()
    try:
        return xp.from_dlpack(x, device=device)
    except BufferError:
        # a read-only numpy array, which older DLPack consumers (jax) cannot take: a copy
        return xp.asarray(x, copy=True, device=device)
    except (AttributeError, TypeError, RuntimeError, ValueError) as err:
        msg = (
            f"{where}: could not hand an array of {type(x).__module__}.{type(x).__qualname__} "
            f"to {namespace_name(xp)} on {device} by DLPack ({err}); inside jax.jit, jax.vmap or "
            "jax.grad a traced array has no buffer to lend: call the operator outside the transform"
        )
        raise TypeError(msg) from err


def _name(dtype: Any) -> str:
    """A dtype's name without its library: ``torch.float64``, ``dtype('float64')`` -> ``float64``."""
    name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or str(dtype)
    return str(name).rsplit(".", 1)[-1]


class ViaDLPack(LinearOperator):
    """``A``, an operator of one array library, seen as an operator of another.

    Build it with :func:`via_dlpack`.  Products take and return arrays of the new
    namespace, dtype and device; they run in ``A``'s library on ``A``'s device.

    Attributes
    ----------
    A : LinearOperator
        The operator wrapped.

    Examples
    --------
    >>> import numpy as np
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.operators import via_dlpack
    >>> B = via_dlpack(kpflow.Diagonal(np.asarray([1.0, 2.0])), like=xp.zeros(1))
    >>> B.matvec(xp.ones(2))
    Array([1., 2.], dtype=array_api_strict.float64)
    """

    def __init__(self, A: LinearOperator, like: Any) -> None:
        where = "kpflow.operators.via_dlpack"
        if not isinstance(A, LinearOperator):
            msg = f"{where}: expected A to be a kpflow LinearOperator, got {type(A).__name__}"
            raise TypeError(msg)
        xp, device = array_namespace(like, where=where), device_of(like)
        probe = _exchange(A.xp.zeros((1,), dtype=A.dtype, device=A.device), xp, device, where)
        if _name(probe.dtype) != _name(A.dtype):  # jax without x64 turns float64 into float32
            msg = (
                f"{where}: {namespace_name(xp)} cannot hold the operator's dtype {A.dtype} (it "
                f"made {probe.dtype} of it); for float64 on jax, turn on "
                "jax.config.update('jax_enable_x64', True)"
            )
            raise TypeError(msg)
        if probe.dtype != like.dtype:
            msg = (
                f"{where}: the operator's dtype {A.dtype} is {probe.dtype} in {namespace_name(xp)}, "
                f"but like has dtype {like.dtype}; kpflow never casts silently: pass like of "
                f"dtype {probe.dtype}"
            )
            raise TypeError(msg)
        super().__init__(A.shape_in, A.shape_out, xp=xp, dtype=probe.dtype, device=device)
        self.A = A
        self.axis_names = A.axis_names
        self._like = probe  # our own one-element array: namespace, dtype and device of the view

    def _there(self, X: Any) -> Any:
        return _exchange(X, self.A.xp, self.A.device, "kpflow.operators.ViaDLPack")

    def _back(self, Y: Any) -> Any:
        return _exchange(Y, self.xp, self.device, "kpflow.operators.ViaDLPack")

    def _matmat(self, X: Any) -> Any:
        return self._back(self.A._matmat(self._there(X)))

    def _rmatmat(self, Y: Any) -> Any:
        return self._back(self.A._rmatmat(self._there(Y)))

    def __repr__(self) -> str:
        return f"ViaDLPack({self.A!r}, xp={namespace_name(self.xp)})"


def via_dlpack(A: LinearOperator, *, like: Any) -> ViaDLPack:
    """The operator ``A`` used with the arrays of another library, handed over by DLPack.

    A torch NTK_S used from jax (or numpy, cupy, array-api-strict), or a jax operator used
    from torch: every product passes its probe block to ``A``'s library with that library's
    ``from_dlpack``, applies ``A`` there, and passes the result back with ``from_dlpack`` of
    ``like``'s library.  On one device (the CPU, or one GPU that both libraries use) DLPack
    shares the buffers: nothing is copied.  Between devices ``from_dlpack(x, device=...)``
    copies, where the libraries support it.

    The products carry no autograd graph across libraries (torch tensors are detached
    before they are handed over), so ``jax.grad`` does not reach into a torch operator,
    and a wrapped operator cannot be called inside ``jax.jit`` (a traced array has no
    buffer to lend); wrap the solver's call instead, or use an operator built in the
    library of the transform.

    Parameters
    ----------
    A : LinearOperator
        Any kpflow operator.
    like : array
        An array of the library and device wanted; its dtype must be ``A``'s dtype in that
        library (``torch.float64`` is ``jax.numpy.float64``, which needs jax's x64 mode).

    Returns
    -------
    ViaDLPack
        With ``A``'s shapes and ``like``'s namespace, dtype and device.  ``todense``,
        ``.T`` and :func:`~kpflow.operators.is_symmetric` use ``A``'s own rules.

    Raises
    ------
    TypeError
        If ``A`` is not an operator, ``like`` is not an array, or ``like``'s dtype is not
        ``A``'s dtype in ``like``'s library.

    Examples
    --------
    >>> import numpy as np
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.operators import via_dlpack
    >>> A = kpflow.Dense(np.asarray([[2.0, 1.0], [1.0, 2.0]]))
    >>> B = via_dlpack(A, like=xp.zeros(1))
    >>> B.xp is xp, B.matvec(xp.asarray([1.0, 0.0]))
    (True, Array([2., 1.], dtype=array_api_strict.float64))
    >>> float(kpflow.linalg.eigsh(B, 1).eigenvalues[0])
    3.0
    """
    return ViaDLPack(A, like)


@todense.register
def _(op: ViaDLPack) -> Any:
    return _exchange(todense(op.A, max_size=None), op.xp, op.device, "kpflow.operators.todense")


@adjoint.register
def _(op: ViaDLPack) -> LinearOperator:
    return ViaDLPack(adjoint(op.A), op._like)


@is_symmetric.register
def _(op: ViaDLPack) -> bool:
    return is_symmetric(op.A)
