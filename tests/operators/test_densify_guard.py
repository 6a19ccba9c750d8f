"""Densifying an operator is guarded by its size, and ``numpy.asarray(op)`` gives its matrix.

``todense`` (and ``LinearOperator.todense``, ``numpy.asarray``) refuse a matrix of more than
``DEFAULT_MAX_DENSE_SIZE`` entries (the limit of the dense NTK references) with a message
that gives the size and the way out, instead of a raw ``MemoryError`` after trying to
allocate it; ``max_size`` raises the limit.  Small operators convert to numpy in their own
dtype, and numpy still treats an operator as an operator, not as an array.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest

import kpflow
import kpflow.ntk as ntk
from kpflow.operators import todense
from kpflow.operators.base import DEFAULT_MAX_DENSE_SIZE, LinearOperator
from tests.conftest import Case

#: 2100² = 4,410,000 entries: just above the default limit, 17.6 MB in float32
JUST_ABOVE = 2100


def test_the_limit_is_the_one_of_the_dense_ntk_references():
    assert DEFAULT_MAX_DENSE_SIZE == ntk.DEFAULT_MAX_DENSE_SIZE == 4_000_000
    assert JUST_ABOVE**2 > DEFAULT_MAX_DENSE_SIZE


def test_todense_above_the_limit_raises_with_the_size_and_the_way_out():
    D = kpflow.Diagonal(np.ones(JUST_ABOVE, dtype=np.float32))
    for call in (lambda: todense(D), D.todense):
        with pytest.raises(ValueError, match=r"4410000 entries \(2100 × 2100, 16.8 MiB in float32\)") as err:
            call()
        assert "max_size=4000000" in str(err.value) and "matrix-free" in str(err.value)
        assert "todense(op, max_size=...)" in str(err.value)
    for M in (todense(D, max_size=None), D.todense(max_size=5_000_000)):
        assert M.shape == (JUST_ABOVE, JUST_ABOVE) and M.dtype == np.float32 and M[7, 7] == 1


@pytest.mark.parametrize("bad", [0, -3, 2.5, "big", True])
def test_max_size_must_be_a_positive_int_or_none(bad):
    with pytest.raises(ValueError, match=f"expected max_size to be a positive int or None, got {bad!r}"):
        todense(kpflow.Diagonal(np.ones(3)), max_size=bad)


def test_a_raised_limit_reaches_the_parts_of_a_structured_operator():
    """Kronecker, Sum, Scaled and Adjoint densify their parts: the limit is checked once, on the whole."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((45, 45)), rng.standard_normal((45, 45))
    K = kpflow.kron(a, b)  # 4,100,625 entries
    op = 2.0 * (K + K).T
    with pytest.raises(ValueError, match="4100625 entries"):
        op.todense()
    got = np.asarray(op.todense(max_size=5_000_000)).reshape(2025, 2025)
    np.testing.assert_allclose(got, 4.0 * np.kron(a, b).T, rtol=1e-13, atol=1e-13)


def test_the_ntk_of_a_gru_of_100_thousand_states_refuses_to_densify_quickly():
    """GRU(3, 256), 8 sequences of 50 steps: NTK_S would take 78 GiB in float64."""
    from kpflow.models import GRU

    model = GRU(3, 256)
    params = model.init(0, like=np.zeros(1))
    x = np.random.default_rng(1).standard_normal((8, 50, 3))
    N = kpflow.global_ntk(model.run(params, x))
    assert N.size_in == 102_400
    with pytest.raises(ValueError, match=r"10485760000 entries \(102400 × 102400, 78.1 GiB in float64\)"):
        N.todense()
    with pytest.raises(ValueError, match="78.1 GiB"):
        np.asarray(N)


def test_numpy_asarray_gives_the_matrix_in_the_operators_dtype(case: Case):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((3, 2)), rng.standard_normal((2, 4))
    op = kpflow.kron(case.asarray(a), case.asarray(b))  # (3, 2) <- (2, 4)
    M = np.asarray(op)
    assert isinstance(M, np.ndarray) and M.shape == (3, 2, 2, 4)
    assert M.dtype == np.dtype(case.dtype_name)
    ref = np.kron(a, b).reshape(3, 2, 2, 4)
    np.testing.assert_allclose(M, ref, rtol=case.rtol, atol=case.rtol)
    assert np.asarray(op, dtype=np.float64).dtype == np.float64


def test_numpy_copy_semantics():
    A = np.arange(4.0).reshape(2, 2)
    op = kpflow.Dense(A)
    copied = np.array(op)  # copy=True
    copied[0, 0] = 7.0
    assert A[0, 0] == 0.0
    with pytest.raises(ValueError, match="copy=False"):
        np.asarray(op, copy=False)


def test_numpy_asarray_above_the_limit_raises_with_the_hint():
    with pytest.raises(ValueError, match=r"numpy.asarray\(Diagonal\): .*todense\(op, max_size=...\)"):
        np.asarray(kpflow.Diagonal(np.ones(JUST_ABOVE)))


def test_numpy_treats_an_operator_as_an_operator_not_an_array():
    op = kpflow.Dense(np.eye(3))
    assert isinstance(np.float64(2.0) * op, LinearOperator)
    assert isinstance(op * np.float64(2.0), LinearOperator)
    with pytest.raises(TypeError):
        np.exp(op)
    with pytest.raises(TypeError):
        np.ones(3) @ op
    with pytest.raises(TypeError):
        array_api_compat.array_namespace(op)
    with pytest.raises(TypeError, match="expected an array-API array"):
        op.matvec(kpflow.Dense(np.eye(3)))
    assert isinstance(kpflow.kron(op, np.eye(2)).A, kpflow.Dense)


def test_exact_rules_densify_array_backed_operators_past_the_limit():
    """``rules.has_cheap_dense`` admits up to 2**22 entries read from stored arrays: no limit applies."""
    from kpflow import linalg

    M = np.full((2048, 2048), 0.5, dtype=np.float32)  # 4,194,304 entries
    r = linalg.fro_norm(kpflow.Dense(M))
    assert r.method == "exact" and float(r) == 1024.0
