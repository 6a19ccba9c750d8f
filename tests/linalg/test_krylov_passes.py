"""How often eigsh's block Lanczos projects against its basis, and that it stays orthogonal.

Each step makes two Gram–Schmidt passes against the basis: one on ``A Q`` (``_expand``), one
on the normalised next block (``_next_block``); a refilled row is projected twice more.  The
long float32 solves below (many restarts) must keep their Ritz vectors orthonormal and their
eigenvalues those of the dense matrix, and a slowly converging float64 solve must converge.
"""

from __future__ import annotations

import numpy as np
import pytest

import kpflow.linalg._krylov as krylov
from kpflow.linalg import eigsh
from tests.linalg_helpers import spectral_operator

N, K = 1200, 6


def _counting(monkeypatch):
    calls = {"_project_out": 0, "_project_once": 0, "_expand": 0}
    for name in calls:
        real = getattr(krylov, name)

        def counted(*args, _name=name, _real=real):
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(krylov, name, counted)
    return calls


@pytest.mark.parametrize("spectrum", ["exp", "poly", "lowrank_noise"])
@pytest.mark.parametrize("block", [1, 3])
def test_long_float32_solves_stay_orthonormal_and_exact(case32, spectrum, block):
    A, _, lam = spectral_operator(case32, spectrum, N)
    r = eigsh(A, K, method="lanczos", rng=0, block_size=block, max_basis=K + 4 * block, tol=1e-5)
    U = case32.to_numpy(r.eigenvectors).reshape(K, N).astype(np.float64)
    assert np.abs(U @ U.T - np.eye(K)).max() <= 1e-5
    np.testing.assert_allclose(case32.to_numpy(r.eigenvalues), lam[:K], rtol=1e-4, atol=1e-5 * lam[0])


def test_two_passes_per_step_and_a_slow_solve_converges(monkeypatch):
    # eigenvalues e^(−i/20): neighbours 5% apart, a basis of 12 rows: many restarts
    import array_api_compat.numpy as cnp

    from kpflow import Dense

    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((400, 400)))
    M = (Q * np.exp(-np.arange(400) / 20.0)) @ Q.T
    calls = _counting(monkeypatch)
    r = eigsh(Dense(cnp.asarray(M)), 4, method="lanczos", rng=0, block_size=1, max_basis=12)
    assert 12 < r.num_matvecs <= 60  # it restarted, and converged as fast as with more passes
    assert calls["_project_out"] == 0 and calls["_project_once"] == calls["_expand"] - 1
    np.testing.assert_allclose(np.asarray(r.eigenvalues), np.exp(-np.arange(4) / 20.0), rtol=1e-12)
