"""kpflow.linalg.trace: exact, Hutchinson, Hutch++, XTrace, XNysTrace on prescribed spectra."""

from __future__ import annotations

import re

import numpy as np
import pytest

import kpflow
from kpflow.linalg import trace
from kpflow.linalg._common import MatvecCounter
from kpflow.linalg.trace import nystrom_sketch, xtrace_estimates
from tests.conftest import check_meta
from tests.linalg_helpers import SPECTRA, Opaque, numpy_operator, spectral_matrix, spectral_operator

ESTIMATORS = ("hutchinson", "hutch++", "xtrace", "xnystrace")


@pytest.mark.parametrize("name", sorted(SPECTRA))
def test_exact_trace_matches_dense(case, name):
    A, M, lam = spectral_operator(case, name, 40)
    r = trace(A, method="exact")
    check_meta(case, r.value)
    assert r.num_matvecs == 40 and r.method == "exact"
    assert abs(float(r) - lam.sum()) <= 10 * case.rtol * np.abs(lam).sum()
    ruled = trace(A.op)  # Dense: structured rule, no products
    assert ruled.num_matvecs == 0
    assert abs(float(ruled) - np.trace(M)) <= 10 * case.rtol * np.abs(lam).sum()


@pytest.mark.parametrize("method", ESTIMATORS)
def test_estimators_stay_in_namespace_dtype_and_device(case, method):
    A, _, lam = spectral_operator(case, "exp", 60)
    r = trace(A, method=method, num_matvecs=20, rng=3)
    check_meta(case, r.value)
    check_meta(case, r.error)
    assert r.num_matvecs == 20 and r.method == method
    assert abs(float(r) - lam.sum()) <= 0.3 * lam.sum()


@pytest.mark.parametrize("method", ESTIMATORS)
def test_estimators_are_unbiased_over_seeds(method):
    M, lam = spectral_matrix("poly", 50, seed=2)
    A = numpy_operator(M + 0.05 * np.eye(50))
    truth = lam.sum() + 0.05 * 50
    values = np.array([float(trace(A, method=method, num_matvecs=8, rng=s)) for s in range(300)])
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert abs(values.mean() - truth) <= 4 * se + 1e-12 * truth


@pytest.mark.parametrize("method", ESTIMATORS)
def test_error_decreases_with_budget(method):
    M, lam = spectral_matrix("poly", 120, seed=4)
    A = numpy_operator(M)
    errors = []
    for budget in (8, 32, 120):
        errs = [abs(float(trace(A, method=method, num_matvecs=budget, rng=s)) - lam.sum()) for s in range(20)]
        errors.append(np.mean(errs))
    assert errors[0] > errors[1] > errors[2], errors


def test_xtrace_beats_hutchpp_threefold_on_exponential_decay():
    M, lam = spectral_matrix("exp", 200, seed=5)
    A = numpy_operator(M)
    err = {}
    for method in ("hutch++", "xtrace"):
        err[method] = np.mean(
            [abs(float(trace(A, method=method, num_matvecs=60, rng=s)) - lam.sum()) for s in range(30)]
        )
    assert err["xtrace"] <= err["hutch++"] / 3, err


