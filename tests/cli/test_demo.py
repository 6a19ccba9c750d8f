"""`kpflow demo`: the report folder, numbers that come from the computations, clear errors; kpflow.plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kpflow import linalg
from kpflow.analysis.demo import DemoConfig, run_demo, summary
from kpflow.cli import main
from kpflow.models import GRU, Linear
from kpflow.ntk import global_ntk, parameter_kernel
from kpflow.tasks import FlipFlop
from kpflow.training import Adam, init_params, train

SMALL = ["--batch", "4", "--time", "10", "--hidden", "8", "--steps", "25", "--k", "3", "--matvecs", "16"]


def test_kpflow_demo_writes_its_report_folder_and_prints_a_summary(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    assert main(["demo", *SMALL, "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["effective_ranks.png", "loss.png", "report.json", "spectra.png", "summary.md"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    text = (tmp_path / "out" / "summary.md").read_text()
    assert text == summary({k: v for k, v in report.items() if k != "files"})
    assert printed.startswith(text.splitlines()[0])
    assert f"{report['training']['final_loss']:.4g}" in text
    assert f"{report['trained']['NTK_S']['effective_rank']['value']:.2f}" in text
    for png in ("loss.png", "spectra.png", "effective_ranks.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_reports_numbers_come_from_the_computations() -> None:
    """The demo's training and K numbers equal direct calls with the same seeds."""
    config = DemoConfig(batch=4, time=10, hidden=8, steps=25, k=3, matvecs=16, seed=3)
    report = run_demo(config)
    rng = np.random.default_rng(3)
    batch = FlipFlop(T=10).sample(4, rng, like=np.zeros(1))
    model, readout = GRU(3, 8), Linear(8, 3)
    params = init_params(model, rng, like=np.zeros(1))
    rp = readout.init(rng, like=np.zeros(1))
    result = train(
        model,
        readout,
        params,
        rp,
        batch,
        steps=25,
        optimizer=Adam(0.02),
        checkpoints=[0, 25],
        method="kpflow",
    )
    np.testing.assert_array_equal(report["training"]["losses"], result.losses)
    assert report["training"]["loss_ratio"] == pytest.approx(
        report["training"]["initial_loss"] / report["training"]["final_loss"]
    )
    for label, step in (("init", 0), ("trained", 25)):
        traj = model.run(result.checkpoint(step).params, batch.inputs)
        K = parameter_kernel(traj)
        assert report[label]["K"]["effective_rank"]["value"] == pytest.approx(
            float(linalg.effective_rank(K)), rel=1e-12
        )
        assert report[label]["K"]["trace"]["value"] == pytest.approx(float(linalg.trace(K)), rel=1e-12)
        top = np.asarray(linalg.eigsh(global_ntk(traj), 3, rng=0).eigenvalues)
        np.testing.assert_allclose(report[label]["NTK_S"]["eigenvalues"], top, rtol=1e-6)
    assert report["state_shape"] == [4, 10, 8]
    assert report["training"]["final_loss"] < report["training"]["initial_loss"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--model", "transformer"], "invalid choice"),
        (["demo", "--steps", "0"], "expected a positive integer, got 0"),
        (["demo", "--matvecs", "3"], "expected an integer >= 16, got 3"),
        (["demo", "--lr", "-1"], "expected a positive number, got -1.0"),
        (["demo", "--held-out", "0"], "expected a positive integer, got 0"),
    ],
)
def test_bad_demo_options_exit_with_status_2_and_name_the_flag(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_config_refuses_bad_values_by_name() -> None:
    with pytest.raises(ValueError, match=r"DemoConfig: expected task to be one of .*, got 'sorting'"):
        DemoConfig(task="sorting")
    with pytest.raises(ValueError, match=r"DemoConfig: expected hidden to be a positive int, got 0"):
        DemoConfig(hidden=0)
    with pytest.raises(TypeError, match=r"run_demo: expected config to be a DemoConfig"):
        run_demo({"model": "gru"})  # type: ignore[arg-type]


@pytest.mark.parametrize("task", ["memory_pro", "integration"])
def test_the_demo_runs_other_tasks_and_models(task: str) -> None:
    report = run_demo(
        DemoConfig(model="leaky", task=task, batch=3, time=8, hidden=5, steps=3, k=2, matvecs=16)
    )
    assert len(report["training"]["losses"]) == 3
    assert report["config"]["task"] == task


def test_plots_refuse_bad_input_by_name() -> None:
    pytest.importorskip("matplotlib")
    from kpflow.plot import plot_over_training, plot_spectra

    with pytest.raises(TypeError, match="plot_spectra: expected spectra to be a non-empty dict"):
        plot_spectra([1.0, 2.0])
    with pytest.raises(
        ValueError, match=r"plot_over_training: expected 2 values for 'a' \(one per step\), got 3"
    ):
        plot_over_training([0, 1], {"a": [1.0, 2.0, 3.0]})


SMALL_CONFIG = {"batch": 4, "time": 10, "hidden": 8, "steps": 25, "k": 3, "matvecs": 16, "held_out": 32}


def test_the_summary_reports_a_held_out_loss_the_ceilings_and_p_p_transpose() -> None:
    from kpflow.training import loss_and_gradients

    config = DemoConfig(**SMALL_CONFIG, seed=3)
    report = run_demo(config)
    text = summary(report)
    # the held-out loss: fresh trials from their own stream, evaluated here directly
    fresh = FlipFlop(T=10).sample(32, np.random.default_rng([3, 1]), like=np.zeros(1))
    rng = np.random.default_rng(3)
    FlipFlop(T=10).sample(4, rng, like=np.zeros(1))
    model, readout = GRU(3, 8), Linear(8, 3)
    params, rp = init_params(model, rng, like=np.zeros(1)), readout.init(rng, like=np.zeros(1))
    held = report["training"]["held_out"]
    got0 = float(loss_and_gradients(model, readout, params, rp, *fresh, method="kpflow").loss)
    assert held["initial_loss"] == pytest.approx(got0, rel=1e-12)
    assert held["trials"] == 32 and f"{held['final_loss']:.4g}" in text and "32 fresh held-out trials" in text
    # ceilings: the smaller of states (4·10·8) and the recurrent parameters, not the states alone
    n_params = sum(int(np.prod(v.shape)) for v in params.values())
    assert report["parameters"] == n_params == 312
    assert report["trained"]["ceilings"]["NTK_S"] == min(320, n_params) == 312
    assert report["trained"]["ceilings"]["along"] == {"batch": 4, "time": 10, "hidden": 8}
    assert "| 312 |" in text and "of 320 dimensions" not in text
    for label in ("init", "trained"):
        ppt = report[label]["PPT"]["effective_rank"]
        assert 1.0 <= ppt["value"] <= report[label]["ceilings"]["PPT"] + 4 * (ppt["error"] or 0)
        assert f"{ppt['value']:.2f}" in text
    assert "effective rank of P Pᵀ" in text
    assert report["alignment_init_trained"]["error"] is not None
    assert 0.0 <= report["alignment_init_trained"]["value"] <= 1.0


def test_a_training_that_made_the_loss_rise_is_reported_as_failed_and_a_collapsed_ntk_as_collapsed() -> None:
    report = run_demo(DemoConfig(**SMALL_CONFIG, lr=50.0))
    tr = report["training"]
    assert tr["final_loss"] > tr["initial_loss"] and tr["failed"]
    text = summary(report)
    assert "**Training failed**" in text and "training loss rose from" in text
    assert "loss fell" not in text
    top0, top1 = (report[x]["NTK_S"]["eigenvalues"][0] for x in ("init", "trained"))
    assert top1 < 1e-6 * top0 and report["ntk_collapsed"]
    assert "**NTK_S collapsed**" in text and "low-rank" not in text


def test_the_summary_says_when_matplotlib_is_missing_and_the_report_knows_whether_it_is() -> None:
    import importlib.util

    report = run_demo(DemoConfig(**(SMALL_CONFIG | {"steps": 3})))
    assert report["matplotlib"] == (importlib.util.find_spec("matplotlib") is not None)
    without = summary({**report, "matplotlib": False})
    assert "No PNG plots were written: matplotlib is not installed" in without
    assert "kpflow[plot]" in without
    assert "No PNG plots" not in summary({**report, "matplotlib": True})
