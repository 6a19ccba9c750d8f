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


def test_seeded_draws_are_identical_on_every_backend(case):
    x = random_normal(42, (3, 2), like=case.randn(1))
    check_meta(case, x)
    expected = np.random.default_rng(42).standard_normal((3, 2))
    case.assert_close(x, expected)
    r = random_rademacher(np.random.default_rng(1), (50,), like=case.randn(1))
    check_meta(case, r)
    assert set(np.unique(case.to_numpy(r))) == {-1.0, 1.0}


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


def test_backends_subpackage_is_kpflow_backends_not_top_level():
    import kpflow.backends

    assert kpflow.backends.__name__ == "kpflow.backends"
    spec = find_spec("backends")
    # A top-level `backends` may only be the source folder of a checkout on sys.path, never installed.
    assert spec is None or "site-packages" not in str(spec.origin)


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
