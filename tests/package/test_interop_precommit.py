"""The pre-commit hooks run CI's ruff and mypy on CI's paths (noxfile.py's lint and types sessions)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]


def _hooks() -> dict[str, dict]:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    return {h["id"]: h for repo in config["repos"] for h in repo["hooks"]}


def _session_run(name: str) -> list[str]:
    """The arguments of ``session.run(...)`` in the nox session ``name``."""
    text = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    body = text.split(f"def {name}(session", 1)[1].split("\n@nox.session", 1)[0]
    call = re.search(r"session\.run\(([^)]*)\)", body)
    assert call is not None
    return re.findall(r'"([^"]+)"', call.group(1))


def test_ruff_hook_checks_the_paths_of_the_lint_session():
    hooks = _hooks()
    args = _session_run("lint")
    assert args[:2] == ["ruff", "check"]
    hook = hooks["ruff-check"]
    assert hook["entry"].startswith("ruff check")
    pattern = re.compile(hook["files"])
    for path in args[2:]:  # kpflow backends tests benchmarks noxfile.py
        probe = path if path.endswith(".py") else f"{path}/x.py"
        assert pattern.search(probe), f"the ruff hook misses {path}"


def test_mypy_hook_is_the_types_session():
    hook = _hooks()["mypy"]
    assert hook["entry"].split() == _session_run("types")
    assert hook["pass_filenames"] is False
