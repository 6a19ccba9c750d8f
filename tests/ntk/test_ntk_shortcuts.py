"""The exact Kronecker-core rules (spectrum, trace, Frobenius norm, partial traces) equal dense K."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kpflow
from kpflow import linalg
from kpflow.linalg import rules
from kpflow.models import LeakyRNN
from kpflow.ntk import parameter_kernel
from kpflow.operators.base import LinearOperator
from tests.conftest import check_meta, examples
from tests.ntk_helpers import NAMES, build, draw_shape


def _dense_K(case, K):
    N = K.size_in
    M = case.to_numpy(kpflow.operators.todense.dispatch(LinearOperator)(K)).reshape(N, N)
    return 0.5 * (M + M.T)


@pytest.mark.properties
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(4))
@given(data=st.data())
def test_trace_fro_norm_and_top_eigenpairs_equal_dense(case64, name, data):
    K = parameter_kernel(build(case64, name, *draw_shape(data, case64)).traj)
    M = _dense_K(case64, K)
    scale = max(np.abs(M).max(), 1e-300)
    tr, fro = rules.exact_trace(K), rules.exact_fro_norm(K)
    check_meta(case64, tr)
    assert abs(float(tr) - np.trace(M)) <= 1e-12 * max(scale * M.shape[0], 1.0)
    assert abs(float(fro) - np.linalg.norm(M)) <= 1e-12 * max(np.linalg.norm(M), 1.0)
    evals = np.sort(np.linalg.eigvalsh(M))[::-1]
    k = min(4, M.shape[0])
    res = rules.exact_eigsh(K, k)
    if res is None:  # only when K has more zero eigenvalues than the unit Grams expose
        assert np.sum(evals > 1e-10 * scale) < k
        return
    check_meta(case64, res.eigenvalues)
    check_meta(case64, res.eigenvectors)
    np.testing.assert_allclose(case64.to_numpy(res.eigenvalues), evals[:k], atol=1e-10 * scale)
    V = case64.to_numpy(res.eigenvectors).reshape(k, -1)
    np.testing.assert_allclose(V @ V.T, np.eye(k), atol=1e-8)
    assert float(np.max(case64.to_numpy(res.residual_norms))) <= 1e-9 * scale


@pytest.mark.properties
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(4))
@given(data=st.data())
def test_partial_traces_over_every_axis_subset_equal_dense(case64, name, data):
    K = parameter_kernel(build(case64, name, *draw_shape(data, case64)).traj)
    dense = kpflow.Dense(case64.asarray(_dense_K(case64, K).reshape(K.shape_in * 2)), shape_in=K.shape_in)
    nd = len(K.shape_in)
    for r in range(1, nd + 1):
        for traced in itertools.combinations(range(nd), r):
            got = K.partial_trace(traced)
            assert isinstance(got, kpflow.Dense), "the exact rule, not the probe-based fallback, applies"
            case64.assert_close(got.todense(), dense.partial_trace(traced).todense(), rtol=1e-11)


def test_effective_rank_globally_and_along_each_axis_is_exact(case):
    K = parameter_kernel(build(case, "rnn_tanh", 3, 4, 3, 2, 7, True).traj)
    M = _dense_K(case, K)
    pr = np.trace(M) ** 2 / np.sum(M * M)
    got = linalg.effective_rank(K)
    assert abs(float(got) - pr) <= 10 * case.rtol * pr
    full = M.reshape(K.shape_in * 2)
    for axis in range(3):
        reduced = np.einsum({0: "aijbij->ab", 1: "iajibj->ab", 2: "ijaijb->ab"}[axis], full)
        expected = np.trace(reduced) ** 2 / np.sum(reduced * reduced)
        got = linalg.effective_rank(K, keep=(axis,))
        assert abs(float(got) - expected) <= 10 * case.rtol * expected


def test_leaky_rnn_spectrum_repeats_each_eigenvalue_once_per_unit(case64):
    B, T, H, n_in, dt = 40, 50, 64, 3, 0.2  # B·T = 2000 sites, K is 128 000 × 128 000
    model = LeakyRNN(n_in, H, dt=dt)
    params = model.init(0, like=case64.randn(1))
    traj = model.run(params, case64.randn(B, T, n_in, seed=3))
    K = parameter_kernel(traj)
    res = linalg.eigsh(K, 20)
    A = case64.to_numpy(K.sites[0].variables)
    top = dt**2 * np.linalg.eigvalsh(A.T @ A)[::-1]
    # K = dt²(G ⊗ I_H): the top eigenvalue of dt² AᵀA, 64 times, fills the top 20.
    np.testing.assert_allclose(case64.to_numpy(res.eigenvalues), np.full(20, top[0]), rtol=1e-10)
    assert float(np.max(case64.to_numpy(res.residual_norms))) <= 1e-8 * top[0]
    tr = float(linalg.trace(K))
    assert abs(tr - dt**2 * H * np.sum(A * A)) <= 1e-10 * tr
    pr = float(linalg.effective_rank(K))
    G_pr = np.sum(A * A) ** 2 / np.sum((A.T @ A) ** 2)
    assert abs(pr - H * G_pr) <= 1e-10 * pr


def test_tanh_rnn_spectrum_is_a_union_over_units(case64):
    """A site-varying D: spec(K) = ∪_i eig(Φ_iᵀΦ_i), not H copies of one spectrum."""
    K = parameter_kernel(build(case64, "rnn_tanh", 4, 5, 3, 2, 1, False).traj)
    M = _dense_K(case64, K)
    k = 12
    res = linalg.eigsh(K, k)
    np.testing.assert_allclose(
        case64.to_numpy(res.eigenvalues),
        np.sort(np.linalg.eigvalsh(M))[::-1][:k],
        atol=1e-11 * np.abs(M).max(),
    )
    assert res.num_matvecs == k  # one block product, for the residuals only


def test_asking_for_more_eigenpairs_than_the_rule_sees_falls_back(case64):
    # K = dt² (G ⊗ I_H) on m = 6 sites with p = 3 site variables: the unit Gram AᵀA (3 × 3)
    # shows 3·H = 6 of the n = 12 eigenvalues; the other 6 are zeros it cannot see.
    K = parameter_kernel(build(case64, "leaky_relu", 2, 3, 2, 1, 0, False).traj)
    n = K.size_in
    assert n == 12
    evals = np.sort(np.linalg.eigvalsh(_dense_K(case64, K)))[::-1]
    seen = rules.exact_eigsh(K, 6)
    assert seen is not None
    np.testing.assert_allclose(case64.to_numpy(seen.eigenvalues), evals[:6], atol=1e-12)
    assert rules.exact_eigsh(K, 7) is None
    assert rules.exact_eigsh(K, n) is None
    res = linalg.eigsh(K, n)
    np.testing.assert_allclose(case64.to_numpy(res.eigenvalues), evals, atol=1e-12)


@pytest.mark.parametrize("name", ["rnn_tanh", "mlp_tanh"])
def test_unit_grams_have_the_nonzero_spectrum_of_K(case64, name):
    from kpflow.ntk.shortcuts import unit_grams

    K = parameter_kernel(build(case64, name, 2, 3, 2, 2, 5, False).traj)
    ev = []
    for group, M, _ in unit_grams(K):
        w = np.linalg.eigvalsh(case64.to_numpy(M)).ravel()
        ev.extend(np.repeat(w, group[0].n_units) if group[0].unit_D is None else w)
    ev = np.sort(np.asarray(ev))[::-1]
    dense = np.sort(np.linalg.eigvalsh(_dense_K(case64, K)))[::-1]
    nz = dense[dense > 1e-10 * dense[0]]
    np.testing.assert_allclose(ev[: len(nz)], nz, rtol=1e-9)
