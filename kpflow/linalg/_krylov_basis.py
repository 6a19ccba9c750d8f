"""The Krylov basis of :func:`kpflow.linalg._krylov.restarted_lanczos`, and its Rayleigh–Ritz step.

On backends that compile per shape (jax) the basis keeps its whole storage of ``max_basis``
rows, so that each of its kernels compiles once per solve (see the fixed-shape kernels below).
"""

from __future__ import annotations

from typing import Any

import array_api_extra as xpx

from kpflow.linalg._backend import zeros_like_op
from kpflow.linalg._common import adapter_of, device_of, inner_rows, kernel
from kpflow.operators.base import LinearOperator

__all__ = ["_Basis", "_rayleigh_ritz"]


def _rayleigh_ritz(xp: Any, k: int, s: int, T: Any, W: Any) -> tuple[Any, Any, Any, Any]:
    """Ritz values (descending), vectors ``Y`` (m, m), top-``k`` residual estimates, ``max|θ|``."""
    m = T.shape[0]
    theta, Y = xp.linalg.eigh((T + xp.matrix_transpose(T)) / 2)
    theta = xp.flip(theta, axis=0)
    Y = xp.flip(Y, axis=1)
    Yl = Y[m - s :, :k]  # (s, k): the last block's coefficients
    GW = inner_rows(xp, W, W)  # (s, s)
    est = xp.sqrt(xp.maximum(xp.sum(Yl * (GW @ Yl), axis=0), 0.0))
    return theta, Y, est, xp.max(xp.abs(theta))


# -- fixed shapes (backends that compile per shape: jax) ---------------------------------------
# The basis grows by one block per step, so arrays sliced to its m rows take a new shape at
# every step, and jax compiles every kernel again for each (27 of a first solve's 30 s at
# 204,800 states).  There the solver works on the whole storage of ``max_basis`` rows
# instead: rows from m on are kept zero, the projected matrix is padded with a value below
# its spectrum, and m and the block's start are arguments, so each kernel compiles once.
def _placed(xp: Any, V: Any, Q: Any, start: Any) -> Any:
    """``V`` with rows ``start, ..., start + s − 1`` set to ``Q`` (s, n) and every later row zero."""
    s = Q.shape[0]
    rel = xp.arange(V.shape[0], dtype=start.dtype, device=device_of(V)) - start
    taken = xp.take(Q, xp.clip(rel, 0, s - 1), axis=0)
    return xp.where((rel >= 0)[:, None], xp.where((rel < s)[:, None], taken, 0.0), V)


def _with_columns(xp: Any, T: Any, H: Any, start: Any) -> Any:
    """``T`` with columns ``start, ...`` set to ``H`` (M, s) and the same rows to ``Hᵀ``."""
    s = H.shape[1]
    rel = xp.arange(T.shape[0], dtype=start.dtype, device=device_of(T)) - start
    inside = (rel >= 0) & (rel < s)
    cols = xp.take(H, xp.clip(rel, 0, s - 1), axis=1)  # (M, M): column j is H[:, j − start]
    T = xp.where(inside[None, :], cols, T)
    return xp.where(inside[:, None], xp.matrix_transpose(cols), T)


def _reset(xp: Any, T: Any, block: Any) -> Any:
    """A matrix like ``T`` holding ``block`` (j, j) in its top-left corner and zeros elsewhere."""
    M, j = T.shape[0], block.shape[0]
    out = xp.concat([block, xp.zeros((j, M - j), dtype=T.dtype, device=device_of(T))], axis=1)
    return xp.concat([out, xp.zeros((M - j, M), dtype=T.dtype, device=device_of(T))], axis=0)


def _rayleigh_ritz_padded(xp: Any, k: int, s: int, T: Any, W: Any, m: Any) -> tuple[Any, Any, Any, Any]:
    """:func:`_rayleigh_ritz` of the leading ``m × m`` block of ``T`` (M, M), ``m`` an array.

    The rows and columns from ``m`` on are replaced by ``−(1 + 2·max|T|)·I``, below every
    eigenvalue of the leading block, so the first ``m`` Ritz values and vectors are those of
    the block (the vectors zero beyond row ``m``), in the same order.
    """
    M = T.shape[0]
    idx = xp.arange(M, dtype=m.dtype, device=device_of(T))
    active = idx < m
    both = active[:, None] & active[None, :]
    T = xp.where(both, (T + xp.matrix_transpose(T)) / 2, 0.0)
    pad = -(1.0 + 2.0 * xp.max(xp.abs(T)))
    T = T + xp.eye(M, dtype=T.dtype, device=device_of(T)) * xp.where(active, 0.0, pad)[None, :]
    theta, Y = xp.linalg.eigh(T)
    theta = xp.flip(theta, axis=0)
    Y = xp.flip(Y, axis=1)
    Yl = xp.take(
        Y[:, :k], xp.clip(m - s + xp.arange(s, dtype=m.dtype, device=device_of(T)), 0, M - 1), axis=0
    )
    GW = inner_rows(xp, W, W)  # (s, s)
    est = xp.sqrt(xp.maximum(xp.sum(Yl * (GW @ Yl), axis=0), 0.0))
    return theta, Y, est, xp.max(xp.where(idx < m, xp.abs(theta), 0.0))


