"""Shared machinery of :mod:`kpflow.linalg`: result types, matvec counting, probes, progress.

Every algorithm works on *flat blocks*: a block of ``k`` vectors is an array
of shape ``(k, n)`` whose rows are the vectors.  :class:`MatvecCounter`
reshapes blocks to the operator's tensor shapes, applies the operator in one
batched call per chunk, counts the products (a block of ``k`` probes is ``k``
matvecs) and reports progress.  :func:`without_graph` runs a public entry point
under the backend's ``no_grad()``; :func:`kernel` compiles the dense algebra
between products where the backend compiles per shape (jax).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, TypeVar, cast

import array_api_compat

from kpflow._array import device_of, host_rng
from kpflow.linalg._progress import Progress
from kpflow.operators.base import LinearOperator

__all__ = [
    "DENSE_LIMIT",
    "EighResult",
    "MatvecCounter",
    "ScalarResult",
    "SvdResult",
    "adapter_of",
    "check_budget",
    "check_k",
    "check_method",
    "check_operator",
    "check_square",
    "check_tol",
    "host_rng",
    "inner_rows",
    "kernel",
    "like_array",
    "mean_and_error",
    "min_bucket",
    "padded_size",
    "probes",
    "rows_for_budget",
    "without_graph",
]

#: Operators with at most this many rows (or columns) are densified exactly
#: (``n`` unit-vector matvecs and an ``O(n³)`` dense eigendecomposition) when
#: ``method="auto"`` and no structured rule applies.
DENSE_LIMIT = 256

#: Exact routes push unit vectors e_j through an operator in blocks of this many (bounded
#: memory: a block is ``UNIT_BLOCK × n``).
UNIT_BLOCK = 256

#: Probes are pushed through the operator in chunks of at most this many
#: vectors, so that progress can be reported and memory stays bounded.
CHUNK = 64


class ScalarResult:
    """A scalar estimate that stays in the operator's namespace, dtype and device.

    Attributes
    ----------
    value : array of shape ()
        The estimate, a 0-d array in the operator's namespace, dtype and device.
    error : array of shape () or None
        An estimate of the standard error of ``value`` (same namespace), or
        ``None`` when the method gives none; exact methods report ``0``.
    num_matvecs : int
        Operator-vector products used (a block of ``k`` probes counts ``k``).
    method : str
        The method that produced the value (``"auto"`` resolved).

    Notes
    -----
    ``float(result)`` copies the value to the host: it is the one place a
    transfer happens, and only when the caller asks for it.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import trace
    >>> r = trace(kpflow.Diagonal(xp.asarray([1.0, 2.0, 3.0])))
    >>> float(r), r.method, r.num_matvecs
    (6.0, 'exact', 0)
    """

    __slots__ = ("error", "method", "num_matvecs", "value")

    def __init__(self, value: Any, error: Any, num_matvecs: int, method: str) -> None:
        self.value = value
        self.error = error
        self.num_matvecs = int(num_matvecs)
        self.method = method

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        err = "None" if self.error is None else f"{float(self.error):.3g}"
        return (
            f"ScalarResult(value={float(self.value):.6g}, error={err}, "
            f"num_matvecs={self.num_matvecs}, method={self.method!r})"
        )


def _shape_text(a: Any) -> str:
    return f"<{tuple(a.shape)} {a.dtype}>"


class _UnpacksLike:
    """A result that unpacks like numpy's (its ``_unpacked`` fields) and keeps diagnostics as attributes."""

    __slots__ = ()
    _unpacked: tuple[str, ...] = ()
    _extra: tuple[str, ...] = ()

    def _pair(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._unpacked)

    def __iter__(self) -> Any:
        return iter(self._pair())

    def __len__(self) -> int:
        return len(self._unpacked)

    def __getitem__(self, index: Any) -> Any:
        return self._pair()[index]

    def __repr__(self) -> str:
        parts = [f"{name}={_shape_text(getattr(self, name))}" for name in self._unpacked]
        res = getattr(self, "residual_norms", None)
        if res is not None and int(res.shape[0]) > 0:
            from kpflow._array import array_namespace

            parts.append(f"max_residual={float(array_namespace(res).max(res)):.3g}")
        parts.append(f"num_matvecs={self.num_matvecs}")  # type: ignore[attr-defined]
        return f"{type(self).__name__}({', '.join(parts)})"


