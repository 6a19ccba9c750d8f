"""``kpflow spectrum``: the main job, its JSON output, its help and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from kpflow import linalg
from kpflow.cli import main
from kpflow.models import RNN
from kpflow.ntk import global_ntk, parameter_kernel


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kpflow", *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_json_output_parses_and_agrees_with_the_python_api(capsys):
    argv = ["spectrum", "--model", "rnn", "--batch", "2", "--time", "3", "--hidden", "3", "--inputs", "2"]
    argv += ["--k", "4", "--seed", "5", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["state_shape"] == [2, 3, 3]
    assert report["axes"] == ["batch", "time", "hidden"]
    # The same seeded model, inputs and operators, built by hand.
    rng = np.random.default_rng(5)
    model = RNN(2, 3)
    params = model.init(rng)
    traj = model.run(params, rng.standard_normal((2, 3, 2)))
    K = parameter_kernel(traj).todense().reshape(18, 18)
    N = global_ntk(traj).todense().reshape(18, 18)
    np.testing.assert_allclose(report["K"]["eigenvalues"], np.linalg.eigvalsh(K)[::-1][:4], rtol=1e-10)
    np.testing.assert_allclose(report["NTK_S"]["eigenvalues"], np.linalg.eigvalsh(N)[::-1][:4], rtol=1e-8)
    assert report["K"]["trace"]["value"] == pytest.approx(np.trace(K), rel=1e-12)
    pr = np.trace(K) ** 2 / np.sum(K * K)
    assert report["K"]["effective_rank"]["value"] == pytest.approx(pr, rel=1e-10)
    # At this size the estimators' budget covers the dimension, so NTK_S's numbers are exact too.
    assert report["NTK_S"]["trace"]["value"] == pytest.approx(np.trace(N), rel=1e-10)
    along_time = np.einsum("aibajb->ij", N.reshape(2, 3, 3, 2, 3, 3))
    expected = np.trace(along_time) ** 2 / np.sum(along_time**2)
    assert report["NTK_S"]["effective_rank_along"]["time"]["value"] == pytest.approx(expected, rel=1e-10)
    assert report["config"]["model"] == "rnn" and report["config"]["seed"] == 5
    assert float(linalg.effective_rank(parameter_kernel(traj))) == pytest.approx(pr, rel=1e-10)


@pytest.mark.parametrize("model", ["leaky", "gru", "lstm", "mlp"])
def test_every_model_runs_and_prints_a_report(capsys, model):
    argv = ["spectrum", "--model", model, "--batch", "2", "--time", "4", "--hidden", "3", "--k", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "NTK_S" in out and "effective rank" in out
    axis = "units" if model == "mlp" else "hidden"
    assert f"along {axis}" in out


def test_other_backends_give_the_same_numbers(capsys):
    argv = [
        "spectrum",
        "--model",
        "gru",
        "--batch",
        "2",
        "--time",
        "3",
        "--hidden",
        "2",
        "--k",
        "3",
        "--json",
    ]
    assert main(argv) == 0
    ref = json.loads(capsys.readouterr().out)
    assert main([*argv, "--backend", "array_api_strict"]) == 0
    got = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(got["K"]["eigenvalues"], ref["K"]["eigenvalues"], rtol=1e-12)
    np.testing.assert_allclose(got["NTK_S"]["eigenvalues"], ref["NTK_S"]["eigenvalues"], rtol=1e-8)


def test_help_documents_every_option():
    out = _run("spectrum", "--help")
    assert out.returncode == 0
    for option in ("--model", "--backend", "--batch", "--time", "--hidden", "--k", "--seed", "--json"):
        assert option in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["spectrum", "--model", "resnet"], "invalid choice: 'resnet'"),
        (["spectrum", "--batch", "0"], "expected a positive integer, got 0"),
        (["spectrum", "--hidden", "many"], "expected a positive integer, got 'many'"),
        (["spectrum", "--dt", "2"], "expected a number in (0, 1], got 2.0"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_options_exit_nonzero_with_a_clear_message(args, message):
    out = _run(*args)
    assert out.returncode == 2
    assert message in out.stderr


def test_the_console_script_runs_at_its_defaults():
    """The README's main command (not timed here: speed lives in benchmarks/)."""
    out = _run("spectrum")
    assert out.returncode == 0, out.stderr
    assert "NTK_S" in out.stdout and "total" in out.stdout
