"""Shared machinery of :mod:`kpflow.linalg`: result types, matvec counting, probes, progress.

Every algorithm works on *flat blocks*: a block of ``k`` vectors is an array
of shape ``(k, n)`` whose rows are the vectors.  :class:`MatvecCounter`
reshapes blocks to the operator's tensor shapes, applies the operator in one
batched call per chunk, counts the products (a block of ``k`` probes is ``k``
matvecs) and reports progress.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

from kpflow.operators.base import LinearOperator

__all__ = [
    "DENSE_LIMIT",
    "EighResult",
    "MatvecCounter",
    "ScalarResult",
    "SvdResult",
    "check_budget",
    "check_k",
    "check_method",
    "check_operator",
    "check_square",
    "host_rng",
    "like_array",
    "probes",
]

#: Operators with at most this many rows (or columns) are densified exactly
#: (``n`` unit-vector matvecs and an ``O(n³)`` dense eigendecomposition) when
#: ``method="auto"`` and no structured rule applies.
DENSE_LIMIT = 256

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


class EighResult(NamedTuple):
    """Top-``k`` eigenpairs of a symmetric operator, largest first.

    Unpacks as ``eigenvalues, eigenvectors, residual_norms, num_matvecs``
    (write ``w, V, *_ = eigsh(A, k)`` to keep the first two).

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
    """

    eigenvalues: Any
    eigenvectors: Any
    residual_norms: Any
    num_matvecs: int


class SvdResult(NamedTuple):
    """Top-``k`` singular triplets, largest first; unpacks as ``U, s, V, num_matvecs``.

    Attributes
    ----------
    U : array of shape (k, *shape_out)
        Left singular vectors (rows).
    s : array of shape (k,)
        Singular values, descending.
    V : array of shape (k, *shape_in)
        Right singular vectors (rows); ``A V[j] = s[j] U[j]``.
    num_matvecs : int
        Products with ``A`` or ``Aᵀ`` used.
    """

    U: Any
    s: Any
    V: Any
    num_matvecs: int


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


def host_rng(rng: Any, where: str) -> Any:
    """A ``numpy.random.Generator`` from ``int | Generator | None`` (SPEC 7)."""
    import numpy as np

    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        return np.random.default_rng(None if rng is None else int(rng))
    if isinstance(rng, np.random.Generator):
        return rng
    msg = f"{where}: expected rng to be an int, a numpy.random.Generator or None, got {type(rng).__name__}"
    raise TypeError(msg)


def like_array(A: LinearOperator) -> Any:
    """A tiny array carrying ``A``'s namespace, dtype and device."""
    return A.xp.zeros((1,), dtype=A.dtype, device=A.device)


def probes(gen: Any, k: int, n: int, like: Any, kind: str = "gaussian") -> Any:
    """``k`` random vectors of length ``n`` as a ``(k, n)`` block like ``like``."""
    from kpflow.backends import random_normal, random_rademacher

    draw = random_normal if kind == "gaussian" else random_rademacher
    return draw(gen, (k, n), like=like)


def dtype_eps(A: LinearOperator) -> float:
    """Machine epsilon of the operator's dtype."""
    return float(A.xp.finfo(A.dtype).eps)


# -- progress ------------------------------------------------------------------------------------
class _Progress:
    """``progress=True`` drives a tqdm bar when tqdm is installed (silent otherwise);
    a callable is called as ``progress(done, total)``; ``None``/``False`` is silent."""

    def __init__(self, progress: Any, total: int, desc: str) -> None:
        self.total = int(total)
        self.done = 0
        self.bar = None
        self.callback: Callable[[int, int], Any] | None = None
        if progress is True:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=self.total, desc=desc, leave=False)
        elif callable(progress):
            self.callback = progress
        elif progress not in (None, False):
            msg = f"{desc}: expected progress to be None, a bool or a callable, got {progress!r}"
            raise TypeError(msg)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class MatvecCounter:
    """Apply an operator to flat blocks, counting products and reporting progress.

    Parameters
    ----------
    op : LinearOperator
    progress : None, bool or callable
    total : int
        The expected number of products (for the progress bar).
    desc : str
        The public call's name (for the progress bar and errors).
    """

    def __init__(self, op: LinearOperator, progress: Any = None, total: int = 0, desc: str = "") -> None:
        self.op = op
        self.num_matvecs = 0
        self._progress = _Progress(progress, total, desc)

    def _run(self, X: Any, apply: Any, shape_in: tuple, size_out: int) -> Any:
        xp = self.op.xp
        k = X.shape[0]
        outs = []
        for start in range(0, k, CHUNK):
            stop = min(k, start + CHUNK)
            block = xp.reshape(X[start:stop, ...], (stop - start, *shape_in))
            outs.append(xp.reshape(apply(block), (stop - start, size_out)))
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


def unit_rows(A: LinearOperator, start: int, stop: int, n: int) -> Any:
    """Rows ``start..stop`` of the ``n × n`` identity, as a ``(stop-start, n)`` block."""
    xp = A.xp
    rows = xp.arange(start, stop, device=A.device)
    cols = xp.arange(n, device=A.device)
    return xp.astype(rows[:, None] == cols[None, :], A.dtype)


def orthonormal_rows(xp: Any, W: Any) -> Any:
    """An orthonormal basis (rows) of the row space of ``W`` of shape ``(b, n)``, ``b <= n``."""
    Q, _ = xp.linalg.qr(xp.matrix_transpose(W))
    return xp.matrix_transpose(Q)
