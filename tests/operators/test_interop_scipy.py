"""``kpflow.linalg.to_scipy`` on every backend, and ``eigsh(which=...)`` against numpy and scipy.

The references are numpy's ``eigh`` of the matrix built here and scipy's ``eigsh`` (ARPACK):
neither shares code with kpflow's eigensolvers.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.linalg import eigsh as scipy_eigsh

import kpflow
from kpflow import linalg
from tests.conftest import Case, check_meta


def _symmetric(n: int, seed: int) -> np.ndarray:
    """A symmetric matrix with eigenvalues of both signs, well separated at both ends."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.concatenate([[9.0, -7.0, 5.0, -4.0], np.linspace(-1.0, 2.0, n - 4)])
    return (Q * lam) @ Q.T


def test_to_scipy_works_on_every_backend_with_host_copies(case: Case):
    rng = np.random.default_rng(0)
    M = rng.standard_normal((6, 4))
    op = kpflow.Dense(case.asarray(M.reshape(2, 3, 4)), shape_in=(4,))
    S = linalg.to_scipy(op)
    dtype = np.dtype(case.dtype_name)
    assert S.shape == (6, 4) and S.dtype == dtype
    X = rng.standard_normal((4, 3)).astype(dtype)
    got = S.matmat(X)
    assert isinstance(got, np.ndarray) and got.dtype == dtype
    np.testing.assert_allclose(got, M @ X, rtol=case.rtol * 10, atol=case.rtol * 10)
    y = rng.standard_normal(6).astype(dtype)
    np.testing.assert_allclose(S.rmatvec(y), M.T @ y, rtol=case.rtol * 10, atol=case.rtol * 10)
    other = np.float32 if dtype == np.float64 else np.float64
    with pytest.raises(TypeError, match=r"to_scipy: scipy passed a block of dtype .* never casts silently"):
        S.matvec(np.ones(4, dtype=other))


def test_scipy_eigsh_of_a_torch_ntk_matches_kpflows_eigsh():
    """The must-show: to_scipy of a torch NTK_S (parameters requiring grad) in ARPACK."""
    torch = pytest.importorskip("torch")
    from kpflow.models import GRU

    model = GRU(2, 4)
    params = {
        k: v.requires_grad_() for k, v in model.init(0, like=torch.zeros(1, dtype=torch.float64)).items()
    }
    x = torch.as_tensor(np.random.default_rng(1).standard_normal((3, 5, 2)))
    ntk = kpflow.global_ntk(model.run(params, x))
    w, V = scipy_eigsh(linalg.to_scipy(ntk), k=4, which="LA", tol=1e-12)
    ours = linalg.eigsh(ntk, 4)
    np.testing.assert_allclose(w[::-1], ours.eigenvalues.numpy(), rtol=1e-10)
    # kpflow's (k, *shape) rows, largest first, are scipy's columns reversed (up to sign)
    overlap = V[:, ::-1].T @ ours.eigenvectors.reshape(4, -1).numpy().T
    np.testing.assert_allclose(np.abs(np.diag(overlap)), 1.0, atol=1e-8)


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_eigsh_which_matches_numpy_and_scipy(which: str):
    n, k = 30, 3
    M = _symmetric(n, seed=2)
    op = kpflow.Dense(M.reshape(n, 5, 6), shape_in=(5, 6))  # (n,) <- (5, 6): square in size only
    op = op.reshape((5, 6), (5, 6))
    w, V = np.linalg.eigh(M)  # ascending, columns
    order = {"LA": np.arange(n)[::-1], "SA": np.arange(n), "LM": np.argsort(-np.abs(w), kind="stable")}[which]
    want_w, want_V = w[order[:k]], V[:, order[:k]].T.reshape(k, 5, 6)
    for method in ("dense", "lanczos"):
        r = linalg.eigsh(op, k, which=which, method=method, rng=0)
        np.testing.assert_allclose(r.eigenvalues, want_w, rtol=1e-10)
        assert r.eigenvectors.shape == (k, 5, 6)
        overlap = np.einsum("iab,iab->i", r.eigenvectors, want_V)
        np.testing.assert_allclose(np.abs(overlap), 1.0, atol=1e-8)
        assert np.all(r.residual_norms < 1e-8)
    sw, _ = scipy_eigsh(M, k=k, which=which)  # ascending, whatever `which`
    key = {"LA": lambda v: -v, "SA": lambda v: v, "LM": lambda v: -np.abs(v)}[which]
    np.testing.assert_allclose(sorted(sw, key=key), r.eigenvalues, rtol=1e-10)


def test_eigsh_which_on_backends_and_when_both_ends_overlap(case64: Case):
    n = 6
    M = _symmetric(n, seed=3)
    op = kpflow.Dense(case64.asarray(M))
    w = np.linalg.eigh(M)[0]
    r = linalg.eigsh(op, 4, which="LM")  # 2k > n: all pairs, then |λ|
    check_meta(case64, r.eigenvalues)
    case64.assert_close(r.eigenvalues, w[np.argsort(-np.abs(w), kind="stable")[:4]], rtol=1e-10)
    r = linalg.eigsh(op, 2, which="SA")
    case64.assert_close(r.eigenvalues, w[:2], rtol=1e-10)
    check_meta(case64, r.eigenvectors)


def test_eigsh_which_lm_of_a_psd_operator_is_la_at_the_same_cost():
    F = np.random.default_rng(4).standard_normal((40, 12))
    G = kpflow.Dense(F).gram()  # PSD by structure
    la, lm = (
        linalg.eigsh(G, 3, method="lanczos", rng=0),
        linalg.eigsh(G, 3, which="LM", method="lanczos", rng=0),
    )
    np.testing.assert_array_equal(la.eigenvalues, lm.eigenvalues)
    assert la.num_matvecs == lm.num_matvecs


def test_eigsh_which_errors_name_the_argument():
    op = kpflow.Dense(_symmetric(8, seed=5))
    with pytest.raises(ValueError, match=r"eigsh: expected which to be one of 'LA', 'SA', 'LM', got 'BE'"):
        linalg.eigsh(op, 2, which="BE")
    with pytest.raises(ValueError, match=r"which='SA' cannot use method='nystrom'"):
        linalg.eigsh(op, 2, which="SA", method="nystrom")