def _last_rows(xp: Any, s: int, Y: Any, m: Any) -> Any:
    """Rows ``m − s, ..., m − 1`` of ``Y``, ``m`` an array."""
    return xp.take(Y, m - s + xp.arange(s, dtype=m.dtype, device=device_of(Y)), axis=0)


def _uninitialised(A: LinearOperator, shape: tuple[int, ...]) -> Any:
    """Storage of ``shape`` with ``A``'s namespace, dtype and device, its entries unset."""
    return A.xp.empty(shape, dtype=A.dtype, device=A.device)


class _Basis:
    """``V`` (rows) and ``T = V A Vᵀ`` in storage of ``max_basis`` rows, updated in place where possible.

    With ``store_products``, also the rows ``A V`` (row ``i`` holds ``A v_i`` once its product
    has been computed), so that any Ritz pair's residual ``A u − θ u`` is explicit at no
    product's cost.

    With ``fixed`` (backends that compile per shape), :meth:`rows`, :meth:`products` and the
    projected matrix keep their full ``max_basis`` rows, zero from ``m`` on (see
    :func:`_placed`), so that every kernel between products sees one shape.
    """

    def __init__(self, A: LinearOperator, max_basis: int, *, store_products: bool = False) -> None:
        xp = A.xp
        self.A = A
        self.xp = xp
        self.fixed = bool(getattr(adapter_of(A), "compiles_per_shape", False))
        # rows from m on are read only where the storage keeps a fixed shape (then zero);
        # elsewhere every row is written before it is read, so nothing is zeroed
        rows = zeros_like_op if self.fixed else _uninitialised
        self.V = rows(A, (max_basis, A.size_in))
        self.AV = rows(A, (max_basis, A.size_in)) if store_products else None
        self.T = zeros_like_op(A, (max_basis, max_basis))
        self.m = 0

    def _index(self, i: int) -> Any:
        if self.fixed:  # a host scalar copied over: no program compiled for the conversion
            import numpy as np

            host = np.asarray(i, dtype=np.int32)
            return adapter_of(self.A).from_host(host, dtype=self.xp.int32, device=self.A.device)
        return self.xp.asarray(i, dtype=self.xp.int32, device=self.A.device)

    def rows(self) -> Any:
        return self.V if self.fixed else self.V[: self.m, :]

    def products(self) -> Any:
        """``A V`` of the current rows (``store_products`` only)."""
        assert self.AV is not None
        return self.AV if self.fixed else self.AV[: self.m, :]

    def set_rows(self, start: int, Q: Any) -> None:
        """Rows ``start, ...`` become ``Q``; the basis then has ``start + len(Q)`` rows."""
        if self.fixed:
            # the old basis is donated: _placed writes into its buffer
            self.V = kernel(self.A, _placed, donate=(0,))(self.V, Q, self._index(start))
        else:
            where = (slice(start, start + Q.shape[0]), slice(None))
            self.V = xpx.at(self.V, where).set(Q, copy=None, xp=self.xp)
        self.m = start + Q.shape[0]

    def set_products(self, start: int, AQ: Any) -> None:
        """Store ``A Q`` for the rows ``start, start + 1, ...`` (a no-op without ``store_products``)."""
        if self.AV is None:
            return
        if self.fixed:
            self.AV = kernel(self.A, _placed, donate=(0,))(self.AV, AQ, self._index(start))
        else:
            where = (slice(start, start + AQ.shape[0]), slice(None))
            self.AV = xpx.at(self.AV, where).set(AQ, copy=None, xp=self.xp)

    def set_last_columns(self, H: Any, s: int) -> None:
        """``T[:m, m−s:m] = H`` and ``T[m−s:m, :m] = Hᵀ``, with ``H = V (A Q)ᵀ`` from :func:`_expand`."""
        m = self.m
        if self.fixed:
            self.T = kernel(self.A, _with_columns)(self.T, H, self._index(m - s))
            return
        self.T = xpx.at(self.T, (slice(0, m), slice(m - s, m))).set(H, copy=None, xp=self.xp)
        Ht = self.xp.matrix_transpose(H)
        self.T = xpx.at(self.T, (slice(m - s, m), slice(0, m))).set(Ht, copy=None, xp=self.xp)

    def reset_T(self, block: Any) -> None:
        """``T`` becomes ``block`` (j, j) in its top-left corner (the rows kept by a restart)."""
        if self.fixed:
            self.T = kernel(self.A, _reset)(self.T, block)
            return
        j = block.shape[0]
        self.T = xpx.at(self.T, (slice(0, j), slice(0, j))).set(block, copy=None, xp=self.xp)

    def ritz(self, k: int, s: int, W: Any) -> tuple[Any, Any, Any, Any]:
        """:func:`_rayleigh_ritz` of the current ``T``: Ritz values, vectors, estimates, ``max|θ|``."""
        if self.fixed:
            return kernel(self.A, _rayleigh_ritz_padded, k, s)(self.T, W, self._index(self.m))
        return kernel(self.A, _rayleigh_ritz, k, s)(self.T[: self.m, : self.m], W)

    def last_rows(self, Y: Any, s: int) -> Any:
        """The rows of ``Y`` (Ritz vectors' coefficients) of the basis's last ``s`` rows."""
        if self.fixed:
            return kernel(self.A, _last_rows, s)(Y, self._index(self.m))
        return Y[self.m - s : self.m, :]
