"""kpflow.linalg.alignment and kpflow.analysis's alignments: scale-free, in range, honest error bars,
exact where that costs a few estimates.

The references are dense host matrices, and for the NTK quantities an independent torch model
(``torch.func.jacfwd`` of an Elman RNN written here, with a perturbation added to each state for P).
"""

from __future__ import annotations

import numpy as np
import pytest

import kpflow
from kpflow import analysis
from kpflow.linalg import alignment
from tests.conftest import check_meta
from tests.linalg_helpers import Opaque, spectral_matrix

#: (scale of A, scale of B): each alone, both, and opposite, over 1e-8 ... 1e8.
SCALES = (
    (1e-8, 1.0),
    (1.0, 1e-8),
    (1e8, 1.0),
    (1.0, 1e8),
    (1e-8, 1e-8),
    (1e8, 1e8),
    (1e-8, 1e8),
    (1e-2, 1.0),
)


def _cos(A: np.ndarray, B: np.ndarray) -> float:
    return float(np.sum(A * B) / (np.linalg.norm(A) * np.linalg.norm(B)))


def _pair(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Two symmetric matrices, one with a decaying spectrum, one a perturbation of it."""
    Ma, _ = spectral_matrix("poly", n, seed=1)
    return Ma, Ma + 0.2 * spectral_matrix("exp", n, seed=2)[0]


@pytest.mark.parametrize("method", ["estimate", "exact"])
def test_alignment_is_scale_invariant_from_1e_minus_8_to_1e8(case, method):
    Ma, Mb = _pair()
    A, B = Opaque(kpflow.Dense(case.asarray(Ma))), Opaque(kpflow.Dense(case.asarray(Mb)))
    ref = alignment(A, B, method=method, num_matvecs=40, rng=0)
    check_meta(case, ref.value)
    check_meta(case, ref.error)
    assert abs(float(ref) - _cos(Ma, Mb)) <= 2 * float(ref.error) + 10 * case.rtol
    tol = 1e-10 if case.dtype_name == "float64" else 1e-4
    for c, d in SCALES:
        r = alignment(c * A, d * B, method=method, num_matvecs=40, rng=0)
        check_meta(case, r.value)
        assert abs(float(r) - float(ref)) <= tol, (c, d, float(r), float(ref))
        assert abs(float(r.error) - float(ref.error)) <= tol * (1 + float(ref.error))
    flipped = alignment(-1e6 * A, B, method=method, num_matvecs=40, rng=0)
    assert abs(float(flipped) + float(ref)) <= tol


def _psd_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """PSD pairs whose alignment is near 0 (almost orthogonal ranges) and near 1."""
    rng = np.random.default_rng(5)
    n, r = 50, 6
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    Fa = Q[:, :r] * (0.6 ** np.arange(r))
    Fb = Q[:, r : 2 * r] + 0.01 * Q[:, :r]
    near_one = Fa + 1e-3 * rng.standard_normal((n, r))
    return {"near 0": (Fa @ Fa.T, Fb @ Fb.T), "near 1": (Fa @ Fa.T, near_one @ near_one.T)}


def _psd_operator(M: np.ndarray) -> kpflow.operators.LinearOperator:
    """``M = F Fᵀ`` as an opaque Gram operator (PSD by structure, no exact rule)."""
    w, V = np.linalg.eigh(M)
    F = V * np.sqrt(np.clip(w, 0.0, None))
    return Opaque(kpflow.Dense(F)).gram()


@pytest.mark.parametrize("name", ["near 0", "near 1"])
def test_alignment_of_psd_operators_lies_in_the_unit_interval(name):
    Ma, Mb = _psd_pairs()[name]
    truth = _cos(Ma, Mb)
    A = _psd_operator(Ma)
    B = _psd_operator(Mb)
    assert kpflow.linalg.rules.is_psd(A) and kpflow.linalg.rules.is_psd(B)
    hits = 0
    for seed in range(30):
        r = alignment(A, B, method="estimate", num_matvecs=30, rng=seed)
        assert 0.0 <= float(r) <= 1.0
        hits += abs(float(r) - truth) <= 2 * float(r.error) + 1e-12
    assert hits >= 25, f"±2σ covered {hits} of 30"
    exact = alignment(A, B, method="exact")
    assert 0.0 <= float(exact) <= 1.0
    assert float(exact) == pytest.approx(truth, abs=1e-12)


def test_alignment_estimates_lie_in_minus_one_to_one():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((30, 30))
    for Y in (X, -X + 1e-3 * rng.standard_normal((30, 30))):
        A, B = Opaque(kpflow.Dense(X)), Opaque(kpflow.Dense(Y))
        for seed in range(10):
            assert -1.0 <= float(alignment(A, B, method="estimate", num_matvecs=30, rng=seed)) <= 1.0


@pytest.mark.parametrize(("kind", "budget"), [("symmetric", 30), ("symmetric", 60), ("general", 30)])
def test_alignment_error_bars_cover_the_truth_over_seeds(kind, budget):
    rng = np.random.default_rng(0)
    n = 60
    if kind == "symmetric":
        Ma, _ = spectral_matrix("poly", n, seed=1)
        Mb = Ma + 0.3 * spectral_matrix("flat", n, seed=3)[0]
    else:
        decay = np.diag(0.9 ** np.arange(n))
        Ma = rng.standard_normal((n, n)) @ decay
        Mb = Ma + 0.5 * rng.standard_normal((n, n)) @ decay
    truth = _cos(Ma, Mb)
    A, B = Opaque(kpflow.Dense(Ma)), Opaque(kpflow.Dense(Mb))
    hits, errors = 0, []
    seeds = 60
    for seed in range(seeds):
        r = alignment(A, B, method="estimate", num_matvecs=budget, rng=seed)
        assert r.num_matvecs <= budget
        hits += abs(float(r) - truth) <= 2 * float(r.error) + 1e-12
        errors.append(float(r.error))
    assert hits >= 0.87 * seeds, f"±2σ covered {hits} of {seeds}"
    assert max(errors) < 0.1  # the bars are informative, not merely wide


# -- NTK quantities against an independent torch reference -------------------------------------
torch = pytest.importorskip("torch")
F64 = torch.float64


def _reference(params: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(J_S, P)`` of the tanh RNN ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh) + η_t``.

    ``J_S = ∂h/∂θ`` (n × p) and ``P = ∂h/∂η`` (n × n) by ``torch.func.jacfwd``.
    """
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    shapes = [tuple(params[k].shape) for k in names]
    sizes = [int(np.prod(s)) for s in shapes]
    theta = torch.tensor(np.concatenate([np.ravel(params[k]) for k in names]), dtype=F64)
    xt = torch.tensor(x, dtype=F64)
    B, T, _ = x.shape
    H = shapes[1][0]

    def states(th, eta):
        w_ih, w_hh, b_ih, b_hh = (p.reshape(s) for p, s in zip(torch.split(th, sizes), shapes, strict=True))
        h = torch.zeros(B, H, dtype=F64)
        out = []
        for t in range(T):
            h = torch.tanh(xt[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh) + eta[:, t]
            out.append(h)
        return torch.stack(out, 1).reshape(-1)

    eta = torch.zeros(B, T, H, dtype=F64)
    J = torch.func.jacfwd(states, 0)(theta, eta).numpy()
    P = torch.func.jacfwd(states, 1)(theta, eta).reshape(B * T * H, -1).numpy()
    return J, P


def _rnn_problem(seed: int = 0):
    from kpflow.models import RNN

    model = RNN(3, 8)
    x = np.random.default_rng(10 + seed).standard_normal((3, 11, 3))  # 264 states, 104 parameters
    return model, x


def test_misdirection_is_exact_at_a_few_estimates_cost_and_equals_the_dense_reference():
    model, x = _rnn_problem()
    params = model.init(0)
    J, P = _reference(params, x)
    N, PPt = J @ J.T, P @ P.T
    r = analysis.misdirection(model.run(params, x))
    assert r.method == "exact" and r.num_matvecs == 2 * 264
    assert float(r) == pytest.approx(_cos(N, PPt), abs=1e-10)
    assert 0.0 <= float(r) <= 1.0


def test_init_vs_trained_alignment_takes_the_gram_route_and_equals_the_dense_reference():
    model, x = _rnn_problem()
    p0, p1 = model.init(0), model.init(1)
    J0, _ = _reference(p0, x)
    J1, _ = _reference(p1, x)
    r = analysis.init_vs_trained_alignment(model, p0, p1, x)
    # (3r + 2s)/2 products on the parameter side (r = s = 104) instead of 2 × 264 on the states
    assert r.method == "exact" and r.num_matvecs == (5 * 104 + 1) // 2
    assert float(r) == pytest.approx(_cos(J0 @ J0.T, J1 @ J1.T), abs=1e-10)
    Kr = analysis.init_vs_trained_alignment(model, p0, p1, x, operator="K")
    assert 0.0 <= float(Kr) <= 1.0


def test_an_explicit_budget_below_the_exact_cost_is_kept():
    model, x = _rnn_problem()
    traj = model.run(model.init(0), x)
    r = analysis.misdirection(traj, num_matvecs=200, rng=0)
    assert r.method == "estimate" and r.num_matvecs <= 200
    exact = float(analysis.misdirection(traj))
    assert 0.0 <= float(r) <= 1.0
    assert abs(float(r) - exact) <= 2 * float(r.error)
