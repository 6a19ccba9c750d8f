"""benchmarks/bench_cli_startup.py on a tiny model: the warm call compiles nothing (times never checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax", reason="the benchmark times kpflow spectrum --backend jax")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cli_startup.py"
TINY = ["--model", "rnn", "--batch", "1", "--time", "2", "--hidden", "2", "--k", "1", "--matvecs", "16"]


def test_tiny_run_prints_three_calls_ratios_and_a_warm_call_that_loads_every_program() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), *TINY], capture_output=True, text=True, check=True, timeout=600
    ).stdout
    rows = {m[0]: m[1].split() for m in re.findall(r"^(numpy|jax first|jax warm)\s+(.*)$", out, re.M)}
    assert set(rows) == {"numpy", "jax first", "jax warm"}
    first, warm = rows["jax first"], rows["jax warm"]
    assert int(first[3]) > 0 and int(first[4]) == 0  # an empty cache: every program compiled
    assert int(warm[3]) == 0 and int(warm[4]) > 0  # the first call's programs, loaded
    assert len(re.findall(r"^RATIO jax (first|warm) / numpy: wall \d+\.\d+x, cpu \d+\.\d+x$", out, re.M)) == 2
    again = re.search(r"^jax again\s+(.*)$", out, re.M)
    assert again is not None and int(again[1].split()[3]) == 0  # warm (b): nothing compiled
