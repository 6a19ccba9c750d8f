"""eigsh and svds at the edges of floating point: tiny and huge operators, NaN and inf, bad ``tol``.

- An operator far from unit scale (NTK_S of inputs of size 1e-12 has eigenvalues near 1e-24)
  must give its eigenvalues, with residual norms that are neither 0 nor inf, on every route
  (structured rule, dense, block Lanczos, Nyström, the parameter side of NTK_S), in float32,
  whose squares underflow below about 1e-19.  The reference is float64 on the host.
- NaN or inf in an operator's arrays must raise ``FloatingPointError`` naming the operator, on
  every route, instead of finite eigenvalues or a LAPACK error.
- ``tol`` must be a finite number ``>= 0``; ``matmat`` of zero probes is an empty block.
- ``svds`` returns the singular values of ``A`` on the span it found (Rayleigh–Ritz on ``A``):
  zero singular values at rounding level, not ``√ε σ_1``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import kpflow
from kpflow.linalg import eigsh, svds
from kpflow.linalg._gmres import gmres
from tests.conftest import BACKENDS, Case, _make_case, check_meta
from tests.linalg_helpers import Opaque, spectral_matrix
from tests.ntk_helpers import host_problem, on_backend
from tests.operator_factories import FACTORIES

EPS32 = float(np.finfo(np.float32).eps)

#: route -> (n, eigsh keyword arguments, opaque)
ROUTES = {
    "rule": (40, {}, False),
    "dense": (40, {"method": "dense"}, True),
    "lanczos": (80, {"method": "lanczos", "rng": 0}, True),
    "nystrom": (80, {"method": "nystrom", "rng": 0, "block_size": 60}, True),
}

#: The exact routes run on every backend; the iterative ones (array-API code whose backend-
#: dependent parts, max, eigh, norms, the exact routes exercise too) on those that do not
#: compile every kernel per shape (jax: seconds per test).
EAGER = [b for b in BACKENDS if b != "jax"]


def _cases() -> list:
    """(backend, route) pairs: every backend for the exact routes, the eager ones for the others."""
    return [(b, r) for r in sorted(ROUTES) for b in (BACKENDS if r in ("rule", "dense") else EAGER)]


def _true_residuals(M: np.ndarray, vals: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """‖M v − λ v‖ on the host in float64, at unit scale (no underflow)."""
    s = np.abs(M).max()
    return np.linalg.norm(vecs @ (M / s).T - (vals / s)[:, None] * vecs, axis=1) * s


@pytest.mark.parametrize("scale", [1e-24, 1e24])
@pytest.mark.parametrize(("backend", "route"), _cases())
def test_far_from_unit_scale_gives_eigenvalues_and_honest_residuals(backend: str, route: str, scale: float):
    case32 = _make_case(backend, "float32")
    n, kwargs, opaque = ROUTES[route]
    M0, _ = spectral_matrix("exp", n, seed=3)
    M = (M0 * scale).astype(np.float32).astype(np.float64)  # the float32 operator, exactly
    A = kpflow.Dense(case32.asarray(M))
    A = Opaque(A) if opaque else A
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or not-converged warning either
        r = eigsh(A, 4, **kwargs)
    for x in (r.eigenvalues, r.residual_norms):
        check_meta(case32, x)
    got = case32.to_numpy(r.eigenvalues)
    ref = np.linalg.eigvalsh(M)[::-1][:4]
    rtol = 1e-3 if route == "nystrom" else 1e-5
    np.testing.assert_allclose(got, ref, rtol=rtol)
    res = case32.to_numpy(r.residual_norms)
    true = _true_residuals(M, got, case32.to_numpy(r.eigenvectors).reshape(4, n))
    assert np.all(np.isfinite(res)) and np.all(res > 0), res
    # reported norms are the true ones up to float32 rounding of the products (a few ε λ_1)
    np.testing.assert_allclose(res, true, rtol=0.5, atol=8 * math.sqrt(n) * EPS32 * ref[0])
    if route != "nystrom":
        assert res.max() <= 1e-4 * ref[0]


def _gru_ntk(case: Case, x_scale: float):
    model, params, x, h0 = host_problem("gru_nobias", 4, 20, 4, 2, 3, False)
    return kpflow.global_ntk(on_backend(case, model, params, x * x_scale, h0))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("numpy", "torch")])
def test_ntk_of_inputs_of_size_1e_minus_12_in_float32_has_the_float64_spectrum(backend: str):
    """The parameter side (Jᵀ J, 72 parameters against 320 states) with eigenvalues near 1e-23."""
    c64, c32 = _make_case("numpy", "float64"), _make_case(backend, "float32")
    M = c64.to_numpy(_gru_ntk(c64, 1e-12).todense()).reshape(320, 320)
    ref = np.linalg.eigvalsh(M)[::-1][:4]
    assert 1e-24 < ref[3] < ref[0] < 1e-21  # the scale the float32 solver must handle
    N = _gru_ntk(c32, 1e-12)
    r = eigsh(N, 4, rng=0)
    np.testing.assert_allclose(c32.to_numpy(r.eigenvalues), ref, rtol=1e-4)
    res = c32.to_numpy(r.residual_norms)
    U = c32.to_numpy(r.eigenvectors).reshape(4, 320)
    true = _true_residuals(M, ref, U)
    assert np.all(res > 0) and np.all(res <= 1e-4 * ref[0]), res
    assert np.all(res >= 0.5 * true - 8 * math.sqrt(320) * EPS32 * ref[0]), (res, true)


def test_the_zero_operator_has_zero_eigenvalues_without_warnings():
    A = Opaque(kpflow.Dense(np.zeros((300, 300))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = eigsh(A, 3, method="lanczos", rng=0)
    assert np.all(np.asarray(r.eigenvalues) == 0) and np.all(np.asarray(r.residual_norms) == 0)


# -- NaN and inf ----------------------------------------------------------------------------------
def _poisoned(case: Case, n: int, bad: float) -> np.ndarray:
    M, _ = spectral_matrix("exp", n, seed=1)
    M[2, 5] = M[5, 2] = bad
    return M


# numpy warns of the inf · 0 in the operator's own product: not what is tested here
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize(("backend", "route"), _cases())
def test_nan_or_inf_in_the_operator_raises_on_every_route(backend: str, route: str, bad: float):
    case = _make_case(backend, "float64")
    n, kwargs, opaque = ROUTES[route]
    A = kpflow.Dense(case.asarray(_poisoned(case, n, bad)))
    A = Opaque(A) if opaque else A
    with pytest.raises(FloatingPointError, match=r"eigsh: the \w+ of the operator (Dense|Opaque).*NaN"):
        eigsh(A, 3, **kwargs)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace", "xnystrace"])
def test_nan_in_an_operator_raises_in_trace_and_effective_rank_estimates(method: str):
    A = Opaque(kpflow.Dense(_poisoned(_make_case("numpy", "float64"), 60, math.nan)))
    with pytest.raises(FloatingPointError, match="non-finite"):
        kpflow.linalg.trace(A, method=method, num_matvecs=12, rng=0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        kpflow.linalg.effective_rank(A, method="estimate", num_matvecs=24, rng=0)


@pytest.mark.parametrize("scale", [1e-24, 1e24])
@pytest.mark.parametrize(("method", "symmetric"), [("exact", True), ("hutch++", True), ("hutch++", False)])
def test_fro_norm_in_float32_far_from_unit_scale_matches_float64(method: str, symmetric: bool, scale: float):
    # in float32 the squares of entries near 1e-24 underflow to 0 and those near 1e24 overflow
    M, _ = spectral_matrix("exp", 60, seed=2)
    if not symmetric:
        M = M + np.triu(M, 1)
    want = float(kpflow.linalg.fro_norm(Opaque(kpflow.Dense(M)), method=method, num_matvecs=40, rng=0))
    A32 = Opaque(kpflow.Dense((scale * M).astype(np.float32)))
    got = kpflow.linalg.fro_norm(A32, method=method, num_matvecs=40, rng=0)
    assert got.value.dtype == np.float32
    assert abs(float(got.value) / scale - want) <= 1e-5 * want
    if method != "exact":
        assert 0.0 < float(got.error) / scale < want


def test_nan_in_a_diagonal_raises_even_outside_the_top_k():
    d = np.arange(10.0)
    d[0] = math.nan  # the smallest entry: the top 3 alone would look fine
    with pytest.raises(FloatingPointError, match="Diagonal"):
        eigsh(kpflow.Diagonal(d), 3)


def test_nan_in_a_factor_raises_on_the_smaller_side_of_a_gram_operator():
    F = np.random.default_rng(0).standard_normal((300, 20))
    F[7, 3] = math.nan
    G = Opaque(kpflow.Dense(F)).gram()  # F Fᵀ: the Krylov basis lives on Fᵀ F (20 × 20)
    with pytest.raises(FloatingPointError, match="non-finite"):
        eigsh(G, 3, method="lanczos", rng=0)


@pytest.mark.parametrize("method", ["auto", "lanczos"])
def test_nan_raises_in_svds(method: str):
    M = np.random.default_rng(0).standard_normal((30, 20))
    M[3, 4] = math.nan
    with pytest.raises(FloatingPointError, match="non-finite"):
        svds(Opaque(kpflow.Dense(M)), 3, method=method, rng=0)


# -- arguments ----------------------------------------------------------------------------------
@pytest.mark.parametrize("tol", [-1.0, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("fn", [eigsh, svds])
def test_tol_out_of_range_is_an_error_naming_it(fn, tol):
    A = kpflow.Dense(np.eye(4))
    with pytest.raises(ValueError, match=rf"kpflow.linalg.{fn.__name__}: expected tol .*>= 0, got {tol!r}"):
        fn(A, 2, tol=tol)


@pytest.mark.parametrize("tol", ["1e-8", None, True])
def test_tol_of_another_type_is_a_type_error(tol):
    with pytest.raises(TypeError, match="expected tol"):
        eigsh(kpflow.Dense(np.eye(4)), 2, tol=tol)


def test_tol_zero_asks_for_the_floor():
    M, lam = spectral_matrix("exp", 80, seed=0)
    r = eigsh(Opaque(kpflow.Dense(M)), 3, tol=0, method="lanczos", rng=0)
    np.testing.assert_allclose(np.asarray(r.eigenvalues), lam[:3], rtol=1e-12)


@pytest.mark.parametrize("tol", [-1e-3, math.nan, math.inf])
def test_gmres_checks_tol(tol):
    with pytest.raises(ValueError, match="solve: expected tol"):
        gmres(lambda V: V, np.ones((1, 3)), tol=tol, where="solve")


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_block_of_zero_probes_gives_an_empty_block(case64: Case, name: str):
    op = FACTORIES[name](case64, 0)
    X = case64.xp.zeros((0, *op.shape_in), dtype=op.dtype, device=op.device)
    Y = case64.xp.zeros((0, *op.shape_out), dtype=op.dtype, device=op.device)
    out, back = op.matmat(X), op.rmatmat(Y)
    assert tuple(out.shape) == (0, *op.shape_out) and tuple(back.shape) == (0, *op.shape_in)
    check_meta(case64, out)
    check_meta(case64, back)


# -- svds: zero singular values -------------------------------------------------------------------
def _rank_deficient(shape: tuple[int, int], rank: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))


@pytest.mark.parametrize(
    ("backend", "method", "shape"),
    [(b, "auto", (60, 40)) for b in BACKENDS] + [(b, "lanczos", (40, 60)) for b in EAGER],
)
def test_zero_singular_values_come_out_at_rounding_level(backend: str, method: str, shape: tuple):
    case32 = _make_case(backend, "float32")
    M = _rank_deficient(shape, 20).astype(np.float32).astype(np.float64)
    r = svds(Opaque(kpflow.Dense(case32.asarray(M))), 25, method=method, rng=0)
    U, s, V = (case32.to_numpy(x) for x in r)
    ref = np.linalg.svd(M, compute_uv=False)
    np.testing.assert_allclose(s[:20], ref[:20], rtol=1e-4)
    # √ε σ_1 would be 3.5e-4 σ_1; the square roots of Gram eigenvalues came out there
    assert np.all(s[20:] <= 20 * EPS32 * ref[0]), s[20:] / ref[0]
    k = 25
    np.testing.assert_allclose(U @ U.T, np.eye(k), atol=1e-5)
    np.testing.assert_allclose(V @ V.T, np.eye(k), atol=1e-5)
    np.testing.assert_allclose(V @ M.T, U * s[:, None], atol=1e-4 * ref[0])


@pytest.mark.parametrize("backend", EAGER)
def test_svds_matches_numpy_in_float64_and_returns_zeros_for_a_rank_deficient_operator(backend: str):
    """Singular values 1.3^-i of a rank-12 operator of 50 × 30, and three of its zeros."""
    case64 = _make_case(backend, "float64")
    rng = np.random.default_rng(2)
    Q1, _ = np.linalg.qr(rng.standard_normal((50, 12)))
    Q2, _ = np.linalg.qr(rng.standard_normal((30, 12)))
    sigma = 1.3 ** -np.arange(12.0)
    M = (Q1 * sigma) @ Q2.T
    U, s, V = (case64.to_numpy(x) for x in svds(kpflow.Dense(case64.asarray(M)), 15))
    np.testing.assert_allclose(s[:12], sigma, rtol=1e-12)
    assert np.all(np.abs(s[12:]) <= 1e-14)  # the square root of a Gram eigenvalue: 1e-8
    signs = np.sign(np.sum(V[:12] * Q2.T, axis=1))
    np.testing.assert_allclose(V[:12] * signs[:, None], Q2.T, atol=1e-10)
    np.testing.assert_allclose(U[:12] * signs[:, None], Q1.T, atol=1e-10)
    np.testing.assert_allclose(U @ U.T, np.eye(15), atol=1e-12)
    np.testing.assert_allclose(V @ V.T, np.eye(15), atol=1e-12)
    np.testing.assert_allclose(V @ M.T, U * s[:, None], atol=1e-13)
