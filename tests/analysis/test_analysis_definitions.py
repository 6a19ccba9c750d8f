"""Each analysis number is the quantity its name says, against references built here in float64.

- learnability: state quotients are Rayleigh quotients of NTK_S (readout-scale free); with a
  mask, the modes are those of the masked output NTK M N M.
- finite_time_lyapunov_exponents: log σ_i of the Jacobian product / (T − 1), against a tanh
  RNN step written here, differentiated by torch.func.jacrev, multiplied out, numpy's SVD;
  lyapunov_exponents is deterministic by default.
- site_terms: a GRU of width 128 (p_w k_w = 17,024) against its dense K_w.
"""

from __future__ import annotations

import numpy as np
import pytest

import kpflow
from kpflow import analysis
from kpflow.models import GRU, RNN, Linear
from kpflow.ntk import KroneckerCoreKernel
from tests.conftest import BACKENDS

torch = pytest.importorskip("torch")

F64 = torch.float64


def _np(a):
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _rnn_case(H=3, n_out=2, B=2, T=3, seed=0):
    model, readout = RNN(2, H), Linear(H, n_out)
    like = torch.zeros(1, dtype=F64)
    rng = np.random.default_rng(seed + 1)
    x = torch.asarray(rng.standard_normal((B, T, 2)), dtype=F64)
    traj = model.run(model.init(seed, like=like), x)
    rp = readout.init(seed + 2, like=like)
    targets = torch.asarray(rng.standard_normal((B, T, n_out)), dtype=F64)
    return traj, rp, targets


# -- learnability -----------------------------------------------------------------------------------
def test_state_quotients_are_rayleigh_quotients_of_ntk_s_whatever_the_readout_scale():
    traj, rp, targets = _rnn_case()
    mask = torch.asarray([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)
    NS = _np(kpflow.dense_global_ntk(traj)).reshape(18, 18)
    m = _np(mask).reshape(6, 1)
    for scale in (1.0, 3.0):
        rps = {n: scale * a for n, a in rp.items()}
        out = analysis.learnability(traj, rps, targets, mask, k=2, rng=0)
        Ct = np.kron(np.eye(6), _np(rps["weight"]))  # C̃ = I_m ⊗ C
        for o in range(2):
            u = np.zeros((6, 2))
            u[:, o] = (m * _np(targets).reshape(6, 2))[:, o]
            z = Ct.T @ u.reshape(12)
            assert float(out.state_quotients[o]) == pytest.approx(z @ NS @ z / (z @ z), rel=1e-10)
            assert float(out.state_parts[o]) == pytest.approx(z @ NS @ z / np.sum(u * u), rel=1e-10)
        if scale == 1.0:
            base = _np(out.state_quotients)
        else:
            np.testing.assert_allclose(_np(out.state_quotients), base, rtol=1e-12)


def test_masked_learnability_modes_are_those_of_the_masked_output_ntk():
    traj, rp, targets = _rnn_case(seed=3)
    mask = torch.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=F64)
    out = analysis.learnability(traj, rp, targets, mask, k=3, rng=0)
    No = _np(kpflow.ntk.dense_output_ntk(traj, rp)).reshape(12, 12)
    M = np.diag(np.repeat(_np(mask).reshape(6), 2))  # (site, channel) flattening
    w, V = np.linalg.eigh(M @ No @ M)
    w, V = w[::-1][:3], V[:, ::-1][:, :3]
    assert np.all(-np.diff(w) > 1e-6 * w[0])  # distinct: the eigenvectors are determined
    np.testing.assert_allclose(_np(out.eigenvalues), w, rtol=1e-10)
    h, C, c = _np(traj.states).reshape(6, 3), _np(rp["weight"]), _np(rp["bias"])
    r = M @ (h @ C.T + c - _np(targets).reshape(6, 2)).reshape(12)
    np.testing.assert_allclose(_np(out.error_fractions), (V.T @ r) ** 2 / (r @ r), rtol=1e-9, atol=1e-14)
    assert float(out.error_quotient) == pytest.approx(r @ No @ r / (r @ r), rel=1e-10)
    # the unmasked operator's top eigenvalues are other numbers
    assert not np.allclose(np.linalg.eigvalsh(No)[::-1][:3], w, rtol=1e-3)


