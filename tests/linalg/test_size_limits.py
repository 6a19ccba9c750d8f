"""The size limits of kpflow.linalg and kpflow.ntk.shortcuts, crossed at test sizes and checked against dense.

At test sizes, none of the limits below is ever reached, so the code past each one never runs.
Each test lowers a limit with ``monkeypatch`` (or makes the operator large enough) and compares
the results with the dense matrices.

- ``CHUNK`` in ``kpflow.linalg._common``: probes pass through an operator in chunks of at
  most this many.
- ``UNIT_GRAM_ENTRIES_LIMIT`` in ``kpflow.ntk.shortcuts`` (``_unit_chunks``): the per-unit site
  matrices Φ_i of the exact rules are built in chunks of units.
- The unit-probe chunk of 256 in the exact trace, Frobenius norm, alignment and effective
  rank.  It is a literal inside each function, so the operator is made larger than 256.
- ``DENSE_LIMIT``: above it, ``method="auto"`` leaves the dense routes for the iterative
  ones.  Several modules import it by name, so it is lowered in every module that holds it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

import kpflow.linalg
import kpflow.ntk as ntk
import kpflow.ntk.shortcuts as shortcuts
from kpflow import linalg
from kpflow.linalg import rules
from kpflow.operators.base import LinearOperator
from tests.conftest import BACKENDS, _make_case
from tests.linalg_helpers import Opaque
from tests.ntk_helpers import NAMES, RECURRENT, build

EXACT = 1e-10

#: The chunking is array-API code that does not depend on the backend, and jax compiles every
#: new shape again (seconds for each call).  So jax gets one test of its own, at the end.
NOT_JAX = [b for b in BACKENDS if b != "jax"]


@pytest.fixture(params=NOT_JAX, scope="session")
def case64_eager(request: pytest.FixtureRequest) -> Any:
    """A float64 case on every selected backend but jax (the backends that do not compile per shape)."""
    return _make_case(request.param, "float64")


def lower(monkeypatch: pytest.MonkeyPatch, name: str, value: int) -> list[str]:
    """Set the int ``name`` to ``value`` in every loaded kpflow module that holds it; their names."""
    holders = sorted(
        m
        for m, mod in list(sys.modules.items())
        if (m == "kpflow" or m.startswith("kpflow."))
        and isinstance(getattr(mod, name, None), int)
        and not isinstance(getattr(mod, name), bool)
    )
    for m in holders:
        monkeypatch.setattr(sys.modules[m], name, value)
    return holders


def dense(case: Any, op: LinearOperator) -> np.ndarray:
    """The host matrix of ``op`` (one batched product with all unit vectors, never in chunks)."""
    from kpflow.operators import todense

    return case.to_numpy(todense.dispatch(LinearOperator)(op)).reshape(op.size_out, op.size_in)


def pr(M: np.ndarray) -> float:
    return float(np.trace(M) ** 2 / np.sum(M * M))


def close(got: Any, expected: Any, rtol: float = EXACT) -> None:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    err = np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-300)
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.1e}: {got} vs {expected}"


# -- CHUNK: probes through the operator in chunks --------------------------------------------------
#: (B, T, H, n_in, seed, with_h0) per model: states n = 12 (RNN), 24 (LSTM), 14 (MLP)
CHUNKED = {
    "rnn_tanh": (2, 3, 2, 2, 1, True),
    "lstm": (2, 3, 2, 2, 2, True),
    "mlp_tanh": (2, 1, 2, 2, 3, False),
}


def every_result(case: Any, N: Any, recurrent: bool) -> dict[str, np.ndarray]:
    """Every kpflow.linalg call on NTK_S, K and P that pushes probes through an operator."""
    K, P = N.K, N.P
    out: dict[str, Any] = {
        "trace exact": linalg.trace(N, method="exact").value,
        "fro_norm exact": linalg.fro_norm(N, method="exact").value,
        "fro_norm exact, wide side": linalg.fro_norm(P.T, method="exact").value,
        "fro_norm hutch++": linalg.fro_norm(P, method="hutch++", num_matvecs=12, rng=2).value,
        "eigsh lanczos": linalg.eigsh(N, 3, method="lanczos", rng=3).eigenvalues,
        "eigsh nystrom": linalg.eigsh(N, 2, method="nystrom", rng=4).eigenvalues,
        "eigsh dense": linalg.eigsh(N, 3, method="dense").eigenvalues,
        "svds lanczos": linalg.svds(P, 3, method="lanczos", rng=5).s,
        "effective_rank exact": linalg.effective_rank(N, method="exact").value,
        "effective_rank estimate": linalg.effective_rank(N, method="estimate", num_matvecs=40, rng=6).value,
        "alignment exact": linalg.alignment(N, K, method="exact").value,
        "alignment estimate": linalg.alignment(N, K, method="estimate", num_matvecs=60, rng=7).value,
    }
    for method, budget in (("hutchinson", 7), ("hutch++", 9), ("xtrace", 8), ("xnystrace", 7)):
        out[f"trace {method}"] = linalg.trace(N, method=method, num_matvecs=budget, rng=1).value
    if recurrent:
        out["effective_rank exact, time"] = linalg.effective_rank(N, keep=1, method="exact").value
    return {k: case.to_numpy(v) for k, v in out.items()}


@pytest.mark.parametrize("name", sorted(CHUNKED))
def test_probes_in_chunks_of_three_give_the_unchunked_and_the_dense_results(case64_eager, name, monkeypatch):
    traj = build(case64_eager, name, *CHUNKED[name]).traj
    N = ntk.global_ntk(traj)
    n = N.size_in
    recurrent = name in RECURRENT
    whole = every_result(case64_eager, N, recurrent)
    assert "kpflow.linalg._common" in lower(monkeypatch, "CHUNK", 3)
    done: list[int] = []
    res = linalg.trace(N, method="exact", progress=lambda d, total: done.append(d))
    assert done == [*range(3, n, 3), n] and res.num_matvecs == n, "the probes went through in chunks of 3"
    chunked = every_result(case64_eager, N, recurrent)
    for key, value in whole.items():
        close(chunked[key], value, rtol=1e-12 if "eigsh" not in key and "svds" not in key else 1e-10)
    # and the exact routes equal the dense matrices
    M, KM, PM = dense(case64_eager, N), dense(case64_eager, N.K), dense(case64_eager, N.P)
    close(chunked["trace exact"], np.trace(M))
    close(chunked["fro_norm exact"], np.linalg.norm(M))
    close(chunked["fro_norm exact, wide side"], np.linalg.norm(PM))
    top = np.sort(np.linalg.eigvalsh(M))[::-1]
    close(chunked["eigsh lanczos"], top[:3])
    close(chunked["eigsh dense"], top[:3])
    close(chunked["svds lanczos"], np.linalg.svd(PM, compute_uv=False)[:3])
    close(chunked["effective_rank exact"], pr(M))
    close(chunked["alignment exact"], np.sum(M * KM) / (np.linalg.norm(M) * np.linalg.norm(KM)))
    if recurrent:
        B, T, S = traj.state_shape
        close(chunked["effective_rank exact, time"], pr(np.einsum("btsbus->tu", M.reshape(B, T, S, B, T, S))))


# -- UNIT_GRAM_ENTRIES_LIMIT: the exact rules' per-unit Grams in chunks of units -------------------
def _unit_varying_groups(K: Any) -> list:
    """K's groups of sites whose D varies by unit (the others share one Φ: nothing to chunk)."""
    return [g for g in shortcuts._groups(K) if not shortcuts._is_scaled(g)]


