"""The shared model zoo (``tests/model_zoo.py``): every exported model has a small instance that runs
on every backend and dtype, with params, inputs and states in the case's namespace, dtype and device.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import kpflow.models
from kpflow.models import FeedForward, Implicit, Model
from tests.conftest import BACKENDS, _make_case, check_meta
from tests.model_zoo import ZOO, small

#: hook models other than Recurrent: their own test files build them (FeedForward: test_hooks,
#: Implicit: test_implicit); the zoo's hook cells are recurrent
BUILT_ELSEWHERE = (FeedForward, Implicit)
AUTODIFF = [b for b in ("torch", "jax") if b in BACKENDS]


def test_every_exported_model_class_has_a_zoo_entry() -> None:
    exported = {
        obj
        for name in kpflow.models.__all__
        if inspect.isclass(obj := getattr(kpflow.models, name))
        and issubclass(obj, Model)
        and not inspect.isabstract(obj)
        and obj not in BUILT_ELSEWHERE
    }
    in_zoo = {type(spec.make()) for spec in ZOO.values()}
    missing = sorted(cls.__name__ for cls in exported - in_zoo)
    assert not missing, f"tests/model_zoo.py ZOO has no small instance of {missing}"


@pytest.mark.parametrize("name", sorted(ZOO))
def test_a_zoo_model_runs_on_the_case_and_agrees_with_float64_numpy(case, name) -> None:
    if case.name == "jax":
        pytest.skip("eager jax compiles each model for seconds; tests/ntk runs every model on jax")
    if ZOO[name].autodiff and case.name not in ("torch", "jax"):
        pytest.skip(f"{name} is a hook cell: its derivatives need torch or jax")
    built = small(case, name, seed=3, with_h0=True)
    traj = built.traj
    check_meta(case, traj.states)
    for value in traj.params.values():
        check_meta(case, value)
    ref_name = "numpy" if not ZOO[name].autodiff else AUTODIFF[0]
    ref = small(_make_case(ref_name, "float64"), name, seed=3, with_h0=True)
    expected = np.asarray(ref.traj.states, dtype=np.float64) if ref_name == "numpy" else None
    if expected is None:
        expected = _make_case(ref_name, "float64").to_numpy(ref.traj.states)
    case.assert_close(traj.states, expected)
