"""kpflow.linalg.eigsh and svds: block Lanczos, dense, Nyström and structured rules."""

from __future__ import annotations

import numpy as np
import pytest

import kpflow
from kpflow.linalg import eigsh, svds
from tests.conftest import check_meta
from tests.linalg_helpers import SPECTRA, Opaque, numpy_operator, spectral_matrix, spectral_operator


def _orthonormality_error(case, V) -> float:
    Vn = case.to_numpy(V).reshape(V.shape[0], -1)
    return float(np.abs(Vn @ Vn.T - np.eye(Vn.shape[0])).max())


def test_degenerate_top_eigenvalue_is_returned_with_full_multiplicity(case):
    A, _, _lam = spectral_operator(case, "degenerate", 100)
    r = eigsh(A, 10, method="lanczos", rng=0)
    w, V, res, nmv = r.eigenvalues, r.eigenvectors, r.residual_norms, r.num_matvecs
    for x in (w, V, res):
        check_meta(case, x)
    assert w.shape == (10,) and V.shape == (10, 100)
    tol = 1e-8 if case.dtype_name == "float64" else 1e-5
    assert np.abs(case.to_numpy(w) / 5.0 - 1.0).max() <= tol
    assert case.to_numpy(res).max() <= (1e-9 if case.dtype_name == "float64" else 1e-3) * 5.0
    assert _orthonormality_error(case, V) <= 1e3 * case.rtol
    # A space this small is spanned whole (no restart): at most n products, plus k to verify
    # the residuals in float32.
    assert 0 < nmv <= 100 + (10 if case.dtype_name == "float32" else 0)


def test_lanczos_converges_on_residuals_in_a_bounded_basis():
    M, _ = spectral_matrix("degenerate", 300, seed=2)
    r = eigsh(numpy_operator(M), 10, method="lanczos", rng=0, max_basis=40)
    w, res = r.eigenvalues, r.residual_norms
    np.testing.assert_allclose(np.asarray(w), np.full(10, 5.0), rtol=1e-10)
    assert np.asarray(res).max() <= 1e-10 * 5.0


@pytest.mark.parametrize("name", ["exp", "poly", "lowrank_noise"])
def test_product_count_is_comparable_to_arpack(name):
    sla = pytest.importorskip("scipy.sparse.linalg")
    M, lam = spectral_matrix(name, 900, seed=3)
    calls = [0]

    def mv(v):
        calls[0] += 1 if v.ndim == 1 else v.shape[1]
        return M @ v

    op = sla.LinearOperator(M.shape, matvec=mv, matmat=mv, dtype=M.dtype)
    sla.eigsh(op, k=10, which="LA", tol=1e-8, v0=np.ones(900))
    r = eigsh(numpy_operator(M), 10, method="lanczos", rng=0, tol=1e-8)
    np.testing.assert_allclose(np.asarray(r.eigenvalues), lam[:10], rtol=1e-7)
    # Measured: exp 36 vs 28, poly 44 vs 28, lowrank_noise ~140 vs ~115 (block size 4 vs 1).
    assert r.num_matvecs <= 1.7 * calls[0]


def test_restarts_keep_memory_bounded_and_the_answer_exact():
    M, lam = spectral_matrix("poly", 400, seed=5)
    small = eigsh(numpy_operator(M), 6, method="lanczos", rng=1, block_size=2, max_basis=10)
    big = eigsh(numpy_operator(M), 6, method="lanczos", rng=1, block_size=2, max_basis=400)
    for r in (small, big):
        np.testing.assert_allclose(np.asarray(r.eigenvalues), lam[:6], rtol=1e-9)
        assert np.asarray(r.residual_norms).max() <= 1e-9 * lam[0]
    assert small.num_matvecs > big.num_matvecs  # restarts cost products, not memory


