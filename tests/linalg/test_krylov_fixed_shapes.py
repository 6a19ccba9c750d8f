"""The eigensolver's fixed-shape kernels (jax): one compilation per solve, the same pairs as sliced arrays.

On backends that compile per shape, ``restarted_lanczos`` keeps the basis and the projected
matrix at their full ``max_basis`` rows (zero from ``m`` on) and passes ``m`` as an array,
so that its kernels compile once instead of once per basis size.  These tests check the
padded kernels against the sliced ones on every backend, and count compilations on jax.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import kpflow.linalg._krylov as krylov
from kpflow.linalg import eigsh
from tests.conftest import BACKENDS, Case
from tests.linalg_helpers import spectral_operator


def _index(case: Case, i: int) -> Any:
    return case.xp.asarray(i, dtype=case.xp.int32, device=case.device)


@pytest.mark.parametrize(("M", "m", "s", "k"), [(12, 7, 2, 3), (9, 9, 1, 4), (16, 5, 5, 5)])
def test_padded_rayleigh_ritz_equals_the_sliced_one(case64: Case, M: int, m: int, s: int, k: int) -> None:
    rng = np.random.default_rng(M + m)
    T = rng.standard_normal((M, M))
    T[:m, :m] = T[:m, :m] + T[:m, :m].T
    T[m:, :] = rng.standard_normal((M - m, M))  # garbage outside the leading block is ignored
    W = case64.randn(s, 30, seed=3)
    xp = case64.xp
    got = krylov._rayleigh_ritz_padded(xp, k, s, case64.asarray(T), W, _index(case64, m))
    ref = krylov._rayleigh_ritz(xp, k, s, case64.asarray(T[:m, :m]), W)
    theta, Y, est, scale = (case64.to_numpy(a) for a in got)
    np.testing.assert_allclose(theta[:m], case64.to_numpy(ref[0]), atol=1e-12 * np.abs(T).max())
    assert np.all(theta[m:] < theta[m - 1])  # the padding lies below the leading block's spectrum
    np.testing.assert_allclose(np.abs(Y[:m, :m]), np.abs(case64.to_numpy(ref[1])), atol=1e-10)
    assert np.abs(Y[m:, :m]).max(initial=0.0) <= 1e-12  # the Ritz vectors live in the first m rows
    np.testing.assert_allclose(est, case64.to_numpy(ref[2]), atol=1e-10 * max(1.0, float(est.max())))
    np.testing.assert_allclose(scale, case64.to_numpy(ref[3]), rtol=1e-13)


def test_placed_rows_and_columns_keep_the_rows_from_m_on_zero(case64: Case) -> None:
    xp = case64.xp
    V = case64.randn(6, 4, seed=1)
    Q = case64.randn(2, 4, seed=2)
    got = case64.to_numpy(krylov._placed(xp, V, Q, _index(case64, 2)))
    expected = np.array(case64.to_numpy(V))
    expected[2:4] = case64.to_numpy(Q)
    expected[4:] = 0.0
    np.testing.assert_array_equal(got, expected)

    T = case64.randn(6, 6, seed=4)
    H = case64.randn(6, 2, seed=5)
    got = case64.to_numpy(krylov._with_columns(xp, T, H, _index(case64, 3)))
    expected = np.array(case64.to_numpy(T))
    expected[:, 3:5] = case64.to_numpy(H)
    expected[3:5, :] = case64.to_numpy(H).T
    np.testing.assert_array_equal(got, expected)

    block = case64.randn(2, 2, seed=6)
    got = case64.to_numpy(krylov._reset(xp, T, block))
    expected = np.zeros((6, 6))
    expected[:2, :2] = case64.to_numpy(block)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.skipif("jax" not in BACKENDS, reason="jax is not among the selected backends")
def test_on_jax_a_long_solve_compiles_each_kernel_a_few_times_not_once_per_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import jax.monitoring
    import kpflow.backends.jax as jax_backend

    from tests.conftest import _make_case

    # the compiled kernels (arrays on an accelerator, or larger than the host kernels take)
    monkeypatch.setattr(jax_backend.adapter, "host_kernel_entries", -1)

    case = _make_case("jax", "float64")
    # a size no other test uses, so every kernel is traced afresh
    A, _, lam = spectral_operator(case, "poly", 347)
    traced: list[str] = []

    def on_trace(event: str, *_: Any, **kwargs: Any) -> None:
        if event == "/jax/core/compile/jaxpr_trace_duration":
            traced.append(str(kwargs.get("fun_name", "")))

    jax.monitoring.register_event_duration_secs_listener(on_trace)
    try:
        r = eigsh(A, 6, method="lanczos", rng=0, block_size=1, max_basis=14)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_trace)
    assert r.num_matvecs >= 20  # more steps than the 14 rows of the basis: restarts
    np.testing.assert_allclose(case.to_numpy(r.eigenvalues), lam[:6], rtol=1e-8)
    for name in ("_expand", "_rayleigh_ritz_padded", "_with_columns", "_placed", "_project_once"):
        # one block shape for the Krylov steps, one more for the multiplicity check's grown
        # block, and for _placed the rows a restart or a lock writes at once
        assert 1 <= traced.count(name) <= 4, (name, traced.count(name))
