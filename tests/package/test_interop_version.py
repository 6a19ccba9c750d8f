"""The version lives in one place: pyproject.toml's ``version``, which ``kpflow.__version__`` reads."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import kpflow

ROOT = Path(__file__).resolve().parents[2]


def test_kpflow_version_is_pyprojects_version():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    found = re.search(r'^version\s*=\s*"([^"]+)"', project, flags=re.MULTILINE)
    assert found is not None, "pyproject.toml's [project] table has no static version"
    assert kpflow.__version__ == version("kpflow") == found.group(1), (
        "kpflow.__version__ comes from the installed metadata: reinstall (pip install -e .) "
        "after changing pyproject.toml's version"
    )


def test_the_version_is_written_nowhere_else_in_the_package():
    hits = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "kpflow").rglob("*.py")
        if re.search(r'__version__\s*=\s*["\']', p.read_text(encoding="utf-8"))
    ]
    assert hits == []
