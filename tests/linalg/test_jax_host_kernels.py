"""On jax's CPU the dense algebra between products runs in numpy on the host, with the compiled numbers.

:meth:`kpflow.backends.jax.JaxBackend.dense_kernel` runs a kernel of :mod:`kpflow.linalg`
(orthogonalisations, sketches, small eigenproblems) on ``array_api_compat.numpy`` when its
arrays are small and on one CPU device, and compiles it otherwise.  These tests check that
the host route compiles nothing, returns jax arrays of the input's dtype and device, and
gives the compiled route's numbers: kernel by kernel, and through whole estimators (the
same seed draws the same probes on both routes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.conftest import BACKENDS

pytestmark = pytest.mark.skipif("jax" not in BACKENDS, reason="jax is not among the selected backends")


def _compiled_route(monkeypatch: pytest.MonkeyPatch) -> None:
    import kpflow.backends.jax as jax_backend

    monkeypatch.setattr(jax_backend.adapter, "host_kernel_entries", -1)


def _compilations() -> tuple[list[str], Any]:
    from jax import monitoring

    names: list[str] = []

    def on_duration(event: str, *_: Any, **kwargs: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(str(kwargs.get("fun_name", "")))

    monitoring.register_event_duration_secs_listener(on_duration)
    return names, on_duration


def _sketch_summary(xp: Any, Om: Any, Y: Any) -> tuple[Any, Any, Any]:
    """The shifted Nyström approximation ``Qᵀ B Bᵀ Q`` and the XNysTrace estimate and error: a QR,
    an eigendecomposition and the jackknife, in quantities free of their sign conventions."""
    from kpflow.linalg.trace import _nystrom_factors, _xnystrace_total

    Q, B, X, nu = _nystrom_factors(xp, Om, Y)
    F = xp.matrix_transpose(B) @ Q
    value, error = _xnystrace_total(xp, Om.shape[1], B, X, nu)
    return xp.matrix_transpose(F) @ F, value, error


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_host_kernel_compiles_nothing_and_matches_the_compiled_program(
    monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    import jax.numpy as jnp
    from jax import monitoring
    from kpflow.backends.jax import adapter

    rng = np.random.default_rng(0)
    H = rng.standard_normal((53, 53))
    Om = jnp.asarray(rng.standard_normal((7, 53)), dtype=dtype)
    Y = Om @ jnp.asarray(H @ H.T, dtype=dtype)  # the sketch of a PSD matrix
    run = adapter.dense_kernel(_sketch_summary, ())
    names, listener = _compilations()
    try:
        host = run(Om, Y)
    finally:
        monitoring.unregister_event_duration_listener(listener)
    assert names == []
    _compiled_route(monkeypatch)
    compiled = run(Om, Y)
    rtol = 1e-4 if dtype == "float32" else 1e-10
    for h, c in zip(host, compiled, strict=True):
        assert isinstance(h, type(c))
        assert h.dtype == c.dtype == jnp.dtype(dtype)
        assert h.devices() == c.devices()
        np.testing.assert_allclose(
            np.asarray(h), np.asarray(c), rtol=rtol, atol=rtol * float(np.abs(c).max())
        )


def test_estimators_give_the_same_numbers_on_the_host_and_compiled_routes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kpflow.linalg import effective_rank, eigsh, trace
    from tests.conftest import _make_case
    from tests.linalg_helpers import spectral_operator

    case = _make_case("jax", "float64")
    A, _, lam = spectral_operator(case, "poly", 300)

    def run() -> list[float]:
        r = eigsh(A, 3, method="lanczos", rng=1, block_size=2)
        t = trace(A, method="xnystrace", num_matvecs=40, rng=2)
        e = effective_rank(A, method="estimate", num_matvecs=48, rng=3)
        return [*np.asarray(r.eigenvalues).tolist(), float(t), float(t.error), float(e), float(e.error)]

    host = run()
    _compiled_route(monkeypatch)
    compiled = run()
    np.testing.assert_allclose(host[:3], lam[:3], rtol=1e-8)
    np.testing.assert_allclose(host, compiled, rtol=1e-9)


def test_host_kernels_run_numpys_blas_on_one_thread_and_restore_it(monkeypatch):
    # Small dense algebra beside jax's own threads: a BLAS pool there waits on busy cores.
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import jax.numpy as jnp
    from kpflow.backends._jax_host import host_or_compiled
    from kpflow.backends.jax import adapter

    def blas_threads() -> list[int]:  # numpy's own BLAS
        return [
            lib["num_threads"]
            for lib in threadpoolctl.threadpool_info()
            if lib["user_api"] == "blas" and "numpy" in lib["filepath"]
        ]

    seen: list[list[int]] = []

    def fn(xp: Any, a: Any) -> Any:
        seen.append(blas_threads())
        return xp.linalg.eigh(a)[0]

    run = host_or_compiled(adapter, None, fn, ())
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):  # the suite runs on one
        before = blas_threads()
        if not before or before[0] < 2:
            pytest.skip(f"numpy's BLAS is not a library threadpoolctl can set to 2 threads here: {before}")
        w = run(jnp.eye(3, dtype=jnp.float32) * 2.0)
        assert blas_threads() == before
    assert isinstance(w, jnp.ndarray) and w.dtype == jnp.float32
    assert seen == [[1] * len(before)]