#: every registry model with a unit-varying D somewhere (all but the leaky RNNs and a linear layer)
UNIT_VARYING = [
    name
    for name in NAMES
    if _unit_varying_groups(
        ntk.parameter_kernel(build(_make_case("numpy", "float64"), name, 1, 1, 1, 1, 0, False).traj)
    )
]


@pytest.mark.parametrize("units_per_chunk", [1, 2])
@pytest.mark.parametrize("name", UNIT_VARYING)
def test_unit_grams_in_chunks_of_units_give_the_dense_spectrum_trace_and_norm(
    case64_eager, name, units_per_chunk, monkeypatch
):
    K = ntk.parameter_kernel(build(case64_eager, name, 2, 2, 3, 2, 5, True).traj)
    varying = _unit_varying_groups(K)
    per_unit = min(g[0].m * g[0].a * sum(s.g * s.p for s in g) for g in varying)
    limit = units_per_chunk * per_unit
    assert "kpflow.ntk.shortcuts" in lower(monkeypatch, "UNIT_GRAM_ENTRIES_LIMIT", limit)
    for g in varying:  # the chunks tile the units, at most units_per_chunk at a time
        chunks = shortcuts._unit_chunks(g)
        assert [lo for lo, _ in chunks] == [0] + [hi for _, hi in chunks[:-1]]
        assert chunks[-1][1] == g[0].n_units
        assert all(1 <= hi - lo <= units_per_chunk for lo, hi in chunks)
    assert max(len(shortcuts._unit_chunks(g)) for g in varying) > 1
    M = dense(case64_eager, K)
    M = 0.5 * (M + M.T)
    evals = np.sort(np.linalg.eigvalsh(M))[::-1]
    scale = max(float(np.abs(M).max()), 1e-300)
    close(case64_eager.to_numpy(rules.exact_trace(K)), np.trace(M))
    close(case64_eager.to_numpy(rules.exact_fro_norm(K)), np.linalg.norm(M))
    nonzero: list[float] = []
    for group, G, _ in shortcuts.unit_grams(K):
        n_units = group[0].n_units
        w = np.linalg.eigvalsh(case64_eager.to_numpy(G)).ravel()
        if shortcuts._is_scaled(group):
            assert G.shape[0] == 1  # one Gram shared by every unit
            w = np.repeat(w, n_units)
        else:
            assert G.shape[0] == n_units  # one Gram per unit, gathered from every chunk
        nonzero.extend(w)
    ordered = np.sort(np.asarray(nonzero))[::-1]
    nz = evals[evals > 1e-10 * scale]
    np.testing.assert_allclose(ordered[: len(nz)], nz, rtol=1e-9)
    k = min(4, len(nz))
    res = rules.exact_eigsh(K, k)
    assert res is not None
    np.testing.assert_allclose(case64_eager.to_numpy(res.eigenvalues), evals[:k], atol=1e-10 * scale)
    assert float(np.max(case64_eager.to_numpy(res.residual_norms))) <= 1e-9 * scale


