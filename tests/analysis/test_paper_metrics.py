"""The paper's metrics against references written here, in float64.

The reference NTK_S of a tanh RNN is J Jᵀ with J = dh/dθ by torch.func.jacrev of a forward
written in this file (GRU and LSTM: kpflow.ntk.dense_global_ntk, jacrev of the model's own
unroll); each metric is then its definition in numpy on that dense matrix.
"""

from __future__ import annotations

import numpy as np
import pytest

import kpflow
from kpflow import analysis
from kpflow.models import GRU, LSTM, RNN
from kpflow.ntk import dense_global_ntk

torch = pytest.importorskip("torch")
F64 = torch.float64


def _np(a):
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _rnn_forward(params, x, h0):
    h, hs = h0, []
    for t in range(x.shape[1]):
        h = torch.tanh(
            x[:, t] @ params["weight_ih"].T
            + params["bias_ih"]
            + h @ params["weight_hh"].T
            + params["bias_hh"]
        )
        hs.append(h)
    return torch.stack(hs, dim=1)


def _rnn_case(B=2, T=4, H=3, n_in=2, seed=0, h0=False):
    model = RNN(n_in, H)
    params = model.init(seed, like=torch.zeros(1, dtype=F64))
    rng = np.random.default_rng(seed + 10)
    x = torch.asarray(rng.standard_normal((B, T, n_in)), dtype=F64)
    h0_ = torch.asarray(rng.standard_normal((B, H)), dtype=F64) if h0 else None
    traj = model.run(params, x, h0_)
    start = torch.zeros((B, H), dtype=F64) if h0_ is None else h0_
    names = list(params)

    def flat(*leaves):
        return _rnn_forward(dict(zip(names, leaves, strict=True)), x, start)

    jac = torch.func.jacrev(flat, argnums=tuple(range(len(names))))(*params.values())
    J = np.concatenate([_np(j).reshape(B * T * H, -1) for j in jac], axis=1)
    hs = _np(flat(*params.values()))
    np.testing.assert_allclose(hs, _np(traj.states), atol=1e-13)  # the reference runs the same network
    prev = np.concatenate([_np(start)[:, None, :], hs[:, :-1]], axis=1)
    V = np.concatenate([prev, _np(x)], axis=2).reshape(B * T, -1)
    return traj, (J @ J.T).reshape(B, T, H, B, T, H), V


def _temporal(N):
    return np.einsum("bthcsh->btcs", N)


def _cos(A, B):
    return float(np.sum(A * B) / np.linalg.norm(A) / np.linalg.norm(B))


@pytest.mark.parametrize("h0", [False, True])
def test_core_alignment_is_the_cosine_of_the_temporal_ntk_and_the_activity_gram(h0):
    traj, N, V = _rnn_case(h0=h0)
    B, T = 2, 4
    expected = _cos(_temporal(N).reshape(B * T, B * T), V @ V.T)
    r = analysis.core_alignment(traj)
    assert r.method == "exact" and float(r.error) == 0.0
    assert float(r) == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= expected <= 1.0


@pytest.mark.parametrize("cell", [GRU, LSTM])
def test_core_alignment_reads_the_hidden_features_of_gated_cells(cell):
    model = cell(2, 3)
    rng = np.random.default_rng(3)
    x = torch.asarray(rng.standard_normal((2, 3, 2)), dtype=F64)
    traj = model.run(model.init(1, like=torch.zeros(1, dtype=F64)), x)
    N = _np(dense_global_ntk(traj))
    B, T, _ = traj.state_shape
    h = _np(traj.states)[:, :, :3]
    prev = np.concatenate([np.zeros((B, 1, 3)), h[:, :-1]], axis=1)
    V = np.concatenate([prev, _np(x)], axis=2).reshape(B * T, -1)
    expected = _cos(np.einsum("btkcsk->btcs", N).reshape(B * T, B * T), V @ V.T)
    assert float(analysis.core_alignment(traj)) == pytest.approx(expected, abs=1e-12)


