"""Probe blocks are drawn on the operator's device from a host seed, reproducibly per backend.

The host ``numpy.random.Generator`` (SPEC 7) supplies one integer seed per block; torch,
jax and cupy draw with it on the device, numpy and array_api_strict on the host (the two
give identical numbers).  Estimates differ between backends only as independent draws do,
so they are compared with exact values within their stated error.
"""

from __future__ import annotations

import numpy as np
import pytest
from kpflow.backends import get_backend

import kpflow
from kpflow import linalg
from kpflow.linalg._common import like_array, probes
from tests.conftest import check_meta
from tests.linalg_helpers import Opaque, numpy_operator, spectral_matrix, spectral_operator


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_probe_blocks_have_the_operator_namespace_dtype_and_device(case, kind):
    A, _, _ = spectral_operator(case, "exp", 30)
    block = probes(np.random.default_rng(0), 5, 30, like_array(A), kind)
    check_meta(case, block)
    assert tuple(block.shape) == (5, 30)


def test_jax_on_the_cpu_draws_numpys_numbers_on_the_host_and_compiles_nothing():
    jnp = pytest.importorskip("jax.numpy")
    from jax import monitoring

    compiled = []

    def on_duration(event, *_, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(kwargs.get("fun_name"))

    like = jnp.zeros((1,), dtype=jnp.float32)
    monitoring.register_event_duration_secs_listener(on_duration)
    try:
        blocks = [
            probes(np.random.default_rng(3), 4, 70_001, like, kind) for kind in ("gaussian", "rademacher")
        ]
    finally:
        monitoring.unregister_event_duration_listener(on_duration)
    assert compiled == []
    host = [
        probes(np.random.default_rng(3), 4, 70_001, np.zeros(1), kind) for kind in ("gaussian", "rademacher")
    ]
    for block, ref in zip(blocks, host, strict=True):
        assert block.dtype == jnp.float32 and block.devices() == like.devices()
        np.testing.assert_array_equal(np.asarray(block), ref.astype(np.float32))


@pytest.mark.parametrize("name", ["torch"])
def test_device_backends_draw_without_copying_a_host_sample(name, monkeypatch):
    pytest.importorskip(name)
    adapter = get_backend(name)

    def refuse(*args, **kwargs):
        raise AssertionError(f"a host sample was copied to the {name} device")

    M, lam = spectral_matrix("exp", 40, seed=2)
    A = Opaque(kpflow.Dense(adapter.from_host(M, dtype=adapter.namespace().float64)))  # before the patch
    monkeypatch.setattr(type(adapter), "from_host", refuse)
    r = linalg.trace(A, method="xtrace", num_matvecs=20, rng=0)
    assert abs(float(r) - lam.sum()) <= 6 * float(r.error) + 1e-8 * lam.sum()
    assert linalg.eigsh(A, 2, method="lanczos", rng=0).num_matvecs > 0


def test_seeded_estimates_repeat_on_each_backend_and_generators_advance(case64):
    A, _, _ = spectral_operator(case64, "exp", 60)
    first = case64.to_numpy(linalg.trace(A, method="xtrace", num_matvecs=12, rng=4).value)
    again = case64.to_numpy(linalg.trace(A, method="xtrace", num_matvecs=12, rng=4).value)
    assert first == again
    gen = np.random.default_rng(4)
    a = float(linalg.trace(A, method="xtrace", num_matvecs=12, rng=gen))
    assert a != float(linalg.trace(A, method="xtrace", num_matvecs=12, rng=gen))
    w1 = case64.to_numpy(linalg.eigsh(A, 3, method="lanczos", rng=1).eigenvectors)
    w2 = case64.to_numpy(linalg.eigsh(A, 3, method="lanczos", rng=1).eigenvectors)
    np.testing.assert_array_equal(w1, w2)


def test_each_probe_block_takes_one_integer_from_the_generator():
    M, _ = spectral_matrix("exp", 30, seed=1)
    gen, twin = np.random.default_rng(8), np.random.default_rng(8)
    linalg.trace(numpy_operator(M), method="hutch++", num_matvecs=9, rng=gen)  # two probe blocks
    twin.integers(0, 2**31, size=2)
    assert gen.integers(2**62) == twin.integers(2**62)


def test_numpy_and_array_api_strict_estimates_are_identical():
    import array_api_strict as xps

    import kpflow
    from tests.linalg_helpers import Opaque

    M, _ = spectral_matrix("poly", 50, seed=3)
    A_np = numpy_operator(M)
    A_strict = Opaque(kpflow.Dense(xps.asarray(M, device=xps.Device("device1"))))
    for method in ("hutchinson", "hutch++", "xtrace", "xnystrace"):
        a = float(linalg.trace(A_np, method=method, num_matvecs=12, rng=6))
        b = float(linalg.trace(A_strict, method=method, num_matvecs=12, rng=6))
        assert a == pytest.approx(b, rel=1e-13, abs=1e-13), method


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace", "xnystrace"])
def test_estimates_on_every_backend_agree_with_the_exact_trace_within_their_error(case64, method):
    A, _, lam = spectral_operator(case64, "poly", 60, seed=5)
    errors = []
    for seed in range(8):
        r = linalg.trace(A, method=method, num_matvecs=24, rng=seed)
        check_meta(case64, r.value)
        errors.append((float(r) - lam.sum(), float(r.error)))
    actual = np.sqrt(np.mean([e * e for e, _ in errors]))
    stated = np.sqrt(np.mean([s * s for _, s in errors]))
    assert actual <= 4 * stated + 1e-12 * lam.sum(), (actual, stated)


def test_lanczos_on_every_backend_finds_the_exact_spectrum(case64):
    A, _, lam = spectral_operator(case64, "lowrank_noise", 80, seed=2)
    r = linalg.eigsh(A, 4, method="lanczos", rng=0)
    case64.assert_close(r.eigenvalues, lam[:4], rtol=1e-8)
