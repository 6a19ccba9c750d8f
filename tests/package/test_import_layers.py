"""The package's import graph: no cycle, and no arrow from a lower layer to a higher one.

Every ``import``/``from ... import`` in every ``.py`` under ``kpflow/`` and ``backends/``
is read with :mod:`ast`: at module level **and** inside functions (a function-local
import still runs, and still ties the two modules together).  Relative imports are
resolved; ``backends/`` is installed as ``kpflow.backends`` (pyproject's ``package-dir``).

What an arrow is
----------------
``import a.b.c`` and ``from a.b.c import x`` are an arrow to ``a.b.c``; ``from a.b
import c`` is an arrow to the submodule ``a.b.c`` when that file exists, else to the
package ``a.b`` (its ``__init__``).  Parent packages that Python executes on the way
(``kpflow/__init__.py`` for every ``kpflow.*`` import) are not arrows: a package's
``__init__`` is a facade that re-exports, and it is placed in its own layer below.

Imports under ``if TYPE_CHECKING:``
-----------------------------------
They never run, so they cannot make an import cycle and are left out of the cycle
check.  They do count for the layers: a lower layer's annotations must not name a
higher layer's types (that would be the same dependency, only hidden from Python).
They are collected separately (``typing_only``) so that a failure says which kind it is.

The layers (lowest first; a module may import its own layer and any lower one)
-----------------------------------------------------------------------------
The same table, with what lives in each layer, is in ``docs/contributing.md``.
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: (layer name, module prefixes).  A module belongs to the layer of its longest matching prefix.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("array", ("kpflow._array", "kpflow._threads")),
    (
        "adapters",
        (
            "kpflow.backends",  # the package __init__: get_backend, which loads adapters by name
            "kpflow.backends._base",
            "kpflow.backends.numpy",
            "kpflow.backends.array_api_strict",
            "kpflow.backends.cupy",
        ),
    ),
    ("operators", ("kpflow.operators",)),
    ("linalg", ("kpflow.linalg",)),
    ("models", ("kpflow.models",)),
    # torch.py and jax.py re-export from_module from their mapping modules, which build models:
    # so they sit above models.  get_backend loads them by name (as it loads third-party
    # adapters from entry points), and loading one imports no model (test below).
    (
        "framework modules",
        (
            "kpflow.backends.torch",
            "kpflow.backends.jax",
            # the module mappings (from_module) and the modules they are split into
            *sorted(
                f"kpflow.backends.{path.stem}"
                for pattern in (
                    "_torch_modules*.py",
                    "_torch_graph*.py",
                    "_torch_cells*.py",
                    "_jax_modules*.py",
                )
                for path in (ROOT / "backends").glob(pattern)
            ),
        ),
    ),
    ("ntk", ("kpflow.ntk",)),
    ("plotting", ("kpflow.plot",)),
    ("applications", ("kpflow.tasks", "kpflow.training", "kpflow.analysis")),
    ("front ends", ("kpflow.cli", "kpflow.__main__", "kpflow")),
)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    if parts[0] == "backends":
        parts = ["kpflow", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = sorted((ROOT / "kpflow").rglob("*.py")) + sorted((ROOT / "backends").rglob("*.py"))
    return {_module_name(p): p for p in files}


MODULES = _sources()


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"module {module} is in no layer: add it to LAYERS")
    return best


@dataclass(frozen=True)
class Arrow:
    source: str
    target: str
    path: str
    line: int
    typing_only: bool
    local: bool  # inside a function

    def where(self) -> str:
        kind = "TYPE_CHECKING" if self.typing_only else ("function-local" if self.local else "module level")
        return f"{self.path}:{self.line} ({kind}) {self.source} -> {self.target}"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def arrows_of(module: str, path: Path) -> list[Arrow]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    rel = str(path.relative_to(ROOT))
    found: list[Arrow] = []

    def targets(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        assert isinstance(node, ast.ImportFrom)
        base = _resolve(module, is_package, node)
        out = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.append(sub if sub in MODULES else base)
        return out

    def visit(node: ast.AST, typing_only: bool, local: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in dict.fromkeys(targets(node)):
                if target == "kpflow" or target.startswith("kpflow."):
                    # a name below a module (kpflow.models.gru.GRU) is an arrow to the module
                    while target not in MODULES and "." in target:
                        target = target.rsplit(".", 1)[0]
                    if target != module:
                        found.append(Arrow(module, target, rel, node.lineno, typing_only, local))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True, local)
            for child in node.orelse:
                visit(child, typing_only, local)
            return
        inner = local or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only, inner)

    visit(tree, False, False)
    return found


@functools.cache
def _all_arrows() -> tuple[Arrow, ...]:
    return tuple(arrow for module, path in MODULES.items() for arrow in arrows_of(module, path))


def all_arrows() -> list[Arrow]:
    """Every import arrow of the tree (parsed once per session)."""
    return list(_all_arrows())


def package_of(module: str) -> str:
    """A module's package: ``kpflow.<sub>`` (``kpflow.cli`` for a top-level module), and for
    ``backends/`` its layer (the adapters and the framework modules are two units)."""
    if module.startswith("kpflow.backends"):
        return f"kpflow.backends ({LAYERS[layer_of(module)][0]})"
    return ".".join(module.split(".")[:2])


def package_arrows(arrows: list[Arrow]) -> list[Arrow]:
    """The arrows between packages (an arrow inside one package is dropped)."""
    out = []
    for a in arrows:
        source, target = package_of(a.source), package_of(a.target)
        if source != target:
            out.append(Arrow(source, target, a.path, a.line, a.typing_only, a.local))
    return out


def cycles(arrows: list[Arrow]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), over arrows that run."""
    graph: dict[str, set[str]] = defaultdict(set)
    for arrow in arrows:
        if not arrow.typing_only:
            graph[arrow.source].add(arrow.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(set(graph) | {a.target for a in arrows}):
        if v not in index:
            strongconnect(v)
    return sorted(components)


def upward(arrows: list[Arrow]) -> list[Arrow]:
    """Arrows from a lower layer to a higher one."""
    return [a for a in arrows if layer_of(a.source) < layer_of(a.target)]


def report(arrows: list[Arrow]) -> str:
    """The violations, grouped by (source package, target package), each with file:line."""
    lines: list[str] = []
    comps = cycles(arrows)
    lines.append(f"Import cycles (strongly connected components > 1 module): {len(comps)}")
    for comp in comps:
        members = set(comp)
        lines.append(f"  cycle of {len(comp)}: " + ", ".join(comp))
        for a in arrows:
            if a.source in members and a.target in members and not a.typing_only:
                lines.append(f"    {a.where()}")
    up = upward(arrows)
    lines.append("")
    lines.append(f"Arrows from a lower layer to a higher one: {len(up)}")
    groups: dict[tuple[str, str], list[Arrow]] = defaultdict(list)
    for a in up:
        groups[(LAYERS[layer_of(a.source)][0], LAYERS[layer_of(a.target)][0])].append(a)
    for (low_name, high_name), items in sorted(groups.items()):
        lines.append(f"  {low_name} -> {high_name}: {len(items)}")
        for a in sorted(items, key=lambda a: (a.path, a.line)):
            lines.append(f"    {a.where()}")
    return "\n".join(lines)


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def _arrows_of_text(module: str, is_package: bool, text: str, rel: str) -> list[Arrow]:
    class _Source:
        name = "__init__.py" if is_package else "x.py"

        def read_text(self) -> str:
            return text

        def relative_to(self, _root: Path) -> str:
            return rel

    return arrows_of(module, _Source())  # type: ignore[arg-type]


def test_the_scanner_sees_function_local_relative_and_type_checking_imports():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from .ops import x\n"
        "from . import rnn, gru\n"
        "if TYPE_CHECKING:\n"
        "    from kpflow.ntk import kernel\n"
        "def f():\n"
        "    from kpflow.analysis.demo import run\n"
        "    import kpflow.tasks\n"
    )
    arrows = _arrows_of_text("kpflow.models.lstm", False, source, "kpflow/models/lstm.py")
    assert {(a.target, a.typing_only, a.local) for a in arrows} == {
        ("kpflow.models.ops", False, False),
        ("kpflow.models.rnn", False, False),
        ("kpflow.models.gru", False, False),
        ("kpflow.ntk.kernel", True, False),
        ("kpflow.analysis.demo", False, True),
        ("kpflow.tasks", False, True),
    }
    assert {a.target for a in upward(arrows)} == {"kpflow.ntk.kernel", "kpflow.analysis.demo", "kpflow.tasks"}
    package = _arrows_of_text("kpflow.models", True, "from .gru import GRU\n", "kpflow/models/__init__.py")
    assert [a.target for a in package] == ["kpflow.models.gru"]


