"""Every registered operator type obeys the same laws, on every backend, in float64 and float32."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kpflow
from kpflow import operators as ops
from kpflow.operators.base import LinearOperator
from tests.conftest import check_meta
from tests.operator_factories import FACTORIES, dense_matrix

NAMES = sorted(FACTORIES)


def _generic_todense(op: LinearOperator):
    """The unstructured route: apply the operator to every unit vector."""
    return ops.todense.dispatch(LinearOperator)(op)


@pytest.mark.parametrize("name", NAMES)
def test_adjoint_identity_holds(case, name):
    A = FACTORIES[name](case, 3)
    x = case.randn(*A.shape_in, seed=11)
    y = case.randn(*A.shape_out, seed=12)
    Ax, ATy = A.matvec(x), A.rmatvec(y)
    check_meta(case, Ax)
    check_meta(case, ATy)
    lhs = float(np.sum(case.to_numpy(Ax) * case.to_numpy(y)))
    rhs = float(np.sum(case.to_numpy(x) * case.to_numpy(ATy)))
    scale = np.linalg.norm(case.to_numpy(Ax)) * np.linalg.norm(case.to_numpy(y)) + 1e-300
    assert abs(lhs - rhs) <= 10 * case.rtol * scale
    case.assert_close(A.T.matvec(y), ATy)


@pytest.mark.parametrize("name", NAMES)
def test_matvec_and_matmat_agree_with_todense(case, name):
    A = FACTORIES[name](case, 5)
    M = dense_matrix(case, A)
    X = case.randn(3, *A.shape_in, seed=21)
    Xn = case.to_numpy(X).reshape(3, A.size_in)
    expected = (Xn @ M.T).reshape(3, *A.shape_out)
    case.assert_close(A.matmat(X), expected)
    case.assert_close(A.matvec(X[0, ...]), expected[0])
    Y = case.randn(2, *A.shape_out, seed=22)
    Yn = case.to_numpy(Y).reshape(2, A.size_out)
    case.assert_close(A.rmatmat(Y), (Yn @ M).reshape(2, *A.shape_in))


@pytest.mark.parametrize("name", NAMES)
def test_structured_todense_equals_generic_todense(case, name):
    A = FACTORIES[name](case, 7)
    dense = A.todense()
    check_meta(case, dense)
    assert tuple(dense.shape) == (*A.shape_out, *A.shape_in)
    case.assert_close(dense, _generic_todense(A))


@pytest.mark.parametrize("name", NAMES)
def test_transpose_is_an_involution_and_matches_dense(case, name):
    A = FACTORIES[name](case, 9)
    M = dense_matrix(case, A)
    AT = A.T
    assert AT.shape_in == A.shape_out and AT.shape_out == A.shape_in
    np.testing.assert_allclose(
        dense_matrix(case, AT), M.T, rtol=0, atol=10 * case.rtol * (np.abs(M).max() + 1)
    )
    np.testing.assert_allclose(
        dense_matrix(case, AT.T), M, rtol=0, atol=10 * case.rtol * (np.abs(M).max() + 1)
    )


def test_composition_transpose_reverses_order(case):
    A = FACTORIES["dense_tensor"](case, 1)  # (2,3) <- (1,4)
    B = kpflow.Dense(case.randn(1, 4, 5, seed=2), shape_in=(5,))
    lhs = dense_matrix(case, (A @ B).T)
    rhs = dense_matrix(case, B.T @ A.T)
    np.testing.assert_allclose(lhs, rhs, atol=10 * case.rtol * np.abs(rhs).max())


def test_kronecker_mixed_product_rule(case):
    A, C = (kpflow.Dense(case.randn(3, 3, seed=s)) for s in (1, 2))
    B, D = (kpflow.Dense(case.randn(2, 1, 2, 1, seed=s), shape_in=(2, 1)) for s in (3, 4))
    lhs = kpflow.kron(A, B) @ kpflow.kron(C, D)
    rhs = kpflow.kron(A @ C, B @ D)
    case.assert_close(lhs.todense(), rhs.todense())


def test_kronecker_keeps_structure_under_transpose_and_gram(case):
    K = FACTORIES["kronecker"](case, 1)
    assert isinstance(K.T, kpflow.Kronecker)
    assert isinstance(K.gram(), kpflow.Kronecker)
    case.assert_close(K.gram().todense(), (K @ K.T).todense())


def test_kronecker_todense_uses_numpy_kron_layout(case):
    a, b = case.randn(2, 3, seed=1), case.randn(4, 5, seed=2)
    K = kpflow.kron(a, b)
    expected = np.kron(case.to_numpy(a), case.to_numpy(b)).reshape(2, 4, 3, 5)
    case.assert_close(K.todense(), expected)


def test_partial_trace_of_kronecker_is_trace_times_factor(case):
    A = kpflow.Dense(case.randn(3, 2, 3, 2, seed=1), shape_in=(3, 2))
    B = kpflow.Dense(case.randn(4, 4, seed=2))
    K = kpflow.kron(A, B)
    trB = float(np.trace(case.to_numpy(B.todense())))
    pt = K.partial_trace(2)
    assert pt.shape_in == (3, 2)
    case.assert_close(pt.todense(), trB * case.to_numpy(A.todense()), scale=abs(trB))
    mean = K.partial_trace(-1, mean=True)
    case.assert_close(mean.todense(), trB / 4 * case.to_numpy(A.todense()))


def _np_partial_trace(M: np.ndarray, shape: tuple, traced: tuple) -> np.ndarray:
    nd = len(shape)
    keep = tuple(a for a in range(nd) if a not in traced)
    T = M.reshape(*shape, *shape)
    letters = "abcdefghij"
    out_idx = [letters[a] for a in range(nd)]
    in_idx = [letters[a].upper() if a in keep else letters[a] for a in range(nd)]
    res = "".join(letters[a] for a in keep) + "".join(letters[a].upper() for a in keep)
    return np.einsum("".join(out_idx) + "".join(in_idx) + "->" + res, T)


@pytest.mark.properties
@given(
    dims=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    data=st.data(),
)
def test_partial_trace_matches_dense_reference(case, dims, data):
    shape = tuple(dims)
    traced = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1)), label="traced")))
    seed = data.draw(st.integers(0, 2**16), label="seed")
    A = ops.Adjoint(kpflow.Dense(case.randn(*shape, *shape, seed=seed), shape_in=shape))
    expected = _np_partial_trace(case.to_numpy(A.todense()), shape, traced)
    got = A.partial_trace(traced).todense()
    case.assert_close(got, expected.reshape(got.shape), scale=1.0)
    # The dense rule and the Kronecker rule agree with the same reference.
    D = kpflow.Dense(case.randn(*shape, *shape, seed=seed), shape_in=shape)
    case.assert_close(
        D.partial_trace(traced).todense(),
        _np_partial_trace(case.to_numpy(D.todense()), shape, traced).reshape(got.shape),
        scale=1.0,
    )
    K = kpflow.kron(D, kpflow.Diagonal(case.randn(2, seed=seed + 1)))
    kt = traced + (len(shape),)
    ref = _np_partial_trace(case.to_numpy(K.todense()), (*shape, 2), kt)
    case.assert_close(K.partial_trace(kt).todense(), ref.reshape(K.partial_trace(kt).shape_in * 2), scale=1.0)


@pytest.mark.properties
@given(
    a_in=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    a_out=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    b_in=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    b_out=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_kronecker_matvec_equals_dense_kron(case, a_in, a_out, b_in, b_out, seed):
    A = kpflow.Dense(case.randn(*a_out, *a_in, seed=seed), shape_in=tuple(a_in))
    B = kpflow.Dense(case.randn(*b_out, *b_in, seed=seed + 1), shape_in=tuple(b_in))
    K = kpflow.kron(A, B)
    M = np.kron(dense_matrix(case, A), dense_matrix(case, B))
    X = case.randn(2, *K.shape_in, seed=seed + 2)
    expected = (case.to_numpy(X).reshape(2, -1) @ M.T).reshape(2, *K.shape_out)
    case.assert_close(K.matmat(X), expected)
    Y = case.randn(2, *K.shape_out, seed=seed + 3)
    case.assert_close(K.rmatmat(Y), (case.to_numpy(Y).reshape(2, -1) @ M).reshape(2, *K.shape_in))


def test_identity_partial_trace_counts_traced_entries(case):
    I = kpflow.Identity((2, 3), like=case.randn(1))
    pt = I.partial_trace(1)
    case.assert_close(pt.todense(), 3 * np.eye(2))
    full = I.partial_trace((0, 1))
    assert full.shape_in == ()
    case.assert_close(full.todense(), np.asarray(6.0))


def test_full_trace_of_kronecker_is_product_of_traces(case):
    A, B = kpflow.Dense(case.randn(3, 3, seed=1)), kpflow.Dense(case.randn(2, 2, seed=2))
    K = kpflow.kron(A, B)
    tr = np.trace(case.to_numpy(A.todense())) * np.trace(case.to_numpy(B.todense()))
    case.assert_close(K.partial_trace((0, 1)).todense(), np.asarray(tr))


def test_is_symmetric_reports_structure(case):
    A = FACTORIES["dense_matrix"](case, 1)
    assert ops.is_symmetric(A @ A.T)
    assert ops.is_symmetric(A.gram())
    assert ops.is_symmetric(kpflow.kron(A.gram(), kpflow.Identity((2,), like=case.randn(1))))
    assert not ops.is_symmetric(A)
