"""Every page in docs/ runs its examples as doctests; every concept has a page."""

from __future__ import annotations

import re
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.docs_helpers import (
    executed_by_the_site,
    extra_modules,
    needed_extras,
    python_blocks,
    run_examples,
    toctree_targets,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)
NO_EXAMPLE = {"index"}  # the map of the docs


def missing_needs(text: str) -> list[str]:
    """The modules of the extras a page names (its "**Needs:**" line) that are not installed."""
    return sorted(m for m in extra_modules(needed_extras(text)) if find_spec(m) is None)


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_examples_run(page):
    """Blocks written as doctests are checked output by output; plain blocks must run cleanly."""
    text = page.read_text(encoding="utf-8")
    if page.stem in NO_EXAMPLE:
        return
    assert python_blocks(text), f"{page.name} has no example"
    if executed_by_the_site(text):
        pytest.skip(f"{page.name} is executed by the Sphinx build (nox -s docs), not here")
    missing = missing_needs(text)
    if missing:
        pytest.skip(f"{page.name} needs {missing}, which is not installed")
    failed, attempted = run_examples(text, page.stem, str(page))
    assert attempted > 0
    assert failed == 0


def test_there_is_a_page_per_concept():
    concepts = {p.stem for p in PAGES if p.parent.name == "concepts"}
    assert concepts >= {"state", "sites", "parameter_kernel", "propagator", "global_ntk"}


def test_the_index_reaches_every_page():
    """Every page is in the site's navigation: reached from docs/index.md through the toctrees."""
    reached, todo = set(), [(DOCS / "index.md").resolve()]
    while todo:
        page = todo.pop()
        if page in reached or page.suffix != ".md":
            continue
        reached.add(page)
        todo.extend(toctree_targets(page, DOCS))
    for page in PAGES:
        assert page.resolve() in reached, f"no toctree reaches {page.relative_to(DOCS)} from docs/index.md"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_links_stay_inside_the_docs(page):
    """A page's relative links resolve to files of the repository; none points at notes kept outside it."""
    text = page.read_text(encoding="utf-8")
    assert "THEORY" not in text, f"{page.name} cites THEORY; cite docs/theory.md instead"
    root = DOCS.parent
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        resolved = (page.parent / target).resolve()
        assert resolved.is_relative_to(root), f"{page.name} links {target}, outside the repository"
        assert resolved.exists(), f"{page.name} links {target}, which does not exist"