def test_memory_budget_caps_the_basis_or_says_what_is_needed():
    M, lam = spectral_matrix("exp", 2000, seed=0)
    A = numpy_operator(M)
    row = 2000 * 8
    r = eigsh(A, 3, method="lanczos", rng=0, memory_budget=40 * row)
    np.testing.assert_allclose(np.asarray(r.eigenvalues), lam[:3], rtol=1e-9)
    with pytest.raises(ValueError, match=r"memory_budget=.* raise memory_budget to at least"):
        eigsh(A, 3, method="lanczos", memory_budget=5 * row)
    with pytest.raises(ValueError, match="memory_budget"):
        eigsh(A, 3, method="lanczos", memory_budget=-1)


def test_memory_budget_splits_the_probe_blocks():
    M, lam = spectral_matrix("exp", 600, seed=0)
    seen = []

    class Recording(Opaque):
        def _matmat(self, X):
            seen.append(X.shape[0])
            return super()._matmat(X)

    A = Recording(kpflow.Dense(np.asarray(M)))
    row = 600 * 8
    r = eigsh(A, 6, method="lanczos", rng=0, block_size=4, memory_budget=4 * 8 * 2 * row)
    np.testing.assert_allclose(np.asarray(r.eigenvalues), lam[:6], rtol=1e-9)
    assert max(seen) == 2  # a quarter of the budget holds 8 probe-sized arrays for 2 probes
    seen.clear()
    eigsh(A, 6, method="lanczos", rng=0, block_size=4)
    assert max(seen) == 4


def test_float32_converges_to_the_documented_tolerance(case32):
    A, _, lam = spectral_operator(case32, "exp", 800, seed=4)
    r = eigsh(A, 10, method="lanczos", rng=0, tol=0.0)  # raised to 100 ε(float32) ≈ 1.2e-5
    assert case32.to_numpy(r.residual_norms).max() <= 100 * np.finfo(np.float32).eps * lam[0]
    np.testing.assert_allclose(case32.to_numpy(r.eigenvalues), lam[:10], rtol=1e-4)


def test_cholesky_qr2_falls_back_on_ill_conditioned_blocks(case64):
    from kpflow.linalg._krylov import cholesky_qr2

    A = kpflow.Dense(case64.asarray(np.eye(50)))
    rng = np.random.default_rng(0)
    good = rng.standard_normal((4, 50))
    bad = np.vstack([good[:3], good[0] + 1e-12 * good[1]])  # rank-deficient to working precision
    for W in (good, bad):
        Q = case64.to_numpy(cholesky_qr2(A, case64.asarray(W)))
        assert np.abs(Q @ Q.T - np.eye(4)).max() <= 1e-12
    Q = case64.to_numpy(cholesky_qr2(A, case64.asarray(good)))
    # Same row space as W.
    P = Q.T @ Q
    assert np.abs(good @ P - good).max() <= 1e-12 * np.abs(good).max()


def test_degenerate_eigenvalue_twenty_times_at_k_twenty():
    M, _ = spectral_matrix("degenerate", 150)
    r = eigsh(numpy_operator(M), 20, method="lanczos", rng=1)
    w, res = r.eigenvalues, r.residual_norms
    np.testing.assert_allclose(np.asarray(w), np.full(20, 5.0), rtol=1e-8)
    assert np.asarray(res).max() <= 1e-8
    w21 = np.asarray(eigsh(numpy_operator(M), 21, method="lanczos", rng=1).eigenvalues)
    np.testing.assert_allclose(w21[20], 3.0, rtol=1e-8)


@pytest.mark.parametrize("name", sorted(SPECTRA))
def test_lanczos_matches_the_prescribed_spectrum(name):
    M, lam = spectral_matrix(name, 120, seed=3)
    r = eigsh(numpy_operator(M), 5, method="lanczos", rng=2)
    w, V, res = r.eigenvalues, r.eigenvectors, r.residual_norms
    np.testing.assert_allclose(np.asarray(w), lam[:5], rtol=1e-9, atol=1e-12)
    V = np.asarray(V)
    np.testing.assert_allclose(V @ M @ V.T, np.diag(lam[:5]), atol=1e-9)
    assert np.asarray(res).max() <= 1e-9 * lam[0]


