"""The base class of every kpflow operator.

A :class:`LinearOperator` is a linear map between tensor-shaped domains: it
takes arrays of shape ``shape_in`` to arrays of shape ``shape_out``.  Its
matrix is the array of shape ``(*shape_out, *shape_in)`` returned by
:func:`todense`, flattened row-major on both sides.

The class is deliberately small: subclasses implement the batched actions
``_matmat`` and ``_rmatmat`` (a leading probe axis), and every derived
operation (``todense``, ``adjoint``, ``partial_trace``, ``gram``, ...) is a
:func:`functools.singledispatch` function in :mod:`kpflow.operators.functions`
so that structured operators and downstream libraries can add exact rules
without editing this file.

This is the lowest module of :mod:`kpflow.operators`: it imports neither
:mod:`kpflow.operators.algebra` nor :mod:`kpflow.operators.functions`.  Those modules
subclass :class:`LinearOperator`, so they come after it, and they hand the methods here
their implementations by :func:`register_derived` when they are imported (importing
anything from ``kpflow.operators`` imports the whole package first).
"""

from __future__ import annotations

import abc
import numbers
from collections.abc import Callable
from typing import Any

from kpflow._array import array_namespace, check_array, device_of, namespace_name, prod, same_device

__all__ = [
    "DEFAULT_MAX_DENSE_SIZE",
    "LinearOperator",
    "SymmetricOperator",
    "is_operator",
    "register_derived",
]

#: The most entries a dense matrix may have unless a larger ``max_size`` is passed:
#: :func:`~kpflow.operators.todense`, ``numpy.asarray(op)`` and the dense references of
#: :mod:`kpflow.ntk.dense` (4,000,000 entries: 32 MB in float64, a 2000 × 2000 matrix).
DEFAULT_MAX_DENSE_SIZE = 4_000_000

#: The derived operations the methods of :class:`LinearOperator` call, by name, as the
#: modules defining them registered them (:func:`register_derived`).
_DERIVED: dict[str, Callable[..., Any]] = {}


def register_derived(**functions: Callable[..., Any]) -> None:
    """Give the methods of :class:`LinearOperator` the functions they call, by name.

    :mod:`kpflow.operators.functions` registers ``adjoint``, ``todense``, ``reshape``,
    ``partial_trace``, ``gram``, ``dense_rule`` and ``check_dense_size``, and
    :mod:`kpflow.operators.algebra` ``compose``, ``add`` and ``scale``, when they are
    imported; so ``A.T`` is ``kpflow.operators.adjoint(A)``, ``A @ B`` is
    ``kpflow.operators.compose(A, B)``, and so on, without this module importing the
    modules that subclass its class.

    Examples
    --------
    >>> import kpflow.operators as ops
    >>> from kpflow.operators.base import _DERIVED
    >>> _DERIVED["compose"] is ops.compose, _DERIVED["adjoint"] is ops.adjoint
    (True, True)
    """
    _DERIVED.update(functions)


def _derived(name: str) -> Callable[..., Any]:
    try:
        return _DERIVED[name]
    except KeyError:
        msg = (
            f"kpflow.operators: the derived operation {name!r} is not registered; it is registered "
            "when kpflow.operators is imported (import kpflow.operators, not only its base module)"
        )
        raise RuntimeError(msg) from None


