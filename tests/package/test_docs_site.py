"""The Sphinx site (docs/conf.py): its API reference covers every public name, its links resolve.

Cheap, source-level checks run in the test suite: the reference pages that ``docs/conf.py``
generates from the ``__all__`` lists name every public name (documented on its own page, or
linked there from a module that re-exports it), every ``{doc}`` target exists, the gallery
shows whatever example pages exist.  The checks of a *built* site run when
``KPFLOW_DOCS_HTML`` names the built HTML folder (``nox -s docs`` builds the site and then
runs this file so): every public name is in the built ``objects.inv``, and no internal link or
anchor of any built page is broken.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import types
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
import kpflow_docs  # noqa: E402

from tests.docs_helpers import (  # noqa: E402
    OPTIONAL_MODULES,
    executed_by_the_site,
    extra_modules,
    known_extras,
    needed_extras,
    python_blocks,
)

BUILT = os.environ.get("KPFLOW_DOCS_HTML")
NAMES = kpflow_docs.public_names()
PAIRS = [(m, n) for m, names in NAMES.items() for n in names]


def _autosummary_entries(page: str) -> set[str]:
    """The names listed in the autosummary blocks of one generated reference page."""
    entries: set[str] = set()
    for block in re.findall(r"\.\. autosummary::\n((?:   .*\n|\n)*)", page):
        entries.update(
            line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith(":")
        )
    return entries


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """The reference pages as ``docs/conf.py`` writes them, generated into a temporary folder."""
    root = tmp_path_factory.mktemp("site")
    kpflow_docs.write_api(root)
    return {p.stem: p.read_text(encoding="utf-8") for p in (root / kpflow_docs.API_DIR).glob("*.rst")}


def test_every_public_module_has_a_reference_page(reference):
    expected = {"kpflow", "kpflow.operators", "kpflow.linalg", "kpflow.models", "kpflow.ntk"}
    expected |= {"kpflow.analysis", "kpflow.tasks", "kpflow.training", "kpflow.plot", "kpflow.backends"}
    expected |= {f"kpflow.backends.{b}" for b in ("numpy", "array_api_strict", "torch", "jax", "cupy")}
    assert expected <= set(NAMES)
    assert set(NAMES) <= set(reference)
    for modname in NAMES:
        assert f"api/{modname}" in "\n".join(
            f"api/{line.strip()}" for line in reference["index"].splitlines()
        )


@pytest.mark.parametrize(("modname", "name"), PAIRS, ids=[f"{m}.{n}" for m, n in PAIRS])
def test_every_public_name_is_in_the_reference(reference, modname, name):
    """Documented on its home page (autosummary), or linked from this module's page to it."""
    obj = getattr(importlib.import_module(modname), name)
    home = kpflow_docs.home(modname, name, NAMES)
    page = reference[modname]
    if isinstance(obj, types.ModuleType):
        assert obj.__name__ in reference, f"{modname}.{name}: the module has no reference page"
        assert f":py:mod:`{obj.__name__}`" in page
    elif name == "__version__":
        assert ".. py:data:: __version__" in page
    elif home == modname:
        assert name in _autosummary_entries(page), f"{modname}.{name} is not in its page's autosummary"
    else:
        assert f"`{home}.{name}`" in page, f"{modname}.{name} is not linked to {home}.{name}"
        assert name in _autosummary_entries(reference[home]), f"{home}.{name} is not documented"


def test_every_public_function_has_an_example():
    """Each public function's docstring carries the example the reference shows (a doctest)."""
    lacking = []
    for modname, names in NAMES.items():
        mod = importlib.import_module(modname)
        for name in names:
            obj = getattr(mod, name)
            if inspect.isfunction(obj) and ">>>" not in (inspect.getdoc(obj) or ""):
                lacking.append(f"{modname}.{name}")
    assert not lacking, f"public functions without an example: {lacking}"


def test_the_models_page_lists_every_models_axes(reference):
    from kpflow.models import registry

    page = reference["kpflow.models"]
    assert "Axis names of the built-in models' states" in page
    for name in registry.names():
        assert f"   * - ``{name}``" in page
    assert "``('batch', 'time', 'hidden')``" in page  # the recurrent cells
    assert "``('batch', 'units')``" in page  # the MLP
    assert "``h``: 0:4, ``c``: 4:8" in page  # the LSTM's state is [h; c]


