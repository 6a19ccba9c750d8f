"""The docs run with only ``pip install .`` plus the extras a page names, and say what they need.

Each page (and the README) runs in a fresh interpreter in which every optional package the
page does not name on its "**Needs:**" line is hidden: importing it raises
ModuleNotFoundError, as if it were not installed.  A page that silently relies on
array_api_strict, scipy, torch, jax, matplotlib, tqdm or hypothesis fails here.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

import kpflow
from tests.docs_helpers import (
    OPTIONAL_MODULES,
    ROOT,
    executed_by_the_site,
    extra_modules,
    known_extras,
    needed_extras,
    python_blocks,
)

HELPERS = Path(__file__).resolve().parents[1] / "docs_helpers.py"
PAGES = [
    p
    for p in sorted((ROOT / "docs").rglob("*.md"))
    if "_build" not in p.parts
    and python_blocks(p.read_text(encoding="utf-8"))
    and not executed_by_the_site(p.read_text(encoding="utf-8"))  # run by the Sphinx build
]
PAGES.append(ROOT / "README.md")


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_runs_with_only_the_packages_it_names(page, request):
    text = page.read_text(encoding="utf-8")
    named = extra_modules(needed_extras(text))
    missing = sorted(m for m in named if find_spec(m) is None)
    if missing:
        pytest.skip(f"{page.name} needs {missing}, which is not installed")
    filters = request.config.getini("filterwarnings")  # the child is as strict as pytest (-W error)
    proc = _run([str(HELPERS), str(page), *filters])
    report = f"{page.name}:\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, report
    hidden = OPTIONAL_MODULES - named
    assert f"hidden {sorted(hidden)}" in proc.stdout, report


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_needs_lines_name_real_extras(page):
    extras = needed_extras(page.read_text(encoding="utf-8"))
    assert extras <= known_extras(), f"{page.name} names unknown extras {sorted(extras - known_extras())}"


def test_every_extra_installs_only_modules_the_docs_test_can_hide():
    assert extra_modules(known_extras()) <= OPTIONAL_MODULES


def test_hidden_modules_look_uninstalled():
    """The blocker itself: import fails, find_spec says absent, and numpy still imports."""
    code = (
        f"import sys; sys.path.insert(0, {str(HELPERS.parent)!r})\n"
        "from docs_helpers import hide_modules\n"
        "hide_modules({'scipy', 'array_api_strict'})\n"
        "from importlib.util import find_spec\n"
        "assert find_spec('scipy') is None and find_spec('numpy') is not None\n"
        "for name in ('scipy', 'scipy.sparse.linalg', 'array_api_strict'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(f'{name} was importable')\n"
        "import numpy, kpflow\n"
        "print('ok')\n"
    )
    proc = _run(["-c", code], timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_to_scipy_without_scipy_names_the_call_and_the_fix(monkeypatch):
    for name in ("scipy", "scipy.sparse", "scipy.sparse.linalg"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: "import scipy" fails
    A = kpflow.Diagonal(np.asarray([1.0, 2.0]))
    with pytest.raises(ImportError, match=r"kpflow\.linalg\.to_scipy needs scipy.*pip install scipy") as info:
        kpflow.linalg.to_scipy(A)
    assert info.value.name == "scipy"
