"""bench_from_module_gru.py --quick: every mapped route gives its baseline's NTK_S, a ratio each."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the benchmark maps torch.nn GRUs")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_from_module_gru.py"
ROUTES = ("nn.GRUCell", "nn.GRU (T, B)", "user GRU cell")
STACK = ("2-layer nn.GRU", "2-layer hook cell")


def test_quick_run_prints_every_route_agreeing_and_a_ratio_each() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, check=True, timeout=600
    ).stdout
    names = "|".join(re.escape(name) for name in ("built-in GRU", *ROUTES, *STACK))
    rows = dict(re.findall(rf"^({names})\s+\S+\s+\S+\s+(\S+)$", out, re.M))
    assert set(rows) == {"built-in GRU", *ROUTES, *STACK}
    assert all(float(diff) <= 1e-5 for diff in rows.values())  # float32: the same NTK_S
    for name in ROUTES:
        assert re.search(rf"^RATIO {re.escape(name)} / built-in GRU time: \d+\.\d+x$", out, re.M)
    assert re.search(r"^RATIO 2-layer nn\.GRU / \(2 x built-in GRU\) time: \d+\.\d+x$", out, re.M)
    assert re.search(r"^RATIO 2-layer hook cell / 2-layer nn\.GRU time: \d+\.\d+x$", out, re.M)
