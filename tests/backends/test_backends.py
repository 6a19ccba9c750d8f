"""Adapters: lookup by array and name, lazy imports, SPEC 7 randomness, autodiff, outputs stay put."""

from __future__ import annotations

import subprocess
import sys
from importlib.util import find_spec

import numpy as np
import pytest
from kpflow.backends import AutodiffUnavailableError, get_backend, random_normal, random_rademacher

import kpflow
from tests.conftest import check_meta
from tests.operator_factories import FACTORIES


def test_adapter_is_found_from_the_array(case):
    adapter = get_backend(case.randn(2))
    assert adapter.name == case.name
    assert adapter is get_backend(case.name)
    assert adapter.namespace() is case.xp


def test_unknown_backend_name_and_foreign_object_raise():
    with pytest.raises(ValueError, match="unknown backend name 'nope'"):
        get_backend("nope")
    with pytest.raises(TypeError, match="no kpflow backend handles objects of type builtins.list"):
        get_backend([1.0])


def test_seeded_draws_repeat_on_each_backend_and_stay_on_its_device(case):
    like = case.randn(1)
    x = random_normal(42, (3, 2), like=like)
    check_meta(case, x)
    assert np.array_equal(case.to_numpy(x), case.to_numpy(random_normal(42, (3, 2), like=like)))
    assert not np.array_equal(case.to_numpy(x), case.to_numpy(random_normal(43, (3, 2), like=like)))
    r = random_rademacher(np.random.default_rng(1), (50,), like=like)
    check_meta(case, r)
    assert set(np.unique(case.to_numpy(r))) == {-1.0, 1.0}
    again = random_rademacher(np.random.default_rng(1), (50,), like=like)
    assert np.array_equal(case.to_numpy(r), case.to_numpy(again))


def test_a_generator_supplies_one_seed_per_draw(case):
    gen = np.random.default_rng(5)
    first = case.to_numpy(random_normal(gen, (4,), like=case.randn(1)))
    assert not np.array_equal(first, case.to_numpy(random_normal(gen, (4,), like=case.randn(1))))
    gen, twin = np.random.default_rng(5), np.random.default_rng(5)
    random_normal(gen, (1000,), like=case.randn(1))
    twin.integers(0, 2**31)  # one integer draw, whatever the size of the sample
    assert gen.integers(2**62) == twin.integers(2**62)


def test_numpy_and_array_api_strict_draw_identical_numbers_on_the_host():
    import array_api_strict as xps

    seed = np.random.default_rng(42).integers(0, 2**31)
    expected = np.random.default_rng(seed).standard_normal((3, 2))
    got = random_normal(42, (3, 2), like=np.zeros(1))
    np.testing.assert_array_equal(got, expected)
    strict = random_normal(42, (3, 2), like=xps.zeros(1, device=xps.Device("device1")))
    assert strict.device == xps.Device("device1")
    np.testing.assert_array_equal(np.asarray(xps.asarray(strict, device=xps.Device("CPU_DEVICE"))), expected)


def test_seeded_draws_are_standard_normal_and_rademacher_in_distribution(case64):
    # 20000 samples: the mean has standard error 0.0071, the standard deviation 0.0050; 5 of each
    x = case64.to_numpy(random_normal(0, (200, 100), like=case64.randn(1)))
    assert abs(x.mean()) < 0.035 and abs(x.std() - 1) < 0.025
    r = case64.to_numpy(random_rademacher(0, (200, 100), like=case64.randn(1)))
    assert set(np.unique(r)) == {-1.0, 1.0} and abs(r.mean()) < 0.035


def test_bad_rng_type_raises():
    with pytest.raises(TypeError, match="expected rng to be an int, a numpy.random.Generator or None"):
        random_normal("seed", (2,), like=np.zeros(1))


