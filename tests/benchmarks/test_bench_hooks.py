"""benchmarks/bench_hooks.py --quick runs, and both routes give the same NTK_S (times never checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the hooks route differentiates the user's step with torch")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_hooks.py"


def test_quick_run_prints_both_routes_agreeing_and_a_ratio() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, check=True, timeout=600
    ).stdout
    rows = {
        m[0]: float(m[1])
        for m in re.findall(r"^(built-in RNN|hooks Recurrent)\s+\S+\s+\S+\s+(\S+)$", out, re.M)
    }
    assert set(rows) == {"built-in RNN", "hooks Recurrent"}
    assert rows["hooks Recurrent"] <= 1e-5  # float32: the same NTK_S
    assert re.search(r"^RATIO hooks / built-in time: \d+\.\d+x$", out, re.M)
