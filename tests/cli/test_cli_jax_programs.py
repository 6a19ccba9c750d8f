"""``kpflow spectrum --backend jax`` compiles a bounded number of programs, and none on a second run.

One fresh process (jax's in-memory caches are per process, so the count is not disturbed
by other tests) runs the spectrum twice with the same sizes and another seed, counting
jax's compilations, in float64 (x64 mode), and prints both reports; this test checks the
counts and compares the exact numbers of K and the top eigenvalues of NTK_S with the
numpy command (which shares no compiled code with it) to float64 round-off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax", reason="compilations are jax's")

from kpflow.cli import main

#: Above the dense limit (4·9·8 = 288 states), so that NTK_S takes the Krylov and randomized routes.
ARGS = ["spectrum", "--batch", "4", "--time", "9", "--hidden", "8", "--k", "3", "--matvecs", "32", "--json"]

_CHILD = """
import io, json, sys, contextlib
from jax import monitoring
count = [0]
def on_duration(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        count[0] += 1
monitoring.register_event_duration_secs_listener(on_duration)
from kpflow.cli import main
out = []
for seed in ("0", "1"):
    before, buf = count[0], io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(sys.argv[1:] + ["--seed", seed]) == 0
    out.append({"compiled": count[0] - before, "report": json.loads(buf.getvalue())})
# every registry model: the compiled forward run (one program) against numpy's eager unroll
import numpy as np
import jax.numpy as jnp
from kpflow.models import registry
from kpflow.models.model import _compiled_forward
gaps = {}
for name in registry.names():
    entry = registry.entry(name)
    model = entry.build(entry.n_inputs(3, 4), 4, **entry.defaults)
    host = model.init(np.random.default_rng(1), like=np.zeros(1))
    x = np.random.default_rng(2).standard_normal(entry.input_shape(2, 3, 3, 4))
    run = _compiled_forward(model, jnp.asarray(x))
    states, finite = run({k: jnp.asarray(v) for k, v in host.items()}, jnp.asarray(x), None)
    ref = model.unroll(host, x)
    gaps[name] = [float(np.max(np.abs(np.asarray(states) - ref))), bool(np.all(np.asarray(finite)))]
out.append(gaps)
print(json.dumps(out))
"""


def _numpy_report(capsys: pytest.CaptureFixture[str]) -> dict:
    assert main([*ARGS, "--backend", "numpy", "--seed", "0"]) == 0
    return json.loads(capsys.readouterr().out)


def test_jax_spectrum_compiles_few_programs_once_and_matches_numpy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {**os.environ, "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu"}
    cmd = [
        sys.executable,
        "-c",
        _CHILD,
        *ARGS,
        "--backend",
        "jax",
        "--dtype",
        "float64",
        "--jax-cache",
        "off",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second, gaps = json.loads(done.stdout.splitlines()[-1])
    # the forward run is one program, the GRU's caches one, each part of the operators'
    # products one (a small operator's blocks have one width), and the dense algebra between
    # products none (numpy on the host, on the CPU), the trajectory's derived arrays (shifted
    # states, views, site data) one program each and the linalg's zeros made on the host;
    # not one per primitive or per estimator shape (15 here; 31 with those eager, 133 when
    # every kernel was compiled, 183 with the eager forward run)
    assert 0 < first["compiled"] <= 20, first["compiled"]
    # a second spectrum of the same sizes (new weights, inputs and probes) compiles nothing
    assert second["compiled"] == 0, second["compiled"]

    ref = _numpy_report(capsys)
    got = first["report"]
    for key in ("value",):
        np.testing.assert_allclose(got["K"]["trace"][key], ref["K"]["trace"][key], rtol=1e-12)
        np.testing.assert_allclose(
            got["K"]["effective_rank"][key], ref["K"]["effective_rank"][key], rtol=1e-12
        )
    np.testing.assert_allclose(got["K"]["eigenvalues"], ref["K"]["eigenvalues"], rtol=1e-10)
    # NTK_S's top eigenvalues: converged Ritz values of the same operator (tolerance-limited)
    np.testing.assert_allclose(got["NTK_S"]["eigenvalues"], ref["NTK_S"]["eigenvalues"], rtol=1e-6)
    assert second["report"]["K"]["trace"]["value"] != got["K"]["trace"]["value"]  # new weights
    # Model.run's compiled forward program (a scan over time for the recurrent models) equals
    # the eager unroll on numpy, for every registry model, in float64
    assert len(gaps) >= 7, gaps
    for name, (gap, finite) in gaps.items():
        assert gap <= 1e-12 and finite, (name, gap)