class LinearOperator(abc.ABC):
    """A matrix-free linear map from arrays of shape ``shape_in`` to ``shape_out``.

    Attributes
    ----------
    shape_in, shape_out : tuple of int
        The tensor shapes of the domain and the codomain.
    dtype
        The one dtype of inputs and outputs (the namespace's dtype object).
    device
        The one device of inputs and outputs.
    xp
        The array-API namespace of inputs and outputs.
    axis_names : tuple of str or None
        Names of the axes of ``shape_in`` where they have meaning (operators built from a
        trajectory: ``("batch", "time", "hidden")`` or ``("batch", "units")``), so that
        ``keep="time"`` works in :func:`kpflow.linalg.effective_rank`; ``None`` otherwise.

    Notes
    -----
    Inputs are checked at this boundary: a wrong shape raises ``ValueError``,
    another namespace, dtype or device raises ``TypeError``.  Nothing is ever
    cast or moved silently.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> A = kpflow.Dense(xp.asarray([[2.0, 0.0], [1.0, 3.0]]))
    >>> A.shape_in, A.shape_out
    ((2,), (2,))
    >>> A.matvec(xp.asarray([1.0, 1.0]))
    Array([2., 4.], dtype=array_api_strict.float64)
    """

    def __init__(
        self,
        shape_in: tuple[int, ...],
        shape_out: tuple[int, ...],
        *,
        xp: Any,
        dtype: Any,
        device: Any,
    ) -> None:
        self.shape_in = tuple(shape_in)
        self.shape_out = tuple(shape_out)
        self.xp = xp
        self.dtype = dtype
        self.device = device
        self.axis_names: tuple[str, ...] | None = None

    # -- what subclasses implement ---------------------------------------------------------
    @abc.abstractmethod
    def _matmat(self, X: Any) -> Any:
        """Apply to a block ``X`` of shape ``(k, *shape_in)``; return ``(k, *shape_out)``."""

    @abc.abstractmethod
    def _rmatmat(self, Y: Any) -> Any:
        """Apply the adjoint to ``Y`` of shape ``(k, *shape_out)``; return ``(k, *shape_in)``."""

    # -- the checked public actions --------------------------------------------------------
    @property
    def size_in(self) -> int:
        """The dimension of the domain, ``prod(shape_in)``."""
        return prod(self.shape_in)

    @property
    def size_out(self) -> int:
        """The dimension of the codomain, ``prod(shape_out)``."""
        return prod(self.shape_out)

    def _check(self, x: Any, shape: tuple[int, ...], name: str, method: str, leading: int) -> None:
        check_array(
            x,
            xp=self.xp,
            dtype=self.dtype,
            device=self.device,
            shape=shape,
            name=name,
            where=f"{type(self).__name__}.{method}",
            leading=leading,
        )

    def matvec(self, x: Any) -> Any:
        """Return ``A x`` for ``x`` of shape ``shape_in``; the result has shape ``shape_out``."""
        self._check(x, self.shape_in, "x", "matvec", 0)
        return self._matmat(x[None, ...])[0, ...]

    def rmatvec(self, y: Any) -> Any:
        """Return ``Aᵀ y`` for ``y`` of shape ``shape_out``; the result has shape ``shape_in``."""
        self._check(y, self.shape_out, "y", "rmatvec", 0)
        return self._rmatmat(y[None, ...])[0, ...]

    def matmat(self, X: Any) -> Any:
        """Apply ``A`` to a block of ``k`` probes, ``(k, *shape_in) -> (k, *shape_out)``, k >= 0."""
        self._check(X, self.shape_in, "X", "matmat", 1)
        if X.shape[0] == 0:
            return self._empty(self.shape_out)
        return self._matmat(X)

    def rmatmat(self, Y: Any) -> Any:
        """Apply ``Aᵀ`` to a block of ``k`` probes, ``(k, *shape_out) -> (k, *shape_in)``, k >= 0."""
        self._check(Y, self.shape_out, "Y", "rmatmat", 1)
        if Y.shape[0] == 0:
            return self._empty(self.shape_in)
        return self._rmatmat(Y)

    def _empty(self, shape: tuple[int, ...]) -> Any:
        # No probes, no product: operators need not handle an empty block (a reshape to
        # (0, -1) is ambiguous, and jax divides by the block size there).
        return self.xp.zeros((0, *shape), dtype=self.dtype, device=self.device)

    # -- derived operations (dispatch functions, see kpflow.operators.functions) -----------
    @property
    def T(self) -> LinearOperator:
        """The adjoint operator ``Aᵀ`` (structure is kept where a rule exists)."""
        return _derived("adjoint")(self)

    def todense(self, *, max_size: int | None = DEFAULT_MAX_DENSE_SIZE) -> Any:
        """The matrix of ``A`` as an array of shape ``(*shape_out, *shape_in)`` (see :func:`todense`).

        ``max_size``: the most entries allowed (default :data:`DEFAULT_MAX_DENSE_SIZE`,
        4,000,000; ``None``: no limit); a larger matrix raises ``ValueError`` with the hint.
        """
        return _derived("todense")(self, max_size=max_size)

    # -- numpy interoperability --------------------------------------------------------------
    # An operator is not an array: numpy's binary operators and ufuncs defer to the operator
    # (``2.0 * A`` with a numpy scalar stays an operator; ``numpy.exp(A)`` raises TypeError)
    # instead of densifying it through ``__array__``.
    __array_ufunc__ = None

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Any:
        """``numpy.asarray(A)``: the matrix (``(*shape_out, *shape_in)``) on the host, for small operators.

        The operator is densified (:func:`todense`, whose size limit applies: a larger
        matrix raises ``ValueError`` with the hint) and copied to the host in its own
        dtype, or in ``dtype`` when numpy asks for one.  ``copy=False`` raises
        ``ValueError``: the matrix is built, never a view.

        Examples
        --------
        >>> import numpy as np
        >>> import kpflow
        >>> np.asarray(kpflow.Diagonal(np.asarray([1.0, 2.0], dtype=np.float32)))
        array([[1., 0.],
               [0., 2.]], dtype=float32)
        """
        import numpy as np  # numpy is the caller

        where = f"numpy.asarray({type(self).__name__})"
        if copy is False:
            msg = (
                f"{where}: copy=False cannot be honoured, the matrix of an operator is built by "
                "densifying it; use copy=None or copy=True"
            )
            raise ValueError(msg)
        _derived("check_dense_size")(self, DEFAULT_MAX_DENSE_SIZE, where)
        host = on_host(_derived("dense_rule")(self))
        return np.array(host, dtype=dtype, copy=True) if copy else np.asarray(host, dtype=dtype)

    def reshape(self, shape_in: Any, shape_out: Any) -> LinearOperator:
        """The same map seen on other tensor shapes of the same sizes."""
        return _derived("reshape")(self, shape_in, shape_out)

    def partial_trace(self, axes: Any, *, mean: bool = False) -> LinearOperator:
        """Trace out ``axes`` of a square operator (``shape_in == shape_out``)."""
        return _derived("partial_trace")(self, axes, mean=mean)

    def gram(self) -> LinearOperator:
        """The Gram operator ``A Aᵀ`` on ``shape_out``."""
        return _derived("gram")(self)

    # -- algebra ----------------------------------------------------------------------------
    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, LinearOperator):
            return _derived("compose")(self, other)
        return self.matvec(other)

    def __add__(self, other: Any) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _derived("add")(self, other)

    def __sub__(self, other: Any) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _derived("add")(self, _derived("scale")(-1.0, other))

    def __neg__(self) -> LinearOperator:
        return _derived("scale")(-1.0, self)

    def __mul__(self, c: Any) -> LinearOperator:
        if not isinstance(c, numbers.Real):
            return NotImplemented
        return _derived("scale")(float(c), self)

    __rmul__ = __mul__

    def __truediv__(self, c: Any) -> LinearOperator:
        if not isinstance(c, numbers.Real):
            return NotImplemented
        if c == 0:
            msg = f"{type(self).__name__}.__truediv__: cannot divide an operator by zero"
            raise ZeroDivisionError(msg)
        return _derived("scale")(1.0 / float(c), self)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape_in={self.shape_in}, shape_out={self.shape_out}, "
            f"dtype={self.dtype}, xp={namespace_name(self.xp)})"
        )


