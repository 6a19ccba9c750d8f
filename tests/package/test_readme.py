"""The README keeps its promises: two quickstart command lines, CI runs the test line, the example runs."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _bash_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", README, flags=re.S)]


def test_quickstart_has_exactly_two_command_lines():
    blocks = _bash_blocks()
    assert len(blocks) == 2
    assert all(len(b.splitlines()) == 1 for b in blocks)
    assert blocks[0].endswith("kpflow demo")
    assert "pytest" in blocks[1] and "torch==2.13.0" in blocks[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_line = _bash_blocks()[1]
    assert test_line in ci


def test_readme_example_runs():
    parser = doctest.DocTestParser()
    test = parser.get_doctest(README, {}, "README", "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert test.examples, "the README has no example"
    assert runner.failures == 0


def test_readme_cites_the_theory_page_not_notes_outside_the_repository():
    assert "docs/theory.md" in README
    assert (ROOT / "docs" / "theory.md").exists()
    assert "THEORY" not in README and "shared/" not in README
