"""Probe blocks split across several jax devices (``kpflow.backends.jax``): same results as one device.

jax fixes its device count when it starts, so the checks run in one subprocess with four
forced host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``) and x64 on; it
prints its findings as JSON and the tests below read them.  For a GRU (float64 and float32)
and an MLP (float64): ``eigsh``, ``trace(method="hutch++")`` and a direct product of
``kpflow.global_ntk(traj)`` with the model's arrays replicated on the four devices
(:func:`kpflow.backends.jax.replicate`) equal the results on one device, every probe block
the solvers push through the operator is split four ways, and the results come back
replicated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax", reason="jax is not installed")

ROOT = Path(__file__).resolve().parents[2]
DEVICES = 4

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp
    import numpy as np
    jax.config.update("jax_enable_x64", True)  # this test process only; the library never does this
    import kpflow
    from kpflow import linalg
    from kpflow._array import device_of
    from kpflow.backends import jax as kjax
    from kpflow.models import GRU, MLP

    devices = jax.devices()
    assert len(devices) == DEVICES, devices

    # Record the layout of every block the solvers push through an operator.
    seen = []
    distribute = kjax.adapter.distribute
    def recording(block):
        out = distribute(block)
        shards = sorted((s.device.id, s.data.shape[0]) for s in out.addressable_shards)
        seen.append({"rows": int(block.shape[0]), "devices": len(out.sharding.device_set),
                     "replicated": bool(out.sharding.is_fully_replicated),
                     "shard_rows": sorted({r for _, r in shards})})
        return out
    kjax.adapter.distribute = recording

    def rel(a, b):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))

    def projector(V):
        V = np.asarray(V, dtype=np.float64).reshape(V.shape[0], -1)
        return V.T @ V

    def layout(x, N):
        return {"replicated": bool(x.sharding.is_fully_replicated), "devices": len(x.sharding.device_set),
                "same_device_as_operator": device_of(x) == N.device}

    CASES = {  # float32 on the GRU only: every case compiles its own kernels, twice
        "gru": (GRU(2, 4), (2, 6, 2), ("float64", "float32")),
        "mlp": (MLP((3, 6, 4)), (4, 3), ("float64",)),
    }
    report = {}
    for name, (model, x_shape, dtypes) in CASES.items():
        for dtype in dtypes:
            dt = getattr(jnp, dtype)
            x_host = np.random.default_rng(1).standard_normal(x_shape)
            runs = {}
            for where in ("one", "replicated"):
                params = model.init(0, like=jnp.zeros(1, dtype=dt))
                x = jnp.asarray(x_host, dtype=dt)
                if where == "replicated":
                    params, x = kjax.replicate((params, x))
                N = kpflow.global_ntk(model.run(params, x))
                X = jnp.asarray(np.random.default_rng(2).standard_normal((16, *N.shape_in)), dtype=dt)
                if where == "replicated":
                    X = kjax.replicate(X)
                del seen[:]
                top = linalg.eigsh(N, 3, method="lanczos", rng=0)
                tr = linalg.trace(N, method="hutch++", num_matvecs=30, rng=0)
                solver_blocks = list(seen)
                product = kjax.sharded_matmat(N, X)  # 16 probes: the solvers' kernels are reused
                runs[where] = {
                    "w": np.asarray(top.eigenvalues), "P": projector(top.eigenvectors),
                    "tr": float(tr.value), "product": np.asarray(product),
                    "blocks": solver_blocks, "product_block": seen[-1],
                    "layouts": {k: layout(v, N) for k, v in (("eigenvalues", top.eigenvalues),
                                ("eigenvectors", top.eigenvectors), ("trace", tr.value),
                                ("sharded_matmat", product))},
                    "dtypes": sorted({str(a.dtype) for a in (top.eigenvalues, top.eigenvectors, tr.value,
                                                             product)}),
                }
            one, rep = runs["one"], runs["replicated"]
            report[f"{name}-{dtype}"] = {
                "errors": {
                    "eigenvalues": rel(rep["w"], one["w"]),
                    "eigenvectors": rel(rep["P"], one["P"]),
                    "trace": rel(rep["tr"], one["tr"]),
                    "sharded_matmat": rel(rep["product"], one["product"]),
                },
                "blocks_one": one["blocks"], "blocks_replicated": rep["blocks"],
                "product_block": rep["product_block"],
                "layouts": rep["layouts"], "dtypes": rep["dtypes"], "expected_dtype": dtype,
            }

    # Uneven splits: 18 rows over 4 devices go 2 ways (gcd), over 3 devices not at all.
    kjax.adapter.distribute = distribute
    block = kjax.replicate(jnp.ones((18, 5)))
    two = kjax.adapter.distribute(block)
    three = kjax.replicate(jnp.ones((16, 5)), devices[:3])
    with kjax.shard_probes(False):
        off = kjax.adapter.distribute(kjax.replicate(jnp.ones((16, 5))))
    report["uneven"] = {
        "gcd_rows": sorted({s.data.shape[0] for s in two.addressable_shards}),
        "gcd_devices": len(two.sharding.device_set),
        "three_devices_unchanged": kjax.adapter.distribute(three) is three,
        "disabled_unchanged": bool(off.sharding.is_fully_replicated),
    }
    print(json.dumps(report))
    """
).replace("DEVICES", str(DEVICES))


