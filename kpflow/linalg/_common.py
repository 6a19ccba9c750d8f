"""Shared machinery of :mod:`kpflow.linalg`, gathered from the modules that hold it by responsibility.

=========================  ==============================================================
module                     what
=========================  ==============================================================
``_results``               :class:`ScalarResult`, :class:`EighResult`, :class:`SvdResult`
``_checks``                input checks of the public calls
``_backend``               the operator's adapter, :func:`without_graph`, :func:`kernel`
``_probes``                random probe blocks, the mean of per-probe estimates
``_products``              :class:`MatvecCounter`: chunked, padded, counted products
``_rows``                  :func:`inner_rows`, :func:`orthonormal_rows`
=========================  ==============================================================

Every algorithm works on *flat blocks*: a block of ``k`` vectors is an array
of shape ``(k, n)`` whose rows are the vectors.  :class:`MatvecCounter`
reshapes blocks to the operator's tensor shapes, applies the operator in one
batched call per chunk, counts the products (a block of ``k`` probes is ``k``
matvecs) and reports progress.  :func:`without_graph` runs a public entry point
under the backend's ``no_grad()``; :func:`kernel` compiles the dense algebra
between products where the backend compiles per shape (jax).
"""

from __future__ import annotations

from kpflow._array import device_of, host_rng
from kpflow.linalg._backend import adapter_of, dtype_eps, kernel, like_array, without_graph
from kpflow.linalg._checks import (
    check_budget,
    check_k,
    check_method,
    check_operator,
    check_square,
    check_tol,
)
from kpflow.linalg._probes import mean_and_error, probes
from kpflow.linalg._products import (
    CHUNK,
    MIN_BUCKET,
    PRODUCT_COPIES,
    UNIT_BLOCK,
    UNPADDED_FROM,
    MatvecCounter,
    min_bucket,
    padded_size,
    rows_for_budget,
    unit_rows,
)
from kpflow.linalg._results import EighResult, ScalarResult, SvdResult
from kpflow.linalg._rows import INNER_CHUNK, inner_rows, orthonormal_rows

__all__ = [
    "CHUNK",
    "DENSE_LIMIT",
    "INNER_CHUNK",
    "MIN_BUCKET",
    "PRODUCT_COPIES",
    "UNIT_BLOCK",
    "UNPADDED_FROM",
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
    "device_of",
    "dtype_eps",
    "host_rng",
    "inner_rows",
    "kernel",
    "like_array",
    "mean_and_error",
    "min_bucket",
    "orthonormal_rows",
    "padded_size",
    "probes",
    "rows_for_budget",
    "unit_rows",
    "without_graph",
]

#: Operators with at most this many rows (or columns) are densified exactly
#: (``n`` unit-vector matvecs and an ``O(n³)`` dense eigendecomposition) when
#: ``method="auto"`` and no structured rule applies.
DENSE_LIMIT = 256
