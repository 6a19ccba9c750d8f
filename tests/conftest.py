"""Shared fixtures: the backend × dtype matrix, hypothesis profiles, helpers.

Backends: every built-in CPU backend that is installed, always including
array_api_strict (on its non-default ``device1``, so that a hidden host
transfer fails).  Narrow them with ``KPFLOW_TEST_BACKENDS=numpy,torch``.
cupy joins when a GPU is visible.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any

# The jax tests are bound by XLA's compile time (small arrays, many distinct programs): compile
# them with LLVM's cheap pipeline (about 20% less CPU per jax test) and XLA's older elemental
# emitters instead of its fusion emitters (a further ~35%: test_transformer's jax cases 37 s ->
# 23.5 s of CPU).  Same operations, no fast-math either way; only rounding may differ in the
# last digits (tanh, exp: a few ulp), so no test may sit exactly at a precision floor.
# Inherited by the tests' subprocesses; a caller's own XLA_FLAGS settings are kept.
_FAST_XLA_COMPILE = {
    "xla_backend_optimization_level": "0",
    "xla_llvm_disable_expensive_passes": "true",
    "xla_cpu_use_fusion_emitters": "false",
}
_xla_flags = os.environ.get("XLA_FLAGS", "")
_xla_flags += "".join(f" --{k}={v}" for k, v in _FAST_XLA_COMPILE.items() if k not in _xla_flags)
os.environ["XLA_FLAGS"] = _xla_flags.strip()

# One intra-op thread per xdist worker when the workers fill the cores (`-n auto` on 2 cores):
# torch's OpenMP threads and OpenBLAS's otherwise spin against the other worker's
# (test_training's GRU on flip-flop took 83 s of CPU with 2 threads, 10 s with 1).  Set in the
# workers only (the controller's environment is the workers' starting point), and above the
# imports: torch and OpenBLAS read it once, when they load.  A caller's own setting is kept;
# `-n0` keeps every core.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _WORKERS = max(1, int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, str(max(1, _CORES // _WORKERS)))
    if "torch" in sys.modules:  # imported before this file (by a plugin): too late for the variable
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import numpy as np  # noqa: E402  (after the variables above)
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("dev", parent=settings.get_profile("ci"), derandomize=False, max_examples=10)
# Heavy property tests only (`nox -s properties`, `-m properties`): fresh draws, 50 per test and
# backend, jax included.  A failure prints the blob that replays it with @reproduce_failure.
settings.register_profile("properties", parent=settings.get_profile("ci"), derandomize=False, max_examples=50)
# Randomized and long (`nox -s thorough`): fresh draws every run, so it finds what the fixed ci
# draws miss.
settings.register_profile("thorough", parent=settings.get_profile("ci"), derandomize=False, max_examples=200)
HYPOTHESIS_PROFILE = os.environ.get("KPFLOW_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(HYPOTHESIS_PROFILE)

#: Profiles on which a heavy property test runs its full count on every backend.
THOROUGH_PROFILES = ("properties", "thorough")

#: The profiles, in one place:
#:
#: ======================  ===========  ==========================================================
#: profile                 draws        examples per property test
#: ======================  ===========  ==========================================================
#: ``ci`` (default)        fixed        25, or the test's ``examples(n)``; a test marked
#:                                      ``properties`` runs ``SLOW_BACKEND_EXAMPLES`` on jax,
#:                                      for the models of ``SLOW_BACKEND_MODELS`` there
#: ``dev``                 fresh        10, or ``examples(n)``; jax as in ``ci``
#: ``properties``          fresh        ``max(n, 50)`` on every backend (``nox -s properties``)
#: ``thorough``            fresh        ``max(n, 200)`` on every backend (``nox -s thorough``)
#: ======================  ===========  ==========================================================
#:
#: Select one with ``KPFLOW_HYPOTHESIS_PROFILE``.
SLOW_BACKEND_EXAMPLES = {"jax": 2}
#: On a slow backend, a ``properties`` test parametrized by ``name`` over the property tests'
#: registry (``tests.model_zoo.MODELS``) runs one variant per model class in ``ci``/``dev``: every
#: model is still reached there; the other variants (bias, nonlinearity, depth) differ in
#: backend-free code, which numpy, array_api_strict and torch run for every variant.
SLOW_BACKEND_MODELS = {"jax": ("gru", "leaky_tanh_bias", "lstm", "mlp_tanh", "rnn_tanh")}


def examples(n: int) -> int:
    """``n`` examples for a costly property test; the thorough profiles' count when that is larger.

    ``@settings(max_examples=n)`` would otherwise override every profile, ``properties`` and
    ``thorough`` too.
    """
    return max(n, settings.default.max_examples) if HYPOTHESIS_PROFILE in THOROUGH_PROFILES else n


ALL_BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "cupy")


def _gpu_visible() -> bool:
    if find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _selected_backends() -> list[str]:
    env = os.environ.get("KPFLOW_TEST_BACKENDS")
    if env:
        names = [n.strip() for n in env.split(",") if n.strip()]
        unknown = set(names) - set(ALL_BACKENDS)
        if unknown:
            msg = f"KPFLOW_TEST_BACKENDS names unknown backends {sorted(unknown)}; known: {ALL_BACKENDS}"
            raise pytest.UsageError(msg)
    else:
        names = [n for n in ALL_BACKENDS if n != "cupy" and find_spec(n) is not None]
        if "array_api_strict" not in names:
            names.append("array_api_strict")
        if _gpu_visible():
            names.append("cupy")
    return names


BACKENDS = _selected_backends()

if find_spec("jax") is not None:  # also when not selected: references may still use jax
    import jax

    jax.config.update("jax_enable_x64", True)  # tests only; the library never does this

RTOL = {"float64": 1e-12, "float32": 1e-5}


@dataclass
class Case:
    """One backend and dtype: make arrays there and read them back for comparison."""

    name: str
    xp: Any
    dtype_name: str
    device: Any

    @property
    def dtype(self) -> Any:
        return getattr(self.xp, self.dtype_name)

    @property
    def rtol(self) -> float:
        return RTOL[self.dtype_name]

    def asarray(self, a: Any) -> Any:
        """A host numpy array (or nested list) as this case's array, dtype and device."""
        from kpflow.backends import get_backend

        return get_backend(self.name).from_host(
            np.asarray(a, dtype=np.float64), dtype=self.dtype, device=self.device
        )

    def randn(self, *shape: int, seed: int = 0) -> Any:
        return self.asarray(np.random.default_rng(seed).standard_normal(shape))

    def to_numpy(self, x: Any) -> np.ndarray:
        """Copy ``x`` to a host numpy float64 array (tests only)."""
        if self.name == "array_api_strict":
            x = self.xp.asarray(x, device=self.xp.Device("CPU_DEVICE"))
            return np.asarray(x, dtype=np.float64)
        if self.name == "torch":
            return x.detach().cpu().numpy().astype(np.float64)
        if self.name == "cupy":
            return x.get().astype(np.float64)
        return np.asarray(x, dtype=np.float64)

    def assert_close(
        self, got: Any, expected: Any, *, rtol: float | None = None, scale: float | None = None
    ) -> None:
        """Relative Frobenius agreement, after checking namespace, dtype and device of ``got``."""
        check_meta(self, got)
        g = self.to_numpy(got)
        host = isinstance(expected, np.ndarray | np.generic | float | int | list)
        e = np.asarray(expected, dtype=np.float64) if host else self.to_numpy(expected)
        assert g.shape == e.shape, f"shape {g.shape} != {e.shape}"
        tol = self.rtol if rtol is None else rtol
        denom = max(float(np.linalg.norm(e)), scale or 0.0, 1e-300)
        err = float(np.linalg.norm(g - e)) / denom
        assert err <= tol, f"relative error {err:.3e} > {tol:.1e}"