def test_doc_roles_name_existing_pages():
    for page in sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts):
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\{doc\}`(?:[^`<]*<)?([^`>]+)>?`", text):
            base = DOCS if target.startswith("/") else page.parent
            path = base / target.lstrip("/")
            generated = path.resolve().is_relative_to((DOCS / kpflow_docs.API_DIR).resolve())
            exists = any(path.with_suffix(s).exists() for s in (".md", ".rst"))
            assert exists or generated, f"{page.relative_to(DOCS)}: {{doc}} target {target} does not exist"


def test_the_gallery_shows_the_pages_it_finds(tmp_path):
    assert kpflow_docs.gallery_entries(tmp_path) == []  # no example page: an empty gallery, no error
    examples = tmp_path / "examples"
    (examples / "figures").mkdir(parents=True)
    (examples / "figures" / "e1.png").write_bytes(b"\x89PNG")
    (examples / "e1_first.md").write_text("# e1: first\n\n![e1](figures/e1.png)\n", encoding="utf-8")
    (examples / "e2_second.md").write_text("# e2: second\n\n![e2](figures/missing.png)\n", encoding="utf-8")
    entries = kpflow_docs.gallery_entries(tmp_path)
    assert entries == [
        {"docname": "examples/e1_first", "title": "e1: first", "figure": "examples/figures/e1.png"},
        {"docname": "examples/e2_second", "title": "e2: second", "figure": ""},
    ]


def test_docstring_maths_is_not_read_as_markup():
    assert (
        kpflow_docs._plain_markup("V : array of shape (k, *shape_in)")
        == r"V : array of shape (k, \*shape_in)"
    )
    assert kpflow_docs._plain_markup("log|R_t[i, i]| and ``|x|``") == r"log\|R_t[i, i]\| and ``|x|``"
    assert kpflow_docs._plain_markup("its *site profile* is") == "its *site profile* is"
    assert kpflow_docs._plain_markup(">>> f(*args, **kw)") == ">>> f(*args, **kw)"


EXECUTED = [
    p
    for p in sorted(DOCS.rglob("*.md"))
    if "_build" not in p.parts and executed_by_the_site(p.read_text(encoding="utf-8"))
]
# kpflow modules that import an optional package when used
_IMPLIED = {"kpflow.plot": "matplotlib", "kpflow.backends.torch": "torch", "kpflow.backends.jax": "jax"}


def test_the_tutorials_are_executed_by_the_site_build():
    assert {p.stem for p in EXECUTED} >= {
        "gru_ranks",
        "training",
        "torch_module",
        "transformer",
        "custom_cell",
    }
    conf = (DOCS / "conf.py").read_text(encoding="utf-8")
    assert "nb_execution_raise_on_error = True" in conf


@pytest.mark.parametrize("page", EXECUTED, ids=[p.stem for p in EXECUTED])
def test_an_executed_page_imports_only_what_its_needs_line_names(page):
    """The Sphinx build runs these pages with everything installed; their "Needs" line must still
    name every optional package they import (checked statically here)."""
    text = page.read_text(encoding="utf-8")
    extras = needed_extras(text)
    assert re.search(r"^\*\*Needs:\*\*", text.split("```", 1)[0], flags=re.M), f"{page.name}: no Needs line"
    assert extras <= known_extras(), f"{page.name} names unknown extras {sorted(extras - known_extras())}"
    imported = set()
    for block in python_blocks(text):
        for module in re.findall(r"^\s*(?:import|from)\s+([\w.]+)", block, flags=re.M):
            imported.add(module.partition(".")[0])
            imported.update(v for k, v in _IMPLIED.items() if module == k or module.startswith(k + "."))
    hidden = OPTIONAL_MODULES - extra_modules(extras)
    assert not imported & hidden, f"{page.name} imports {sorted(imported & hidden)} without naming them"


# ------------------------------------------------------------------------------ the built site


def _inventory(path: Path) -> set[str]:
    """The object names of a Sphinx ``objects.inv`` (version 2: four header lines, then zlib)."""
    raw = path.read_bytes()
    lines = raw.split(b"\n", 4)
    assert lines[0].startswith(b"# Sphinx inventory version 2")
    body = zlib.decompress(lines[4]).decode("utf-8")
    return {line.split(" ", 1)[0] for line in body.splitlines() if line}


needs_build = pytest.mark.skipif(not BUILT, reason="set KPFLOW_DOCS_HTML to the built site (nox -s docs)")


@needs_build
def test_every_public_name_is_in_the_built_inventory():
    inventory = _inventory(Path(BUILT) / "objects.inv")
    missing = []
    for modname, name in PAIRS:
        obj = getattr(importlib.import_module(modname), name)
        target = (
            obj.__name__
            if isinstance(obj, types.ModuleType)
            else f"{kpflow_docs.home(modname, name, NAMES)}.{name}"
        )
        if name == "__version__":
            target = f"{modname}.__version__"
        if target not in inventory:
            missing.append(f"{modname}.{name} (as {target})")
    assert not missing, f"not in the built reference: {missing}"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value is None:
                continue
            if key == "id" or (key == "name" and tag == "a"):
                self.ids.add(value)
            if (key == "href" and tag == "a") or (key == "src" and tag == "img"):
                self.hrefs.append(value)


@needs_build
def test_no_internal_link_of_the_built_site_is_broken():
    root = Path(BUILT).resolve()
    pages = {p.resolve(): p for p in root.rglob("*.html")}
    parsed: dict[Path, _Links] = {}

    def parse(path: Path) -> _Links:
        if path not in parsed:
            links = _Links()
            links.feed(path.read_text(encoding="utf-8"))
            parsed[path] = links
        return parsed[path]

    broken = []
    for page in pages:
        for href in parse(page).hrefs:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith(("mailto:", "javascript:")):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(root)}: {href}")
            elif (
                parts.fragment
                and target.suffix == ".html"
                and unquote(parts.fragment) not in parse(target).ids
            ):
                broken.append(f"{page.relative_to(root)}: {href} (no such anchor)")
    assert not broken, f"{len(broken)} broken internal links: {broken[:20]}"