def test_learnability_rejects_a_negative_mask_weight():
    traj, rp, targets = _rnn_case()
    mask = torch.asarray([[1.0, -1.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)
    with pytest.raises(ValueError, match=r"learnability: expected mask to hold weights >= 0"):
        analysis.learnability(traj, rp, targets, mask, k=2, rng=0)


# -- Lyapunov exponents -------------------------------------------------------------------------------
def _tanh_step(params, h, x):
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh), written here (torch.nn.RNN's equations)."""
    return torch.tanh(
        x @ params["weight_ih"].T + params["bias_ih"] + h @ params["weight_hh"].T + params["bias_hh"]
    )


def _reference_ftle(params, x):
    """log σ_i(J_{T−1} ⋯ J_1) / (T − 1), J_t = jacrev of the step at h_{t−1}: (B, H)."""
    B, T, _ = x.shape
    H = params["weight_hh"].shape[0]
    out = []
    for b in range(B):
        h = torch.zeros(H, dtype=F64)
        Phi = np.eye(H)
        for t in range(T):
            if t > 0:
                J = torch.func.jacrev(lambda hp, xt=x[b, t]: _tanh_step(params, hp, xt))(h)
                Phi = _np(J) @ Phi
            h = _tanh_step(params, h, x[b, t])
        out.append(np.log(np.linalg.svd(Phi, compute_uv=False)) / (T - 1))
    return np.array(out)


def test_finite_time_lyapunov_exponents_equal_the_svd_of_an_independent_jacobian_product():
    H, T = 5, 12
    model = RNN(2, H)
    params = model.init(4, like=torch.zeros(1, dtype=F64))
    params = {**params, "weight_hh": 1.6 * params["weight_hh"]}
    x = torch.asarray(np.random.default_rng(5).standard_normal((2, T, 2)), dtype=F64)
    traj = model.run(params, x)
    ref = _reference_ftle(params, x)
    assert np.ptp(ref[:, 0] - ref[:, -1]) * (T - 1) < 30  # the dense product resolves them all
    got = _np(analysis.finite_time_lyapunov_exponents(traj))
    assert got.shape == (2, H) and got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    top2 = _np(analysis.finite_time_lyapunov_exponents(traj, k=2))
    np.testing.assert_allclose(top2, ref[:, :2], rtol=1e-10, atol=1e-12)
    # the QR route from one frame is a lower bound on the top FTLE, not the FTLE
    qr_top = _np(analysis.lyapunov_exponents(traj, k=1))[:, 0]
    assert np.all(qr_top <= ref[:, 0] + 1e-12)


def test_finite_time_lyapunov_exponents_keep_small_exponents_of_a_long_product(case64):
    """J_t = W normal for 59 steps: σ_i = |λ_i|^59, spread over e^105 (a dense product keeps ~e^36)."""
    if case64.name == "jax":
        pytest.skip("eager jax dispatches each of the ~360 QR steps on its own (~15 s); the others cover it")
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    lam = np.array([1.2, -0.9, 0.5, 0.2])
    model = RNN(1, 4)
    params = {n: case64.asarray(np.zeros(s)) for n, s in model.param_shapes().items()}
    params["weight_hh"] = case64.asarray(Q @ np.diag(lam) @ Q.T)
    traj = model.run(params, case64.asarray(np.zeros((2, 60, 1))))  # h stays 0: J_t = W
    got = case64.to_numpy(analysis.finite_time_lyapunov_exponents(traj))
    ref = np.sort(np.log(np.abs(lam)))[::-1]
    np.testing.assert_allclose(got, np.broadcast_to(ref, (2, 4)), rtol=1e-12, atol=1e-13)


def test_lyapunov_exponents_do_not_depend_on_the_call_by_default():
    model = RNN(2, 4)
    x = np.random.default_rng(1).standard_normal((2, 8, 2))
    traj = model.run(model.init(0), x)
    first, second = analysis.lyapunov_exponents(traj, k=2), analysis.lyapunov_exponents(traj, k=2)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, analysis.lyapunov_exponents(traj, k=2, rng=0))


# -- site terms ---------------------------------------------------------------------------------------
@pytest.mark.skipif("numpy" not in BACKENDS, reason="numpy is not among the selected backends")
def test_site_terms_of_a_wide_gru_equal_each_dense_term():
    """H = 128: p_w k_w = 133 · 128 = 17,024 per gate site, against K_w (256 × 256) formed here."""
    model = GRU(3, 128)
    traj = model.run(model.init(0), np.random.default_rng(2).standard_normal((1, 2, 3)))
    terms = analysis.site_terms(traj)
    assert max(t.p * t.k for t in terms) == 17024
    n = 256
    for site, term in zip(traj.sites, terms, strict=True):
        Kw = KroneckerCoreKernel([site], like=traj.states).todense().reshape(n, n)
        w = np.clip(np.linalg.eigvalsh((Kw + Kw.T) / 2), 0, None)
        assert term.trace == pytest.approx(float(np.trace(Kw)), rel=1e-12)
        assert term.effective_rank == pytest.approx(float(w.sum() ** 2 / np.sum(w**2)), rel=1e-9)
        assert term.rank == np.linalg.matrix_rank(Kw, hermitian=True)
        assert term.rank <= term.rank_bound == np.linalg.matrix_rank(site.variables) * 128
        top = np.sort(w)[::-1][: term.rank]
        np.testing.assert_allclose(term.eigenvalues[: term.rank], top, rtol=1e-9, atol=1e-14)