# -- the chunk of 256 unit probes ------------------------------------------------------------------
def test_exact_routes_past_256_unit_probes_equal_dense(case64_eager):
    traj = build(case64_eager, "rnn_tanh", 2, 13, 10, 2, 4, True).traj
    N = ntk.global_ntk(traj)
    n = N.size_in
    assert n == 260 > 256
    M, KM = dense(case64_eager, N), dense(case64_eager, N.K)
    # NTK_S = J Jᵀ with p = 140 < n parameters: trace, norm and rank go through the parameter side
    # (kpflow.ntk.jacobian); hiding the factor keeps them on the n = 260 states, past 256 probes.
    hidden = Opaque(N)  # its type (and so its Gram factor) hidden: only the generic routes apply
    res = linalg.trace(hidden, method="exact")
    assert res.num_matvecs == n
    assert linalg.trace(N, method="exact").num_matvecs == N.J.size_in == 140
    close(case64_eager.to_numpy(res.value), np.trace(M))
    close(case64_eager.to_numpy(linalg.fro_norm(hidden, method="exact").value), np.linalg.norm(M))
    close(case64_eager.to_numpy(linalg.effective_rank(hidden, method="exact").value), pr(M))
    expected = np.sum(M * KM) / (np.linalg.norm(M) * np.linalg.norm(KM))
    close(case64_eager.to_numpy(linalg.alignment(N, N.K, method="exact").value), expected)


def test_exact_routes_with_small_unit_blocks_equal_dense(case64_eager, monkeypatch):
    # UNIT_BLOCK = 7 does not divide n = 60 or the kept sizes, so every route meets a ragged
    # last block, the partial-trace route (effective rank along an axis) included.
    holders = lower(monkeypatch, "UNIT_BLOCK", 7)
    assert {"kpflow.linalg.trace", "kpflow.linalg.norms", "kpflow.linalg.rank"} <= set(holders)
    traj = build(case64_eager, "gru", 2, 5, 6, 2, 1, True).traj
    N = ntk.global_ntk(traj)
    M, KM = dense(case64_eager, N), dense(case64_eager, N.K)
    close(case64_eager.to_numpy(linalg.trace(N, method="exact").value), np.trace(M))
    close(case64_eager.to_numpy(linalg.fro_norm(N, method="exact").value), np.linalg.norm(M))
    close(case64_eager.to_numpy(linalg.effective_rank(N, method="exact").value), pr(M))
    T = M.reshape(2, 5, 6, 2, 5, 6)
    along_time = np.einsum("btibsi->ts", T)
    close(case64_eager.to_numpy(linalg.effective_rank(N, keep="time", method="exact").value), pr(along_time))
    expected = np.sum(M * KM) / (np.linalg.norm(M) * np.linalg.norm(KM))
    close(case64_eager.to_numpy(linalg.alignment(N, N.K, method="exact").value), expected)