class EighResult(_UnpacksLike):
    """Top-``k`` eigenpairs of a symmetric operator, largest first.

    Unpacks into two, like ``numpy.linalg.eigh``: ``w, V = eigsh(A, k)``.  The
    diagnostics are attributes.  The repr shows shapes, not whole arrays.

    Attributes
    ----------
    eigenvalues : array of shape (k,)
        Descending.
    eigenvectors : array of shape (k, *shape_in)
        Row ``j`` is the unit eigenvector of ``eigenvalues[j]``.
    residual_norms : array of shape (k,)
        ``‖A v_j − λ_j v_j‖`` for each returned pair.
    num_matvecs : int
        Operator-vector products used.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.linalg import EighResult
    >>> r = EighResult(np.ones(2), np.eye(2), np.zeros(2), 4)
    >>> w, V = r
    >>> r
    EighResult(eigenvalues=<(2,) float64>, eigenvectors=<(2, 2) float64>, max_residual=0, num_matvecs=4)
    """

    __slots__ = ("eigenvalues", "eigenvectors", "num_matvecs", "residual_norms")
    _unpacked = ("eigenvalues", "eigenvectors")

    def __init__(self, eigenvalues: Any, eigenvectors: Any, residual_norms: Any, num_matvecs: int) -> None:
        self.eigenvalues = eigenvalues
        self.eigenvectors = eigenvectors
        self.residual_norms = residual_norms
        self.num_matvecs = int(num_matvecs)


class SvdResult(_UnpacksLike):
    """Top-``k`` singular triplets, largest first; unpacks into three: ``U, s, V = svds(A, k)``.

    Attributes
    ----------
    U : array of shape (k, *shape_out)
        Left singular vectors (rows).
    s : array of shape (k,)
        Singular values, descending.
    V : array of shape (k, *shape_in)
        Right singular vectors (rows, like numpy's ``Vh``); ``A V[j] = s[j] U[j]``.
    num_matvecs : int
        Products with ``A`` or ``Aᵀ`` used.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.linalg import SvdResult
    >>> U, s, V = SvdResult(np.eye(2), np.ones(2), np.eye(2), 3)
    >>> SvdResult(np.eye(2), np.ones(2), np.eye(2), 3)
    SvdResult(U=<(2, 2) float64>, s=<(2,) float64>, V=<(2, 2) float64>, num_matvecs=3)
    """

    __slots__ = ("U", "V", "num_matvecs", "s")
    _unpacked = ("U", "s", "V")

    def __init__(self, U: Any, s: Any, V: Any, num_matvecs: int) -> None:
        self.U = U
        self.s = s
        self.V = V
        self.num_matvecs = int(num_matvecs)


# -- input checks ----------------------------------------------------------------------------------
def check_operator(A: Any, where: str, name: str = "A") -> LinearOperator:
    """``A`` must be a :class:`LinearOperator`."""
    if not isinstance(A, LinearOperator):
        msg = f"{where}: expected {name} to be a kpflow LinearOperator, got {type(A).__name__}"
        raise TypeError(msg)
    return A


def check_square(A: LinearOperator, where: str, name: str = "A") -> None:
    """``A`` must map a tensor shape to itself."""
    if A.shape_in != A.shape_out:
        msg = (
            f"{where}: expected a square operator {name} (shape_in == shape_out), got "
            f"shape_in={A.shape_in} and shape_out={A.shape_out}"
        )
        raise ValueError(msg)


