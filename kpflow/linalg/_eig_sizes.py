"""How :func:`kpflow.linalg.eigsh` sizes its Krylov solve: probes per product, basis rows, memory.

The block size (probes per product) follows the backend and the vector length
(:func:`_default_block`); the basis rows and the probes per chunk follow the memory budget
(:func:`_basis_rows`, :func:`_chunk_rows`), and float32 solves store ``A V`` beside the basis
when the budget holds both (:func:`_fits_products`).
"""

from __future__ import annotations

import numbers
from typing import Any

from kpflow.linalg._backend import adapter_of
from kpflow.linalg._products import MIN_BUCKET, UNPADDED_FROM, min_bucket, rows_for_budget
from kpflow.operators.base import LinearOperator

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "SMALL_BLOCK_SIZES",
]

#: Bytes the Krylov basis of :func:`eigsh` may take when ``memory_budget`` is not given (1 GiB).
DEFAULT_MEMORY_BUDGET = 2**30


#: Vector lengths from which a CPU product is GEMM-bound: blocks of 2 probes from the first,
#: 1 probe from the second (block Lanczos with one probe needs the fewest products).
SMALL_BLOCK_SIZES = (UNPADDED_FROM, 2**20)


def _default_block(A: LinearOperator, k: int) -> int:
    """Probes per product of ``"lanczos"`` when ``block_size`` is not given.

    - jax: 16 where it pads every probe block to at least 16 rows (:func:`min_bucket`:
      several devices, accelerators, operators under ``2**16`` entries), since smaller
      blocks would pay for 16 probes per product anyway; otherwise the CPU rules below;
    - the CPU, ``n >= 2**20``: 1; ``2**16 <= n < 2**20``: 2.  Such products run near GEMM
      speed with few probes, and fewer probes per step need fewer products.  Measured on
      NTK_S of a GRU, top 10 (``benchmarks/bench_ntk_spectrum.py``): at 1,638,400 states
      89, 98 and 130 products with 1, 2 and 4 probes, in 16, 17 and 23 s (numpy; one probe
      pays 8 products for the multiplicity check); at 204,800 states 81, 90 and 110
      products in 1.49, 1.53 and 1.47 s, where two probes are no slower;
    - otherwise (small operators, whose products are dominated by per-call overhead; GPUs,
      where a block costs little more than one probe): ``min(k, 4)``.
    """
    adapter = adapter_of(A)
    if min_bucket(A) > 1:  # jax where it pads blocks to 16 rows (1 on every other backend)
        return MIN_BUCKET
    if adapter.is_accelerator(A.device) or A.size_in < SMALL_BLOCK_SIZES[0]:
        return min(k, 4)
    return 1 if A.size_in >= SMALL_BLOCK_SIZES[1] else min(k, 2)


def _check_block(block_size: Any, k: int, where: str, *, nystrom: bool = False) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
        msg = f"{where}: expected block_size to be a positive int, got {block_size!r}"
        raise TypeError(msg)
    low = k if nystrom else 1
    if block_size < low:
        what = f"at least k={k} (the sketch size of method='nystrom')" if nystrom else "at least 1"
        msg = f"{where}: block_size={block_size} must be {what}"
        raise ValueError(msg)
    return int(block_size)


def _fits_products(A: LinearOperator, k: int, b: int, basis: int, memory_budget: Any) -> bool:
    """Whether ``A V`` fits beside the basis in the memory budget (see ``_basis_rows``).

    Stored products make the float32 verification free (``k`` products fewer per solve);
    they double the basis memory, so they are kept only when the budget holds both.
    """
    return (2 * basis + _work_rows(k, b)) * A.size_in * _itemsize(A) <= _budget_bytes(memory_budget)


def _budget_bytes(memory_budget: Any) -> float:
    """The memory budget in bytes: ``memory_budget``, or :data:`DEFAULT_MEMORY_BUDGET` when None."""
    return float(DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget)


def _work_rows(k: int, b: int) -> int:
    """Vectors the solver holds besides its basis: the block, its product, the residual block
    (``3·b``) and the Ritz vectors (``k``)."""
    return 3 * b + k


def _chunk_rows(A: LinearOperator, memory_budget: Any) -> int:
    """Probes per product under the memory budget (a quarter of it; see ``rows_for_budget``).

    The default budget applies when none is given, so that the solver's wide blocks (the
    ``k`` vectors of a verification, the ``2k`` of the parameter side's mapping back) are
    pushed through a large operator in several products instead of one ``k`` times as big.
    """
    rows = rows_for_budget(A, _budget_bytes(memory_budget) / 4)
    # jax pads blocks to min_bucket rows: smaller chunks would cost as much each
    return max(rows, min_bucket(A))


def _basis_rows(A: LinearOperator, k: int, b: int, max_basis: Any, memory_budget: Any, where: str) -> int:
    """Rows of the Krylov basis: ``max_basis``, or the default capped by the memory budget.

    The basis holds ``max_basis`` vectors of ``A.size_in`` entries; the solver's other arrays
    (the block, its product, the residual block, the Ritz vectors) are counted as ``3·b + k``
    more rows.
    """
    row_bytes = A.size_in * _itemsize(A)
    number = isinstance(memory_budget, numbers.Real) and not isinstance(memory_budget, bool)
    if memory_budget is not None and not (number and memory_budget > 0):
        msg = f"{where}: expected memory_budget to be a positive number of bytes, got {memory_budget!r}"
        raise ValueError(msg)
    budget = _budget_bytes(memory_budget)
    fit = int(budget // row_bytes) - _work_rows(k, b)
    smallest = k + 2 * b
    if max_basis is None:
        # A small space is spanned whole (at most n products, no restart, as dense would cost).
        default = A.size_in if A.size_in <= 4 * _default_basis(k, b) else _default_basis(k, b)
        rows = min(default, max(fit, smallest))
        if fit < smallest and rows < A.size_in:
            need = (smallest + _work_rows(k, b)) * row_bytes
            msg = (
                f"{where}: memory_budget={budget:.3g} bytes holds {max(fit, 0)} basis vectors of "
                f"{A.size_in} entries, fewer than the {smallest} that k={k} with block_size={b} "
                f"needs; raise memory_budget to at least {need} bytes, or lower k or block_size"
            )
            raise ValueError(msg)
        return rows
    if isinstance(max_basis, bool) or not isinstance(max_basis, numbers.Integral):
        msg = f"{where}: expected max_basis to be an int, got {max_basis!r}"
        raise TypeError(msg)
    if max_basis < smallest:
        msg = f"{where}: max_basis={max_basis} must be at least k + 2·block_size = {smallest}"
        raise ValueError(msg)
    return int(max_basis)


def _itemsize(A: LinearOperator) -> int:
    xp = A.xp
    return int(xp.finfo(A.dtype).bits) // 8 * (2 if xp.isdtype(A.dtype, "complex floating") else 1)


def _default_basis(k: int, b: int) -> int:
    """``max(5k, k + 10·b)``: 50 rows for ``k = 10`` (with 30, the NTK_S solves of the benchmark
    took 8% more products for one probe per step)."""
    return max(5 * k, k + 10 * b)
