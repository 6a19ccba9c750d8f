"""Algebraic properties of K, P and NTK_S on every backend, in float64.

Kronecker K equals autodiff K; the state Jacobian L equals the autodiff ∂f/∂z;
P⁻¹ P = P P⁻¹ = I; ⟨A x, y⟩ = ⟨x, Aᵀ y⟩ for K, P, P⁻¹ and NTK_S; P is
block-diagonal over batch and lower-triangular in time.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kpflow.ntk as ntk
from kpflow.operators import is_symmetric
from tests.conftest import BACKENDS, check_meta, examples
from tests.ntk_helpers import (
    NAMES,
    RECURRENT,
    REFERENCE,
    build,
    draw_shape,
    inner,
    reference_traj,
    rel_err,
)

TOL = 1e-10
needs_reference = pytest.mark.skipif(REFERENCE is None, reason="needs torch or jax for autodiff")


def _probes(case, shape, k, seed):
    return case.randn(k, *shape, seed=seed)


def _host(x) -> np.ndarray:
    import array_api_compat

    xp = array_api_compat.array_namespace(x)
    return np.asarray(xp.reshape(x, (-1,)).tolist())


@pytest.mark.properties
@needs_reference
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(5))
@given(data=st.data())
def test_kronecker_kernel_equals_autodiff_kernel(case64, name, data):
    built = build(case64, name, *draw_shape(data, case64))
    K = ntk.parameter_kernel(built.traj)
    got = K.todense()
    check_meta(case64, got)
    if case64.name == REFERENCE:
        expected = case64.to_numpy(ntk.parameter_kernel(built.traj, method="autodiff").todense())
    else:
        ref = reference_traj(built)
        expected = _host(ntk.parameter_kernel(ref, method="autodiff").todense())
    assert rel_err(case64.to_numpy(got).ravel(), expected.ravel()) <= TOL


@pytest.mark.properties
@needs_reference
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(5))
@given(data=st.data())
def test_state_jacobian_L_equals_autodiff_of_update_map(case64, name, data):
    built = build(case64, name, *draw_shape(data, case64))
    traj = built.traj
    V = _probes(case64, traj.state_shape, 2, seed=3)
    LV, LtV = traj.state_jvp(V), traj.state_vjp(V)
    check_meta(case64, LV)
    ref = reference_traj(built)
    from kpflow.backends import get_backend

    adapter = get_backend(ref.states)
    Vr = ref.xp.asarray(np.array(case64.to_numpy(V)), dtype=ref.dtype, device=ref.device)

    def f(z):
        return ref.model.update_map(ref.params, z, ref.x, ref.h0)

    expected = np.stack([_host(adapter.jvp(f, (ref.states,), (Vr[i],))[1]) for i in range(2)])
    _, vjp_fn = adapter.vjp(f, ref.states)
    expected_t = np.stack([_host(vjp_fn(Vr[i])[0]) for i in range(2)])
    assert rel_err(case64.to_numpy(LV).reshape(2, -1), expected) <= TOL
    assert rel_err(case64.to_numpy(LtV).reshape(2, -1), expected_t) <= TOL


@pytest.mark.properties
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(6))
@given(data=st.data())
def test_propagator_inverse_is_exact_inverse(case64, name, data):
    traj = build(case64, name, *draw_shape(data, case64)).traj
    P = ntk.propagator(traj)
    Pinv = P.inverse()
    V = _probes(case64, traj.state_shape, 3, seed=5)
    case64.assert_close(Pinv.matmat(P.matmat(V)), case64.to_numpy(V), rtol=1e-12)
    case64.assert_close(P.matmat(Pinv.matmat(V)), case64.to_numpy(V), rtol=1e-12)
    case64.assert_close(P.T.matmat(Pinv.T.matmat(V)), case64.to_numpy(V), rtol=1e-12)
    assert isinstance(Pinv.inverse(), ntk.Propagator)


@pytest.mark.properties
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(6))
@given(data=st.data())
def test_adjoint_identities_hold_for_K_P_and_NTK(case64, name, data):
    traj = build(case64, name, *draw_shape(data, case64)).traj
    N = ntk.global_ntk(traj)
    ops = {"K": N.K, "P": N.P, "P_inv": N.P.inverse(), "NTK_S": N}
    x = case64.randn(*traj.state_shape, seed=7)
    y = case64.randn(*traj.state_shape, seed=8)
    for label, A in ops.items():
        Ax, ATy = A.matvec(x), A.rmatvec(y)
        check_meta(case64, Ax)
        scale = np.linalg.norm(case64.to_numpy(Ax)) * np.linalg.norm(case64.to_numpy(y))
        assert abs(inner(case64, Ax, y) - inner(case64, x, ATy)) <= 1e-12 * (scale + 1e-300), label
        case64.assert_close(A.T.matvec(y), ATy)
    for label in ("K", "NTK_S"):
        assert is_symmetric(ops[label])
        assert ops[label].T is ops[label]
    # NTK_S is P K Pᵀ, applied to a block of probes at once
    V = _probes(case64, traj.state_shape, 4, seed=9)
    expected = N.P.matmat(N.K.matmat(N.P.rmatmat(V)))
    case64.assert_close(N.matmat(V), case64.to_numpy(expected))


@pytest.mark.properties
@pytest.mark.parametrize("name", RECURRENT)
@settings(max_examples=examples(5))
@given(data=st.data())
def test_propagator_is_causal_and_batch_diagonal(case64, name, data):
    traj = build(case64, name, *draw_shape(data, case64)).traj
    B, T, S = traj.state_shape
    P = case64.to_numpy(ntk.propagator(traj).todense())
    for b in range(B):
        for c in range(B):
            for t in range(T):
                for u in range(T):
                    block = P[b, t, :, c, u, :]
                    if b != c or u > t:
                        assert np.all(block == 0.0)
                    elif u == t:
                        np.testing.assert_array_equal(block, np.eye(S))


@needs_reference
@pytest.mark.parametrize("name", NAMES)
def test_global_ntk_by_autodiff_kernel_matches_kronecker(name):
    from tests.ntk_helpers import reference_case

    case = reference_case()
    traj = build(case, name, 2, 3, 2, 2, 1, True).traj
    a = ntk.global_ntk(traj, method="autodiff").todense()
    b = ntk.global_ntk(traj).todense()
    case.assert_close(a, b, rtol=TOL)


@pytest.mark.skipif(
    not {"jax", "torch"} <= set(BACKENDS), reason="needs both torch and jax among the selected backends"
)
@pytest.mark.parametrize("name", NAMES)
def test_jax_autodiff_kernel_and_dense_reference_agree_with_torch(name):
    # jax's eager mode compiles each primitive per shape, so jax's own autodiff routes
    # are checked once per model at a fixed size rather than under hypothesis.
    from tests.conftest import _make_case

    jcase, tcase = _make_case("jax", "float64"), _make_case("torch", "float64")
    jtraj = build(jcase, name, 2, 3, 2, 3, 11, True).traj
    ttraj = build(tcase, name, 2, 3, 2, 3, 11, True).traj
    for got, expected in (
        (ntk.parameter_kernel(jtraj, method="autodiff").todense(), ntk.parameter_kernel(ttraj).todense()),
        (ntk.dense_global_ntk(jtraj), ntk.global_ntk(ttraj).todense()),
    ):
        check_meta(jcase, got)
        assert rel_err(jcase.to_numpy(got), tcase.to_numpy(expected)) <= TOL
