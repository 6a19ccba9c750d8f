"""Probe blocks on jax: padded to 16 rows where that pays, unpadded for large operators on one CPU.

jax compiles per shape, so kpflow pads probe blocks to powers of two.  Below ``2**16``
entries, on accelerators and on several devices, the minimum is 16 rows (a product costs
about as much with one probe, and blocks must split evenly over devices); for a large
operator on one CPU device a product runs at GEMM speed with one probe, so blocks follow
the CPU rules (one or two probes) and are not padded further.  Measured on NTK_S of a GRU
at 1,638,400 states (top 10, float32): 250 products in 78 s with blocks of 16, 91 in 31 s.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import kpflow
from kpflow.linalg import eig
from kpflow.linalg._common import MIN_BUCKET, UNPADDED_FROM, min_bucket, padded_size
from tests.conftest import BACKENDS
from tests.linalg_helpers import Opaque


def test_the_unpadded_threshold_is_the_first_small_block_size() -> None:
    assert eig.SMALL_BLOCK_SIZES[0] == UNPADDED_FROM


def test_padded_size_rounds_up_to_a_power_of_two_from_the_minimum() -> None:
    assert [padded_size(r, 1) for r in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 32]
    assert [padded_size(r) for r in (1, 2, 16, 17)] == [MIN_BUCKET, MIN_BUCKET, 16, 32]


def test_backends_that_do_not_compile_never_pad() -> None:
    import array_api_compat.numpy as cnp

    A = kpflow.Diagonal(cnp.ones(UNPADDED_FROM * 2))
    assert min_bucket(A) == 1
    assert min_bucket(kpflow.Diagonal(cnp.ones(3))) == 1


class _Spy(Opaque):
    """Records the number of rows of every block the operator is applied to."""

    def __init__(self, op: Any) -> None:
        super().__init__(op)
        self.rows: list[int] = []

    def _matmat(self, X: Any) -> Any:
        self.rows.append(int(X.shape[0]))
        return super()._matmat(X)


@pytest.mark.skipif("jax" not in BACKENDS, reason="jax is not among the selected backends")
def test_on_one_jax_cpu_device_a_large_operator_gets_unpadded_small_blocks() -> None:
    import jax
    import jax.numpy as jnp
    from kpflow.backends.jax import adapter

    n = UNPADDED_FROM + 1000
    d = np.linspace(0.0, 1.0, n) ** 8
    d[:3] = [3.0, 2.0, 1.5]
    big = _Spy(kpflow.Diagonal(jnp.asarray(d, dtype=jnp.float32)))
    small = kpflow.Diagonal(jnp.ones(100, dtype=jnp.float32))
    assert min_bucket(big) == 1 and min_bucket(small) == MIN_BUCKET
    assert eig._default_block(big, 3) == 2  # the CPU rule for 2**16 <= n < 2**20
    assert eig._default_block(small, 3) == MIN_BUCKET
    r = kpflow.linalg.eigsh(big, 3, method="lanczos", rng=0)
    # float32, converged to kpflow's tolerance (100·ε32 · max|θ|); each eigenvalue lies within
    # its reported residual norm of the true one (Bauer–Fike for a symmetric operator)
    res = np.asarray(r.residual_norms, dtype=np.float64)
    assert res.max() <= 100 * np.finfo(np.float32).eps * 3.0 * 1.05
    err = np.abs(np.asarray(r.eigenvalues, dtype=np.float64) - [3.0, 2.0, 1.5])
    assert np.all(err <= res * 1.05 + 1e-6), (err, res)
    krylov_blocks = big.rows[:-1]  # the last block is the verification's k = 3 rows (padded to 4)
    assert krylov_blocks and max(krylov_blocks) <= 4, big.rows  # never padded to 16
    # several devices: blocks stay padded so that they split evenly
    two = SimpleNamespace(device_set={jax.devices()[0], object()})
    assert adapter.device_count(two) == 2 and adapter.device_count(jax.devices()[0]) == 1