@pytest.fixture(scope="module")
def report() -> dict:
    """The subprocess's findings (a minute or more of CPU: jax compiles every kernel per layout)."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}",
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


CASES = ["gru-float64", "gru-float32", "mlp-float64"]
#: Relative agreement of the split and the one-device results.  float64 agrees to rounding
#: (about 1e-15); float32 to its rounding, amplified a little by Lanczos (about 1e-6).
TOL = {"float64": 1e-10, "float32": 1e-4}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_results_equal_the_one_device_results(report, case):
    found = report[case]
    tol = TOL[found["expected_dtype"]]
    bad = {k: v for k, v in found["errors"].items() if not v <= tol}
    assert not bad, f"{case}: relative errors above {tol:g}: {bad}"
    assert found["dtypes"] == [found["expected_dtype"]]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_every_solver_block_is_split_across_the_four_devices(report, case):
    found = report[case]
    blocks = found["blocks_replicated"]
    assert blocks, "the solvers pushed no block through distribute"
    for b in blocks:
        assert b["devices"] == DEVICES and not b["replicated"], b
        assert b["shard_rows"] == [b["rows"] // DEVICES], b  # each device holds a quarter of the probes
    p = found["product_block"]
    assert p["devices"] == DEVICES and p["shard_rows"] == [4], p  # sharded_matmat: 16 probes, 4 per device
    for b in found["blocks_one"]:  # arrays on one device: blocks left alone
        assert b["devices"] == 1, b


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_results_come_back_replicated_like_the_operator(report, case):
    for what, lay in report[case]["layouts"].items():
        assert lay == {"replicated": True, "devices": DEVICES, "same_device_as_operator": True}, (what, lay)


@pytest.mark.slow
def test_uneven_blocks_split_by_the_gcd_or_stay_replicated(report):
    u = report["uneven"]
    assert u["gcd_rows"] == [9] and u["gcd_devices"] == DEVICES  # 18 rows: 2 ways × 2 replicas
    assert u["three_devices_unchanged"]
    assert u["disabled_unchanged"]


# -- in this process (one CPU device) ------------------------------------------------------------
def test_blocks_on_one_device_are_left_alone():
    import jax.numpy as jnp
    from kpflow.backends.jax import adapter, replicate

    block = jnp.ones((16, 3))
    assert adapter.distribute(block) is block
    one = replicate(block)  # replicated on a one-device mesh: nothing to split
    assert adapter.distribute(one) is one
    assert adapter.distribute(jnp.ones(())).shape == ()


def test_replicate_checks_its_devices():
    import jax
    import jax.numpy as jnp
    from kpflow.backends.jax import replicate

    with pytest.raises(TypeError, match="sequence of jax devices"):
        replicate(jnp.ones(2), ["cpu:0"])
    with pytest.raises(TypeError, match="sequence of jax devices"):
        replicate(jnp.ones(2), [])
    with pytest.raises(ValueError, match="twice"):
        replicate(jnp.ones(2), [jax.devices()[0]] * 2)
    tree = replicate({"w": jnp.ones(2), "n": 3, "none": None})
    assert tree["n"] == 3 and tree["none"] is None
    assert tree["w"].sharding.is_fully_replicated


def test_sharded_matmat_on_one_device_is_matmat():
    import jax.numpy as jnp
    from kpflow.backends.jax import sharded_matmat

    import kpflow

    A = kpflow.Dense(jnp.asarray(np.arange(6.0).reshape(3, 2)))
    X = jnp.asarray(np.ones((4, 2)))
    np.testing.assert_array_equal(np.asarray(sharded_matmat(A, X)), np.asarray(A.matmat(X)))
    with pytest.raises(ValueError):
        sharded_matmat(A, jnp.ones((4, 3)))