def _module_level_closure(module: str, arrows: list[Arrow]) -> set[str]:
    graph: dict[str, set[str]] = defaultdict(set)
    for a in arrows:
        if not a.local and not a.typing_only:
            graph[a.source].add(a.target)
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    return seen - {module}


@pytest.mark.parametrize("name", ["numpy", "array_api_strict", "cupy", "torch", "jax"])
def test_loading_an_adapter_imports_no_model(name):
    # what get_backend(name) runs: the adapter module's module-level imports, transitively
    # (kpflow/__init__ aside); the from_module mappings import their model classes when called
    loaded = _module_level_closure(f"kpflow.backends.{name}", all_arrows())
    assert not {m for m in loaded if m.startswith(("kpflow.models", "kpflow.ntk"))}, sorted(loaded)
    assert all(layer_of(m) <= layer_of("kpflow.linalg") or m.startswith("kpflow.backends") for m in loaded)


def test_a_cycle_is_found():
    arrows = [
        Arrow("kpflow.models.base", "kpflow.ntk.kernel", "a", 1, False, True),
        Arrow("kpflow.ntk.kernel", "kpflow.models.base", "b", 2, False, False),
        Arrow("kpflow.ntk.dense", "kpflow.models.base", "c", 3, True, False),
        Arrow("kpflow.models.base", "kpflow.ntk.dense", "d", 4, False, False),
    ]
    assert cycles(arrows) == [["kpflow.models.base", "kpflow.ntk.kernel"]]


