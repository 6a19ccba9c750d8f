"""kpflow.analysis science functions against dense references built here, in float64.

References are independent of the code under test: numpy eigh/svd of the dense NTK from
autodiff (``dense_global_ntk``, torch), of P built here from the tanh RNN's step Jacobians
J_t = diag(1 − h_t²) W_hh, and of K from the autodiff kernel.
"""

from __future__ import annotations

import numpy as np
import pytest

import kpflow
from kpflow import analysis
from kpflow.models import MLP, RNN, LeakyRNN, Linear
from tests.conftest import BACKENDS

torch = pytest.importorskip("torch")

F64 = torch.float64


def _torch_traj(model, B=2, T=3, seed=0, params=None):
    like = torch.zeros(1, dtype=F64)
    p = model.init(seed, like=like) if params is None else params
    x = torch.asarray(np.random.default_rng(seed + 1).standard_normal((B, T, model.n_in)), dtype=F64)
    return model.run(p, x)


def _np(a):
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _dense_P_rnn(traj):
    """P = (I − L)⁻¹ of a tanh RNN, from J_t = diag(1 − h_t²) W_hh (built here)."""
    B, T, H = traj.state_shape
    W = _np(traj.params["weight_hh"])
    h = _np(traj.states)
    n = B * T * H
    Lm = np.zeros((n, n))
    idx = lambda b, t: (b * T + t) * H  # noqa: E731
    for b in range(B):
        for t in range(1, T):
            J = np.diag(1 - h[b, t] ** 2) @ W
            Lm[idx(b, t) : idx(b, t) + H, idx(b, t - 1) : idx(b, t - 1) + H] = J
    return np.linalg.inv(np.eye(n) - Lm)


def _pr(M):
    return np.trace(M) ** 2 / np.sum(M * M)


def _partial(M, shape, keep):
    """Tr over every axis but ``keep`` of a dense (n, n) matrix on ``shape``."""
    nd = len(shape)
    T = M.reshape(shape + shape)
    letters = "abcdefgh"
    left = [letters[i] for i in range(nd)]
    right = [letters[i] if i != keep else "z" for i in range(nd)]
    return np.einsum("".join(left) + "".join(right) + "->" + letters[keep] + "z", T)


# -- 1. modes --------------------------------------------------------------------------------------
def test_ntk_modes_equal_dense_eigh_of_autodiff_ntk():
    traj = _torch_traj(RNN(2, 3), B=2, T=3)
    N = _np(kpflow.dense_global_ntk(traj)).reshape(18, 18)
    w, V = np.linalg.eigh(N)
    w, V = w[::-1][:4], V[:, ::-1][:, :4]
    modes = analysis.ntk_modes(traj, 4, rng=0)
    assert modes.values.dtype == F64
    np.testing.assert_allclose(_np(modes.values), w, rtol=1e-10)
    got = _np(modes.vectors).reshape(4, 18)
    assert np.allclose(np.abs(np.sum(got * V.T, axis=1)), 1.0, atol=1e-8)
    ref_sq = (V.T**2).reshape(4, 2, 3, 3)
    np.testing.assert_allclose(_np(modes.site_profiles), ref_sq.sum(axis=3), atol=1e-8)
    np.testing.assert_allclose(_np(modes.hidden_profiles), ref_sq.sum(axis=(1, 2)), atol=1e-8)


def test_ntk_modes_of_P_are_its_dense_singular_modes(case64):
    model = RNN(2, 3)
    x = case64.randn(2, 3, 2, seed=1)
    traj = model.run(model.init(0, like=x), x)
    P = _dense_P_rnn(_NumpyView(traj, case64))
    U, s, Vt = np.linalg.svd(P)
    modes = analysis.ntk_modes(traj, 3, operator="P", rng=0)
    case64.assert_close(modes.values, s[:3], rtol=1e-10)
    got = case64.to_numpy(modes.vectors).reshape(3, 18)
    assert np.allclose(np.abs(np.sum(got * U[:, :3].T, axis=1)), 1.0, atol=1e-8)
    right = case64.to_numpy(modes.right_vectors).reshape(3, 18)
    assert np.allclose(np.abs(np.sum(right * Vt[:3], axis=1)), 1.0, atol=1e-8)


