"""bench_from_module_gpt2.py --quick: both routes run and agree on the top eigenvalues (no timing checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the benchmark maps a torch module")
pytest.importorskip("transformers", reason="the benchmark builds a GPT-2 model from a random config")
pytest.importorskip("scipy", reason="the baseline is scipy's ARPACK")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_from_module_gpt2.py"


@pytest.mark.slow
def test_quick_run_prints_agreeing_eigenvalues_and_a_ratio() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--tol", "1e-8"],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout
    rel = float(re.search(r"^EIGENVALUES max relative difference: (\S+)$", out, re.M).group(1))
    assert rel <= 1e-5
    assert re.search(r"^RATIO baseline / kpflow time: \d+\.\d+x$", out, re.M)
    per = re.search(r"^per product \(CPU, after the runs\): kpflow (\S+) s, jvp/vjp (\S+) s", out, re.M)
    assert per and float(per.group(1)) > 0 and float(per.group(2)) > 0
