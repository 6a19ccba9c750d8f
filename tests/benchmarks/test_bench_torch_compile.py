"""bench_torch_compile.py --quick runs; its compiled P and Pᵀ equal kpflow's (times never checked)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the benchmark compiles torch step functions")
pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "clang++", "c++")),
    reason="torch.compile on the CPU needs a C++ compiler",
)

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_torch_compile.py"


def test_quick_run_compiles_both_recursions_agreeing_with_eager_and_prints_ratios() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, check=True, timeout=600
    ).stdout
    rows = {
        m[0]: (float(m[1]), float(m[2]))
        for m in re.findall(r"^(P(?:\^T)? (?:eager|compiled))\s+(\S+)\s+\S+\s+\S+\s+(\S+)$", out, re.M)
    }
    assert set(rows) == {"P eager", "P compiled", "P^T eager", "P^T compiled"}
    for name in ("P compiled", "P^T compiled"):
        assert rows[name][1] <= 1e-5  # float32: the same recursion
    for name in ("P", "P^T"):
        assert re.search(rf"^RATIO compiled / eager time, {re.escape(name)}: \d+\.\d+x$", out, re.M)


def test_compiled_recursion_equals_the_propagator_in_float64() -> None:
    import torch

    sys.path.insert(0, str(BENCH.parent))
    try:
        from bench_torch_compile import compiled_recursion
    finally:
        sys.path.remove(str(BENCH.parent))
    from kpflow.backends.torch import from_module

    from kpflow.ntk import propagator

    torch.manual_seed(0)
    model, params = from_module(torch.nn.GRU(2, 5, batch_first=True, dtype=torch.float64), detach=True)
    traj = model.run(params, torch.randn(3, 4, 2, dtype=torch.float64))
    X = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    P = propagator(traj)
    with torch.no_grad():
        for adjoint, ref in ((False, P.matmat(X)), (True, P.T.matmat(X))):
            out = compiled_recursion(traj, adjoint)(X)
            assert out.dtype == torch.float64
            assert float(torch.linalg.vector_norm(out - ref)) <= 1e-12 * float(torch.linalg.vector_norm(ref))
            assert float(torch.linalg.vector_norm(out - X)) > 0.1  # the steps did something