def test_no_import_cycle_between_packages():
    # models <-> ntk was one (ntk/jacobian.py imported every model, models/base.py ntk)
    arrows = package_arrows(all_arrows())
    found = cycles(arrows)
    lines = [f"{a.where()}" for c in found for a in arrows if {a.source, a.target} <= set(c)]
    assert not found, "\n".join(["package cycles:", *map(str, found), *lines])


def test_no_import_cycle():
    arrows = all_arrows()
    assert not cycles(arrows), "\n" + report(arrows)


def test_no_arrow_from_a_lower_layer_to_a_higher_one():
    arrows = all_arrows()
    assert not upward(arrows), "\n" + report(arrows)


def concrete_model_imports(module: str, source: str) -> list[str]:
    """The concrete model or trajectory classes ``source`` imports from ``kpflow.models`` (any depth)."""
    import importlib
    import inspect

    from kpflow.models import Model, Trajectory

    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = _resolve(module, False, node)
        if not base.startswith("kpflow.models"):
            continue
        for alias in node.names:
            obj = getattr(importlib.import_module(base), alias.name, None)
            if inspect.isclass(obj) and issubclass(obj, Model | Trajectory) and not inspect.isabstract(obj):
                found.append(f"{module}: {base}.{alias.name}")
    return found


def test_ntk_imports_no_concrete_model_class():
    # what a model is (its rows, its layout) is declared by the model, read by ntk/ as data
    found = [
        hit
        for module, path in MODULES.items()
        if module.startswith("kpflow.ntk")
        for hit in concrete_model_imports(module, path.read_text())
    ]
    assert not found, found
    # the check sees a function-local import of a model class
    local = "def f():\n    from kpflow.models import GRU, Site\n    from kpflow.models.mlp import MLP\n"
    assert concrete_model_imports("kpflow.ntk.x", local) == [
        "kpflow.ntk.x: kpflow.models.GRU",
        "kpflow.ntk.x: kpflow.models.mlp.MLP",
    ]


if __name__ == "__main__":  # python tests/package/test_import_layers.py: print the violations
    print(report(all_arrows()))
