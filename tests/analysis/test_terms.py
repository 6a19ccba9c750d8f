"""analysis.site_terms: each weight site's term of K, exact, against dense K_w and closed forms."""

from __future__ import annotations

import numpy as np
import pytest

import kpflow
from kpflow.analysis import site_terms
from kpflow.models import GRU, RNN, SelfAttention, TransformerEncoder
from kpflow.ntk import KroneckerCoreKernel
from tests.conftest import BACKENDS

pytestmark = pytest.mark.skipif("numpy" not in BACKENDS, reason="numpy is not among the selected backends")


def _pr(w: np.ndarray) -> float:
    return float(w.sum() ** 2 / np.sum(w**2))


def _trajectories():
    rng = np.random.default_rng(0)
    yield "gru", GRU(2, 3).run(GRU(2, 3).init(0), rng.standard_normal((2, 4, 2)))
    yield "rnn", RNN(2, 4).run(RNN(2, 4).init(1), rng.standard_normal((3, 3, 2)))
    att = SelfAttention(4, 2, causal=True)
    yield "attention", att.run(att.init(2), rng.standard_normal((2, 3, 4)))
    enc = TransformerEncoder(4, 2, 6, 2, norm_first=True)
    yield "encoder", enc.run(enc.init(3), rng.standard_normal((2, 3, 4)))


@pytest.mark.parametrize(("name", "traj"), list(_trajectories()))
def test_site_terms_add_up_to_k_and_match_each_dense_term(name, traj) -> None:
    terms = site_terms(traj)
    n = int(np.prod(traj.state_shape))
    K = kpflow.parameter_kernel(traj).todense().reshape(n, n)
    assert sum(t.trace for t in terms) == pytest.approx(float(np.trace(K)), rel=1e-12)
    for site, term in zip(traj.sites, terms, strict=True):
        Kw = KroneckerCoreKernel([site], like=traj.states).todense().reshape(n, n)
        w = np.clip(np.linalg.eigvalsh((Kw + Kw.T) / 2), 0, None)
        assert term.trace == pytest.approx(float(np.trace(Kw)), rel=1e-10)
        assert term.effective_rank == pytest.approx(_pr(w), rel=1e-8)
        assert term.rank == np.linalg.matrix_rank(Kw, hermitian=True)
        assert term.rank <= term.rank_bound
        np.testing.assert_allclose(term.eigenvalues[: term.rank], np.sort(w)[::-1][: term.rank], rtol=1e-8)


def test_single_head_attention_terms_match_their_closed_forms() -> None:
    """K_V = (Â G̃ Âᵀ) ⊗ W_O W_Oᵀ and K_O = G̃_o ⊗ I_d, with Â and o computed here independently."""
    B, N, d = 2, 3, 4
    model = SelfAttention(d, 1, residual=False)
    params = model.init(5)
    x = np.random.default_rng(1).standard_normal((B, N, d))
    traj = model.run(params, x)
    terms = {t.name: t for t in site_terms(traj)}
    W, b = params["in_proj_weight"], params["in_proj_bias"]
    q, k, v = (x @ W[i * d : (i + 1) * d].T + b[i * d : (i + 1) * d] for i in range(3))
    scores = q @ np.swapaxes(k, 1, 2) / np.sqrt(d)
    A = np.exp(scores - scores.max(-1, keepdims=True))
    A /= A.sum(-1, keepdims=True)  # (B, N, N), rows over keys
    A_hat = np.zeros((B * N, B * N))
    for bi in range(B):
        A_hat[bi * N : (bi + 1) * N, bi * N : (bi + 1) * N] = A[bi]
    X1 = np.concatenate([x.reshape(B * N, d), np.ones((B * N, 1))], axis=1)
    G_V = A_hat @ (X1 @ X1.T) @ A_hat.T
    WO = params["out_proj.weight"]
    WW = WO @ WO.T
    assert terms["in_proj.v"].trace == pytest.approx(np.trace(G_V) * np.trace(WW), rel=1e-10)
    pr_kron = _pr(np.linalg.eigvalsh(G_V)) * _pr(np.linalg.eigvalsh(WW))
    assert terms["in_proj.v"].effective_rank == pytest.approx(pr_kron, rel=1e-8)
    o = (A @ v).reshape(B * N, d)
    O1 = np.concatenate([o, np.ones((B * N, 1))], axis=1)
    G_O = O1 @ O1.T
    assert terms["out_proj"].trace == pytest.approx(d * np.trace(G_O), rel=1e-10)
    assert terms["out_proj"].effective_rank == pytest.approx(d * _pr(np.linalg.eigvalsh(G_O)), rel=1e-8)
    assert terms["out_proj"].rank_bound == np.linalg.matrix_rank(O1) * d


def test_site_terms_refuse_a_general_site_too_large_to_form() -> None:
    model = SelfAttention(96, 2)
    traj = model.run(model.init(0), np.ones((1, 2, 96)))
    match = r"site_terms: site 'in_proj.q' has a general D_w \(a LinearSite\) and p_w·k_w = 9312 parameters"
    with pytest.raises(ValueError, match=match):
        site_terms(traj)
