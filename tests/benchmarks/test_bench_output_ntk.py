"""bench_output_ntk.py --quick prints the three routes agreeing and the ratio (no timing checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the benchmark compares against the torch.func recipe")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_output_ntk.py"


def test_quick_run_prints_every_route_agreeing_and_the_ratio() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, check=True, timeout=600
    ).stdout
    rows = dict(re.findall(r"^(kpflow products|kpflow|torch\.func)\s+\S+\s+\S+\s+(\S+)$", out, re.M))
    assert set(rows) == {"kpflow", "torch.func", "kpflow products"}
    assert all(float(diff) <= 1e-12 for diff in rows.values())  # float64: the same NTK
    assert re.search(r"^RATIO kpflow / torch\.func time: \d+\.\d+x$", out, re.M)
