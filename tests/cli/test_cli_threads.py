"""``--threads``: the CLI holds numpy's BLAS, OpenMP and torch to n threads while it works, then restores them."""

from __future__ import annotations

import pytest

from kpflow._threads import cpu_threads
from kpflow.cli import build_parser, main

threadpoolctl = pytest.importorskip("threadpoolctl")


def _pools() -> list[int]:
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info()]


def test_cpu_threads_holds_every_pool_and_torch_then_restores_them():
    torch = pytest.importorskip("torch")
    with threadpoolctl.threadpool_limits(limits=2):  # the suite itself runs on one thread
        before, torch_before = _pools(), torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            assert before and all(n == 2 for n in before), before
            with cpu_threads(1):
                assert all(n == 1 for n in _pools()), _pools()
                assert torch.get_num_threads() == 1
            assert _pools() == before and torch.get_num_threads() == 2
            with cpu_threads(0):  # 0: as they are
                assert _pools() == before and torch.get_num_threads() == 2
        finally:
            torch.set_num_threads(torch_before)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_cpu_threads_refuses_a_bad_count_by_name(bad):
    with pytest.raises(ValueError, match="expected n to be None or an int >= 0"):
        with cpu_threads(bad):
            pass


def test_the_spectrum_report_runs_on_the_threads_asked_for(monkeypatch, capsys):
    import kpflow.analysis as analysis

    seen: list[list[int]] = []
    real = analysis.spectrum_report

    def spy(*args, **kwargs):
        seen.append(_pools())
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "spectrum_report", spy)
    argv = ["spectrum", "--model", "rnn", "--batch", "2", "--time", "3", "--hidden", "3", "--k", "2"]
    with threadpoolctl.threadpool_limits(limits=2):
        before = _pools()
        assert main([*argv, "--json"]) == 0  # default: one thread
        assert main([*argv, "--json", "--threads", "0"]) == 0  # the libraries' own settings
        assert _pools() == before
    capsys.readouterr()
    assert all(n == 1 for n in seen[0]) and seen[1] == before


def test_threads_is_a_flag_of_both_commands_and_is_checked_there(capsys):
    for command in ("spectrum", "demo"):
        assert build_parser().parse_args([command]).threads == 1
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args([command, "--threads", "-1"])
        assert info.value.code == 2
        assert "--threads" in capsys.readouterr().err
