"""The paper examples (examples/paper/e1..e8) run at --quick and write what their docs pages claim.

Each test runs ``main(["--quick", "--out", tmp])`` in-process, then checks ``results.json``:
its keys, that every number is finite, the PNG, and the example's qualitative claim where
it is robust at the quick sizes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

PAPER = Path(__file__).resolve().parents[2] / "examples" / "paper"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(PAPER))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(PAPER))
    return module


EXAMPLES = _load("paper_make_gallery", PAPER / "make_gallery.py").EXAMPLES  # the gallery's list


def _run(name: str, out: Path) -> dict:
    module = _load(f"paper_{name}", PAPER / f"{name}.py")
    sys.path.insert(0, str(PAPER))
    try:
        module.main(["--quick", "--out", str(out), "--seed", "0"])
    finally:
        sys.path.remove(str(PAPER))
    return json.loads((out / "results.json").read_text())


def _numbers(value: object) -> list[float]:
    if isinstance(value, dict):
        return [v for item in value.values() for v in _numbers(item)]
    if isinstance(value, list):
        return [v for item in value for v in _numbers(item)]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    return [float(value)]  # type: ignore[arg-type]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_quick_and_writes_finite_results(name: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    if name == "e7_attention_rank":
        pytest.importorskip("torch")  # e7's network is written with torch modules
    r = _run(name, tmp_path)
    assert r["size"] == "quick"
    assert r["seed"] == 0
    numbers = _numbers(r)
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert list(tmp_path.glob("*.png")), "no figure written"
    CLAIMS[name](r)


def _e1(r: dict) -> None:
    for task in ("memory_pro", "forecast"):
        leaky, tanh = r["tasks"][task]["leaky"], r["tasks"][task]["tanh"]
        assert leaky["K_vs_core_rel_error"] < 1e-12  # K = (V Vᵀ) ⊗ I to round-off
        assert leaky["rank_K_batch_time"] == pytest.approx(leaky["pr_VVT"], rel=1e-10)
        assert leaky["rank_K_hidden"] == pytest.approx(r["H"], rel=1e-10)
        assert tanh["K_vs_D_core_D_rel_error"] < 1e-12  # K = D ((V Vᵀ) ⊗ I) D
        assert tanh["K_vs_core_rel_error"] > 1e-6  # ... and not (V Vᵀ) ⊗ I itself


def _e2(r: dict) -> None:
    a = r["target_alignment"]
    assert a["preferred"] > 100 * a["null_space"]
    assert r["modes_at_95"]["NTK"] < r["modes_at_95"]["P"]


def _e3(r: dict) -> None:
    n_t = r["B"] * r["T"]
    assert all(1 - 1e-9 <= v <= n_t + 1e-9 for row in r["temporal_rank"] for v in row)
    assert all(1 - 1e-9 <= v <= r["H"] + 1e-9 for row in r["spatial_rank"] for v in row)
    assert len(r["regions"]) == 4


def _e4(r: dict) -> None:
    assert set(r["loss"]) == {str(d) for d in r["d_inp"]}
    assert all(v < 1 for row in r["final_over_initial"] for v in row)  # SGD lowers every loss


def _e5(r: dict) -> None:
    for case in r["cases"].values():
        assert case["loss"][-1] < case["loss"][0]
        assert all(0 <= v <= 1 + 1e-9 for v in case["core_alignment"])
    assert r["cases"]["5"]["fixed_point_drift"] < 1e-8  # the planted points are fixed points


def _e6(r: dict) -> None:
    for mode in ("W", "W_in", "both"):
        assert all(0 <= v <= 1 + 1e-9 for row in r["trained"][mode]["target_alignment"] for v in row)


def _e7(r: dict) -> None:
    assert isinstance(r["d_in"], list)
    assert set(r["temporal_rank"]) == {"5", "10", "15"}
    for ranks in r["temporal_rank"].values():
        assert len(ranks) == len(r["d_in"])
        assert ranks[-1] > 3 * ranks[0]  # more input dimensions, more temporal modes


def _e8(r: dict) -> None:
    assert len(r["g"]) == len(r["misdirection"]) == 10
    assert r["g"][0] == pytest.approx(1e-5) and r["g"][-1] == pytest.approx(5.0)
    assert all(0 <= v <= 1 for v in r["misdirection"])


def test_every_example_has_a_claim() -> None:
    assert len(EXAMPLES) == 8 and set(CLAIMS) == set(EXAMPLES)


CLAIMS = {
    "e1_kronecker_core": _e1,
    "e2_temporal_modes": _e2,
    "e3_rank_phase_diagram": _e3,
    "e4_loss_regimes": _e4,
    "e5_fixed_points": _e5,
    "e6_teacher_student": _e6,
    "e7_attention_rank": _e7,
    "e8_misdirection_vs_g": _e8,
}
