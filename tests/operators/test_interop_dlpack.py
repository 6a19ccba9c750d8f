"""``kpflow.operators.via_dlpack``: an operator of one library used from another (torch, numpy, jax).

The reference is the matrix ``M`` the operators are built from, applied by numpy.
"""

from __future__ import annotations

import numpy as np
import pytest

import kpflow
from kpflow.operators import ViaDLPack, is_symmetric, via_dlpack

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


def _M() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 4))


def test_torch_to_numpy_to_jax_and_back_gives_the_same_products():
    M = _M()
    A = kpflow.Dense(torch.tensor(M, requires_grad=True))  # a graph-carrying torch operator
    B = via_dlpack(A, like=jnp.zeros(1, dtype=jnp.float64))  # used from jax
    C = via_dlpack(B, like=np.zeros(1))  # and from numpy
    D = via_dlpack(C, like=torch.zeros(1, dtype=torch.float64))  # and back to torch
    x = np.random.default_rng(1).standard_normal((2, 4))
    y = np.random.default_rng(2).standard_normal(3)
    got_j = B.matmat(jnp.asarray(x))
    assert isinstance(got_j, jax.Array) and got_j.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got_j), x @ M.T, rtol=1e-14)
    x_ro = x.copy()
    x_ro.setflags(write=False)  # DLPack cannot lend a read-only buffer to jax: copied instead
    got_n = C.matmat(x_ro)
    assert isinstance(got_n, np.ndarray)
    np.testing.assert_allclose(got_n, x @ M.T, rtol=1e-14)
    np.testing.assert_allclose(C.rmatvec(y), M.T @ y, rtol=1e-14)
    got_t = D.matvec(torch.as_tensor(x[0]))
    assert isinstance(got_t, torch.Tensor) and not got_t.requires_grad
    np.testing.assert_allclose(got_t.numpy(), M @ x[0], rtol=1e-14)
    np.testing.assert_allclose(np.asarray(C), M, rtol=0)  # todense through A's own rule
    assert isinstance(C.T, ViaDLPack) and C.T.shape_in == (3,)
    np.testing.assert_allclose(C.T.matvec(y), M.T @ y, rtol=1e-14)


def test_a_wrapped_operator_keeps_symmetry_and_works_in_kpflow_solvers():
    M = _M()
    G = kpflow.Dense(torch.tensor(M)).gram()
    B = via_dlpack(G, like=np.zeros(1))
    assert is_symmetric(B)
    w = np.linalg.eigvalsh(M @ M.T)[::-1]
    np.testing.assert_allclose(kpflow.linalg.eigsh(B, 2).eigenvalues, w[:2], rtol=1e-12)


def test_wrong_dtype_and_traced_arrays_are_clear_errors():
    A = kpflow.Dense(torch.tensor(_M()))
    with pytest.raises(
        TypeError, match=r"via_dlpack: the operator's dtype torch.float64 is float64 .* like of dtype float64"
    ):
        via_dlpack(A, like=jnp.zeros(1, dtype=jnp.float32))
    with pytest.raises(TypeError, match="expected A to be a kpflow LinearOperator, got ndarray"):
        via_dlpack(np.eye(2), like=np.zeros(1))
    B = via_dlpack(A, like=jnp.zeros(1, dtype=jnp.float64))
    with pytest.raises(TypeError, match="a traced array has no buffer to lend"):
        jax.jit(B.matvec)(jnp.ones(4))