def test_core_alignment_estimate_covers_the_exact_value():
    traj, N, V = _rnn_case(B=3, T=10, H=3, seed=2)
    exact = _cos(_temporal(N).reshape(30, 30), V @ V.T)
    r = analysis.core_alignment(traj, method="estimate", num_matvecs=40, rng=0)
    assert r.method == "estimate" and float(r.error) > 0.0 and r.num_matvecs <= 40
    assert abs(float(r) - exact) <= 4 * float(r.error) + 1e-3


def _coverage_band(seeds, level=0.95):
    """The ±3σ binomial band of an interval's coverage over ``seeds`` independent draws."""
    half = 3 * np.sqrt(level * (1 - level) / seeds)
    return level - half, min(1.0, level + half)


@pytest.mark.parametrize(("g", "budget", "seeds"), [(2.0, 40, 1000), (1.0, 200, 200)])
def test_core_alignment_error_bar_covers_the_exact_value_over_seeds(g, budget, seeds):
    # g = 1: M dominated by a few modes (the regime of trained and paper-size networks), a
    # value near 1; g = 2: a flatter M, a value near 0.35 (misses on both sides count)
    from kpflow.training import init_params

    model = RNN(2, 8)
    x = np.random.default_rng(1).standard_normal((4, 12, 2))
    traj = model.run(init_params(model, 0, g=g), x)
    exact = float(analysis.core_alignment(traj, method="exact"))
    runs = [analysis.core_alignment(traj, method="estimate", num_matvecs=budget, rng=s) for s in range(seeds)]
    values = np.array([float(r) for r in runs])
    errors = np.array([float(r.error) for r in runs])
    coverage = np.mean(np.abs(values - exact) <= 2 * errors)
    low, high = _coverage_band(seeds)
    assert low <= coverage <= high, f"±2σ covered the exact value in {coverage:.1%} of {seeds} seeds"
    # unbiased: the mean of the estimates is within 3 of its standard errors of the exact value
    assert abs(values.mean() - exact) <= 3 * values.std() / np.sqrt(seeds)


@pytest.mark.parametrize("p", [None, 1, 2])
def test_target_alignment_is_the_rayleigh_quotient_of_the_temporal_ntk_over_its_trace(p):
    traj, N, _ = _rnn_case()
    B, T = 2, 4
    rng = np.random.default_rng(5)
    y = rng.standard_normal((B, T) if p is None else (B, T, p))
    M = _temporal(N).reshape(B * T, B * T)
    Y = y.reshape(B * T, -1)
    expected = np.trace(Y.T @ M @ Y) / np.sum(Y * Y) / np.trace(N.reshape(B * T * 3, -1))
    r = analysis.target_alignment(traj, torch.asarray(y, dtype=F64))
    assert float(r) == pytest.approx(expected, rel=1e-11)
    assert 0.0 < float(r) <= 1.0


def test_target_modes_are_the_svd_of_the_targets_and_tau_the_learned_fraction():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((3, 5, 2))
    out = rng.standard_normal((3, 5, 2))
    m = analysis.target_modes(y, outputs=out)
    Y = y.reshape(15, 2)
    U, s, _ = np.linalg.svd(Y, full_matrices=False)
    np.testing.assert_allclose(m.singular_values, s, rtol=1e-13)
    recon = sum(m.singular_values[i] * np.outer(m.modes[i].reshape(-1), m.directions[i]) for i in range(2))
    np.testing.assert_allclose(recon, Y, atol=1e-12)
    tau = np.linalg.norm(U.T @ out.reshape(15, 2), axis=1) / s  # sign-free: |u_iᵀ Ŷ|
    np.testing.assert_allclose(m.tau, tau, rtol=1e-12)
    np.testing.assert_allclose(analysis.target_modes(y, outputs=y).tau, 1.0, rtol=1e-12)
    rank_one = analysis.target_modes(np.ones((2, 3, 2)))
    assert rank_one.singular_values.shape == (1,)  # zero modes are dropped


