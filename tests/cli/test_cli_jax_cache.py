"""kpflow spectrum --backend jax turns on jax's persistent compilation cache; importing kpflow never does.

That the cache makes a second process compile nothing is checked by
tests/benchmarks/test_bench_cli_startup.py (it counts jax's compile and cache-hit events).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("jax", reason="the cache is jax's")

from kpflow.backends.jax import CACHE_ENV, compilation_cache_dir

from kpflow.cli import build_parser


def test_jax_cache_flag_names_a_folder_or_off() -> None:
    parse = build_parser().parse_args
    assert parse(["spectrum", "--backend", "jax", "--jax-cache", "/tmp/x"]).jax_cache == "/tmp/x"
    assert parse(["spectrum", "--backend", "jax", "--jax-cache", "off"]).jax_cache == "off"
    assert parse(["spectrum", "--backend", "jax"]).jax_cache is None


def test_cache_folder_is_the_environment_variable_else_the_user_cache_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv(CACHE_ENV, "/somewhere/else")
    assert compilation_cache_dir() == "/somewhere/else"
    for off in ("", "off", "OFF", "0"):
        monkeypatch.setenv(CACHE_ENV, off)
        assert compilation_cache_dir() is None
    monkeypatch.delenv(CACHE_ENV)
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
        assert compilation_cache_dir() == "/xdg/kpflow/jax"


def test_importing_kpflow_and_its_jax_adapter_leaves_the_cache_off() -> None:
    code = (
        "import kpflow, kpflow.cli, kpflow.linalg, kpflow.backends.jax, jax; "
        "print(jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.split() == ["None", "1.0"]