def test_dense_method_and_auto_choices(case):
    A, _M, lam = spectral_operator(case, "exp", 40)
    dense = eigsh(A, 3, method="dense")
    assert dense.num_matvecs == 40
    case.assert_close(dense.eigenvalues, lam[:3], rtol=10 * case.rtol)
    auto_small = eigsh(A, 3)
    assert auto_small.num_matvecs == 40
    ruled = eigsh(A.op, 3)  # Dense rule: k products only, for the residual norms
    assert ruled.num_matvecs == 3
    case.assert_close(ruled.eigenvalues, lam[:3], rtol=10 * case.rtol)
    check_meta(case, ruled.eigenvectors)


def test_kronecker_eigenpairs_from_factors_keep_multiplicities(case64):
    a = case64.asarray(np.diag([3.0, 2.0, -4.0]))
    b = case64.asarray(spectral_matrix("poly", 4, seed=1)[0] - 0.2 * np.eye(4))
    K = kpflow.Kronecker(kpflow.Dense(a), kpflow.Kronecker(kpflow.Dense(b), kpflow.Identity((2,), like=a)))
    k = 7
    r = eigsh(K, k)
    assert r.num_matvecs == k  # residual norms only
    dense = np.asarray(case64.to_numpy(K.todense())).reshape(24, 24)
    expected = np.sort(np.linalg.eigvalsh(dense))[::-1][:k]
    case64.assert_close(r.eigenvalues, expected, rtol=1e-12)
    assert case64.to_numpy(r.residual_norms).max() <= 1e-12
    assert r.eigenvectors.shape == (k, 3, 4, 2)
    assert _orthonormality_error(case64, r.eigenvectors) <= 1e-12


def test_gram_uses_the_smaller_side(case):
    F = kpflow.Dense(case.randn(60, 8, seed=4))
    G = F.gram()  # 60 x 60, rank 8
    r = eigsh(G, 5)
    s = np.linalg.svd(case.to_numpy(F.array), compute_uv=False)
    case.assert_close(r.eigenvalues, s[:5] ** 2, rtol=100 * case.rtol)
    assert case.to_numpy(r.residual_norms).max() <= 100 * case.rtol * s[0] ** 2
    assert _orthonormality_error(case, r.eigenvectors) <= 100 * case.rtol


def test_a_large_small_side_is_no_exact_rule_and_eigsh_honours_the_callers_tol(case64):
    """Fᵀ F with more than DENSE_LIMIT columns is solved by eigsh with the caller's options."""
    from kpflow.linalg import DENSE_LIMIT, rules

    n_small = DENSE_LIMIT + 4
    rng = np.random.default_rng(5)
    F = kpflow.Dense(case64.asarray(rng.standard_normal((2 * n_small, n_small)) * 0.9 ** np.arange(n_small)))
    G = F.gram()
    assert rules.exact_eigsh(G, 3) is None
    assert rules.exact_eigsh(kpflow.Dense(case64.asarray(rng.standard_normal((60, 8)))).gram(), 3) is not None
    loose, tight = eigsh(G, 3, tol=1e-3, rng=0), eigsh(G, 3, tol=1e-10, rng=0)
    assert loose.num_matvecs < tight.num_matvecs  # the tolerance reached the small-side solve
    s = np.linalg.svd(case64.to_numpy(F.array), compute_uv=False)
    case64.assert_close(tight.eigenvalues, s[:3] ** 2, rtol=1e-9)
    assert tight.eigenvectors.shape == (3, 2 * n_small)


def test_identity_diagonal_and_scaled_rules(case):
    like = case.asarray([0.0])
    I = kpflow.Identity((3, 2), like=like)
    r = eigsh(I, 4)
    case.assert_close(r.eigenvalues, np.ones(4))
    assert r.eigenvectors.shape == (4, 3, 2)
    d = np.array([0.5, 4.0, -1.0, 4.0, 2.0])
    r = eigsh(2.0 * kpflow.Diagonal(case.asarray(d)), 3)
    case.assert_close(r.eigenvalues, np.array([8.0, 8.0, 4.0]))
    assert case.to_numpy(r.residual_norms).max() == 0.0


