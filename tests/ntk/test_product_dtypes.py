"""An NTK_S product keeps the caller's dtype all the way through, and the blocks it glues are exact.

A float32 product on numpy must make no dtype round trip: no ``astype`` call (through the
namespace or the array method) and no float64 temporary.  Every array derived from the probe
block is tracked by an ndarray subclass, so a float64 intermediate anywhere in P, K or Pᵀ
(a float64 scalar, a ``zeros`` without dtype) shows up in the recorded dtypes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

import kpflow
from kpflow.models import Site
from kpflow.models.sites import embed_columns
from kpflow.ntk import KroneckerCoreKernel
from tests.conftest import BACKENDS
from tests.ntk_helpers import NAMES, host_problem

needs_numpy = pytest.mark.skipif("numpy" not in BACKENDS, reason="numpy is not among the selected backends")


class Tracked(np.ndarray):
    """An ndarray that records the dtype of every array derived from it and its astype calls."""

    dtypes: ClassVar[set[np.dtype]] = set()
    astype_calls: ClassVar[int] = 0
    __array_priority__ = 10.0  # concatenate and stack of mixed inputs return the subclass

    def __array_finalize__(self, obj: Any) -> None:
        Tracked.dtypes.add(self.dtype)

    def astype(self, *args: Any, **kwargs: Any) -> Any:
        Tracked.astype_calls += 1
        return super().astype(*args, **kwargs)


def float32_trajectory(name: str) -> Any:
    model, params, x, h0 = host_problem(name, 3, 4, 5, 2, 0, True)
    f32 = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    return model.run(f32, x.astype(np.float32), None if h0 is None else h0.astype(np.float32))


@needs_numpy
@pytest.mark.parametrize("name", NAMES)
def test_a_float32_product_makes_no_astype_call_and_no_float64_temporary(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    traj = float32_trajectory(name)
    N = kpflow.global_ntk(traj)
    _ = traj.sites  # built once per trajectory, outside the product
    X = np.random.default_rng(1).standard_normal((3, *N.shape_in)).astype(np.float32)
    expected = N.matmat(X)

    namespace_calls = []
    astype = traj.xp.astype

    def counting_astype(*args: Any, **kwargs: Any) -> Any:
        namespace_calls.append(args)
        return astype(*args, **kwargs)

    monkeypatch.setattr(traj.xp, "astype", counting_astype)
    Tracked.dtypes, Tracked.astype_calls = set(), 0
    got = N.matmat(X.view(Tracked))

    assert isinstance(got, Tracked)  # the tracking reached the end of P K Pᵀ
    assert namespace_calls == []
    assert Tracked.astype_calls == 0
    assert Tracked.dtypes == {np.dtype(np.float32)}, f"intermediate dtypes {Tracked.dtypes}"
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(got), expected)  # tracking changes nothing


def dense_embed(blocks: dict[tuple[int, int], np.ndarray], size: int) -> np.ndarray:
    k, m = next(iter(blocks.values())).shape[:2]
    out = np.zeros((k, m, size))
    for (lo, hi), Y in blocks.items():
        out[:, :, lo:hi] += Y
    return out


@needs_numpy
@pytest.mark.parametrize(
    "columns",
    [
        [(0, 5)],  # one block over the whole state: a reshape
        [(1, 3)],  # zeros on both sides
        [(3, 5), (0, 2)],  # disjoint, out of order, a gap between
        [(0, 2), (2, 5)],  # a partition
        [(0, 4), (1, 5)],  # overlapping: added
    ],
)
def test_embed_columns_equals_a_dense_scatter_add(columns: list[tuple[int, int]]) -> None:
    rng = np.random.default_rng(0)
    blocks = {c: rng.standard_normal((2, 3, c[1] - c[0])) for c in columns}
    got = embed_columns(blocks, 5, (3, 5))
    np.testing.assert_array_equal(got, dense_embed(blocks, 5).reshape(2, 3, 5))


@needs_numpy
def test_the_kronecker_core_adds_the_terms_of_sites_on_shared_and_overlapping_columns() -> None:
    """K = Σ_w D_w (A_w A_wᵀ ⊗ I) D_wᵀ as a dense matrix, for sites whose columns overlap."""
    rng = np.random.default_rng(0)
    m, S = 4, 5
    A1, A2, A3 = (rng.standard_normal((m, p)) for p in (2, 3, 1))
    D1 = rng.standard_normal((m, 2, 2, 3))  # a = 2 rows (columns 1..5), g = 3 gates
    sites = [
        Site("a", A1, state_shape=(m, S), unit_D=D1, columns=(1, 5)),
        Site("b", A2, state_shape=(m, S), scale=0.5, width=3, columns=(0, 3)),
        Site("c", A3, state_shape=(m, S), scale=1.0, width=3, columns=(0, 3)),
    ]
    K = KroneckerCoreKernel(sites, like=A1)

    def dense_D(site: Site) -> np.ndarray:
        """D_w as an (m·S, m·width) matrix, rows (s, state column), columns (s, gate-major index)."""
        lo, _ = site.columns
        unit = np.asarray(site.dense_unit_D())
        D = np.zeros((m, S, m, site.width))
        for s in range(m):
            for i in range(site.n_units):
                for j in range(site.a):
                    for q in range(site.g):
                        D[s, lo + j * site.n_units + i, s, q * site.n_units + i] = unit[s, i, j, q]
        return D.reshape(m * S, m * site.width)

    dense = sum(
        dense_D(s) @ np.kron(s.variables @ s.variables.T, np.eye(s.width)) @ dense_D(s).T for s in sites
    )
    np.testing.assert_allclose(K.todense().reshape(m * S, m * S), dense, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif("jax" not in BACKENDS, reason="jax is not among the selected backends")
@pytest.mark.parametrize("name", ["gru", "lstm", "rnn_tanh", "leaky_tanh_bias"])
def test_on_jax_trajectories_of_the_same_shapes_share_the_compiled_steps_and_kernel(name: str) -> None:
    """P, Pᵀ (each a scan over all steps) and K run as one compiled program each, shared by trajectories.

    Compilations are counted by jax's own trace events (named after the traced function), not
    by the programs' cache sizes: jax keeps executables in one LRU shared by the whole process,
    so a cache size depends on what other tests ran before.
    """
    import jax.monitoring
    import jax.numpy as jnp

    from kpflow.ntk import kernel
    from kpflow.ntk.propagator import _recursion

    traced: list[str] = []

    def on_trace(event: str, *_: Any, **kwargs: Any) -> None:
        if event == "/jax/core/compile/jaxpr_trace_duration":
            traced.append(str(kwargs.get("fun_name", "")))

    def product(seed: int) -> tuple[Any, Any, list[Any]]:
        # sizes no other test uses, so the first product must trace each program afresh
        model, params, x, h0 = host_problem(name, 3, 7, 5, 2, seed, True)
        traj = model.run({k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(x), jnp.asarray(h0))
        N = kpflow.global_ntk(traj)
        X = jnp.asarray(np.random.default_rng(seed).standard_normal((3, *N.shape_in)))
        k = traj.step_kernel()
        scan = kernel.scan_of(traj.xp)
        programs = [
            kernel.compiled(traj.xp, _recursion, scan, action, k.static, adjoint)
            for action, adjoint in ((k.jvp, False), (k.vjp, True))
        ]
        specs = tuple(site.spec for site in traj.sites)
        programs.append(kernel.compiled(traj.xp, kernel._core_matmat, specs, N.shape_in))
        del traced[:]
        got = N.matmat(X)
        ours = [f for f in traced if f in ("_recursion", "_core_matmat")]
        # the same product eagerly: each step through the trajectory, K site by site
        W = [X[:, :, -1]]
        for t in range(traj.n_steps - 2, -1, -1):
            W.append(X[:, :, t] + traj.step_vjp(t + 1, W[-1]))
        KW = 0.0
        for site in traj.sites:
            A = site.variables
            KW = KW + site.apply_D(A @ (A.T @ site.apply_DT(jnp.stack(W[::-1], axis=2))))
        Y = [KW[:, :, 0]]
        for t in range(1, traj.n_steps):
            Y.append(KW[:, :, t] + traj.step_jvp(t, Y[-1]))
        return got, jnp.stack(Y, axis=2), programs, ours

    jax.monitoring.register_event_duration_secs_listener(on_trace)
    try:
        got, eager, programs, first = product(0)
        got2, eager2, again, second = product(1)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_trace)
    np.testing.assert_allclose(np.asarray(got), np.asarray(eager), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(got2), np.asarray(eager2), rtol=1e-12, atol=1e-12)
    assert all(p is not None for p in programs)
    # the first product traced P, Pᵀ and K once each (not once per step of the 7)
    assert sorted(first) == ["_core_matmat", "_recursion", "_recursion"]
    assert [p is q for p, q in zip(programs, again, strict=True)] == [True] * 3
    assert second == []  # nothing traced (so nothing compiled) for the new trajectory


@pytest.mark.skipif("jax" not in BACKENDS, reason="jax is not among the selected backends")
@pytest.mark.parametrize("name", ["gru", "lstm", "mlp_tanh"])
def test_on_jax_F_and_its_adjoint_are_one_compiled_program_each_shared_by_trajectories(name: str) -> None:
    """The parameter map F of J_S = P F (and Fᵀ) runs as one compiled program each on jax.

    Traces are counted by jax's own events, as in the test above; the products equal F built
    site by site, eagerly.
    """
    import jax.monitoring
    import jax.numpy as jnp

    traced: list[str] = []

    def on_trace(event: str, *_: Any, **kwargs: Any) -> None:
        if event == "/jax/core/compile/jaxpr_trace_duration":
            traced.append(str(kwargs.get("fun_name", "")))

    def products(seed: int) -> tuple[list[Any], list[Any], list[str]]:
        # sizes no other test uses, so the first product must trace each program afresh
        model, params, x, h0 = host_problem(name, 3, 6, 5, 2, seed, True)
        h0 = None if h0 is None else jnp.asarray(h0)
        traj = model.run({k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(x), h0)
        F = kpflow.state_jacobian(traj).F
        rng = np.random.default_rng(seed)
        X = jnp.asarray(rng.standard_normal((2, *F.shape_in)))
        Y = jnp.asarray(rng.standard_normal((2, *F.shape_out)))
        del traced[:]
        got = [F.matmat(X), F.T.matmat(Y)]
        ours = [f for f in traced if f in ("_parameter_matmat", "_parameter_rmatmat")]
        # the same products site by site
        blocks = F.split(X)
        FX = sum(
            site.apply_D(site.variables @ blocks[n]) for n, site in zip(F.site_names, F.sites, strict=True)
        )
        FtY = F.join(
            {n: site.variables.T @ site.apply_DT(Y) for n, site in zip(F.site_names, F.sites, strict=True)}
        )
        return got, [FX, FtY], ours

    jax.monitoring.register_event_duration_secs_listener(on_trace)
    try:
        got, eager, first = products(0)
        got2, eager2, second = products(1)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_trace)
    for g, e in zip(got + got2, eager + eager2, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-12, atol=1e-12)
    assert sorted(first) == ["_parameter_matmat", "_parameter_rmatmat"]
    assert second == []  # nothing traced (so nothing compiled) for the new trajectory