def _host_probes(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The Gaussian probes kpflow draws on numpy from ``rng=default_rng(seed)``: one integer
    seed is drawn from the generator, and the block from ``default_rng`` of that seed."""
    return np.random.default_rng(np.random.default_rng(seed).integers(0, 2**31)).standard_normal(shape)


def test_xtrace_leave_one_out_estimates_match_the_naive_definition():
    rng = np.random.default_rng(0)
    n, s = 30, 6
    M = rng.standard_normal((n, n)) + np.diag(np.linspace(5, 1, n))  # not symmetric
    counter = MatvecCounter(numpy_operator(M))
    ests = np.asarray(xtrace_estimates(counter, s, np.random.default_rng(7))[0])
    Om = _host_probes(7, (s, n))
    naive = []
    for i in range(s):
        Qi, _ = np.linalg.qr(M @ np.delete(Om, i, axis=0).T)
        u = Om[i] - Qi @ (Qi.T @ Om[i])
        naive.append(np.trace(Qi.T @ M @ Qi) + u @ M @ u)
    np.testing.assert_allclose(ests, naive, rtol=1e-10, atol=1e-10)
    assert counter.num_matvecs == 2 * s


def test_xnystrace_leave_one_out_estimates_match_the_naive_definition():
    M, _ = spectral_matrix("poly", 30, seed=8)
    n, s = 30, 6
    counter = MatvecCounter(numpy_operator(M))
    sk = nystrom_sketch(counter, s, np.random.default_rng(9))
    F, X = np.asarray(sk["F"]), np.asarray(sk["X"])
    g = (X * X).sum(axis=0)
    ests = (F * F).sum() - ((F.T @ X) ** 2).sum(axis=0) / g + 1 / g - sk["nu"] * n
    Om = _host_probes(9, (s, n))
    Mn = M + sk["nu"] * np.eye(n)
    naive = []
    for i in range(s):
        O = np.delete(Om, i, axis=0).T
        Y = Mn @ O
        Ahat = Y @ np.linalg.solve(O.T @ Y, Y.T)
        naive.append(np.trace(Ahat) + Om[i] @ (Mn - Ahat) @ Om[i] - sk["nu"] * n)
    np.testing.assert_allclose(ests, naive, rtol=1e-7)


def test_xtrace_error_estimate_is_calibrated():
    M, lam = spectral_matrix("poly", 150, seed=6)
    A = numpy_operator(M)
    results = [trace(A, method="xtrace", num_matvecs=40, rng=s) for s in range(40)]
    actual = np.sqrt(np.mean([(float(r) - lam.sum()) ** 2 for r in results]))
    stated = np.sqrt(np.mean([float(r.error) ** 2 for r in results]))
    assert 0.25 <= actual / stated <= 4.0, (actual, stated)


def test_auto_picks_rule_exact_xtrace_or_xnystrace(case):
    A, _M, lam = spectral_operator(case, "exp", 30)
    assert trace(A.op).method == "exact" and trace(A.op).num_matvecs == 0
    small = trace(A)
    assert small.method == "exact" and small.num_matvecs == 30
    assert trace(A, num_matvecs=12, rng=0).method == "xtrace"
    psd = Opaque(A).gram()
    r = trace(psd, num_matvecs=12, rng=0)
    assert r.method == "xnystrace" and r.num_matvecs == 12
    check_meta(case, r.value)
    assert abs(float(r) - (lam**2).sum()) <= 0.05 * (lam**2).sum()


def test_kronecker_trace_is_exact_from_factors(case64):
    a = case64.randn(4, 4, seed=1)
    b = case64.randn(3, 3, seed=2)
    K = kpflow.kron(a, b)
    r = trace(K)
    assert r.num_matvecs == 0
    an, bn = case64.to_numpy(a), case64.to_numpy(b)
    case64.assert_close(r.value, np.asarray(np.trace(an) * np.trace(bn)))


class ScaledIdentityCore(Opaque):
    """A stand-in for a downstream operator type with its own exact trace rule."""


def _core_trace(op):
    return op.xp.asarray(123.0, dtype=op.dtype, device=op.device)


def test_a_registered_rule_is_used_without_editing_kpflow(case64):
    from kpflow.linalg import rules

    rules.exact_trace.register(ScaledIdentityCore, _core_trace)
    op = ScaledIdentityCore(kpflow.Identity((5,), like=case64.asarray([0.0])))
    r = trace(op)
    assert float(r) == 123.0 and r.num_matvecs == 0


def test_progress_callback_and_tqdm():
    A = numpy_operator(spectral_matrix("exp", 200)[0])
    seen = []
    r = trace(A, method="hutchinson", num_matvecs=150, rng=0, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (150, 150) and len(seen) == 3 and r.num_matvecs == 150
    assert trace(A, method="xtrace", num_matvecs=10, rng=0, progress=True).num_matvecs == 10


def test_seeded_calls_repeat_and_generators_advance():
    A = numpy_operator(spectral_matrix("poly", 50)[0])
    assert float(trace(A, method="xtrace", num_matvecs=10, rng=1)) == float(
        trace(A, method="xtrace", num_matvecs=10, rng=1)
    )
    gen = np.random.default_rng(1)
    first = float(trace(A, method="xtrace", num_matvecs=10, rng=gen))
    assert first != float(trace(A, method="xtrace", num_matvecs=10, rng=gen))


@pytest.mark.parametrize(
    ("method", "budget"), [("hutchinson", 0), ("hutch++", 2), ("xtrace", 3), ("xnystrace", 1)]
)
def test_budget_too_small_for_the_method_is_a_clear_error(method, budget):
    A = numpy_operator(np.eye(10))
    with pytest.raises(ValueError, match=re.escape(f"method '{method}' needs num_matvecs >=")):
        trace(A, method=method, num_matvecs=budget)


def test_bad_input_is_a_clear_error():
    A = numpy_operator(np.eye(10))
    with pytest.raises(ValueError, match="square"):
        trace(numpy_operator(np.ones((3, 4))))
    with pytest.raises(ValueError, match="unknown method 'hutch'"):
        trace(A, method="hutch")
    with pytest.raises(TypeError, match="rng"):
        trace(A, method="xtrace", num_matvecs=4, rng="seed")
    with pytest.raises(TypeError, match="num_matvecs"):
        trace(A, method="xtrace", num_matvecs=4.5)
    with pytest.raises(ValueError, match="at most 20"):
        trace(A, method="xtrace", num_matvecs=22)
    with pytest.raises(TypeError, match="LinearOperator"):
        trace(np.eye(3))


@pytest.mark.parametrize("method", ["xtrace", "xnystrace", "hutch++"])
def test_exactly_low_rank_operators_are_traced_to_rounding(case, method):
    F = np.random.default_rng(3).standard_normal((60, 4))
    A = Opaque(kpflow.Dense(case.asarray(F @ F.T)))
    r = trace(A, method=method, num_matvecs=20, rng=0)
    check_meta(case, r.value)
    truth = np.sum(F * F)
    assert abs(float(r) - truth) <= 1e3 * case.rtol * truth


def test_the_zero_operator_has_zero_trace():
    Z = numpy_operator(np.zeros((20, 20)))
    for method in ESTIMATORS:
        assert abs(float(trace(Z, method=method, num_matvecs=8, rng=0))) <= 1e-300
