"""The command line's flags: ``--version``, bounds named at the flag, the smallest budget, jax's
default dtype without x64."""

from __future__ import annotations

import subprocess
import sys

import pytest

import kpflow


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kpflow", *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_version_flag_prints_the_version():
    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"kpflow {kpflow.__version__}"


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [("--matvecs", "1", "an integer >= 16"), ("--seed", "-1", "a non-negative integer"), ("--k", "0", "")],
)
def test_flag_bounds_are_checked_at_the_flag(flag, value, expected):
    from kpflow.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["spectrum", flag, value])
    assert exit_info.value.code == 2
    out = _cli("spectrum", flag, value)
    assert out.returncode == 2
    assert f"argument {flag}: expected {expected}" in out.stderr
    assert "kpflow.linalg" not in out.stderr  # no internal names


def test_the_smallest_matvecs_budget_runs():
    from kpflow.cli import MIN_MATVECS, main

    argv = ["spectrum", "--model", "rnn", "--batch", "4", "--time", "10", "--hidden", "8", "--json"]
    assert main([*argv, "--matvecs", str(MIN_MATVECS)]) == 0


def test_jax_default_dtype_works_without_x64():
    pytest.importorskip("jax")
    code = (
        "import json, sys; from kpflow.cli import main; "
        "sys.exit(main(['spectrum', '--backend', 'jax', '--model', 'leaky', '--batch', '2', '--time', '3', "
        "'--hidden', '3', '--k', '2', '--matvecs', '16', '--json']))"
    )
    env = {"JAX_ENABLE_X64": "0", "PATH": "/usr/bin:/bin"}
    import os

    env.update({k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "VIRTUAL_ENV", "HOME"))})
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stderr
    assert '"dtype": "float32"' in out.stdout
