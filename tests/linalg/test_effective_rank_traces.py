"""``effective_rank(..., traces=(t₁, t₂))``: a shared numerator, checked exactly and for bad input.

The coverage of the error bars of ratios that share one pair is in ``test_calibration.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from kpflow.linalg import ScalarResult, effective_rank, trace
from tests.linalg_helpers import Opaque, numpy_operator, spectral_matrix

SHAPE = (3, 4, 5)
N = 60


def _case():
    M, _ = spectral_matrix("poly", N, seed=2)
    return M, Opaque(numpy_operator(M, SHAPE, opaque=False))


def _exact_pair(value: float) -> tuple[ScalarResult, ScalarResult]:
    import array_api_compat.numpy as cnp

    v = cnp.asarray(value)
    return ScalarResult(v, cnp.asarray(0.0), 0, "exact"), ScalarResult(v * 1.0, cnp.asarray(0.0), 0, "exact")


def test_the_given_traces_are_the_numerator():
    # a budget of 3n makes Hutch++'s tr(M²) exact, so the ratio is t₁ t₂ / ‖A‖²_F exactly
    M, A = _case()
    t = float(np.trace(M))
    truth = t * t / float(np.sum(M * M))
    r = effective_rank(A, method="estimate", num_matvecs=3 * N, rng=0, traces=_exact_pair(t))
    assert r.num_matvecs == 3 * N
    assert abs(float(r) - truth) <= 1e-10 * truth
    twice = _exact_pair(t)
    twice = (ScalarResult(twice[0].value * 2.0, twice[0].error, 0, "exact"), twice[1])
    r2 = effective_rank(A, method="estimate", num_matvecs=3 * N, rng=0, traces=twice)
    assert abs(float(r2) - 2 * truth) <= 1e-10 * truth


def test_with_traces_the_whole_budget_goes_to_the_squares():
    _, A = _case()
    gen = np.random.default_rng(0)
    pair = (trace(A, num_matvecs=20, rng=gen), trace(A, num_matvecs=20, rng=gen))
    for keep in (None, 1):
        r = effective_rank(A, keep, method="estimate", num_matvecs=24, rng=gen, traces=pair)
        assert r.method == "estimate" and r.num_matvecs <= 24
        assert 1.0 <= float(r) <= (N if keep is None else SHAPE[1])


def test_an_exact_ratio_ignores_the_traces():
    M, A = _case()
    truth = float(np.trace(M)) ** 2 / float(np.sum(M * M))
    r = effective_rank(A, method="exact", traces=_exact_pair(123.0))
    assert r.method == "exact" and abs(float(r) - truth) <= 1e-10 * truth


@pytest.mark.parametrize(
    ("traces", "error", "words"),
    [
        (1.0, TypeError, "pair of ScalarResult"),
        ((1.0, 2.0), TypeError, "pair of ScalarResult"),
        ("same", ValueError, "the same estimate twice"),
        ("float32", TypeError, "dtype float64"),
    ],
)
def test_bad_traces_are_named(traces, error, words):
    _, A = _case()
    pair = _exact_pair(1.0)
    if traces == "same":
        traces = (pair[0], pair[0])
    elif traces == "float32":
        import array_api_compat.numpy as cnp

        v = cnp.asarray(1.0, dtype=cnp.float32)
        traces = (ScalarResult(v, v, 0, "x"), pair[1])
    with pytest.raises(error, match="traces") as info:
        effective_rank(A, method="estimate", num_matvecs=20, rng=0, traces=traces)
    assert words in str(info.value)
