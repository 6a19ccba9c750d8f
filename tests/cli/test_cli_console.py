"""The ``kpflow`` console script (``kpflow.cli.console``): with jax loaded it skips the interpreter's
teardown, after flushing its output and running the ``atexit`` handlers, and keeps the exit status."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import BACKENDS

SMALL = ["--batch", "2", "--time", "3", "--hidden", "3", "--k", "2", "--matvecs", "16"]

_CHILD = """
import atexit, sys
atexit.register(lambda: print("ATEXIT RAN", file=sys.stderr))
from kpflow.cli import console
console(sys.argv[1:])
"""


def _console(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.skipif("jax" not in BACKENDS, reason="jax is not among the selected backends")
def test_a_jax_run_ends_with_its_output_flushed_and_its_atexit_handlers_run():
    done = _console("spectrum", "--backend", "jax", "--jax-cache", "off", "--json", *SMALL)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # the whole report reached the pipe
    assert report["config"]["backend"] == "jax" and len(report["NTK_S"]["eigenvalues"]) == 2
    assert "ATEXIT RAN" in done.stderr
    failed = _console("spectrum", "--backend", "jax", "--dtype", "float64", *SMALL)
    assert failed.returncode == 2 and "--dtype float32" in failed.stderr
    assert "ATEXIT RAN" in failed.stderr


def test_without_jax_the_console_exits_as_usual():
    done = _console("spectrum", "--json", *SMALL)
    assert done.returncode == 0 and json.loads(done.stdout)["config"]["backend"] == "numpy"
    assert "ATEXIT RAN" in done.stderr
    bad = _console("spectrum", "--batch", "0")
    assert bad.returncode == 2 and "--batch" in bad.stderr
