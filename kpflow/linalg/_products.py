"""Operator products on flat blocks: chunked, padded to a few sizes, counted, with progress.

Every algorithm works on *flat blocks*: a block of ``k`` vectors is an array
of shape ``(k, n)`` whose rows are the vectors.  :class:`MatvecCounter`
reshapes blocks to the operator's tensor shapes, applies the operator in one
batched call per chunk, counts the products (a block of ``k`` probes is ``k``
matvecs) and reports progress.
"""

from __future__ import annotations

from typing import Any

from kpflow._array import device_of
from kpflow.linalg._backend import adapter_of, kernel
from kpflow.linalg._progress import Progress
from kpflow.operators.base import LinearOperator

__all__ = [
    "CHUNK",
    "MIN_BUCKET",
    "UNIT_BLOCK",
    "UNPADDED_FROM",
    "MatvecCounter",
    "min_bucket",
    "padded_size",
    "rows_for_budget",
    "unit_rows",
]

#: Exact routes push unit vectors e_j through an operator in blocks of this many (bounded
#: memory: a block is ``UNIT_BLOCK × n``).
UNIT_BLOCK = 256

#: Probes are pushed through the operator in chunks of at most this many
#: vectors, so that progress can be reported and memory stays bounded.
CHUNK = 64


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


def _unpadded(xp: Any, rows: int, size_out: int, out: Any) -> Any:
    """The first ``rows`` products of a padded block, flat: ``(rows, size_out)``."""
    flat = xp.reshape(out, (out.shape[0], size_out))
    return flat if flat.shape[0] == rows else flat[:rows, ...]


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
        if self._pad:
            return kernel(op, _unpadded, rows, size_out)(apply(block))
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
