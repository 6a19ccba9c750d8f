"""bench_hooks.py --quick runs on torch and jax, both routes giving the same NTK_S (no timing checked)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the hooks route differentiates the user's step with torch")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_hooks.py"


def test_quick_run_prints_both_routes_agreeing_and_a_ratio_per_backend() -> None:
    backends = ["torch"] + (["jax"] if importlib.util.find_spec("jax") else [])
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--backends", ",".join(backends)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    rows = {
        (m[0], m[1]): float(m[2])
        for m in re.findall(r"^(torch|jax)\s+(built-in RNN|hooks Recurrent)\s+\S+\s+\S+\s+(\S+)$", out, re.M)
    }
    assert set(rows) == {(b, r) for b in backends for r in ("built-in RNN", "hooks Recurrent")}
    for b in backends:
        assert rows[(b, "hooks Recurrent")] <= 1e-5  # float32: the same NTK_S
        assert re.search(rf"^RATIO hooks / built-in time \({b}\): \d+\.\d+x$", out, re.M)