class SymmetricOperator(LinearOperator):
    """A square operator with ``A = Aᵀ``: subclasses implement ``_matmat`` only.

    ``_rmatmat`` is ``_matmat``, ``A.T`` is ``A`` itself and ``is_symmetric(A)`` is True
    (rules registered once, for every subclass: K, NTK_S, Gram operators, ...).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> A = kpflow.Dense(xp.asarray([[1.0, 2.0]]))
    >>> G = A.gram()
    >>> isinstance(G, kpflow.operators.SymmetricOperator), G.T is G
    (True, True)
    """

    def _rmatmat(self, Y: Any) -> Any:
        return self._matmat(Y)


def is_operator(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`LinearOperator`.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> kpflow.operators.is_operator(kpflow.Diagonal(xp.ones(3)))
    True
    """
    return isinstance(obj, LinearOperator)


def on_host(a: Any) -> Any:
    """``a`` as a numpy array in its own dtype: an explicit copy where it lives elsewhere.

    torch tensors are detached (and copied from their device), cupy arrays copied with
    ``.get()``, array-api-strict arrays on another device moved to its CPU device, jax
    arrays copied by ``numpy.asarray``; numpy arrays come back as they are.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.operators.base import on_host
    >>> on_host(xp.asarray([1.0, 2.0], device=xp.Device("device1"))).tolist()
    [1.0, 2.0]
    """
    import array_api_compat
    import numpy as np

    if hasattr(a, "detach"):  # torch
        return a.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(a):
        return a.get()
    if array_api_compat.is_array_api_strict_namespace(array_api_compat.array_namespace(a)):
        import array_api_strict

        a = array_api_strict.asarray(a, device=array_api_strict.Device("CPU_DEVICE"))
    return np.asarray(a)


def meta_of_array(a: Any, where: str) -> dict[str, Any]:
    """The ``xp``, ``dtype`` and ``device`` keyword arguments describing array ``a``."""
    return {"xp": array_namespace(a, where=where), "dtype": a.dtype, "device": device_of(a)}


def common_meta(ops: list[LinearOperator], where: str) -> dict[str, Any]:
    """The shared metadata of several operators; mismatches raise ``TypeError`` naming both."""
    first = ops[0]
    known = next((op.device for op in ops if op.device is not None), None)  # None: built in jax.jit
    for op in ops[1:]:
        if op.xp is not first.xp:
            msg = (
                f"{where}: operators from two namespaces were mixed: "
                f"{namespace_name(first.xp)} and {namespace_name(op.xp)}"
            )
            raise TypeError(msg)
        if op.dtype != first.dtype:
            msg = f"{where}: operators of two dtypes were mixed: {first.dtype} and {op.dtype}"
            raise TypeError(msg)
        if not same_device(op.device, first.device):
            msg = f"{where}: operators on two devices were mixed: {first.device} and {op.device}"
            raise TypeError(msg)
    return {"xp": first.xp, "dtype": first.dtype, "device": known}
