"""The adapter interface every backend implements.

An adapter is the one place where kpflow touches a framework directly: its
namespace, its devices, random numbers drawn on the array's device from a host
seed (SPEC 7), whether autograd records graphs (``no_grad``), and, for
frameworks that have them, ``jvp``, ``vjp``, ``vmap``, ``jacrev`` and ``jit``.
"""

from __future__ import annotations

import contextlib
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

    Subclasses must implement :meth:`owns` and :meth:`namespace`.  The defaults draw
    random numbers on the host (:meth:`random_normal`), record no autograd graph
    (:meth:`no_grad` is a null context) and do not compile (:meth:`jit`).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.backends import get_backend
    >>> adapter = get_backend("numpy")
    >>> with adapter.no_grad():
    ...     x = adapter.random_normal(0, (2, 3), dtype=np.float64)
    >>> x.shape, bool(np.all(x == adapter.random_normal(0, (2, 3), dtype=np.float64)))
    ((2, 3), True)
    """

    name: str = "base"
    has_autodiff: bool = False
    #: Whether the framework compiles a kernel for every new array shape, even eagerly (jax):
    #: callers that can choose their shapes (probe blocks) then keep to a few sizes.
    compiles_per_shape: bool = False
    #: Whether :meth:`trace` records a reusable graph (torch); False: ``trace`` returns ``f``.
    traces: bool = False

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

    def device_count(self, device: Any) -> int:
        """How many devices ``device`` spans (a jax sharding may span several; default 1).

        Examples
        --------
        >>> from kpflow.backends.numpy import adapter
        >>> adapter.device_count("cpu")
        1
        """
        return 1

    def is_accelerator(self, device: Any) -> bool:
        """Whether ``device`` is a GPU or another accelerator (default: no, the host CPU).

        Solvers use it for defaults that depend on the hardware: on the CPU an operator
        product of many states runs at GEMM speed one probe at a time, on an accelerator a
        block of probes costs little more than one.
        """
        return False

    # -- random numbers (SPEC 7) -------------------------------------------------------------
    def from_host(self, array: np.ndarray, *, dtype: Any, device: Any = None) -> Any:
        """Convert a host numpy sample to this backend's array with ``dtype`` on ``device``."""
        xp = self.namespace()
        return xp.asarray(array, dtype=dtype, device=device)

    def random_normal(self, seed: int, shape: tuple[int, ...], *, dtype: Any, device: Any = None) -> Any:
        """Standard normal samples of ``shape`` from the integer ``seed``, made on ``device``.

        The default draws on the host (``numpy.random.default_rng(seed)``) and converts
        with :meth:`from_host`; adapters of frameworks with their own generators draw on
        the device instead.  The same seed gives the same numbers on the same backend.
        """
        sample = np.random.default_rng(seed).standard_normal(shape)
        return self.from_host(sample, dtype=dtype, device=device)

    def random_rademacher(self, seed: int, shape: tuple[int, ...], *, dtype: Any, device: Any = None) -> Any:
        """Random ±1 entries of ``shape`` from the integer ``seed``, made on ``device``."""
        sample = np.random.default_rng(seed).choice([-1.0, 1.0], size=shape)
        return self.from_host(sample, dtype=dtype, device=device)

    # -- several devices ----------------------------------------------------------------------
    def distribute(self, block: Any) -> Any:
        """Lay a probe block ``(k, *shape)`` out for the operator product (default: unchanged).

        Every operator product in :mod:`kpflow.linalg` passes its probe block through here
        first.  An adapter that can split the probe axis across several devices (jax
        sharding) does so; the others return ``block`` itself.
        """
        return block

    # -- autograd graphs ---------------------------------------------------------------------
    def no_grad(self) -> contextlib.AbstractContextManager:
        """A context in which no autograd graph is recorded (a no-op for frameworks without one).

        torch records a graph for every operation on tensors that require grad; kpflow's
        iterative solvers and estimators run under this context so that their results carry
        no graph.  jax traces functionally and records nothing, so its adapter keeps the
        default.
        """
        return contextlib.nullcontext()

    def for_products(self, operands: tuple) -> tuple:
        """The arrays an operator product reads, as it should read them now (default: unchanged).

        ``operands`` is a tuple whose items are arrays, None or tuples of them.  Under
        :meth:`no_grad` nothing differentiates the product, so an adapter whose arrays can
        carry an autograd graph returns graph-free views of the same storage (torch: a
        matmul with an operand that requires grad copies it even under ``no_grad``, about
        1.8× slower); with autograd on it returns them unchanged, so that gradients of
        NTK quantities still flow into the parameters.
        """
        return operands

    def records_graph(self, arrays: tuple) -> bool:
        """Whether operations on these arrays (None allowed) would record an autograd graph now.

        False for frameworks without one; torch: grad mode is on and one of them requires grad.
        """
        return False

    def graph_free(self, x: Any) -> Any:
        """``x`` without its autograd history, sharing its storage (default: ``x`` itself)."""
        return x

    def recomputed(self, fn: Callable[..., Any], *arrays: Any) -> Any:
        """``fn(*arrays)``, keeping none of its intermediate results for a later backward pass.

        Where autograd would record ``fn`` (torch: :meth:`records_graph`), a backward pass
        runs ``fn`` again to differentiate it (activation checkpointing), so that its
        temporaries are not held for as long as the result lives.  Elsewhere it is a plain
        call.
        """
        return fn(*arrays)

    def attach_vjp(self, value: Any, inputs: dict[str, Any], vjp: Callable[[Any], dict[str, Any]]) -> Any:
        """``value`` made differentiable with respect to ``inputs`` by a given vector-Jacobian product.

        ``value`` carries no graph; the result equals it and, when a framework
        differentiates it with a cotangent ``g``, contributes ``vjp(g)[name]`` to the
        gradient of ``inputs[name]``.  Only adapters whose :meth:`records_graph` can be
        true implement it.
        """
        msg = f"the {self.name} backend records no autograd graph, so attach_vjp does not apply"
        raise TypeError(msg)

    def custom_vjp(
        self,
        fn: Callable[..., Any],
        vjp: Callable[[tuple, Any, Any], tuple],
        *,
        where: str,
    ) -> Callable[..., Any]:
        """``fn`` with a given reverse-mode derivative, its own operations never differentiated.

        The result ``call(*arrays)`` returns ``fn(*arrays)`` (``arrays`` may hold None), run
        on plain values: torch records no graph of it, jax does not trace it.  When the
        framework differentiates ``out = call(*arrays)`` (torch's autograd or ``torch.func``,
        ``jax.grad`` / ``jax.vjp``) with a cotangent ``g``, ``vjp(arrays, out, g)`` returns
        one cotangent per entry of ``arrays`` (None for a zero one).  This is how an
        iterative solve is differentiated by the implicit function theorem instead of
        through its iterations (:class:`kpflow.models.Implicit`).  Reverse mode only:
        forward-mode transforms of ``call`` raise.  Without autodiff (the default) it is
        ``fn`` itself.

        ``fn`` may read the values of its arrays (a stopping test), so under ``jax.jit`` or
        ``jax.vmap`` ``call`` raises a ``TypeError`` naming ``where``.

        Examples
        --------
        >>> import numpy as np
        >>> from kpflow.backends.numpy import adapter
        >>> square = adapter.custom_vjp(lambda a: a * a, lambda arrays, out, g: (2 * arrays[0] * g,),
        ...                             where="square")
        >>> square(np.arange(3.0)).tolist()
        [0.0, 1.0, 4.0]
        """
        return fn

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

    def jit(self, f: Callable, *, donate: tuple[int, ...] = ()) -> Callable:
        """Compile ``f`` where the framework can; otherwise return ``f`` unchanged.

        ``donate``: positions of arguments whose buffers the compiled program may reuse for
        its result (jax's ``donate_argnums``), so that an update of a large array is made in
        place; the caller never reads a donated argument again.  Ignored where nothing is
        compiled.
        """
        return f

    def trace(self, f: Callable, *example: Any) -> Callable:
        """``f`` as a graph of framework operations traced once at the arrays' shapes.

        The result takes arrays of the shapes, dtypes and device of ``example`` (their
        values are not read) and replays the recorded operations with no Python of ``f``
        in between, so a small function called many times (a step's Jacobian action) runs
        without the per-call overhead of autodiff transforms.  Raises where ``f`` cannot be
        traced (it reads array values in Python); the caller then runs ``f`` itself.  The
        default (no tracing) returns ``f``.

        Examples
        --------
        >>> import numpy as np
        >>> from kpflow.backends import get_backend
        >>> get_backend("numpy").trace(np.sin, np.zeros(2))(np.zeros(2)).tolist()
        [0.0, 0.0]
        """
        return f

    def trace_split(self, f: Callable, *example: Any, tangent: int) -> tuple[Callable, Callable, list]:
        """:meth:`trace`, split at argument ``tangent``: ``(prep, apply, shapes)``.

        ``f(*a) == apply(a[tangent], *prep(*others))`` with ``others`` the arguments but
        ``a[tangent]``: ``prep`` computes what does not read the tangent (a step's primal
        values, the residuals, of the given ``shapes``), so that it can run for every step
        at once and ``apply`` per step.  The default keeps ``others`` as the residuals.

        Examples
        --------
        >>> import numpy as np
        >>> from kpflow.backends import get_backend
        >>> numpy = get_backend("numpy")
        >>> prep, apply, shapes = numpy.trace_split(np.multiply, np.ones(2), np.ones(2), tangent=1)
        >>> apply(np.arange(2.0), *prep(np.full(2, 3.0))).tolist(), shapes
        ([0.0, 3.0], [(2,)])
        """

        def prep(*others: Any) -> tuple:
            return others

        def apply(y: Any, *others: Any) -> Any:
            return f(*others[:tangent], y, *others[tangent:])

        shapes = [tuple(a.shape) for i, a in enumerate(example) if i != tangent]
        return prep, apply, shapes

    def scan(self, f: Callable, init: Any, xs: tuple, *, reverse: bool = False) -> tuple[Any, Any]:
        """``carry, y_i = f(carry, x_i)``, with ``x_i`` the tuple of the ``i``-th rows of ``xs``.

        Returns the last carry and the ``y_i`` stacked along a new leading axis, in the order
        of ``xs`` (``reverse``: the last row is met first, as in ``jax.lax.scan``).  The
        default is a Python loop; a framework that compiles loops (jax: ``jax.lax.scan``)
        overrides it, so that a recursion inside :meth:`jit` is one program instead of one
        per step.

        Examples
        --------
        >>> import numpy as np
        >>> from kpflow.backends.numpy import adapter
        >>> carry, ys = adapter.scan(lambda c, x: (c + x[0], c + x[0]), np.zeros(()), (np.arange(4.0),))
        >>> float(carry), ys.tolist()
        (6.0, [0.0, 1.0, 3.0, 6.0])
        """
        n = xs[0].shape[0]
        ys: list[Any] = [None] * n
        for i in range(n - 1, -1, -1) if reverse else range(n):
            init, ys[i] = f(init, tuple(x[i, ...] for x in xs))
        return init, self.namespace().stack(ys, axis=0)

    def __repr__(self) -> str:
        return f"<kpflow backend {self.name!r}>"
