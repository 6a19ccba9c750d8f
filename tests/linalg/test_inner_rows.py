"""The eigensolver's inner products and in-place basis updates.

``inner_rows`` is every Gram matrix and projection of the Krylov solvers: its float32
error must stay below the solver's float32 tolerance on vectors as long as the parameter
side of the benchmark's GRU (200,448 entries), on every backend, in both orientations
(jax computes the one with fewer rows first the other way round).  ``kernel(..., donate=(0,))``
lets jax update the basis in its own buffer; elsewhere it changes nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

import kpflow
from kpflow.linalg._common import inner_rows, kernel
from kpflow.linalg._krylov import _placed
from tests.conftest import Case

N_LONG = 200_448  # parameters of GRU(3, 256): the benchmark's Krylov vectors at 1.6M states


def _offset_rows(rows: int, seed: int) -> np.ndarray:
    # a common offset makes every dot product a long sum of same-signed terms: the worst
    # case for a serial float32 accumulation
    return np.random.default_rng(seed).standard_normal((rows, N_LONG)) + 0.5


@pytest.mark.parametrize(("rows_x", "rows_y"), [(6, 1), (1, 6), (3, 3)])
def test_inner_rows_float32_error_is_below_1e_6_on_long_rows(case32: Case, rows_x: int, rows_y: int) -> None:
    X64, Y64 = _offset_rows(rows_x, 1), _offset_rows(rows_y, 2)
    X, Y = case32.asarray(X64), case32.asarray(Y64)
    # the float32 inputs, exactly, in float64: only the products' rounding is measured
    ref = case32.to_numpy(X) @ case32.to_numpy(Y).T
    got = kernel(kpflow.Dense(case32.asarray(np.eye(2))), inner_rows)(X, Y)
    assert tuple(got.shape) == (rows_x, rows_y)
    err = np.max(np.abs(case32.to_numpy(got) - ref)) / np.max(np.abs(ref))
    # jax puts the operand of more rows first (inner_rows): in the other order XLA's chunked
    # products reach 3.6e-6 here
    assert err < 1e-6, err


def test_inner_rows_orientations_agree_in_float64(case64: Case) -> None:
    X, Y = case64.randn(2, 40_000, seed=3), case64.randn(7, 40_000, seed=4)
    run = kernel(kpflow.Dense(case64.asarray(np.eye(2))), inner_rows)
    XY, YX = run(X, Y), run(Y, X)
    case64.assert_close(XY, case64.to_numpy(X) @ case64.to_numpy(Y).T, rtol=1e-13)
    case64.assert_close(YX, case64.to_numpy(XY).T, rtol=1e-13)


def test_a_donated_basis_update_is_exact_and_only_jax_gives_the_buffer_away(
    case64: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case64.name == "jax":
        import kpflow.backends.jax as jax_backend

        # the compiled kernel (large arrays, accelerators): small ones on the CPU run in numpy
        monkeypatch.setattr(jax_backend.adapter, "host_kernel_entries", -1)
    A = kpflow.Dense(case64.asarray(np.eye(2)))
    V, Q = case64.randn(5, 8, seed=5), case64.randn(2, 8, seed=6)
    expected = case64.to_numpy(V).copy()
    expected[1:3] = case64.to_numpy(Q)
    expected[3:] = 0.0  # every row after the placed ones is zero
    start = case64.xp.asarray(1, dtype=case64.xp.int32, device=case64.device)
    got = kernel(A, _placed, donate=(0,))(V, Q, start)
    case64.assert_close(got, expected, rtol=0.0)
    if case64.name == "jax":
        assert V.is_deleted()  # written in place: the old basis is gone
    else:
        assert tuple(V.shape) == (5, 8)  # untouched and still readable
        case64.assert_close(V, case64.to_numpy(case64.randn(5, 8, seed=5)), rtol=0.0)