# -- DENSE_LIMIT: above it, auto picks the iterative routes ----------------------------------------
#: (B, T, H, n_in, seed, with_h0) with fewer parameters than states: NTK_S = J Jᵀ is then low
#: rank, and the randomized estimators are exact at their default budgets (≥ rank + 1 probes).
LOW_RANK = {
    "rnn_tanh": (3, 4, 1, 1, 2, False),
    "rnn_nobias": (2, 4, 1, 2, 1, True),
    "leaky_relu": (2, 3, 2, 1, 1, True),
    "gru_nobias": (2, 4, 1, 1, 3, True),
    "mlp_one_layer": (5, 1, 2, 1, 3, False),
}


@pytest.mark.parametrize("name", sorted(LOW_RANK))
def test_above_a_lowered_dense_limit_auto_runs_the_iterative_routes_and_they_equal_dense(
    case64_eager, name, monkeypatch
):
    built = build(case64_eager, name, *LOW_RANK[name])
    N = ntk.global_ntk(built.traj)
    n = N.size_in
    M, KM, PM = dense(case64_eager, N), dense(case64_eager, N.K), dense(case64_eager, N.P)
    assert np.linalg.matrix_rank(M) < n
    assert linalg.trace(N).method == "exact"  # at the default limit, n is small enough for dense
    holders = lower(monkeypatch, "DENSE_LIMIT", 4)
    assert {"kpflow.linalg._common", "kpflow.linalg.eig", "kpflow.linalg.trace"} <= set(holders)
    lower(monkeypatch, "EXACT_FACTOR", 0)  # alignment's exact route is priced against its budget

    def no_dense(*args: Any) -> None:
        raise AssertionError("eigsh took the dense route above DENSE_LIMIT")

    monkeypatch.setattr(kpflow.linalg.eig, "_dense", no_dense)
    t, f = linalg.trace(N, rng=0), linalg.fro_norm(N, rng=1)
    e, a = linalg.effective_rank(N, rng=2), linalg.alignment(N, N.K, rng=3)
    # with p ≤ DENSE_LIMIT parameters, the exact routes through J (p products) are taken instead
    small = N.J.size_in <= 4
    expected = ("exact", "exact", "exact") if small else ("xnystrace", "hutch++", "estimate")
    assert (t.method, f.method, e.method, a.method) == (*expected, "estimate")
    close(case64_eager.to_numpy(t.value), np.trace(M))
    close(case64_eager.to_numpy(f.value), np.linalg.norm(M))
    close(case64_eager.to_numpy(e.value), pr(M))
    close(case64_eager.to_numpy(a.value), np.sum(M * KM) / (np.linalg.norm(M) * np.linalg.norm(KM)))
    scale = float(np.abs(M).max())
    np.testing.assert_allclose(
        case64_eager.to_numpy(linalg.eigsh(N, 2, rng=4).eigenvalues),
        np.sort(np.linalg.eigvalsh(M))[::-1][:2],
        atol=1e-9 * scale,
    )
    close(case64_eager.to_numpy(linalg.svds(N.P, 2, rng=5).s), np.linalg.svd(PM, compute_uv=False)[:2])


@pytest.mark.skipif("jax" not in BACKENDS, reason="jax is not among the selected backends")
def test_on_jax_probe_chunks_and_unit_chunks_equal_dense(monkeypatch):
    case = _make_case("jax", "float64")
    N = ntk.global_ntk(build(case, "rnn_tanh", 2, 2, 3, 2, 5, True).traj)
    M, KM = dense(case, N), dense(case, N.K)
    lower(monkeypatch, "CHUNK", 5)
    lower(monkeypatch, "UNIT_GRAM_ENTRIES_LIMIT", 1)
    res = linalg.trace(N, method="exact")
    assert res.num_matvecs == N.size_in == 12
    close(case.to_numpy(res.value), np.trace(M))
    close(case.to_numpy(rules.exact_fro_norm(N.K)), np.linalg.norm(KM))
    evals = np.sort(np.linalg.eigvalsh(KM))[::-1]
    close(case.to_numpy(rules.exact_eigsh(N.K, 3).eigenvalues), evals[:3])
