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


def _padded_chunks(xp: Any, plan: tuple, shape: tuple, X: Any) -> tuple[Any, ...]:
    """The chunks ``X[start:stop]`` of ``plan`` (``(start, stop, size)`` each), zero-padded to
    ``size`` rows and shaped ``(size, *shape)``."""
    out = []
    for start, stop, size in plan:
        block = X[start:stop, ...]
        if size > stop - start:
            fill = xp.zeros((size - (stop - start), X.shape[1]), dtype=X.dtype, device=device_of(X))
            block = xp.concat([block, fill], axis=0)
        out.append(xp.reshape(block, (size, *shape)))
    return tuple(out)


def _joined_rows(xp: Any, plan: tuple, size_out: int, *outs: Any) -> Any:
    """The products of :func:`_padded_chunks`'s blocks without their padding, joined: ``(k, size_out)``."""
    flat = [
        xp.reshape(out, (out.shape[0], size_out))[: stop - start, ...]
        for out, (start, stop, _) in zip(outs, plan, strict=True)
    ]
    return flat[0] if len(flat) == 1 else xp.concat(flat, axis=0)


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
        if self._pad and self._min == MIN_BUCKET and max(op.size_in, op.size_out) < UNPADDED_FROM:
            # a small operator: every block one width, so that its product is one program per
            # direction (compiling it costs more than the padding of a few blocks)
            self.chunk = min(self.chunk, MIN_BUCKET)

    def _apply(self, block: Any, apply: Any, shape_in: tuple, size_out: int) -> Any:
        """One chunk's products, unpadded (backends that do not compile per shape)."""
        rows = block.shape[0]
        block = self._adapter.distribute(self.op.xp.reshape(block, (rows, *shape_in)))
        return self.op.xp.reshape(apply(block), (rows, size_out))

    def _run_padded(self, X: Any, apply: Any, shape_in: tuple, size_out: int) -> Any:
        """:meth:`_run` where blocks are padded: one program cuts and pads every chunk of ``X``,
        one cuts and joins the products (jax: two programs per block size, not one per step)."""
        op = self.op
        k = X.shape[0]
        plan = tuple(
            (start, min(k, start + self.chunk), padded_size(min(k, start + self.chunk) - start, self._min))
            for start in range(0, k, self.chunk)
        )
        blocks = kernel(op, _padded_chunks, plan, shape_in)(X)
        outs = []
        for block, (start, stop, _) in zip(blocks, plan, strict=True):
            outs.append(apply(self._adapter.distribute(block)))
            self.num_matvecs += stop - start
            self._progress.update(stop - start)
        return kernel(op, _joined_rows, plan, size_out)(*outs)

    def _run(self, X: Any, apply: Any, shape_in: tuple, size_out: int) -> Any:
        xp = self.op.xp
        k = X.shape[0]
        if self._pad and k > 0:
            return self._run_padded(X, apply, shape_in, size_out)
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
