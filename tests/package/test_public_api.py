"""The public API is an explicit list, and every name in it exists and is documented."""

from __future__ import annotations

import importlib

import pytest

MODULES = ["kpflow", "kpflow.operators", "kpflow.backends"]
OPTIONAL = [
    "kpflow.linalg",
    "kpflow.models",
    "kpflow.ntk",
    "kpflow.tasks",
    "kpflow.training",
    "kpflow.analysis",
]


@pytest.mark.parametrize("modname", MODULES + OPTIONAL)
def test_all_names_exist_are_unique_and_documented(modname):
    mod = importlib.import_module(modname)
    names = mod.__all__
    assert len(names) == len(set(names)), "duplicate names in __all__"
    for name in names:
        obj = getattr(mod, name)
        if callable(obj) and not name.startswith("__"):
            assert obj.__doc__, f"{modname}.{name} has no docstring"


def test_top_level_reexports_the_operator_types():
    import kpflow

    for name in ["LinearOperator", "Identity", "Dense", "Diagonal", "Kronecker", "kron", "Projector"]:
        assert name in kpflow.__all__
        assert getattr(kpflow, name) is getattr(kpflow.operators, name)
