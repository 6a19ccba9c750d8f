"""jax specifics: default jax (x64 off) raises no warning, products reuse a few block shapes,
and the dense algebra between products is compiled.

The test session turns x64 on (tests/conftest.py), so the x64-off check runs python in a
subprocess with ``JAX_ENABLE_X64=0`` and ``-W error``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import kpflow  # noqa: E402
from kpflow import linalg  # noqa: E402
from kpflow.linalg._common import CHUNK, MatvecCounter, kernel, orthonormal_rows  # noqa: E402
from tests.linalg_helpers import spectral_matrix  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

X64_OFF_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    assert not jax.config.jax_enable_x64
    from kpflow import linalg
    from kpflow.models.gru import GRU
    from kpflow.ntk import global_ntk, parameter_kernel
    like = jnp.zeros(1, dtype=jnp.float32)
    model = GRU(2, 3)
    traj = model.run(model.init(0, like=like), jnp.ones((2, 4, 2), dtype=jnp.float32))
    K, N = parameter_kernel(traj), global_ntk(traj)
    results = [
        linalg.eigsh(K, 3).eigenvalues,  # the Kronecker-core spectral rule (kpflow.ntk.shortcuts)
        linalg.effective_rank(K, keep=1).value,
        linalg.trace(N, method="xtrace", num_matvecs=8, rng=0).value,  # numerical rank of R
        linalg.trace(N, method="xnystrace", num_matvecs=8, rng=0).value,
        linalg.trace(N, method="hutch++", num_matvecs=9, rng=0).value,
        linalg.fro_norm(N, method="hutch++", num_matvecs=9, rng=0).value,
        linalg.effective_rank(N, keep=1, method="estimate", num_matvecs=40, rng=0).value,
        linalg.eigsh(N, 2, method="lanczos", rng=0).eigenvalues,
        linalg.eigsh(N, 2, method="nystrom", rng=0).eigenvalues,
    ]
    assert all(r.dtype == jnp.float32 for r in results), [r.dtype for r in results]
    print("ok")
    """
)


def test_default_jax_without_x64_runs_every_route_without_a_warning():
    env = {**os.environ, "JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", X64_OFF_SCRIPT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


class _Recording(kpflow.operators.base.LinearOperator):
    """A dense operator that records the block sizes it is applied to."""

    def __init__(self, M):
        from kpflow.operators.base import meta_of_array

        self.M = M
        self.sizes = []
        n = M.shape[0]
        super().__init__((n,), (n,), **meta_of_array(M, "Recording"))

    def _matmat(self, X):
        self.sizes.append(X.shape[0])
        return X @ self.M.T

    def _rmatmat(self, Y):
        self.sizes.append(Y.shape[0])
        return Y @ self.M


def test_blocks_of_any_size_reach_the_operator_in_a_few_padded_sizes():
    M, _ = spectral_matrix("exp", 50, seed=1)
    op = _Recording(jnp.asarray(M))
    counter = MatvecCounter(op)
    rng = np.random.default_rng(0)
    for rows in (1, 3, 15, 16, 17, 33, 64, 65, 130):
        X = rng.standard_normal((rows, 50))
        Y = counter.matmat(jnp.asarray(X))
        assert Y.shape == (rows, 50)
        np.testing.assert_allclose(np.asarray(Y), X @ M.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(counter.rmatmat(jnp.asarray(X[:5]))), X[:5] @ M, atol=1e-12)
    assert counter.num_matvecs == 1 + 3 + 15 + 16 + 17 + 33 + 64 + 65 + 130 + 5  # padding is not counted
    assert set(op.sizes) <= {16, 32, CHUNK}


def test_blocks_are_not_padded_on_backends_that_do_not_compile_per_shape():
    import array_api_compat.numpy as cnp

    M, _ = spectral_matrix("exp", 20, seed=1)
    op = _Recording(cnp.asarray(M))
    MatvecCounter(op).matmat(cnp.asarray(np.ones((3, 20))))
    assert op.sizes == [3]


def test_dense_algebra_between_products_is_compiled_on_jax_only():
    import array_api_compat.numpy as cnp

    jax_op = kpflow.Dense(jnp.eye(3))
    np_op = kpflow.Dense(cnp.eye(3))
    compiled = kernel(jax_op, orthonormal_rows)
    # on one CPU device small calls run on the host; the program beside it is a jax.jit function
    assert hasattr(compiled.compiled, "lower")
    assert kernel(jax_op, orthonormal_rows) is compiled  # built once per backend and function
    plain = kernel(np_op, orthonormal_rows)
    assert not hasattr(plain, "lower") and not hasattr(plain, "compiled")


def test_jax_and_numpy_agree_on_a_gru_ntk():
    import array_api_compat.numpy as cnp

    from kpflow.models.gru import GRU
    from kpflow.ntk import global_ntk

    model = GRU(2, 3)
    results = {}
    for name, like in (("numpy", cnp.zeros(1)), ("jax", jnp.zeros(1, dtype=jnp.float64))):
        params = model.init(0, like=like)
        x = kpflow.backends.get_backend(like).from_host(np.ones((2, 5, 2)), dtype=like.dtype)
        N = global_ntk(model.run(params, x))
        results[name] = np.asarray(linalg.eigsh(N, 4, method="lanczos", rng=0).eigenvalues)
    np.testing.assert_allclose(results["jax"], results["numpy"], rtol=1e-9)
