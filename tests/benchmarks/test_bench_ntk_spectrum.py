"""benchmarks/bench_ntk_spectrum.py --quick: its table parses and every case finds ARPACK's eigenvalues.

The benchmark compares the top-10 eigenpairs of NTK_S of a torch.nn.GRU computed by autodiff
through the fused module + ARPACK with kpflow's (numpy, torch, torch detached).  Here it runs
at its tiny ``--quick`` size in a subprocess (each case in its own child process); times are
printed, never checked.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the benchmark's baseline is torch.nn.GRU")
pytest.importorskip("scipy", reason="the benchmark's baseline is scipy's ARPACK")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ntk_spectrum.py"
CASES = ("autodiff+ARPACK", "kpflow-numpy", "kpflow-torch", "kpflow-torch-detach")
COLUMNS = (
    "n",
    "setup_s",
    "solve_s",
    "time_s",
    "peak_rss_gb",
    "start_rss_gb",
    "products",
    "conv",
    "resid_f64",
    "resid_own",
    "dlambda",
)


def parse_table(stdout: str) -> dict[str, dict[str, object]]:
    """The rows of the printed table, by case, as numbers ("-" becomes None)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("case ") and "states N" in line)
    rows: dict[str, dict[str, object]] = {}
    for line in lines[start + 1 :]:
        if not line or line.startswith("("):
            break
        name, *fields = line.split()
        assert "FAILED" not in fields, line
        assert len(fields) == len(COLUMNS), line
        row: dict[str, object] = {}
        for column, text in zip(COLUMNS, fields, strict=True):
            if column == "conv":
                assert text in ("yes", "NO"), line
                row[column] = text == "yes"
            else:
                row[column] = None if text == "-" else float(text)
        rows[name] = row
    return rows


def test_quick_run_parses_and_eigenvalues_agree(tmp_path: Path) -> None:
    out_json = tmp_path / "rows.json"
    cmd = [sys.executable, str(BENCH), "--quick", "--threads", "1", "--json", str(out_json)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr

    rows = parse_table(out.stdout)
    assert tuple(rows) == CASES, out.stdout
    for name, row in rows.items():
        assert row["n"] == 4 * 10 * 16, name
        assert row["products"] is not None and row["products"] > 0, name
        for column in ("time_s", "peak_rss_gb", "resid_f64", "dlambda"):
            value = row[column]
            assert isinstance(value, float) and math.isfinite(value), (name, column, out.stdout)
        assert row["dlambda"] <= 1e-4, (name, out.stdout)  # eigenvalues agree with ARPACK's
    assert rows["autodiff+ARPACK"]["dlambda"] == 0.0
    for case in CASES[1:]:
        assert f"EIGENVALUES {case} vs autodiff+ARPACK:" in out.stdout
        assert f"RATIO autodiff+ARPACK / {case} time:" in out.stdout

    # The JSON rows hold the same results, with the eigenvalues themselves.
    (size,) = json.loads(out_json.read_text())["sizes"]
    assert size["size"] == "quick"
    by_case = {r["case"]: r for r in size["rows"]}
    assert tuple(by_case) == CASES
    reference = by_case["autodiff+ARPACK"]["eigenvalues"]
    assert len(reference) == 10
    assert all(a >= b for a, b in zip(reference, reference[1:], strict=False))
    for case in CASES[1:]:
        values = by_case[case]["eigenvalues"]
        assert len(values) == 10
        gap = max(abs(a - b) for a, b in zip(values, reference, strict=True)) / abs(reference[0])
        assert gap <= 1e-4, (case, values, reference)
        assert gap == pytest.approx(by_case[case]["dlambda"])


def test_repeats_keep_the_fastest_time_and_the_largest_peak_rss() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ntk_spectrum", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = [
        {"case": "c", "time_s": 3.0, "peak_rss_gb": 0.5, "products": 9},
        {"case": "c", "time_s": 2.0, "peak_rss_gb": 0.4, "products": 9},
        {"case": "c", "time_s": 4.0, "peak_rss_gb": 0.6, "products": 9},
    ]
    row = bench.combine_runs(runs)
    assert row["time_s"] == 2.0 and row["peak_rss_gb"] == 0.6
    assert row["times_s"] == [3.0, 2.0, 4.0] and row["peak_rss_gbs"] == [0.5, 0.4, 0.6]
    assert bench.combine_runs([*runs, {"case": "c", "error": "exit code 1"}])["error"] == "exit code 1"
    out = subprocess.run([sys.executable, str(BENCH), "--repeat", "0"], capture_output=True, text=True)
    assert out.returncode == 2 and "--repeat must be at least 1, got 0" in out.stderr