@pytest.mark.parametrize("name", ["numpy", "array_api_strict", "cupy"])
def test_backends_without_autodiff_say_which_have_it(name):
    adapter = get_backend(name)
    assert not adapter.has_autodiff
    for call in (
        lambda: adapter.vjp(np.sin, 1.0),
        lambda: adapter.jacrev(np.sin),
        lambda: adapter.vmap(np.sin),
        lambda: adapter.jvp(np.sin, (1.0,), (1.0,)),
    ):
        with pytest.raises(
            AutodiffUnavailableError, match=f"the {name} backend has no automatic differentiation.*torch, jax"
        ):
            call()


def test_autodiff_backends_agree_on_jvp_and_vjp(case64):
    adapter = get_backend(case64.name)
    if not adapter.has_autodiff:
        pytest.skip(f"{case64.name} has no autodiff")
    xp = case64.xp
    x, v = case64.randn(3, seed=1), case64.randn(3, seed=2)
    _, tangent = adapter.jvp(xp.tanh, (x,), (v,))
    expected = (1 - np.tanh(case64.to_numpy(x)) ** 2) * case64.to_numpy(v)
    case64.assert_close(tangent, expected)
    _, pullback = adapter.vjp(xp.tanh, x)
    case64.assert_close(pullback(v)[0], expected)
    jac = adapter.jacrev(xp.tanh)(x)
    case64.assert_close(jac, np.diag(1 - np.tanh(case64.to_numpy(x)) ** 2))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_outputs_keep_namespace_dtype_and_device(case, name):
    A = FACTORIES[name](case, 0)
    for out in (
        A.matvec(case.randn(*A.shape_in)),
        A.rmatmat(case.randn(2, *A.shape_out)),
        A.todense(),
        A.T.todense(),
    ):
        check_meta(case, out)


def test_importing_kpflow_imports_no_framework():
    code = (
        "import sys, kpflow, kpflow.operators, kpflow.backends, kpflow.linalg, kpflow.models, kpflow.ntk\n"
        "heavy = ('torch', 'jax', 'cupy', 'scipy', 'matplotlib', 'tensorflow')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import kpflow imported: {out.stdout.strip()}"


def test_backends_subpackage_is_kpflow_backends_not_top_level(tmp_path):
    import os

    import kpflow.backends

    assert kpflow.backends.__name__ == "kpflow.backends"
    assert find_spec("kpflow.backends").origin == kpflow.backends.__file__
    # The source folder `backends/` is importable as a top-level package only from a checkout
    # on sys.path.  The install maps it to kpflow.backends alone, so from an empty folder, with
    # no PYTHONPATH, `backends` must not be found.
    code = (
        "from importlib.util import find_spec\n"
        "import kpflow.backends\n"
        "b = kpflow.backends\n"
        "print(find_spec('backends') is None, b.__name__, b.get_backend('numpy').name)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "kpflow.backends", "numpy"], out.stdout


def test_torch_in_gives_torch_out():
    torch = pytest.importorskip("torch")
    A = kpflow.kron(torch.randn(2, 3, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64))
    y = A.matvec(torch.randn(3, 4, dtype=torch.float64))
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64
    S = kpflow.kron(torch.randn(3, 3, dtype=torch.float32), torch.randn(2, 2, dtype=torch.float32))
    assert isinstance(S.partial_trace(0).todense(), torch.Tensor)
    assert S.partial_trace(0).todense().dtype == torch.float32


def test_third_party_adapters_register_through_the_entry_point_group(monkeypatch):
    import importlib.metadata

    import kpflow.backends as backends
    from kpflow.backends import Backend

    class Boxed:
        """A stand-in array type that no built-in adapter owns."""

    class BoxedBackend(Backend):
        name = "boxed"

        def owns(self, x):
            return isinstance(x, Boxed)

        def namespace(self):
            return np

    adapter = BoxedBackend()

    class FakeEntryPoint:
        name = "boxed"

        def load(self):
            return adapter

    def fake_entry_points(*, group):
        assert group == "kpflow.backends"
        return [FakeEntryPoint()]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(backends, "_third_party", None)
    assert get_backend("boxed") is adapter
    assert get_backend(Boxed()) is adapter
    with pytest.raises(ValueError, match=r"expected one of \[.*'boxed'.*\]"):
        get_backend("nope")
    monkeypatch.setattr(backends, "_third_party", None)
