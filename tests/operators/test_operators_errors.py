"""Bad input gives the errors the foundation promises: type, shape, namespace, device, axes."""

from __future__ import annotations

import numpy as np
import pytest

import kpflow


@pytest.fixture
def A(case):
    return kpflow.Dense(case.randn(2, 3, 4, seed=0), shape_in=(4,))


def test_wrong_shape_names_operator_expected_and_received(case, A):
    with pytest.raises(ValueError, match=r"Dense\.matvec: expected x of shape \(4,\), got \(3,\)"):
        A.matvec(case.randn(3))
    with pytest.raises(ValueError, match=r"Dense\.matmat: expected X of shape \(k, 4\), got \(4,\)"):
        A.matmat(case.randn(4))
    with pytest.raises(ValueError, match=r"Dense\.rmatvec: expected y of shape \(2, 3\), got \(3, 2\)"):
        A.rmatvec(case.randn(3, 2))


def test_mixing_namespaces_raises_type_error_naming_both(case, A):
    if case.name == "numpy":
        pytest.skip("the operator is itself numpy; the foreign array below is numpy")
    with pytest.raises(TypeError, match=r"numpy.*" + case.xp.__name__.split(".")[-1]):
        A.matvec(np.ones(4, dtype=np.float64 if case.dtype_name == "float64" else np.float32))


def test_mixing_namespaces_in_algebra_raises(case, A):
    if case.name == "numpy":
        pytest.skip("needs a second namespace")
    B = kpflow.Dense(np.ones((2, 3, 4)), shape_in=(4,))
    with pytest.raises(TypeError, match="two namespaces"):
        A + B


def test_wrong_dtype_is_not_cast(case, A):
    other = "float32" if case.dtype_name == "float64" else "float64"
    x = case.xp.asarray(case.randn(4), dtype=getattr(case.xp, other))
    with pytest.raises(TypeError, match="never casts silently"):
        A.matvec(x)


def test_mixing_dtypes_in_algebra_raises(case, A):
    other = "float32" if case.dtype_name == "float64" else "float64"
    B = kpflow.Dense(case.xp.asarray(case.randn(2, 3, 4), dtype=getattr(case.xp, other)), shape_in=(4,))
    with pytest.raises(TypeError, match="two dtypes"):
        A - B


def test_other_device_raises_type_error():
    xp = pytest.importorskip("array_api_strict")
    A = kpflow.Dense(xp.ones((2, 2), device=xp.Device("device1")))
    with pytest.raises(TypeError, match="device"):
        A.matvec(xp.ones(2))
    B = kpflow.Dense(xp.ones((2, 2)))
    with pytest.raises(TypeError, match="two devices"):
        A @ B


def test_partial_trace_of_non_square_operator_raises(A):
    with pytest.raises(ValueError, match=r"partial_trace: a partial trace needs a square operator"):
        A.partial_trace(0)


def test_partial_trace_axes_out_of_range_raise(case):
    S = kpflow.Identity((2, 3), like=case.randn(1))
    with pytest.raises(ValueError, match=r"axis 2 is out of range .* \(valid: -2 to 1\)"):
        S.partial_trace(2)
    with pytest.raises(ValueError, match="must not repeat"):
        S.partial_trace((0, -2))
    with pytest.raises(TypeError, match="expected axes to hold ints"):
        S.partial_trace((0.5,))


def test_composition_and_sum_of_mismatched_shapes_raise(case, A):
    with pytest.raises(ValueError, match="cannot compose"):
        A @ A
    with pytest.raises(ValueError, match="equal shapes"):
        A + A.T


def test_reshape_to_other_size_raises(A):
    with pytest.raises(ValueError, match="sizes must match"):
        A.reshape((5,), (6,))


def test_dense_shape_mismatch_raises(case):
    with pytest.raises(ValueError, match="expected a 2-D array"):
        kpflow.Dense(case.randn(2, 2, 2))
    with pytest.raises(ValueError, match=r"expected an array of shape \(\*shape_out, \*shape_in\)"):
        kpflow.Dense(case.randn(2, 6), shape_in=(3,), shape_out=(2,))


def test_non_array_and_non_operator_inputs_raise(case):
    with pytest.raises(TypeError, match="expected an array-API array"):
        kpflow.Diagonal([1.0, 2.0])
    with pytest.raises(TypeError, match="expected A to be a LinearOperator"):
        kpflow.Kronecker(case.randn(2, 2), kpflow.Identity((2,), like=case.randn(1)))
    with pytest.raises(ZeroDivisionError):
        kpflow.Identity((2,), like=case.randn(1)) / 0
