"""Error bars are promises: ±2σ covers the truth at least 90% of the time over 50 seeds.

Every randomized trace method and the effective-rank estimate (global and along an axis) on
four spectrum classes: flat, power law (1/(1+i)²), exponential (e^(−i/4)), and the NTK_S of a
small GRU (numpy, float64, densified once).  The operators are opaque wrappers of dense
matrices, so only the matvec routes run; the truths are dense numpy computations.
``benchmarks/bench_calibration.py`` prints the same table at larger sizes and seed counts.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import kpflow
from kpflow.linalg import effective_rank, rules, trace
from tests.linalg_helpers import Opaque, numpy_operator, spectral_matrix

SEEDS = range(50)
SHAPE = (3, 8, 6)  # the GRU's (batch, time, hidden); the synthetic spectra use the same
N = int(np.prod(SHAPE))


class _OpaquePSD(Opaque):
    """An opaque operator known to be PSD (XNysTrace and the Nyström routes apply)."""


rules.is_psd.register(_OpaquePSD, lambda op: True)


def _gru_ntk() -> np.ndarray:
    from kpflow.models import GRU
    from kpflow.ntk import global_ntk
    from kpflow.operators.functions import todense

    model = GRU(2, SHAPE[2])
    x = np.random.default_rng(0).standard_normal((SHAPE[0], SHAPE[1], 2))
    D = np.asarray(todense(global_ntk(model.run(model.init(0), x)))).reshape(N, N)
    return (D + D.T) / 2


@pytest.fixture(scope="module")
def matrices() -> dict[str, np.ndarray]:
    out = {name: spectral_matrix(name, N, seed=3)[0] for name in ("flat", "poly", "exp")}
    out["gru"] = _gru_ntk()
    return out


def _operator(M: np.ndarray, psd: bool = True):
    inner = numpy_operator(M, SHAPE, opaque=False)
    return _OpaquePSD(inner) if psd else Opaque(inner)


def _participation_ratio(M: np.ndarray) -> float:
    return float(np.trace(M) ** 2 / np.sum(M * M))


def _partial(M: np.ndarray, keep) -> np.ndarray:
    """The partial trace keeping axis ``keep`` (an int or a tuple) of SHAPE, by einsum on the host."""
    kept = (keep,) if isinstance(keep, int) else tuple(keep)
    T = M.reshape(*SHAPE, *SHAPE)
    src = "abc"
    dst = "".join("xyz"[a] if a in kept else src[a] for a in range(3))
    out = "".join(src[a] for a in kept) + "".join("xyz"[a] for a in kept)
    n = int(np.prod([SHAPE[a] for a in kept]))
    return np.einsum(f"{src}{dst}->{out}", T).reshape(n, n)


def _coverage(results, truth: float) -> tuple[float, float]:
    z = []
    for r in results:
        assert r.error is not None and np.isfinite(float(r.error)), r
        err = float(r.error)
        z.append(0.0 if float(r) == truth else (float(r) - truth) / err if err > 0 else np.inf)
    z = np.asarray(z)
    return float(np.mean(np.abs(z) <= 2)), float(np.sqrt(np.mean(np.minimum(z**2, 1e6))))


TRACE_BUDGETS = [("hutchinson", 12), ("hutch++", 12), ("xtrace", 24), ("xnystrace", 24)]


@pytest.mark.parametrize("spectrum", ["flat", "poly", "exp", "gru"])
@pytest.mark.parametrize(("method", "budget"), TRACE_BUDGETS)
def test_trace_error_bars_cover_the_truth_nine_times_in_ten(matrices, spectrum, method, budget):
    M = matrices[spectrum]
    A = _operator(M)
    results = [trace(A, method=method, num_matvecs=budget, rng=s) for s in SEEDS]
    cover, rms = _coverage(results, float(np.trace(M)))
    assert cover >= 0.9, (cover, rms)


@pytest.mark.parametrize("spectrum", ["flat", "poly", "exp", "gru"])
@pytest.mark.parametrize("keep", [None, 1, 2, (0, 1), (1, 2)])
@pytest.mark.parametrize("psd", [True, False])
def test_effective_rank_error_bars_cover_the_truth_nine_times_in_ten(matrices, spectrum, keep, psd):
    # keep=None: two trace estimates and Hutch++ on tr(A²); keep=1 (time), 2 (hidden) and the
    # two-axis keeps: the independent probe pairs, on a Nyström residual when A is known PSD,
    # or Hutch++ on the exactly applied partial trace when few axes are traced.
    M = matrices[spectrum]
    A = _operator(M, psd)
    truth = _participation_ratio(M if keep is None else _partial(M, keep))
    results = [effective_rank(A, keep, method="estimate", num_matvecs=40, rng=s) for s in SEEDS]
    cover, rms = _coverage(results, truth)
    assert cover >= 0.9, (cover, rms)


@pytest.mark.parametrize("method", ["xtrace", "xnystrace", "hutch++"])
def test_a_near_exact_trace_reports_a_bar_that_covers_its_rounding_error(method):
    # rank 10 < the sketch: the answer is exact up to rounding, and the bar must say how much.
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((120, 10)))
    M = (Q * np.linspace(10.0, 1.0, 10)) @ Q.T
    A = _OpaquePSD(numpy_operator(M, opaque=False))
    truth = float(np.trace(M))
    for s in range(20):
        r = trace(A, method=method, num_matvecs=60, rng=s)
        assert abs(float(r) - truth) <= 2 * float(r.error), (float(r) - truth, float(r.error))
        assert float(r.error) <= 1e-9 * truth


def test_the_zero_operator_has_effective_rank_zero_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zero = np.zeros((N, N))
        for A in (numpy_operator(zero, SHAPE, opaque=False), numpy_operator(zero, SHAPE), _operator(zero)):
            for keep in (None, 1):
                r = effective_rank(A, keep)
                assert float(r) == 0.0 and float(r.error) == 0.0
        for keep in (None, 1):
            r = effective_rank(_operator(zero), keep, method="estimate", num_matvecs=40, rng=0)
            assert float(r) == 0.0 and float(r.error) == 0.0


@pytest.mark.parametrize("scale", [1e-22, 1e-30])
def test_float32_effective_rank_of_tiny_operators_does_not_underflow(matrices, scale):
    import array_api_compat.numpy as cnp

    M = matrices["exp"]
    truth = _participation_ratio(M)
    along = _participation_ratio(_partial(M, 1))
    tiny = cnp.asarray((M * scale).astype(np.float32))
    dense = kpflow.Dense(cnp.reshape(tiny, (*SHAPE, *SHAPE)), shape_in=SHAPE)
    for A in (dense, Opaque(dense)):
        r = effective_rank(A)
        assert r.value.dtype == cnp.float32
        assert float(r) == pytest.approx(truth, rel=1e-4)
        assert float(effective_rank(A, keep=1)) == pytest.approx(along, rel=1e-4)


def test_g_sweep_carries_error_columns_and_repeats_without_a_seed():
    from kpflow.analysis import g_sweep
    from kpflow.models import RNN

    x = np.random.default_rng(0).standard_normal((4, 10, 2))  # 4 · 10 · 8 = 320 states: estimates
    first, again = (g_sweep(RNN(2, 8), x, [0.5, 2.0], num_matvecs=40) for _ in range(2))
    for q in ("K", "PPT", "NTK", "NTK batch", "NTK time", "NTK hidden", "misdirection"):
        assert f"{q} error" in first.table
        np.testing.assert_array_equal(first.table[q], again.table[q])
    assert np.all(first.table["NTK error"] > 0) and np.all(first.table["K error"] == 0)  # K is exact
    assert first.rows()[0]["NTK time error"] == first.table["NTK time error"][0]


def _tiny_rnn(backend: str, dtype: str):
    """A trajectory of a bias-free tanh RNN (numpy or torch) driven by inputs of size 1e-12.

    Its states are of order 1e-12 and NTK_S's entries of order 1e-24: in float32 their
    squares (1e-48) are below the smallest float32.  320 states, 80 parameters.
    """
    from kpflow.models import RNN

    model = RNN(2, 8, bias=False)
    x = (np.random.default_rng(0).standard_normal((4, 10, 2)) * 1e-12).astype(dtype)
    params = {k: np.asarray(v).astype(dtype) for k, v in model.init(0).items()}
    if backend == "torch":
        torch = pytest.importorskip("torch")
        params, x = {k: torch.asarray(v) for k, v in params.items()}, torch.asarray(x)
    return model.run(params, x)


def _tiny_rnn_ranks(backend: str, dtype: str) -> dict:
    from kpflow.analysis import effective_ranks

    traj = _tiny_rnn(backend, dtype)
    N = kpflow.global_ntk(traj)
    if backend != "numpy":  # the call and one axis (torch is slow on tiny operators)
        out = {}
        for keep in (None, "time"):
            e = effective_rank(N, keep, num_matvecs=40, rng=0)
            out[keep] = (float(e), float(e.error))
        return out
    r = effective_ranks(traj, operators=["NTK"], num_matvecs=40, rng=0)
    out = {key: (v, r.errors["NTK"][key]) for key, v in r.NTK.items()}
    for label, op, keep, m in (
        ("time+hidden", N, ("time", "hidden"), 64),  # Hutch++ on the exact partial trace
        ("-N global", -1.0 * N, None, 40),  # not known PSD: XTrace and Hutch++
        ("-N time", -1.0 * N, 1, 40),  # plain probe pairs (the scaled operator has no axis names)
    ):
        e = effective_rank(op, keep, num_matvecs=m, rng=0)
        assert e.method == "estimate" and e.value.dtype == N.dtype
        out[label] = (float(e), float(e.error))
    for method in ("hutchinson", "hutch++", "xtrace", "xnystrace"):  # their bars square products
        e = trace(N, method=method, num_matvecs=20, rng=0)
        out[f"trace {method}"] = (float(e), float(e.error))
    return out


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_float32_effective_ranks_of_an_rnn_at_input_scale_1e_12_match_float64(backend):
    # Every estimate route at this size: global on J_Sᵀ J_S, each axis by Nyström and probe
    # pairs, two axes by Hutch++ on the exact partial trace, and on -NTK_S (not known PSD:
    # XTrace, Hutch++ and plain probe pairs).  On numpy the same seed draws the same probes
    # in both dtypes, so the float32 estimates and bars must be the float64 ones up to
    # rounding; torch draws its Gaussian probes per dtype, so there the two are independent
    # estimates, which must agree within their bars.
    r32, r64 = _tiny_rnn_ranks(backend, "float32"), _tiny_rnn_ranks(backend, "float64")
    for key, (v64, e64) in r64.items():
        v32, e32 = r32[key]
        if backend == "numpy":
            assert abs(v32 - v64) <= 2 * e64, (key, v32, v64, e64)  # within the reported bar
            assert v32 == pytest.approx(v64, rel=1e-3), (key, v32, v64)
            assert e32 == pytest.approx(e64, rel=1e-2), (key, e32, e64)
        else:
            assert abs(v32 - v64) <= 2 * np.hypot(e32, e64), (key, v32, v64, e32, e64)


def test_partial_trace_ratio_is_exact_from_the_factor_columns_when_parameters_are_few():
    # NTK_S = J_S J_Sᵀ with 32 parameters and 320 states: along an axis the exact ratio costs
    # 32 columns of J_S (within the default budget), not 320 unit probes; no estimate, no bias.
    from kpflow.models import RNN
    from kpflow.operators.functions import todense

    model, shape = RNN(2, 4), (4, 20, 4)
    x = np.random.default_rng(0).standard_normal((shape[0], shape[1], 2))
    N = kpflow.global_ntk(model.run(model.init(0), x))
    D = np.asarray(todense(N)).reshape(*shape, *shape)
    for keep, name in enumerate(("batch", "time", "hidden")):
        src, dst = "abc", "".join("xyz"[a] if a == keep else "abc"[a] for a in range(3))
        M = np.einsum(f"{src}{dst}->{src[keep]}{'xyz'[keep]}", D)
        r = effective_rank(N, name)
        assert (r.method, r.num_matvecs, float(r.error)) == ("exact", 32, 0.0)
        assert float(r) == pytest.approx(_participation_ratio(M), rel=1e-12)
    # float32 at input scale 1e-12 (entries ~1e-24; 80 parameters, 320 states)
    r32, r64 = (
        effective_rank(kpflow.global_ntk(_tiny_rnn("numpy", d)), "time") for d in ("float32", "float64")
    )
    assert r32.method == "exact" and r32.value.dtype == np.float32
    assert float(r32) == pytest.approx(float(r64), rel=1e-4)


@pytest.mark.parametrize("spectrum", ["flat", "poly", "exp", "gru"])
def test_effective_ranks_sharing_one_pair_of_trace_estimates_cover_the_truth(matrices, spectrum):
    # spectrum_report's route: per seed, one trace estimate and a second independent one are
    # the numerator of the global ratio and of the ratio along every axis; each ratio spends
    # its own products on tr(M²) only.
    M = matrices[spectrum]
    A = _operator(M)
    keeps = (None, 0, 1, 2)
    results: dict = {keep: [] for keep in keeps}
    for s in SEEDS:
        gen = np.random.default_rng(s)
        pair = (trace(A, num_matvecs=24, rng=gen), trace(A, num_matvecs=12, rng=gen))
        for keep in keeps:
            r = effective_rank(A, keep, method="estimate", num_matvecs=20, rng=gen, traces=pair)
            assert r.num_matvecs <= 20, r
            results[keep].append(r)
    for keep in keeps:
        truth = _participation_ratio(M if keep is None else _partial(M, keep))
        cover, rms = _coverage(results[keep], truth)
        assert cover >= 0.9, (keep, cover, rms)
