"""Run the examples of a docs page (or of the README) as doctests.

Used in-process by ``tests/package/test_docs_pages.py`` and ``tests/package/test_readme.py``.
Run as a script,

    python tests/docs_helpers.py docs/theory.md

it runs one page the way a user who ran only ``pip install .`` (plus the extras the page
names) would: every optional package the page does not name looks uninstalled.  The
script itself needs nothing beyond kpflow, so it also runs in a fresh virtual environment.

A page names what it needs on a line before its first example::

    **Needs:** `pip install kpflow[torch]`
"""

from __future__ import annotations

import doctest
import importlib.abc
import importlib.metadata
import re
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: Packages kpflow can use but does not install: the modules of its extras, and tqdm
#: (``progress=True``).  A docs page may import one only if its "Needs:" line names the extra.
OPTIONAL_MODULES = frozenset(
    {
        "array_api_strict",
        "cupy",
        "equinox",
        "flax",
        "hypothesis",
        "jax",
        "jaxlib",
        "matfree",
        "matplotlib",
        "myst_nb",
        "numpydoc",
        "optax",
        "pydata_sphinx_theme",
        "pytest",
        "scipy",
        "sphinx",
        "sphinx_gallery",
        "torch",
        "tqdm",
        "transformers",
        "xdist",
    }
)

# Installed together with an extra's package, and imported by it.
_COMPANIONS = {"jax": {"jaxlib", "scipy"}, "transformers": {"tqdm"}, "flax": {"optax"}}
# Distributions whose top-level module has another name.
_MODULE_NAMES = {"pytest_xdist": "xdist"}

_REQUIREMENT = re.compile(r'^([A-Za-z0-9_.\-]+)\s*(?:\[([^\]]*)\])?[^;]*;\s*extra\s*==\s*"([^"]+)"')


def python_blocks(text: str) -> list[str]:
    """The contents of the page's ```python blocks and executed ```{code-cell} python cells, in order."""
    return re.findall(r"```(?:python|\{code-cell\} (?:python|ipython3))\n(.*?)```", text, flags=re.S)


def toctree_targets(page: Path, docs: Path) -> list[Path]:
    """The source files a docs page's ```{toctree} blocks name (``:glob:`` patterns expanded).

    An entry is relative to the page's folder, or to ``docs`` when it starts with ``/``; a
    name without a suffix is looked up as ``.md``, then ``.rst``.  Entries that name no
    existing file are returned as the path they name (a test can then report them).
    """
    text = page.read_text(encoding="utf-8")
    targets: list[Path] = []
    for block in re.findall(r"```\{toctree\}[^\n]*\n(.*?)```", text, flags=re.S):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        glob = ":glob:" in lines
        for entry in (line for line in lines if not line.startswith(":")):
            entry = entry.split("<")[-1].rstrip(">").strip() if entry.endswith(">") else entry
            base = docs if entry.startswith("/") else page.parent
            name = entry.lstrip("/")
            if glob and any(c in name for c in "*?["):
                targets.extend(sorted(p for p in base.glob(name + ("" if Path(name).suffix else ".*"))))
                continue
            path = base / name
            if not path.suffix:
                path = next(
                    (path.with_suffix(s) for s in (".md", ".rst") if path.with_suffix(s).exists()), path
                )
            targets.append(path.resolve())
    return targets


def executed_by_the_site(text: str) -> bool:
    """A page the Sphinx build executes (a myst-nb notebook: ``file_format: mystnb`` front matter).

    The docs build runs such a page top to bottom and fails on any error
    (``nb_execution_raise_on_error``), so the test suite checks only its imports statically.
    """
    return re.match(r"---\n(?:.*\n)*?file_format:\s*mystnb\s*\n(?:.*\n)*?---\n", text) is not None


def needed_extras(text: str) -> set[str]:
    """The extras named as ``kpflow[...]`` on the page's "**Needs:**" lines before its first example."""
    head = text.split("```", 1)[0]
    extras: set[str] = set()
    for line in re.findall(r"^\*\*Needs:\*\*(.*)$", head, flags=re.M):
        for group in re.findall(r"kpflow\[([\w,\- ]+)\]", line):
            extras.update(e.strip() for e in group.split(",") if e.strip())
    return extras


def known_extras() -> set[str]:
    """The extras kpflow's installed metadata declares."""
    return set(importlib.metadata.metadata("kpflow").get_all("Provides-Extra") or [])


