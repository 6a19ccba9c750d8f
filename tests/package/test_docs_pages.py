"""Every page in docs/ has examples (run by test_docs_standalone.py); every concept has a page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs_helpers import (
    python_blocks,
    toctree_targets,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)
NO_EXAMPLE = {"index"}  # the map of the docs


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_has_examples(page):
    """Every page but the index has examples.  They run in tests/package/test_docs_standalone.py
    (each page in a fresh process with the optional packages it does not name hidden, which is
    stricter than running them here as well) or, for the tutorials, in the Sphinx build."""
    text = page.read_text(encoding="utf-8")
    if page.stem in NO_EXAMPLE:
        return
    assert python_blocks(text), f"{page.name} has no example"


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