@pytest.mark.parametrize("mode", [None, 0, 1])
def test_target_mode_rayleigh_against_the_dense_ntk(mode):
    traj, N, _ = _rnn_case()
    B, T, H = 2, 4, 3
    rng = np.random.default_rng(7)
    y = rng.standard_normal((B, T, 2))
    C = rng.standard_normal((2, H))
    Y = y.reshape(B * T, 2)
    if mode is not None:
        U, s, Wt = np.linalg.svd(Y, full_matrices=False)
        Y = s[mode] * np.outer(U[:, mode], Wt[mode])
    q = (Y @ C).reshape(-1)
    Nm = N.reshape(B * T * H, -1)
    rho = q @ Nm @ q / (q @ q)
    yt, Ct = torch.asarray(y, dtype=F64), torch.asarray(C, dtype=F64)
    raw = analysis.target_mode_rayleigh(traj, yt, Ct, mode, normalize="none")
    assert float(raw) == pytest.approx(rho, rel=1e-11)
    r = analysis.target_mode_rayleigh(traj, yt, {"weight": Ct, "bias": torch.zeros(2, dtype=F64)}, mode)
    assert float(r) == pytest.approx(rho / np.linalg.eigvalsh(Nm)[-1], rel=1e-9)


def test_rank_at_variance_counts_modes_of_the_operator_and_of_its_partial_traces():
    traj, N, _ = _rnn_case()
    ntk = kpflow.global_ntk(traj)
    n = 2 * 4 * 3

    def count(M, f):
        w = np.sort(np.linalg.eigvalsh(M))[::-1].clip(0)
        return int(np.argmax(np.cumsum(w) / w.sum() >= f)) + 1

    for f in (0.5, 0.9, 0.95, 0.99):
        assert int(analysis.rank_at_variance(ntk, f)) == count(N.reshape(n, n), f)
        assert analysis.rank_at_variance(ntk, f, axis=("batch", "time")).rank == count(
            _temporal(N).reshape(8, 8), f
        )
        assert analysis.rank_at_variance(ntk, f, axis=2).rank == count(np.einsum("bthbts->hs", N), f)
    assert int(analysis.rank_at_variance(np.diag([1.0, 1.0, 1.0, 1.0]), 1.0)) == 4


def test_rank_at_variance_by_top_eigenvalues_matches_dense():
    # a Kronecker operator: exact trace rule, top eigenvalues from its exact spectrum
    A = kpflow.kron(kpflow.Dense(np.diag([4.0, 2.0, 1.0])), kpflow.Dense(np.diag([3.0, 1.0, 0.5, 0.25])))
    dense = analysis.rank_at_variance(A, 0.9)
    top = analysis.rank_at_variance(A, 0.9, max_dense=0, rng=0)
    assert top.rank == dense.rank and top.exact and (top.low, top.high) == (top.rank, top.rank)


def test_temporal_spatial_ranks_are_participation_ratios_of_the_dense_partial_traces():
    traj, N, _ = _rnn_case()

    def pr(M):
        return np.trace(M) ** 2 / np.sum(M * M)

    r = analysis.temporal_spatial_ranks(traj)
    assert float(r.temporal) == pytest.approx(pr(_temporal(N).reshape(8, 8)), rel=1e-11)
    assert float(r.spatial) == pytest.approx(pr(np.einsum("bthbts->hs", N)), rel=1e-11)
    assert float(r.overall) == pytest.approx(pr(N.reshape(24, 24)), rel=1e-11)


