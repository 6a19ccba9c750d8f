"""The float32 verification of eigsh: explicit residuals, from stored products or from k more.

In float32 the restarted Lanczos reports explicit residual norms ``‖A u − θ u‖``.  When the
memory budget holds ``A V`` beside the basis, they are read from the stored products at no
product's cost; otherwise ``k`` more products compute them.  Both must give the same pairs
and residuals that are exactly those of ``A`` (checked in float64 on the host), and both
must catch Krylov estimates that understate the residuals.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import kpflow.linalg._krylov as krylov
from kpflow.linalg import eigsh
from kpflow.linalg.eig import _fits_products
from tests.conftest import check_meta
from tests.linalg_helpers import spectral_operator

N, K, BLOCK = 600, 5, 2
#: The default basis for k = 5, block 2 is 25 rows: 36 rows of 600 float32 entries fit in this
#: budget, 61 (with the stored products) do not.
NO_ROOM = 36 * N * 4 + 1000


def _explicit_residuals(case, M, r):
    """‖A u − λ u‖ on the host in float64, from A's host matrix M."""
    U = case.to_numpy(r.eigenvectors).reshape(K, N).astype(np.float64)
    w = case.to_numpy(r.eigenvalues).astype(np.float64)
    return np.linalg.norm(U @ M.T - w[:, None] * U, axis=1)


def test_the_budget_decides_whether_products_are_stored(case32):
    A, _, _ = spectral_operator(case32, "exp", N)
    assert _fits_products(A, K, BLOCK, 25, None)
    assert not _fits_products(A, K, BLOCK, 25, NO_ROOM)
    assert _fits_products(A, K, BLOCK, 25, NO_ROOM + 25 * N * 4)


@pytest.mark.parametrize("spectrum", ["exp", "lowrank_noise"])
def test_stored_products_verify_for_free_and_agree_with_explicit_products(case32, spectrum):
    A, M, lam = spectral_operator(case32, spectrum, N)
    stored = eigsh(A, K, method="lanczos", rng=0, block_size=BLOCK)
    computed = eigsh(A, K, method="lanczos", rng=0, block_size=BLOCK, memory_budget=NO_ROOM)
    for r in (stored, computed):
        for x in (r.eigenvalues, r.eigenvectors, r.residual_norms):
            check_meta(case32, x)
        exact = _explicit_residuals(case32, M, r)
        # the reported norms are the residuals of A itself (float32 rounding of the products)
        np.testing.assert_allclose(case32.to_numpy(r.residual_norms), exact, atol=2e-6 * lam[0])
        assert exact.max() <= 100 * np.finfo(np.float32).eps * lam[0] * 1.05
        np.testing.assert_allclose(case32.to_numpy(r.eigenvalues), lam[:K], rtol=1e-4)
    # the same Krylov iterations; the verification costs k products only without storage
    assert stored.num_matvecs + K == computed.num_matvecs


def _understating_once(monkeypatch):
    """Make the first convergence test read residual estimates 1000× too small."""
    inner = krylov._Basis.ritz
    lied = []

    def lying(self, k, s, W):
        theta, Y, est, scale = inner(self, k, s, W)
        if not lied and self.m >= 3 * K:
            lied.append(True)
            est = est * 1e-3
        return theta, Y, est, scale

    monkeypatch.setattr(krylov._Basis, "ritz", lying)
    return lied


@pytest.mark.parametrize("budget", [None, NO_ROOM], ids=["stored", "computed"])
def test_understated_estimates_are_caught_by_the_explicit_residuals(case32, monkeypatch, budget):
    A, M, lam = spectral_operator(case32, "exp", N)
    # a tolerance 2.5x above float32's floor (100 eps): at the floor itself, where the last
    # digit of the residual decides, the run depends on the compiler's rounding
    tol = 250 * np.finfo(np.float32).eps
    honest = eigsh(A, K, method="lanczos", rng=0, block_size=BLOCK, memory_budget=budget, tol=tol)
    lied = _understating_once(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not converged" warning: the solver carries on
        r = eigsh(A, K, method="lanczos", rng=0, block_size=BLOCK, memory_budget=budget, tol=tol)
    assert lied
    exact = _explicit_residuals(case32, M, r)
    assert exact.max() <= tol * lam[0] * 1.05
    np.testing.assert_allclose(case32.to_numpy(r.eigenvalues), lam[:K], rtol=1e-4)
    # the premature stop was rejected, so the answer took more products than the honest one
    assert r.num_matvecs > honest.num_matvecs


def test_float64_needs_no_verification(case64):
    # In float64 the Krylov–Schur residuals are exact up to rounding: nothing is stored or
    # recomputed, whatever the budget.
    A, M, lam = spectral_operator(case64, "exp", N)
    a = eigsh(A, K, method="lanczos", rng=0, block_size=BLOCK)
    b = eigsh(A, K, method="lanczos", rng=0, block_size=BLOCK, memory_budget=2 * NO_ROOM)
    assert a.num_matvecs == b.num_matvecs
    exact = _explicit_residuals(case64, M, a)
    np.testing.assert_allclose(case64.to_numpy(a.residual_norms), exact, atol=1e-12 * lam[0])
