"""bench_output_ntk.py --quick prints the three routes agreeing and the ratio (no timing checked)."""

from __future__ import annotations

import importlib.util
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


def test_quick_transformer_run_prints_both_routes_agreeing_and_the_ratio(capsys, monkeypatch) -> None:
    # in-process (the MLP run above already checks the script runs as a script): seconds saved
    monkeypatch.syspath_prepend(str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_output_ntk", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import torch

    threads = torch.get_num_threads()
    try:
        bench.main(["--quick", "--model", "transformer"])  # one thread, as the script runs
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^(kpflow products|kpflow)\s+\S+\s+\S+\s+(\S+)$", out, re.M))
    assert set(rows) == {"kpflow", "kpflow products"}
    assert all(float(diff) <= 1e-12 for diff in rows.values())
    assert re.search(r"^RATIO kpflow / kpflow products time: \d+\.\d+x$", out, re.M)
