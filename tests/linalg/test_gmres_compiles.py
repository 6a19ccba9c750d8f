"""GMRES on jax compiles a fixed number of programs per solve shape, and matches numpy's GMRES."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="compilations are jax's")
jnp = jax.numpy

from jax import monitoring  # noqa: E402

from kpflow.linalg._gmres import gmres  # noqa: E402

_COUNT = {"compiled": 0}


def _on_duration(event: str, duration: float, **kwargs: object) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COUNT["compiled"] += 1


monitoring.register_event_duration_secs_listener(_on_duration)


def _system(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    A = np.eye(n) + 0.4 * rng.standard_normal((n, n)) / np.sqrt(n)
    return A, rng.standard_normal((3, n))


def _solve(A: np.ndarray, B: np.ndarray, xp_array: object, restart: int) -> object:
    A_ = xp_array(A)
    return gmres(lambda V: V @ A_.T, xp_array(B), tol=1e-5, restart=restart, max_iter=400)


def test_a_jax_solve_compiles_a_few_programs_once_and_equals_numpy_gmres() -> None:
    A, B = _system(48, 0)
    f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)  # noqa: E731
    before = _COUNT["compiled"]
    X = np.asarray(_solve(A, B, f32, restart=40))
    first = _COUNT["compiled"] - before
    # start, step (twice: its first state comes from start) and finish of the cycle, the
    # product, and the eager norms and updates of the restart loop (35 here): a fixed number,
    # not one program per primitive and basis size (the growing basis compiled 159 more)
    assert 0 < first <= 50, first
    before = _COUNT["compiled"]
    _solve(A, _system(48, 1)[1], f32, restart=40)  # another right-hand side, the same shapes
    assert _COUNT["compiled"] - before == 0
    np.testing.assert_allclose(X, np.linalg.solve(A, B.T).T, rtol=0, atol=1e-4)
    ref = _solve(A, B, lambda a: np.asarray(a, dtype=np.float32), restart=40)
    np.testing.assert_allclose(X, ref, rtol=0, atol=1e-5)