def check_method(method: Any, allowed: tuple[str, ...], where: str) -> str:
    """``method`` must be one of ``allowed``."""
    if not isinstance(method, str) or method not in allowed:
        msg = f"{where}: unknown method {method!r}; expected one of {list(allowed)}"
        raise ValueError(msg)
    return method


def check_k(k: Any, n: int, where: str, what: str = "the dimension") -> int:
    """``k`` must be an int with ``1 <= k <= n``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        msg = f"{where}: expected k to be a positive int, got {k!r}"
        raise TypeError(msg)
    k = int(k)
    if k < 1:
        msg = f"{where}: expected k >= 1, got k={k}"
        raise ValueError(msg)
    if k > n:
        msg = f"{where}: k={k} is larger than {what} ({n}); at most {n} pairs exist"
        raise ValueError(msg)
    return k


def check_tol(tol: Any, where: str, *, positive: bool = False, name: str = "tol") -> float:
    """``tol`` must be a finite real number, ``>= 0`` (``> 0`` with ``positive``); returns it as a float.

    Examples
    --------
    >>> from kpflow.linalg._common import check_tol
    >>> check_tol(1e-8, "f")
    1e-08
    >>> check_tol(float("nan"), "f")
    Traceback (most recent call last):
    ...
    ValueError: f: expected tol to be a finite number >= 0, got nan
    """
    what = "> 0" if positive else ">= 0"
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        msg = f"{where}: expected {name} to be a finite number {what}, got {tol!r}"
        raise TypeError(msg)
    value = float(tol)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        msg = f"{where}: expected {name} to be a finite number {what}, got {tol!r}"
        raise ValueError(msg)
    return value


def check_budget(num_matvecs: Any, minimum: int, where: str, method: str) -> int:
    """``num_matvecs`` must be an int of at least ``minimum``."""
    if isinstance(num_matvecs, bool) or not isinstance(num_matvecs, numbers.Integral):
        msg = f"{where}: expected num_matvecs to be an int, got {num_matvecs!r}"
        raise TypeError(msg)
    if num_matvecs < minimum:
        msg = (
            f"{where}: method {method!r} needs num_matvecs >= {minimum}, got {num_matvecs}; "
            "raise the budget or choose another method"
        )
        raise ValueError(msg)
    return int(num_matvecs)


def like_array(A: LinearOperator) -> Any:
    """A tiny array carrying ``A``'s namespace, dtype and device."""
    return A.xp.zeros((1,), dtype=A.dtype, device=A.device)


# namespace -> adapter; namespaces are modules, so the cache is tiny and never stale
_ADAPTERS: dict[Any, Any] = {}


def adapter_of(A: LinearOperator) -> Any:
    """The backend adapter (:class:`kpflow.backends.Backend`) of ``A``'s arrays."""
    adapter = _ADAPTERS.get(A.xp)
    if adapter is None:
        from kpflow.backends import get_backend

        adapter = _ADAPTERS[A.xp] = get_backend(like_array(A))
    return adapter


_F = TypeVar("_F", bound=Callable[..., Any])