def extra_modules(extras: set[str]) -> set[str]:
    """The top-level modules that ``pip install kpflow[extras]`` installs (from kpflow's metadata)."""
    requirements = importlib.metadata.requires("kpflow") or []
    modules: set[str] = set()
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in requirements:
            match = _REQUIREMENT.match(line)
            if match is None or match.group(3) != extra:
                continue
            name, nested = match.group(1), match.group(2)
            if name.lower() == "kpflow":  # kpflow[all] = kpflow[torch,jax,...]
                todo.extend(e.strip() for e in (nested or "").split(",") if e.strip())
                continue
            module = name.lower().replace("-", "_")
            module = _MODULE_NAMES.get(module, module)
            modules.add(module)
            modules.update(_COMPANIONS.get(module, ()))
    return modules


def run_examples(text: str, name: str, path: str) -> doctest.TestResults:
    """Run every ```python block of ``text`` in one namespace, in order.

    Blocks written as doctests are checked output by output; a plain block must run
    without raising (its exception propagates).
    """
    namespace: dict[str, Any] = {}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    attempted = 0
    for i, block in enumerate(python_blocks(text)):
        if ">>>" in block:
            test = doctest.DocTestParser().get_doctest(block, namespace, f"{name}[{i}]", path, 0)
            runner.run(test, clear_globs=False)
            namespace.update(test.globs)  # DocTest works on a copy; later blocks see these names
            attempted += len(test.examples)
        else:
            exec(compile(block, f"{path}[{i}]", "exec"), namespace)
            attempted += 1
    return doctest.TestResults(runner.failures, attempted)


class _Hiding(importlib.abc.MetaPathFinder):
    """Wraps one import finder so that it finds none of the hidden top-level packages.

    Hiding (rather than raising from a finder put first) makes a hidden package look
    exactly uninstalled: ``import`` raises ModuleNotFoundError and
    ``importlib.util.find_spec`` returns None, which kpflow's backend discovery relies on.
    """

    def __init__(self, finder: Any, hidden: frozenset[str]) -> None:
        self.finder = finder
        self.hidden = hidden

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name.partition(".")[0] in self.hidden:
            return None
        find = getattr(self.finder, "find_spec", None)
        return None if find is None else find(name, path, target)

    def find_distributions(self, *args: Any, **kwargs: Any) -> Any:
        """Installed metadata (importlib.metadata), of unhidden distributions only."""
        find = getattr(self.finder, "find_distributions", None)
        if find is None:
            return iter(())
        return (
            dist
            for dist in find(*args, **kwargs)
            if (dist.metadata["Name"] or "").lower().replace("-", "_") not in self.hidden
        )

    def invalidate_caches(self) -> None:
        invalidate = getattr(self.finder, "invalidate_caches", None)
        if invalidate is not None:
            invalidate()


def hide_modules(names: set[str] | frozenset[str]) -> None:
    """Make the top-level packages ``names`` unimportable in this process, from now on."""
    hidden = frozenset(names)
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in hidden)
    if loaded:
        msg = f"hide_modules: {loaded} are already imported, so they cannot be hidden"
        raise RuntimeError(msg)
    sys.meta_path[:] = [_Hiding(finder, hidden) for finder in sys.meta_path]


def apply_warning_filters(specs: list[str]) -> None:
    """Apply pytest-style ``filterwarnings`` lines (``action:message-regex:Category``)."""
    import builtins

    for spec in specs:
        action, message, category = ([*spec.split(":", 2), "", ""])[:3]
        cls = getattr(builtins, category.strip(), Warning) if category.strip() else Warning
        warnings.filterwarnings(action.strip(), message=message, category=cls)


def main(argv: list[str]) -> int:
    """``docs_helpers.py PAGE [FILTER ...]``: run PAGE with every unnamed optional package hidden."""
    page = Path(argv[0]).resolve()
    apply_warning_filters(argv[1:])
    text = page.read_text(encoding="utf-8")
    allowed = extra_modules(needed_extras(text))
    hidden = OPTIONAL_MODULES - allowed
    hide_modules(hidden)
    print(f"{page.name}: hidden {sorted(hidden)}")
    failed, attempted = run_examples(text, page.stem, str(page))
    print(f"{page.name}: {attempted} examples, {failed} failed")
    return 0 if failed == 0 and attempted > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