def test_ntk_modes_of_K_equal_dense_eigh_of_autodiff_kernel():
    traj = _torch_traj(RNN(2, 3), B=2, T=3)
    K = _np(kpflow.parameter_kernel(traj, method="autodiff").todense()).reshape(18, 18)
    w = np.linalg.eigvalsh(K)[::-1][:5]
    modes = analysis.ntk_modes(traj, 5, operator="K")
    np.testing.assert_allclose(_np(modes.values), w, rtol=1e-10)
    site = _np(modes.site_profiles)
    assert site.shape == (5, 2, 3)
    np.testing.assert_allclose(site.sum(axis=(1, 2)), 1.0, rtol=1e-12)


class _NumpyView:
    """A trajectory's params and states as host arrays, for the numpy references."""

    def __init__(self, traj, case):
        self.state_shape = traj.state_shape
        self.params = {k: case.to_numpy(v) for k, v in traj.params.items()}
        self.states = case.to_numpy(traj.states)


# -- 2. effective ranks ----------------------------------------------------------------------------
def test_effective_ranks_equal_dense_participation_ratios():
    traj = _torch_traj(RNN(2, 3), B=2, T=3)
    shape = (2, 3, 3)
    N = _np(kpflow.dense_global_ntk(traj)).reshape(18, 18)
    K = _np(kpflow.parameter_kernel(traj, method="autodiff").todense()).reshape(18, 18)
    P = _dense_P_rnn(traj)
    r = analysis.effective_ranks(traj, rng=0)
    for name, M in (("K", K), ("PPT", P @ P.T), ("NTK", N)):
        got = r[name]
        assert got["global"] == pytest.approx(_pr(M), rel=1e-10)
        for axis, label in enumerate(r.axes):
            assert got[label] == pytest.approx(_pr(_partial(M, shape, axis)), rel=1e-10), (name, label)


def test_effective_ranks_over_training_tracks_each_checkpoint(case64):
    from kpflow.training import SGD, train

    model, readout = RNN(1, 3), Linear(3, 1)
    x = case64.randn(2, 4, 1, seed=3)
    y = case64.randn(2, 4, 1, seed=4)
    res = train(
        model,
        readout,
        model.init(0, like=x),
        readout.init(1, like=x),
        (x, y, None),
        steps=3,
        optimizer=SGD(0.5),
        checkpoints=[0, 3],
    )
    over = analysis.effective_ranks_over_training(model, res.checkpoints, x, operators=["K"], rng=0)
    assert over.steps.tolist() == [0, 3]
    for i, c in enumerate(res.checkpoints):
        one = analysis.effective_ranks(model.run(c.params, x), operators=["K"])
        for key in ("global", "batch", "time", "hidden"):
            assert over.K[key][i] == pytest.approx(one.K[key], rel=1e-12)
    assert over.K["global"][0] != pytest.approx(over.K["global"][1], rel=1e-6)  # training changed K
    assert over.NTK == {}


# -- 3. alignment ----------------------------------------------------------------------------------
def _align(A, B, centered=False):
    if centered:
        n = A.shape[0]
        H = np.eye(n) - np.ones((n, n)) / n
        A, B = H @ A @ H, H @ B @ H
    return np.sum(A * B) / (np.linalg.norm(A) * np.linalg.norm(B))


@pytest.mark.parametrize("centered", [False, True])
def test_misdirection_equals_dense_alignment_of_ntk_with_PPT(centered):
    traj = _torch_traj(RNN(2, 3), B=2, T=3)
    N = _np(kpflow.dense_global_ntk(traj)).reshape(18, 18)
    P = _dense_P_rnn(traj)
    got = float(analysis.misdirection(traj, centered=centered))
    assert got == pytest.approx(_align(N, P @ P.T, centered), rel=1e-10)
    assert got < 0.999


def test_kernel_alignment_of_arrays_and_operators(case64):
    rng = np.random.default_rng(0)
    A0, B0 = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
    A0, B0 = A0 @ A0.T, B0 @ B0.T + 1.0
    for centered in (False, True):
        got = analysis.kernel_alignment(
            case64.asarray(A0), kpflow.Dense(case64.asarray(B0)), centered=centered
        )
        case64.assert_close(got.value, _align(A0, B0, centered), rtol=1e-12)
    assert float(analysis.kernel_alignment(A0, A0 + 5.0, centered=True)) == pytest.approx(1.0, rel=1e-12)


