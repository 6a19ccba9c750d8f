"""benchmarks/gpu_check.py, rehearsed on the CPU: the prepared GPU script runs and its checks pass.

No GPU is lent to most sessions, so the script that a GPU session would run is exercised
here with ``--cpu``: torch and jax on their CPU devices (jax under its transfer guard, and
with two forced host devices for the sharded check), at a size that takes the Lanczos
route.  This proves the script, not the GPUs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
HAVE = {name: find_spec(name) is not None for name in ("torch", "jax")}


def _run(*args: str) -> subprocess.CompletedProcess:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )


@pytest.mark.skipif(not any(HAVE.values()), reason="neither torch nor jax is installed")
def test_the_gpu_script_passes_its_rehearsal_on_the_cpu():
    out = _run("--cpu", "--B", "2", "--T", "8", "--H", "20", "--k", "4")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    reference = next(line for line in lines if line.startswith("CPU numpy float64 reference"))
    assert "n = 320" in reference
    passed = {m.group(1).strip() for line in lines if (m := re.match(r"PASS  (.{26})", line))}
    expected = set()
    if HAVE["torch"]:
        expected |= {"torch float32", "torch float64"}
    if HAVE["jax"]:
        expected |= {"jax   float32", "jax   float64", "jax   float64 sharded ×2"}
    assert passed == expected, out.stdout
    assert not [line for line in lines if line.startswith("FAIL")]
    assert lines[-1] == f"PASS: {len(expected)} of {len(expected)} checks passed"


def test_without_a_gpu_the_script_says_so_and_succeeds():
    if HAVE["torch"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is present: the script would run its checks")
    out = _run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith("nothing to check")
