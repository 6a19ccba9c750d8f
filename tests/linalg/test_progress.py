"""``progress=True``: a tqdm bar when tqdm is installed, a plain text line on stderr otherwise."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from kpflow.linalg import effective_rank, eigsh, trace
from tests.linalg_helpers import numpy_operator, spectral_matrix


@pytest.fixture
def operator():
    M, _ = spectral_matrix("exp", 80, seed=1)
    return numpy_operator(M)


@pytest.fixture
def no_tqdm(monkeypatch):
    """Make ``from tqdm.auto import tqdm`` fail, as when tqdm is not installed."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)


def test_without_tqdm_progress_true_writes_a_text_line_to_stderr(operator, no_tqdm, capsys):
    r = trace(operator, method="xtrace", num_matvecs=10, rng=0, progress=True)
    assert r.num_matvecs == 10
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "kpflow.linalg.trace: 0/10 matvecs" in captured.err
    assert captured.err.rstrip("\n").endswith("kpflow.linalg.trace: 10/10 matvecs (100%)")
    assert captured.err.endswith("\n")


def test_without_tqdm_every_long_running_call_reports(operator, no_tqdm, capsys):
    eigsh(operator, 3, method="lanczos", rng=0, progress=True)
    assert "kpflow.linalg.eigsh:" in capsys.readouterr().err
    effective_rank(operator, method="estimate", num_matvecs=40, rng=0, progress=True)
    err = capsys.readouterr().err
    assert "kpflow.linalg.trace:" in err and "kpflow.linalg.effective_rank:" in err


def test_with_tqdm_progress_true_drives_a_tqdm_bar(operator, monkeypatch, capsys):
    bars = []

    class FakeTqdm:
        def __init__(self, total, desc, leave):
            self.total, self.desc, self.leave, self.n, self.closed = total, desc, leave, 0, False
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    auto = types.ModuleType("tqdm.auto")
    auto.tqdm = FakeTqdm
    package = types.ModuleType("tqdm")
    package.auto = auto
    monkeypatch.setitem(sys.modules, "tqdm", package)
    monkeypatch.setitem(sys.modules, "tqdm.auto", auto)
    trace(operator, method="hutchinson", num_matvecs=150, rng=0, progress=True)
    assert len(bars) == 1
    bar = bars[0]
    assert (bar.total, bar.n, bar.desc) == (150, 150, "kpflow.linalg.trace")
    assert bar.closed and not bar.leave
    assert capsys.readouterr().err == ""  # no text line when tqdm is there


def test_the_real_tqdm_runs_when_installed(operator):
    pytest.importorskip("tqdm")
    assert trace(operator, method="xtrace", num_matvecs=10, rng=0, progress=True).num_matvecs == 10


def test_progress_false_and_none_are_silent_and_callbacks_see_every_product(operator, no_tqdm, capsys):
    seen = []
    for progress in (None, False):
        trace(operator, method="hutchinson", num_matvecs=70, rng=0, progress=progress)
    trace(operator, method="hutchinson", num_matvecs=70, rng=0, progress=lambda d, t: seen.append((d, t)))
    assert capsys.readouterr().err == ""
    assert seen[-1] == (70, 70) and all(t == 70 for _, t in seen)
    assert np.all(np.diff([d for d, _ in seen]) > 0)
