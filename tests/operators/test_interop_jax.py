"""kpflow jax operators inside ``jax.jit``, ``jax.vmap`` and ``jax.grad``, and in matfree.

A GRU's NTK_S and a Kronecker operator are handed, as plain functions of traced arrays, to
matfree's jitted Lanczos (``eigh_partial`` with a full-depth ``tridiag_sym``: exact up to
rounding) and its Monte-Carlo trace estimator, and must give kpflow's own ``eigsh`` and
``trace``.  ``vmap`` over probes equals a loop; ``grad`` of quadratic forms equals central
finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest

import kpflow
from kpflow import linalg

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
matfree = pytest.importorskip("matfree")
from matfree import decomp, eig, stochtrace  # noqa: E402


@pytest.fixture(scope="module")
def gru_ntk():
    from kpflow.models import GRU

    model = GRU(2, 3)
    params = model.init(0, like=jnp.zeros(1, dtype=jnp.float64))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 2)))
    return kpflow.global_ntk(model.run(params, x))  # 18 states


def _kron():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((3, 3)), rng.standard_normal((4, 4))
    return kpflow.kron(kpflow.Dense(jnp.asarray(a @ a.T)), kpflow.Dense(jnp.asarray(b + b.T)))


def _matfree_top(op, k):
    """The top k eigenvalues by matfree's jitted full-depth Lanczos."""
    lanczos = eig.eigh_partial(decomp.tridiag_sym(op.size_in))
    v0 = jnp.ones(op.shape_in, dtype=op.dtype) / np.sqrt(op.size_in)
    vals, _ = jax.jit(lambda v: lanczos(op.matvec, v))(v0)
    return np.sort(np.asarray(vals))[::-1][:k]


def _matfree_trace(op):
    """matfree's jitted Monte-Carlo estimator with scaled basis vectors as samples: exact."""
    n = op.size_in
    basis = jnp.reshape(jnp.eye(n, dtype=op.dtype) * np.sqrt(n), (n, *op.shape_in))
    estimate = stochtrace.estimator_monte_carlo(stochtrace.monte_carlo_trace(), lambda _key: basis)
    return float(jax.jit(lambda key: estimate(op.matvec, key))(jax.random.key(0)))


def test_matfree_lanczos_and_trace_in_jit_match_kpflows_own_routines_on_a_gru_ntk(gru_ntk):
    op = gru_ntk
    ours = linalg.eigsh(op, 3)
    np.testing.assert_allclose(_matfree_top(op, 3), np.asarray(ours.eigenvalues), rtol=1e-9)
    np.testing.assert_allclose(_matfree_trace(op), float(linalg.trace(op, method="exact")), rtol=1e-12)
    probes = jnp.asarray(np.random.default_rng(3).standard_normal((3, *op.shape_in)))
    looped = jnp.stack([op.matvec(z) for z in probes])
    np.testing.assert_allclose(np.asarray(jax.vmap(op.matvec)(probes)), np.asarray(looped), rtol=1e-12)


def test_matfree_lanczos_in_jit_matches_kpflows_rule_on_a_kronecker_operator():
    op = _kron()
    np.testing.assert_allclose(_matfree_top(op, 3), np.asarray(linalg.eigsh(op, 3).eigenvalues), rtol=1e-9)


def test_grad_of_quadratic_forms_equals_finite_differences(gru_ntk):
    rng = np.random.default_rng(7)
    v, d = (jnp.asarray(rng.standard_normal(gru_ntk.shape_in)) for _ in range(2))

    def quad(u):
        return jnp.vdot(u, gru_ntk.matvec(u))

    h = 1e-5
    fd = (quad(v + h * d) - quad(v - h * d)) / (2 * h)
    assert float(jnp.vdot(jax.grad(quad)(v), d)) == pytest.approx(float(fd), rel=1e-8)
    # an operator built inside the transform, from the traced entries of its factors
    a0, b0 = (jnp.asarray(rng.standard_normal((s, s))) for s in (2, 3))
    da, db = (jnp.asarray(rng.standard_normal((s, s))) for s in (2, 3))
    w = jnp.asarray(rng.standard_normal((2, 3)))

    def form(a, b):
        return jnp.vdot(w, kpflow.kron(kpflow.Dense(a), kpflow.Dense(b)).matvec(w))

    fd = (form(a0 + h * da, b0 + h * db) - form(a0 - h * da, b0 - h * db)) / (2 * h)
    ga, gb = jax.jit(jax.grad(form, argnums=(0, 1)))(a0, b0)
    assert float(jnp.vdot(ga, da) + jnp.vdot(gb, db)) == pytest.approx(float(fd), rel=1e-8)