def test_bad_inputs_name_the_argument():
    traj, _, _ = _rnn_case()
    with pytest.raises(ValueError, match=r"target_alignment: expected y of shape \(B, T\)"):
        analysis.target_alignment(traj, torch.zeros((3, 4), dtype=F64))
    with pytest.raises(TypeError, match="dtype"):
        analysis.target_alignment(traj, torch.ones((2, 4), dtype=torch.float32))
    with pytest.raises(ValueError, match="y is zero"):
        analysis.target_alignment(traj, torch.zeros((2, 4), dtype=F64))
    y = torch.ones((2, 4, 2), dtype=F64)
    with pytest.raises(ValueError, match=r"expected mode to be None or an int in \[0, 1\)"):
        analysis.target_mode_rayleigh(traj, y, torch.ones((2, 3), dtype=F64), 1)
    with pytest.raises(ValueError, match=r"readout .* shape \(p, 3\)"):
        analysis.target_mode_rayleigh(traj, y, torch.ones((2, 4), dtype=F64))
    with pytest.raises(ValueError, match="normalize"):
        analysis.target_mode_rayleigh(traj, y, torch.ones((2, 3), dtype=F64), normalize="trace")
    with pytest.raises(ValueError, match=r"fraction to be a float in \(0, 1\]"):
        analysis.rank_at_variance(np.eye(2), 1.5)
    with pytest.raises(ValueError, match="axis='time' is not an axis"):
        analysis.rank_at_variance(np.eye(2), axis="time")
    with pytest.raises(ValueError, match="operator to be one of"):
        analysis.temporal_spatial_ranks(traj, "J")
    mlp = kpflow.models.MLP([2, 3, 3])
    mtraj = mlp.run(mlp.init(0, like=torch.zeros(1, dtype=F64)), torch.ones((2, 2), dtype=F64))
    with pytest.raises(ValueError, match="core_alignment: expected a recurrent trajectory"):
        analysis.core_alignment(mtraj)


@pytest.mark.parametrize("backend", ["strict", "torch32"])
def test_metrics_keep_the_namespace_and_dtype(backend):
    if backend == "strict":
        xp = pytest.importorskip("array_api_strict")
        like, dtype = xp.zeros(1, dtype=xp.float64), xp.float64
    else:
        xp, like, dtype = torch, torch.zeros(1, dtype=torch.float32), torch.float32
    model = RNN(2, 3)
    traj = model.run(model.init(0, like=like), xp.ones((2, 4, 2), dtype=dtype))
    y = xp.asarray(np.random.default_rng(0).standard_normal((2, 4, 2)), dtype=dtype)
    C = xp.ones((2, 3), dtype=dtype)
    results = [
        analysis.core_alignment(traj),
        analysis.core_alignment(traj, method="estimate", num_matvecs=16, rng=0),
        analysis.target_alignment(traj, y),
        analysis.target_mode_rayleigh(traj, y, C, 0),
        analysis.temporal_spatial_ranks(traj).temporal,
    ]
    for r in results:
        assert r.value.dtype == dtype and 0.0 <= float(r) <= 2.0 * 8
    assert analysis.target_modes(y, outputs=y).tau.dtype == dtype


class _ProductsOnly(kpflow.operators.LinearOperator):
    """A symmetric matrix seen only through products (no structured trace or eigen rule)."""

    def __init__(self, A):
        import array_api_compat.numpy as cnp

        super().__init__(A.shape[:1], A.shape[:1], xp=cnp, dtype=A.dtype, device="cpu")
        self.A = A

    def _matmat(self, X):
        return X @ self.A

    def _rmatmat(self, Y):
        return Y @ self.A


def test_rank_at_variance_bounds_cover_the_exact_rank_over_seeds():
    # a flat tail under a decaying top: the estimated trace's error moves the rank by modes
    n, fraction = 60, 0.8
    lam = 0.6 ** np.arange(n) + 0.005
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))
    op = _ProductsOnly((Q * lam) @ Q.T)
    exact = int(np.argmax(np.cumsum(lam) / lam.sum() >= fraction)) + 1
    seeds = 100
    runs = [analysis.rank_at_variance(op, fraction, max_dense=0, num_matvecs=20, rng=s) for s in range(seeds)]
    low, high = np.array([r.low for r in runs]), np.array([r.high for r in runs])
    assert all(r.low <= r.rank <= r.high and not r.exact for r in runs)
    assert np.mean(high - low) >= 1  # the trace's error matters here
    coverage = np.mean((low <= exact) & (exact <= high))
    assert coverage >= _coverage_band(seeds)[0], f"[low, high] held the exact rank in {coverage:.0%} of runs"
