"""Every page in docs/ runs its examples as doctests; every concept has a page."""

from __future__ import annotations

import doctest
import re
from importlib.util import find_spec
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
NO_EXAMPLE = {"index"}  # the map of the docs


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_examples_run(page):
    """Blocks written as doctests are checked output by output; plain blocks must run cleanly."""
    text = page.read_text(encoding="utf-8")
    blocks = _python_blocks(text)
    if page.stem in NO_EXAMPLE:
        return
    assert blocks, f"{page.name} has no example"
    for framework in ("torch", "jax"):
        if re.search(rf"^\s*(>>> )?(import|from) {framework}\b", text, flags=re.M) and not find_spec(
            framework
        ):
            pytest.skip(f"{page.name} uses {framework}, which is not installed")
    namespace: dict = {}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for i, block in enumerate(blocks):
        if ">>>" in block:
            test = doctest.DocTestParser().get_doctest(block, namespace, f"{page.stem}[{i}]", str(page), 0)
            runner.run(test, clear_globs=False)
            namespace.update(test.globs)  # DocTest works on a copy; later blocks see these names
        else:
            exec(compile(block, f"{page}[{i}]", "exec"), namespace)
    assert runner.failures == 0


def test_there_is_a_page_per_concept():
    concepts = {p.stem for p in PAGES if p.parent.name == "concepts"}
    assert concepts >= {"state", "sites", "parameter_kernel", "propagator", "global_ntk"}


def test_the_index_links_every_page():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for page in PAGES:
        if page.stem != "index":
            assert str(page.relative_to(DOCS)) in index, f"docs/index.md does not link {page.name}"
