"""eigsh of NTK_S at scale: the restarted solver on the parameter side (J_S Jᵀ_S = NTK_S).

When the state Jacobian has fewer parameters than NTK_S has states, ``eigsh`` runs its Krylov
basis on Jᵀ J and maps the eigenvectors back, u = J v / σ.  These tests check that the answer
is the state side's (float64, against the dense NTK), for every built-in model, that the
residual norms are those of NTK_S itself, and that nothing of the kind is attempted when the
factor is not smaller.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kpflow.ntk as ntk
from kpflow.linalg import eigsh, rules
from tests.conftest import check_meta, examples
from tests.linalg_helpers import Opaque
from tests.ntk_helpers import NAMES, build

#: (B, T, H, n_in) per model with fewer parameters than states (p < N) and N above the dense cut-off.
SIZES = {
    "gru": (6, 8, 3, 1),
    "gru_nobias": (6, 8, 3, 1),
    "lstm": (5, 8, 3, 1),
    "lstm_nobias": (5, 8, 3, 1),
    "leaky_relu": (8, 10, 4, 1),
    "leaky_tanh_bias": (8, 10, 4, 1),
    "rnn_nobias": (8, 10, 4, 1),
    "rnn_relu": (8, 10, 4, 1),
    "rnn_tanh": (8, 10, 4, 1),
    "mlp_one_layer": (300, 1, 2, 1),
    "mlp_relu_nonlinear_out": (60, 1, 3, 1),
    "mlp_tanh": (60, 1, 3, 1),
}


def _dense(case, op):
    n = op.size_in
    return case.to_numpy(op.todense()).reshape(n, n)


class _Counting:
    """Counts the rows pushed through ``op._matmat`` and ``op._rmatmat``."""

    def __init__(self, op):
        self.rows = 0
        for name in ("_matmat", "_rmatmat"):
            inner = getattr(op, name)

            def wrapped(X, inner=inner):
                self.rows += X.shape[0]
                return inner(X)

            setattr(op, name, wrapped)


def test_every_model_is_covered():
    assert sorted(SIZES) == NAMES


@pytest.mark.properties
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(2), deadline=None)
@given(seed=st.integers(0, 2**16))
def test_parameter_side_eigsh_equals_the_dense_and_the_state_side(case64, name, seed):
    B, T, H, n_in = SIZES[name]
    N = ntk.global_ntk(build(case64, name, B, T, H, n_in, seed, True).traj)
    J = rules.gram_factor(N)
    assert J is not None and J.size_in < N.size_in
    k = min(4, J.size_in)  # the one-layer MLP has 2 parameters: NTK_S has rank 2
    M = _dense(case64, N)
    lam = np.linalg.eigvalsh(M)[::-1][:k]
    counted = _Counting(N)  # the parameter side never multiplies by NTK_S itself
    factor = _Counting(J)
    got = eigsh(N, k, method="lanczos", rng=seed)
    assert counted.rows == 0
    # num_matvecs counts NTK_S-product equivalents: one J and one Jᵀ row each, the J rows of
    # the mapping back rounded up to whole products (jax pads rows)
    assert factor.rows >= 2 * got.num_matvecs - 1 > 0
    if case64.name != "jax":
        assert 2 * got.num_matvecs - 1 <= factor.rows <= 2 * got.num_matvecs
    state = eigsh(Opaque(N), k, method="lanczos", rng=seed)
    for r in (got, state):
        check_meta(case64, r.eigenvalues)
        check_meta(case64, r.eigenvectors)
        assert r.eigenvectors.shape == (k, *N.shape_in)
        np.testing.assert_allclose(case64.to_numpy(r.eigenvalues), lam, rtol=1e-9, atol=1e-12 * lam[0])
    U = case64.to_numpy(got.eigenvectors).reshape(k, -1)
    w = case64.to_numpy(got.eigenvalues)
    exact_res = np.linalg.norm(U @ M - w[:, None] * U, axis=1)
    # the reported residual norms are those of NTK_S itself, within the tolerance
    np.testing.assert_allclose(case64.to_numpy(got.residual_norms), exact_res, atol=1e-12 * lam[0])
    assert exact_res.max() <= 1e-10 * lam[0] + 1e-13
    np.testing.assert_allclose(U @ U.T, np.eye(k), atol=1e-9)


def test_parameter_side_in_float32_meets_the_documented_tolerance(case):
    if case.name == "jax" and case.dtype_name == "float64":  # 30 s of compiles for jax
        pytest.skip("float64 on jax: the same solve as numpy's and torch's; jax's float32 runs here")
    N = ntk.global_ntk(build(case, "gru", 6, 8, 3, 1, 7, True).traj)
    r = eigsh(N, 4, method="lanczos", rng=0, tol=0.0)
    ref = eigsh(Opaque(N), 4, method="lanczos", rng=0, tol=0.0)
    scale = float(case.to_numpy(ref.eigenvalues)[0])
    tol = 100 * float(np.finfo(np.float32 if case.dtype_name == "float32" else np.float64).eps)
    assert case.to_numpy(r.residual_norms).max() <= tol * scale * 1.01
    np.testing.assert_allclose(case.to_numpy(r.eigenvalues), case.to_numpy(ref.eigenvalues), rtol=50 * tol)


def test_no_parameter_side_when_the_factor_is_larger(case64):
    N = ntk.global_ntk(build(case64, "gru", 2, 2, 6, 3, 0, False).traj)
    assert rules.gram_factor(N).size_in > N.size_in
    counted = _Counting(N)
    r = eigsh(N, 3, method="lanczos", rng=0)
    # every product on the state side (jax pads its blocks with zero rows: more rows there)
    assert counted.rows >= r.num_matvecs > 0
    if case64.name != "jax":
        assert counted.rows == r.num_matvecs
    lam = np.linalg.eigvalsh(_dense(case64, N))[::-1][:3]
    np.testing.assert_allclose(case64.to_numpy(r.eigenvalues), lam, rtol=1e-9)


class _CountingSides:
    """Counts the rows pushed through ``op._matmat`` (J) and ``op._rmatmat`` (Jᵀ) separately,
    and the widest block each side saw."""

    def __init__(self, op):
        self.rows = {"_matmat": 0, "_rmatmat": 0}
        self.widest = {"_matmat": 0, "_rmatmat": 0}
        for name in self.rows:
            inner = getattr(op, name)

            def wrapped(X, inner=inner, name=name):
                self.rows[name] += X.shape[0]
                self.widest[name] = max(self.widest[name], X.shape[0])
                return inner(X)

            setattr(op, name, wrapped)


def test_parameter_side_maps_back_through_the_span_of_the_residuals(case):
    # One probe per step: the k residual vectors r = Jᵀ J v − λ v lie, up to rounding, on one
    # direction, so the mapping back pushes about k + 1 rows through J instead of 2k, and the
    # reported norms bound the exact ones from above by at most 10% of tol · λ_1 (plus the
    # rounding of the float32 vectors themselves).
    N = ntk.global_ntk(build(case, "gru", 6, 8, 3, 1, 7, True).traj)
    J = rules.gram_factor(N)
    sides = _CountingSides(J)
    k = 4
    r = eigsh(N, k, method="lanczos", rng=0, block_size=1)
    mapping = sides.rows["_matmat"] - sides.rows["_rmatmat"]  # the Krylov space uses J and Jᵀ alike
    if case.name != "jax":  # jax pads its blocks
        assert k < mapping < 2 * k
        assert r.num_matvecs == sides.rows["_rmatmat"] + (mapping + 1) // 2
        # mapping back (J only) pushes no wider block than the solve (J and Jᵀ alike) did, so
        # it holds no more memory; here one probe at a time, against 2 in the multiplicity check
        assert sides.widest["_matmat"] <= sides.widest["_rmatmat"] == 2
    M = _dense(case, N).astype(np.float64)
    U = case.to_numpy(r.eigenvectors).reshape(k, -1).astype(np.float64)
    w = case.to_numpy(r.eigenvalues).astype(np.float64)
    exact = np.linalg.norm(U @ M - w[:, None] * U, axis=1)
    eps = float(np.finfo(np.float32 if case.dtype_name == "float32" else np.float64).eps)
    tol = max(1e-10, 100 * eps)  # eigsh's default tol, raised to 100 ε
    reported = case.to_numpy(r.residual_norms).astype(np.float64)
    assert np.all(reported >= exact - 20 * eps * w[0])
    assert np.all(reported <= exact + 0.1 * tol * w[0] + 20 * eps * w[0])
    assert reported.max() <= tol * w[0] * 1.01