def test_init_vs_trained_alignment_equals_dense_alignment():
    model = RNN(2, 3)
    like = torch.zeros(1, dtype=F64)
    p0, p1 = model.init(0, like=like), model.init(5, like=like)
    traj0, traj1 = _torch_traj(model, params=p0), _torch_traj(model, params=p1)
    N0 = _np(kpflow.dense_global_ntk(traj0)).reshape(18, 18)
    N1 = _np(kpflow.dense_global_ntk(traj1)).reshape(18, 18)
    got = float(analysis.init_vs_trained_alignment(model, p0, p1, traj0.x))
    assert got == pytest.approx(_align(N0, N1), rel=1e-10)
    assert float(analysis.init_vs_trained_alignment(model, p0, p0, traj0.x)) == pytest.approx(1.0, rel=1e-12)


# -- 4. learnability -------------------------------------------------------------------------------
def test_learnability_equals_dense_output_ntk_quantities():
    model, readout = RNN(2, 3), Linear(3, 2)
    traj = _torch_traj(model, B=2, T=3)
    rp = readout.init(1, like=torch.zeros(1, dtype=F64))
    rng = np.random.default_rng(7)
    targets = torch.asarray(rng.standard_normal((2, 3, 2)), dtype=F64)
    mask = torch.asarray([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)
    out = analysis.learnability(traj, rp, targets, mask, k=4, rng=0)
    No = _np(kpflow.ntk.dense_output_ntk(traj, rp)).reshape(12, 12)
    Md = np.diag(np.repeat(_np(mask).reshape(6), 2))  # the modes are the masked output NTK's
    w, V = np.linalg.eigh(Md @ No @ Md)
    w, V = w[::-1][:4], V[:, ::-1][:, :4]
    np.testing.assert_allclose(_np(out.eigenvalues), w, rtol=1e-10)
    h, C, c = _np(traj.states).reshape(6, 3), _np(rp["weight"]), _np(rp["bias"])
    m = _np(mask).reshape(6, 1)
    r = (m * (h @ C.T + c - _np(targets).reshape(6, 2))).reshape(12)
    np.testing.assert_allclose(_np(out.error_fractions), (V.T @ r) ** 2 / (r @ r), rtol=1e-9, atol=1e-14)
    assert float(out.error_quotient) == pytest.approx(r @ No @ r / (r @ r), rel=1e-10)
    N = _np(kpflow.dense_global_ntk(traj)).reshape(18, 18)
    Ct = np.kron(np.eye(6), C)  # C̃ = I_m ⊗ C
    for o in range(2):
        u = np.zeros((6, 2))
        u[:, o] = (m * _np(targets).reshape(6, 2))[:, o]
        u = u.reshape(12)
        assert float(out.target_quotients[o]) == pytest.approx(u @ No @ u / (u @ u), rel=1e-10)
        z = Ct.T @ u
        assert float(out.state_quotients[o]) == pytest.approx(z @ N @ z / (z @ z), rel=1e-10)
        assert float(out.state_parts[o]) == pytest.approx(z @ N @ z / (u @ u), rel=1e-10)


def test_predicted_loss_decrease_agrees_with_one_sgd_step_to_second_order(case64):
    model, readout = RNN(2, 4), Linear(4, 2)
    x, y = case64.randn(3, 5, 2, seed=1), case64.randn(3, 5, 2, seed=2)
    mask = case64.asarray(np.random.default_rng(3).integers(0, 2, (3, 5)).astype(float))
    p, rp = model.init(0, like=x), readout.init(1, like=x)
    gaps = []
    for lr in (1e-2, 1e-3, 1e-4):
        c = analysis.predicted_loss_decrease(model, readout, p, rp, x, y, mask, lr=lr, method="kpflow")
        pred, act = float(c.predicted), float(c.actual)
        assert pred < 0
        assert float(c.gradient_sq_norm) == pytest.approx(-pred / lr, rel=1e-10)
        gaps.append(abs(act - pred) / lr**2)
    # |actual − predicted| = O(lr²): the ratio to lr² settles to a constant (the curvature term)
    assert gaps[2] == pytest.approx(gaps[1], rel=0.05)
    assert 0 < gaps[1] < 10 * gaps[0] + 1.0


# -- 5. self-referential bias ----------------------------------------------------------------------
def test_self_referential_bias_is_one_for_constant_D(case64):
    model = LeakyRNN(2, 4, dt=0.3)
    x = case64.randn(3, 4, 2, seed=2)
    r = analysis.self_referential_bias(model.run(model.init(0, like=x), x), 3)
    case64.assert_close(r.overlaps["hidden"], 1.0, rtol=1e-10)
    assert r.site_modes.shape == (3, 3, 4)


def test_self_referential_bias_equals_dense_reference_for_site_varying_D():
    model = RNN(2, 3)
    traj = _torch_traj(model, B=3, T=4)
    k = 3
    K = _np(kpflow.parameter_kernel(traj, method="autodiff").todense()).reshape(12, 3, 12, 3)
    M = np.einsum("aibi->ab", K)
    w, U = np.linalg.eigh(M)
    UK = U[:, ::-1][:, :k]
    h = _np(traj.states)
    prev = np.concatenate([np.zeros((3, 1, 3)), h[:, :-1]], axis=1).reshape(12, 3)
    # [h_{t−1}; x_t; 1; 1]: the bias_ih and bias_hh columns (G_w = A Aᵀ gets +2)
    A = np.concatenate([prev, _np(traj.x).reshape(12, 2), np.ones((12, 2))], axis=1)
    UA = np.linalg.svd(A, full_matrices=False)[0][:, :k]
    ref = np.sum((UK.T @ UA) ** 2) / k
    r = analysis.self_referential_bias(traj, k)
    assert float(r.overlaps["hidden"]) == pytest.approx(ref, rel=1e-10)
    assert ref < 0.999
    np.testing.assert_allclose(_np(r.site_eigenvalues), w[::-1][:k], rtol=1e-10)


# -- 6. dynamics -----------------------------------------------------------------------------------
def _linear_rnn(case, W, T):
    """A tanh RNN with zero biases and inputs: h stays 0, so J_t = W_hh exactly."""
    model = RNN(1, W.shape[0])
    like = case.asarray([0.0])
    params = {n: case.asarray(np.zeros(s)) for n, s in model.param_shapes().items()}
    params["weight_hh"] = case.asarray(W)
    return model.run(params, case.asarray(np.zeros((2, T, 1))) + 0 * like[0])


def test_lyapunov_exponents_of_a_linear_rnn_are_log_abs_eigenvalues(case64):
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    lam = np.array([1.2, -0.9, 0.5, 0.2])
    W = Q @ np.diag(lam) @ Q.T  # normal (symmetric)
    T = 400
    got = case64.to_numpy(analysis.lyapunov_exponents(_linear_rnn(case64, W, T), rng=1))
    ref = np.sort(np.log(np.abs(lam)))[::-1]
    assert got.shape == (2, 4)
    np.testing.assert_allclose(got, np.broadcast_to(ref, (2, 4)), atol=0.02)
    np.testing.assert_allclose(got.sum(axis=1), np.log(np.abs(np.linalg.det(W))), rtol=1e-10)
    top = case64.to_numpy(analysis.lyapunov_exponents(_linear_rnn(case64, W, T), k=1, rng=1))
    np.testing.assert_allclose(top[:, 0], ref[0], atol=0.02)


def test_lyapunov_exponent_sums_equal_mean_log_det_of_step_jacobians(case64):
    model = RNN(2, 3)
    x = case64.randn(2, 6, 2, seed=4)
    params = model.init(0, like=x)
    traj = model.run(params, x)
    got = case64.to_numpy(analysis.lyapunov_exponents(traj, rng=0))
    W, h = case64.to_numpy(params["weight_hh"]), case64.to_numpy(traj.states)
    ref = [
        np.mean([np.log(abs(np.linalg.det(np.diag(1 - h[b, t] ** 2) @ W))) for t in range(1, 6)])
        for b in range(2)
    ]
    np.testing.assert_allclose(got.sum(axis=1), ref, rtol=1e-10)


def test_propagator_singular_values_equal_dense_svd(case64):
    model = RNN(2, 3)
    x = case64.randn(2, 4, 2, seed=5)
    traj = model.run(model.init(0, like=x), x)
    s = np.linalg.svd(_dense_P_rnn(_NumpyView(traj, case64)), compute_uv=False)
    case64.assert_close(analysis.propagator_singular_values(traj, 4, rng=0), s[:4], rtol=1e-10)


# -- 8. differentiable effective rank --------------------------------------------------------------
def test_differentiable_effective_rank_gradient_matches_finite_differences():
    model = RNN(2, 3)
    like = torch.zeros(1, dtype=F64)
    base = model.init(0, like=like)
    x = torch.asarray(np.random.default_rng(1).standard_normal((2, 4, 2)), dtype=F64)
    d = torch.asarray(np.random.default_rng(2).standard_normal((3, 3)), dtype=F64)

    def pr(eps, grad=False):
        p = {k: v.clone() for k, v in base.items()}
        p["weight_hh"] = (p["weight_hh"] + eps * d).requires_grad_(grad)
        return analysis.differentiable_effective_rank(model.run(p, x)), p["weight_hh"]

    value, W = pr(0.0, grad=True)
    value.backward()
    exact = float(torch.sum(W.grad * d))
    fd = (float(pr(1e-5)[0]) - float(pr(-1e-5)[0])) / 2e-5
    assert abs(fd - exact) <= 1e-7 * max(1.0, abs(exact))
    assert abs(exact) > 1e-3
    K = kpflow.parameter_kernel(model.run(base, x))
    assert float(value.detach()) == pytest.approx(float(kpflow.linalg.effective_rank(K)), rel=1e-12)


# -- errors ----------------------------------------------------------------------------------------
def test_bad_input_errors_name_the_argument():
    model = RNN(1, 2)
    traj = model.run(model.init(0), np.ones((1, 3, 1)))
    with pytest.raises(ValueError, match="ntk_modes: expected operator"):
        analysis.ntk_modes(traj, 1, operator="Q")
    with pytest.raises(ValueError, match="ntk_modes: expected k"):
        analysis.ntk_modes(traj, 0)
    with pytest.raises(TypeError, match="effective_ranks: expected traj"):
        analysis.effective_ranks("traj")
    with pytest.raises(ValueError, match="effective_ranks: expected operators"):
        analysis.effective_ranks(traj, operators=["X"])
    with pytest.raises(TypeError, match="kernel_alignment: expected A"):
        analysis.kernel_alignment([1.0], np.eye(2))
    mlp = MLP((2, 3, 1))
    with pytest.raises(TypeError, match="lyapunov_exponents: expected traj to be a recurrent"):
        analysis.lyapunov_exponents(mlp.run(mlp.init(0), np.ones((2, 2))))
    with pytest.raises(ValueError, match="self_referential_bias: expected k <= 3"):
        analysis.self_referential_bias(traj, 4)
    with pytest.raises(ValueError, match="learnability: expected targets"):
        analysis.learnability(traj, Linear(2, 1).init(0), np.ones((1, 3, 2)))
    with pytest.raises(ValueError, match="lr"):
        analysis.predicted_loss_decrease(
            model,
            Linear(2, 1),
            model.init(0),
            Linear(2, 1).init(0),
            np.ones((1, 3, 1)),
            np.ones((1, 3, 1)),
            lr=-1.0,
        )


@pytest.mark.skipif("jax" not in BACKENDS, reason="jax is not among the selected backends")
def test_differentiable_effective_rank_under_jax_grad_matches_finite_differences():
    import jax
    import jax.numpy as jnp

    model = RNN(2, 3)
    base = {k: jnp.asarray(v) for k, v in model.init(0).items()}
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4, 2)))
    d = jnp.asarray(np.random.default_rng(2).standard_normal((3, 3)))

    def pr(W):
        return analysis.differentiable_effective_rank(model.run({**base, "weight_hh": W}, x))

    exact = float(jnp.sum(jax.grad(pr)(base["weight_hh"]) * d))
    fd = (float(pr(base["weight_hh"] + 1e-5 * d)) - float(pr(base["weight_hh"] - 1e-5 * d))) / 2e-5
    assert abs(fd - exact) <= 1e-7 * max(1.0, abs(exact))
    assert abs(exact) > 1e-3