def test_nystrom_approximates_a_psd_operator(case64):
    A, _, lam = spectral_operator(case64, "exp", 100)
    r = eigsh(A, 3, method="nystrom", block_size=60, rng=0)
    assert r.num_matvecs == 63
    case64.assert_close(r.eigenvalues, lam[:3], rtol=1e-5)
    check_meta(case64, r.residual_norms)


def test_svds_matches_numpy(case):
    _check_svds(case, (40, 15))


def test_svds_of_a_wide_operator_uses_the_left_gram(case64):
    _check_svds(case64, (15, 40))


def _check_svds(case, shape):
    M = np.random.default_rng(5).standard_normal(shape)
    A = Opaque(kpflow.Dense(case.asarray(M)))
    r = svds(A, 4, method="lanczos", rng=0)
    U, s, V = r
    nmv = r.num_matvecs
    for x in (U, s, V):
        check_meta(case, x)
    assert U.shape == (4, shape[0]) and V.shape == (4, shape[1]) and nmv > 0
    case.assert_close(s, np.linalg.svd(M, compute_uv=False)[:4], rtol=100 * case.rtol)
    Un, sn, Vn = case.to_numpy(U), case.to_numpy(s), case.to_numpy(V)
    np.testing.assert_allclose(Vn @ M.T, Un * sn[:, None], atol=1e3 * case.rtol * sn[0])
    np.testing.assert_allclose(Un @ M, Vn * sn[:, None], atol=1e3 * case.rtol * sn[0])


def test_svds_of_a_kronecker_product_is_structured(case64):
    a, b = case64.randn(5, 3, seed=1), case64.randn(2, 4, seed=2)
    K = kpflow.kron(a, b)
    U, s, V = svds(K, 3)
    expected = np.sort(
        np.outer(*(np.linalg.svd(case64.to_numpy(x), compute_uv=False) for x in (a, b))).ravel()
    )
    case64.assert_close(s, expected[::-1][:3], rtol=1e-10)
    assert U.shape == (3, 5, 2) and V.shape == (3, 3, 4)


def test_not_converging_warns_and_reports_residuals():
    M, _ = spectral_matrix("poly", 200, seed=0)
    with pytest.warns(RuntimeWarning, match="not converged"):
        r = eigsh(numpy_operator(M), 5, method="lanczos", rng=0, max_matvecs=20, tol=1e-14)
    assert r.num_matvecs == 20 and np.asarray(r.residual_norms).shape == (5,)


def test_progress_callback_reports_products():
    M, _ = spectral_matrix("exp", 100)
    seen = []
    r = eigsh(numpy_operator(M), 3, method="lanczos", rng=0, progress=lambda d, t: seen.append(d))
    assert seen[-1] == r.num_matvecs


def test_bad_input_is_a_clear_error():
    A = numpy_operator(np.eye(10))
    with pytest.raises(ValueError, match="k=11 is larger than the dimension"):
        eigsh(A, 11)
    with pytest.raises(ValueError, match="k >= 1"):
        eigsh(A, 0)
    with pytest.raises(TypeError, match="positive int"):
        eigsh(A, 2.0)
    with pytest.raises(ValueError, match="square"):
        eigsh(numpy_operator(np.ones((3, 4))), 1)
    with pytest.raises(ValueError, match="unknown method 'arpack'"):
        eigsh(A, 2, method="arpack")
    with pytest.raises(ValueError, match="block_size=0 must be at least 1"):
        eigsh(A, 3, method="lanczos", block_size=0)
    with pytest.raises(ValueError, match=r"block_size=2 must be at least k=3 \(the sketch size"):
        eigsh(A, 3, method="nystrom", block_size=2)
    with pytest.raises(TypeError, match="block_size to be a positive int"):
        eigsh(A, 3, method="lanczos", block_size=2.5)
    with pytest.raises(ValueError, match=r"max_basis=5 must be at least k \+ 2·block_size = 7"):
        eigsh(A, 3, method="lanczos", block_size=2, max_basis=5)
    with pytest.raises(TypeError, match="rng"):
        eigsh(A, 2, method="lanczos", rng=1.5)
    with pytest.raises(ValueError, match=r"min\(size_in, size_out\)"):
        svds(numpy_operator(np.ones((3, 4))), 4)