def check_meta(case: Case, x: Any) -> None:
    """``x`` is in ``case``'s namespace, dtype and device."""
    from array_api_compat import array_namespace, device

    assert array_namespace(x) is case.xp, f"namespace {array_namespace(x)} is not {case.xp}"
    assert x.dtype == case.dtype, f"dtype {x.dtype} is not {case.dtype}"
    assert device(x) == case.device, f"device {device(x)} is not {case.device}"


def _make_case(name: str, dtype_name: str) -> Case:
    from kpflow.backends import get_backend

    adapter = get_backend(name)
    xp = adapter.namespace()
    if name == "array_api_strict":
        device = xp.Device("device1")
    else:
        device = adapter.default_device()
    return Case(name, xp, dtype_name, device)


@pytest.fixture(params=BACKENDS, scope="session")
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["float64", "float32"], scope="session")
def dtype_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def case(backend_name: str, dtype_name: str) -> Case:
    """A backend × dtype pair (all backends, float64 and float32)."""
    return _make_case(backend_name, dtype_name)


@pytest.fixture(scope="session")
def case64(backend_name: str) -> Case:
    """A backend in float64 only (for exactness tests)."""
    return _make_case(backend_name, "float64")


@pytest.fixture(scope="session")
def case32(backend_name: str) -> Case:
    """A backend in float32 only (for the float32 tolerances)."""
    return _make_case(backend_name, "float32")


@pytest.fixture(scope="session")
def xp(case: Case) -> Any:
    """The array namespace of the current case."""
    return case.xp


@pytest.fixture(autouse=True)
def _slow_backend_budget(request: pytest.FixtureRequest) -> Any:
    """A property test marked ``properties`` runs ``SLOW_BACKEND_EXAMPLES`` draws on jax in ``ci``.

    jax compiles every primitive afresh for each new shape and each new model variant, so one
    draw of a dense-NTK comparison costs it seconds where numpy and torch take milliseconds.
    The logic under test is the same on every backend: numpy, array_api_strict and torch run
    the full count; jax runs the first, simplest draws, enough to reach its own code path.
    ``nox -s properties`` (the ``properties`` profile) runs the full count on jax too.
    """
    test = getattr(request.function, "__func__", request.function)
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec is not None else {}
    backend = params.get("backend_name", params.get("backend"))
    budget = SLOW_BACKEND_EXAMPLES.get(backend) if isinstance(backend, str) else None
    if (
        budget is None
        or HYPOTHESIS_PROFILE in THOROUGH_PROFILES
        or request.node.get_closest_marker("properties") is None
        or not getattr(test, "is_hypothesis_test", False)
    ):
        yield
        return
    own = test._hypothesis_internal_use_settings
    test._hypothesis_internal_use_settings = settings(own, max_examples=min(own.max_examples, budget))
    try:
        yield
    finally:
        test._hypothesis_internal_use_settings = own


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect, in ``ci``/``dev``, the model variants a slow backend skips (``SLOW_BACKEND_MODELS``)."""
    if HYPOTHESIS_PROFILE in THOROUGH_PROFILES:
        return
    from tests.model_zoo import MODELS

    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and item.get_closest_marker("properties") is not None:
            backend = callspec.params.get("backend_name", callspec.params.get("backend"))
            allowed = SLOW_BACKEND_MODELS.get(backend) if isinstance(backend, str) else None
            name = callspec.params.get("name")
            if allowed is not None and name in MODELS and name not in allowed:
                drop.append(item)
                continue
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
