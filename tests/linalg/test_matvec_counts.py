"""Every reported ``num_matvecs`` equals the rows the operator actually multiplied.

A counting wrapper records the rows pushed through ``_matmat`` and ``_rmatmat`` of an opaque
operator (only the generic, product-based routes apply); each public routine's report must
equal that count, whatever route, block size, cap or precision it takes.  (jax pads its
probe blocks, so these run on numpy, where rows are exact.)
"""

from __future__ import annotations

import warnings

import array_api_compat.numpy as cnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kpflow
from kpflow import linalg
from tests.linalg_helpers import Opaque, spectral_matrix


class _Counted(Opaque):
    """An opaque operator that counts the rows of every product (with A or Aᵀ)."""

    def __init__(self, M: np.ndarray, dtype: type = np.float64) -> None:
        super().__init__(kpflow.Dense(cnp.asarray(M.astype(dtype))))
        self.rows = 0

    def _matmat(self, X):
        self.rows += X.shape[0]
        return super()._matmat(X)

    def _rmatmat(self, Y):
        self.rows += Y.shape[0]
        return super()._rmatmat(Y)


SPECTRUM = st.sampled_from(["exp", "poly", "degenerate", "lowrank_noise"])


def _run(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # capped runs warn; their counts still hold
        return call(*args, **kwargs)


@settings(max_examples=25, deadline=None)
@given(
    spectrum=SPECTRUM,
    n=st.integers(300, 700),
    k=st.integers(1, 6),
    block=st.sampled_from([None, 1, 2, 3]),
    cap=st.sampled_from([None, 25, 60]),
    single=st.booleans(),
    seed=st.integers(0, 100),
)
def test_eigsh_lanczos_reports_every_product(spectrum, n, k, block, cap, single, seed):
    M, _ = spectral_matrix(spectrum, n, seed=seed)
    A = _Counted(M, np.float32 if single else np.float64)
    r = _run(linalg.eigsh, A, k, method="lanczos", rng=seed, block_size=block, max_matvecs=cap)
    assert r.num_matvecs == A.rows


@pytest.mark.parametrize("method", ["auto", "dense", "nystrom"])
@pytest.mark.parametrize("n", [40, 300])
def test_eigsh_other_routes_report_every_product(method, n):
    M, _ = spectral_matrix("exp", n, seed=1)
    A = _Counted(M)
    r = _run(linalg.eigsh, A, 4, method=method, rng=0)
    assert r.num_matvecs == A.rows


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (50, 50)])
@pytest.mark.parametrize("block", [None, 1])
def test_svds_reports_every_product_with_a_or_its_transpose(shape, block):
    M = np.random.default_rng(2).standard_normal(shape)
    A = _Counted(M)
    r = _run(linalg.svds, A, 3, rng=0, block_size=block, method="lanczos")
    assert r.num_matvecs == A.rows


@pytest.mark.parametrize("method", ["auto", "exact", "hutchinson", "hutch++", "xtrace", "xnystrace"])
@pytest.mark.parametrize("budget", [None, 30, 64])
def test_trace_reports_every_product(method, budget):
    M, _ = spectral_matrix("poly", 400, seed=3)
    A = _Counted(M)
    r = _run(linalg.trace, A, method=method, num_matvecs=budget if method != "exact" else None, rng=0)
    assert r.num_matvecs == A.rows


@pytest.mark.parametrize("method", ["auto", "exact", "hutchinson", "hutch++"])
def test_fro_norm_reports_every_product(method):
    M, _ = spectral_matrix("poly", 300, seed=4)
    A = _Counted(M)
    r = _run(linalg.fro_norm, A, method=method, num_matvecs=None if method == "exact" else 40, rng=0)
    assert r.num_matvecs == A.rows


@pytest.mark.parametrize("method", ["auto", "exact", "estimate"])
def test_effective_rank_and_alignment_report_every_product(method):
    M, _ = spectral_matrix("exp", 300, seed=5)
    N, _ = spectral_matrix("poly", 300, seed=6)
    A, B = _Counted(M), _Counted(N)
    r = _run(linalg.effective_rank, A, method=method, num_matvecs=None if method == "exact" else 48, rng=0)
    assert r.num_matvecs == A.rows
    A.rows = 0
    s = _run(linalg.alignment, A, B, method=method, num_matvecs=None if method == "exact" else 48, rng=0)
    assert s.num_matvecs == A.rows + B.rows