def without_graph(func: _F) -> _F:
    """Run ``func(A, ...)`` under the adapter's ``no_grad()`` of its operator argument ``A``.

    kpflow's solvers and estimators never record autograd graphs of their iterations:
    on torch, a result computed from parameters that require grad would otherwise
    carry the graph of every product and orthogonalisation (memory grows with the
    iterations, and ``numpy.asarray`` of the result fails).  Differentiable NTK
    quantities are the operators' own products (``A.matvec(v)``), called directly.
    Arguments that are not operators are passed through (the function reports them).
    """

    @functools.wraps(func)
    def wrapper(A: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(A, LinearOperator):
            return func(A, *args, **kwargs)
        with adapter_of(A).no_grad():
            return func(A, *args, **kwargs)

    # functools.wraps copies __dict__, so a singledispatch function keeps register/dispatch.
    return cast(_F, wrapper)


@functools.lru_cache(maxsize=512)
def _jitted(adapter: Any, fn: Callable, static: tuple, donate: tuple[int, ...] = ()) -> Callable:
    return adapter.jit(functools.partial(fn, adapter.namespace(), *static), donate=donate)


def kernel(A: LinearOperator, fn: Callable, *static: Any, donate: tuple[int, ...] = ()) -> Callable:
    """``fn(xp, *static, *arrays)`` bound to ``A``'s namespace, compiled where that pays.

    The dense algebra between products (orthogonalisations, sketches, leave-one-out
    formulas) is written as such pure functions of arrays.  On backends that compile a
    kernel for every primitive and shape even eagerly (jax), each function becomes one
    compiled program (one compilation per input shape instead of one per primitive, and
    no host round trip between its steps); elsewhere it runs as it is.  ``static`` holds
    hashable Python values (ints, strings) the function branches on.  ``donate`` names the
    array arguments (positions among them) whose buffers the compiled program may reuse
    for its result (:meth:`kpflow.backends.Backend.jit`): the caller must not read them
    again.  An update of the eigensolver's basis on jax then writes in place: 2.8 ms
    against 21 ms for a 50 × 200,448 basis.
    """
    adapter = adapter_of(A)
    if not getattr(adapter, "compiles_per_shape", False):
        return functools.partial(fn, A.xp, *static)
    return _jitted(adapter, fn, tuple(static), tuple(donate))


def mean_and_error(xp: Any, samples: Any) -> tuple[Any, Any]:
    """The mean of ``samples`` (m,) and its standard error (``None`` when ``m < 2``)."""
    m = samples.shape[0]
    se = xp.std(samples, correction=1) / math.sqrt(m) if m >= 2 else None
    return xp.mean(samples), se


def probes(gen: Any, k: int, n: int, like: Any, kind: str = "gaussian") -> Any:
    """``k`` random vectors of length ``n`` as a ``(k, n)`` block like ``like``, made on its device.

    One integer seed is drawn from the host generator ``gen``; the block is drawn with
    it on ``like``'s device (see :func:`kpflow.backends.random_normal`).
    """
    from kpflow.backends import random_normal, random_rademacher

    draw = random_normal if kind == "gaussian" else random_rademacher
    return draw(gen, (k, n), like=like)


def dtype_eps(A: LinearOperator) -> float:
    """Machine epsilon of the operator's dtype."""
    return float(A.xp.finfo(A.dtype).eps)


# -- products ------------------------------------------------------------------------------------
#: Smallest padded block on backends that compile per shape (see :func:`padded_size`).
MIN_BUCKET = 16


#: Vector length from which an operator on one CPU device gets unpadded small blocks (see
#: :func:`min_bucket`; equal to the first of ``kpflow.linalg.eig.SMALL_BLOCK_SIZES``).
UNPADDED_FROM = 2**16


def padded_size(rows: int, minimum: int = MIN_BUCKET) -> int:
    """The padded block size for ``rows`` probes: the next power of two, at least ``minimum``.

    On backends that compile a kernel for every new shape (jax, even eagerly), an operator
    applied to blocks of many different sizes compiles each of its primitives again for
    every size.  Padding with zero rows (a linear map sends them to zero) keeps to at most
    ``log2(CHUNK / minimum) + 1`` sizes, for at most twice the work per block.
    """
    return min(CHUNK, max(minimum, 1 << (rows - 1).bit_length()))


def min_bucket(op: LinearOperator) -> int:
    """The smallest padded block of ``op``'s products on a backend that compiles per shape.

    :data:`MIN_BUCKET` (16), except for an operator of at least :data:`UNPADDED_FROM`
    entries per probe (its larger side) on one CPU device, where a product
    runs at GEMM speed with one probe and blocks of 1, 2, 4, ... rows are not padded further
    (1 on the other backends, which never pad).  On several devices, blocks stay padded to
    16 rows so that they split evenly (``docs/jax.md``); on an accelerator a block of 16
    costs little more than one probe.
    """
    adapter = adapter_of(op)
    if not getattr(adapter, "compiles_per_shape", False):
        return 1
    size = max(op.size_in, op.size_out)
    one_cpu = adapter.device_count(op.device) == 1 and not adapter.is_accelerator(op.device)
    return 1 if one_cpu and size >= UNPADDED_FROM else MIN_BUCKET


def _pad_rows(xp: Any, size: int, shape: tuple, block: Any) -> Any:
    """``block`` (rows, n) with zero rows appended up to ``size``, as (size, *shape)."""
    fill = xp.zeros((size - block.shape[0], block.shape[1]), dtype=block.dtype, device=device_of(block))
    return xp.reshape(xp.concat([block, fill], axis=0), (size, *shape))


class MatvecCounter:
    """Apply an operator to flat blocks, counting products and reporting progress.

    Blocks are pushed through in chunks of at most ``CHUNK`` rows.  On backends whose
    adapter compiles per shape (``compiles_per_shape``: jax), each chunk is padded with
    zero rows to a power-of-two size (:func:`padded_size`), so that the kernels compiled for
    the operator's primitives are reused by every later block and every later call.

    Parameters
    ----------
    op : LinearOperator
    progress : None, bool or callable
    total : int
        The expected number of products (for the progress bar).
    desc : str
        The public call's name (for the progress bar and errors).
    max_rows : int, optional
        A smaller chunk than ``CHUNK`` (e.g. from a memory budget: :func:`rows_for_budget`).
    min_rows : int, optional
        The smallest padded block (default :func:`min_bucket` of ``op``).
    """

    def __init__(
        self,
        op: LinearOperator,
        progress: Any = None,
        total: int = 0,
        desc: str = "",
        max_rows: int | None = None,
        min_rows: int | None = None,
    ) -> None:
        self.op = op
        self.chunk = CHUNK if max_rows is None else max(1, min(CHUNK, int(max_rows)))
        self._min = min_bucket(op) if min_rows is None else int(min_rows)
        self.num_matvecs = 0
        self._progress = Progress(progress, total, desc)
        self._adapter = adapter_of(op)
        self._pad = bool(getattr(self._adapter, "compiles_per_shape", False))

    def _apply(self, block: Any, apply: Any, shape_in: tuple, size_out: int) -> Any:
        xp, op = self.op.xp, self.op
        rows = block.shape[0]
        size = rows
        if self._pad and padded_size(rows, self._min) > rows:
            size = padded_size(rows, self._min)
            block = kernel(op, _pad_rows, size, shape_in)(block)
        else:
            block = xp.reshape(block, (size, *shape_in))
        block = self._adapter.distribute(block)
        out = xp.reshape(apply(block), (size, size_out))
        return out if size == rows else out[:rows, ...]

    def _run(self, X: Any, apply: Any, shape_in: tuple, size_out: int) -> Any:
        xp = self.op.xp
        k = X.shape[0]
        outs = []
        for start in range(0, k, self.chunk):
            stop = min(k, start + self.chunk)
            block = X if (start, stop) == (0, k) else X[start:stop, ...]
            outs.append(self._apply(block, apply, shape_in, size_out))
            self.num_matvecs += stop - start
            self._progress.update(stop - start)
        if not outs:
            return xp.zeros((0, size_out), dtype=self.op.dtype, device=self.op.device)
        return outs[0] if len(outs) == 1 else xp.concat(outs, axis=0)

    def matmat(self, X: Any) -> Any:
        """``X (k, size_in) -> A X (k, size_out)``."""
        op = self.op
        return self._run(X, op._matmat, op.shape_in, op.size_out)

    def rmatmat(self, Y: Any) -> Any:
        """``Y (k, size_out) -> Aᵀ Y (k, size_in)``."""
        op = self.op
        return self._run(Y, op._rmatmat, op.shape_out, op.size_in)

    def close(self) -> None:
        self._progress.close()


#: Probe-sized arrays an operator product is assumed to hold at once (its input, output and
#: intermediates), when a memory budget sizes the probe chunks.
PRODUCT_COPIES = 8


def rows_for_budget(op: LinearOperator, budget: float) -> int:
    """Probes per chunk such that ``PRODUCT_COPIES`` probe-sized arrays fit in ``budget`` bytes.

    Examples
    --------
    >>> import numpy as np
    >>> import kpflow
    >>> from kpflow.linalg._common import rows_for_budget
    >>> rows_for_budget(kpflow.Dense(np.eye(1000)), 8 * 8 * 1000 * 5)
    5
    """
    xp = op.xp
    itemsize = int(xp.finfo(op.dtype).bits) // 8
    per_row = PRODUCT_COPIES * max(op.size_in, op.size_out) * itemsize
    return max(1, int(budget // per_row))


def unit_rows(A: LinearOperator, start: int, stop: int, n: int) -> Any:
    """Rows ``start..stop`` of the ``n × n`` identity, as a ``(stop-start, n)`` block."""
    xp = A.xp
    rows = xp.arange(start, stop, device=A.device)
    cols = xp.arange(n, device=A.device)
    return xp.astype(rows[:, None] == cols[None, :], A.dtype)


#: Entries per partial sum of :func:`inner_rows` (see there).
INNER_CHUNK = 16384


def inner_rows(xp: Any, X: Any, Y: Any) -> Any:
    """``X @ Yᵀ`` (``(m, n) × (s, n) → (m, s)``) summed in chunks of ``INNER_CHUNK`` entries, pairwise.

    A BLAS product contracting over a long axis accumulates its sums nearly serially: for
    float32 rows of ``n = 200,448`` entries, numpy's error is about ``1e-6`` relative and
    torch's ``7e-6``, at the level of the eigensolver's float32 tolerance (``1.2e-5``).
    Partial products over chunks of 16,384 entries, added pairwise, bring it below
    ``1e-6`` for the same arithmetic (the chunks are views, each product is a GEMM; a few
    Python calls more per product).

    On jax the product with the operand of fewer rows first is slower (28 against 23 ms for
    one row against a 50 × 200,448 basis) and less accurate (3.6e-6 against 1.7e-7, chunked;
    unchunked, XLA reaches 1.4e-5, the float32 tolerance itself): jax computes ``(Y Xᵀ)ᵀ``
    when X has fewer rows, behind an optimisation barrier that keeps XLA from swapping the
    operands back.  XLA copies every chunk (the 23 ms, against 2 ms unchunked), but its
    unchunked errors (up to 2.5e-6) stall the eigensolver in float32.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.linalg._common import inner_rows
    >>> X = np.ones((2, 70000), dtype=np.float32)
    >>> inner_rows(np, X, X)
    array([[70000., 70000.],
           [70000., 70000.]], dtype=float32)
    """
    n = X.shape[-1]
    if n <= INNER_CHUNK:
        return X @ xp.matrix_transpose(Y)
    if array_api_compat.is_jax_namespace(xp) and X.shape[0] < Y.shape[0]:
        import jax  # only reached with jax arrays

        return xp.matrix_transpose(jax.lax.optimization_barrier(inner_rows(xp, Y, X)))
    cuts = [(lo, min(lo + INNER_CHUNK, n)) for lo in range(0, n, INNER_CHUNK)]
    parts = [X[:, lo:hi] @ xp.matrix_transpose(Y[:, lo:hi]) for lo, hi in cuts]
    while len(parts) > 1:
        pairs = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)]
        parts = pairs + parts[len(pairs) * 2 :]
    return parts[0]


def orthonormal_rows(xp: Any, W: Any) -> Any:
    """An orthonormal basis (rows) of the row space of ``W`` of shape ``(b, n)``, ``b <= n``."""
    Q, _ = xp.linalg.qr(xp.matrix_transpose(W))
    return xp.matrix_transpose(Q)