def test_low_rank_operator_with_k_above_the_rank(case64):
    case = case64
    F = np.random.default_rng(0).standard_normal((80, 5))
    A = Opaque(kpflow.Dense(case.asarray(F @ F.T)))
    r = eigsh(A, 7, method="lanczos", rng=0)
    w, V, res = r.eigenvalues, r.eigenvectors, r.residual_norms
    expected = np.concatenate([np.linalg.svd(F, compute_uv=False) ** 2, [0.0, 0.0]])
    scale = expected[0]
    np.testing.assert_allclose(case.to_numpy(w), expected, atol=100 * case.rtol * scale)
    assert case.to_numpy(res).max() <= 100 * case.rtol * scale
    assert _orthonormality_error(case, V) <= 100 * case.rtol


class _Reflected(kpflow.LinearOperator):
    """(I − 2uuᵀ) diag(λ) (I − 2uuᵀ) on n entries in O(n) per probe; records the probes per call."""

    def __init__(self, lam: np.ndarray, seed: int) -> None:
        import array_api_compat.numpy as xp

        super().__init__((lam.size,), (lam.size,), xp=xp, dtype=xp.float64, device="cpu")
        u = np.random.default_rng(seed).standard_normal(lam.size)
        self.u, self.lam, self.rows = u / np.linalg.norm(u), lam, []

    def _reflect(self, X: np.ndarray) -> np.ndarray:
        return X - 2.0 * np.outer(X @ self.u, self.u)

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        self.rows.append(X.shape[0])
        return self._reflect(self._reflect(X) * self.lam)

    _rmatmat = _matmat


def test_one_probe_per_product_keeps_a_twenty_fold_multiplicity():
    # The default block at n >= 2**20 on the CPU: one probe per product; the multiplicity
    # check still finds all 20 copies of the top eigenvalue (and the 21st value).
    n = 2**16
    lam = np.concatenate([np.full(20, 5.0), [3.0], 2.0 * 0.8 ** np.arange(n - 21)])
    A = _Reflected(lam, seed=0)
    r = eigsh(A, 20, method="lanczos", rng=1, block_size=1)
    assert A.rows[0] == 1  # (the multiplicity checks grow the block by one probe each)
    np.testing.assert_allclose(np.asarray(r.eigenvalues), np.full(20, 5.0), rtol=1e-8)
    assert np.asarray(r.residual_norms).max() <= 1e-8 * 5.0
    w21 = np.asarray(eigsh(A, 21, method="lanczos", rng=1, block_size=1).eigenvalues)
    np.testing.assert_allclose(w21[:20], 5.0, rtol=1e-8)
    np.testing.assert_allclose(w21[20], 3.0, rtol=1e-8)


@pytest.mark.parametrize(
    ("n", "k", "expected"), [(2**20, 10, 1), (2**16, 10, 2), (2**16 - 1, 10, 4), (2**16, 1, 1)]
)
def test_default_block_size_on_the_cpu(n, k, expected):
    from kpflow.linalg.eig import _default_block

    assert _default_block(_Reflected(np.ones(n), seed=0), k) == expected


def test_num_matvecs_counts_the_products_of_a_multiplicity_check():
    # One probe per product: every converged value is a cluster of at least one, so a
    # multiplicity check runs (it grows the block and expands); its products are reported.
    n = 400
    lam = np.concatenate([[9.0, 8.0, 7.0], 5.0 * 0.9 ** np.arange(n - 3)])
    A = _Reflected(lam, seed=3)
    r = eigsh(A, 3, method="lanczos", rng=0, block_size=1)
    assert max(A.rows) == 2  # the check ran (its block holds a fresh probe)
    assert r.num_matvecs == sum(A.rows)
    np.testing.assert_allclose(np.asarray(r.eigenvalues), [9.0, 8.0, 7.0], rtol=1e-9)
