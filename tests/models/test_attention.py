"""SelfAttention: its Kronecker core K and NTK_S against autodiff, on every backend, in float64.

The independent reference is ``torch.nn.MultiheadAttention`` itself, differentiated by
``torch.func.jacrev`` over its own parameters (no kpflow forward code): K = J Jᵀ.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kpflow
import kpflow.linalg as la
from kpflow.models import SelfAttention, Site
from kpflow.models.sites import LinearSite, site_variables
from kpflow.ntk.kernel import KroneckerCoreKernel
from tests.conftest import _make_case, check_meta, examples
from tests.ntk_helpers import rel_err

TOL = 1e-9
needs_torch = pytest.mark.skipif(find_spec("torch") is None, reason="the references need torch")

#: jax compiles every primitive per new shape, so on jax the sizes come from this fixed set
JAX_SIZES = ((1, 1, 1, 1), (2, 3, 2, 2))


def _draw(data: Any, case: Any) -> tuple:
    """(B, N, n_heads, d_k, causal, bias, residual, seed) for ``case``."""
    if case.name == "jax":
        sizes = data.draw(st.sampled_from(JAX_SIZES), label="sizes")
    else:
        size = st.integers(1, 3)
        sizes = data.draw(st.tuples(size, size, st.integers(1, 3), st.integers(1, 2)), label="sizes")
    flags = data.draw(st.tuples(st.booleans(), st.booleans(), st.booleans()), label="causal, bias, residual")
    return (*sizes, *flags, data.draw(st.integers(0, 2**16), label="seed"))


def _problem(B: int, N: int, H: int, dk: int, causal: bool, bias: bool, residual: bool, seed: int) -> tuple:
    model = SelfAttention(H * dk, H, causal=causal, bias=bias, residual=residual)
    rng = np.random.default_rng(seed)
    # scaled up so that the softmax is well away from uniform
    params = {k: 1.5 * np.asarray(v) for k, v in model.init(rng).items()}
    return model, params, rng.standard_normal((B, N, H * dk))


def _run(case: Any, model: SelfAttention, params: dict, x: np.ndarray) -> Any:
    return model.run({k: case.asarray(v) for k, v in params.items()}, case.asarray(x))


def _torch_mha_jacobian(model: SelfAttention, params: dict, x: np.ndarray) -> tuple[dict, np.ndarray]:
    """∂y/∂θ of ``torch.nn.MultiheadAttention`` by jacrev over its own parameters, and J Jᵀ."""
    import torch

    d = model.d_model
    mha = torch.nn.MultiheadAttention(
        d, model.n_heads, bias=model.bias, batch_first=True, dtype=torch.float64
    )
    names = [n for n, _ in mha.named_parameters()]
    assert sorted(names) == sorted(params), (names, sorted(params))  # one-to-one with torch's names
    theta = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    xt = torch.tensor(x, dtype=torch.float64)
    N = x.shape[1]
    mask = torch.triu(torch.ones(N, N, dtype=torch.bool), diagonal=1) if model.causal else None

    def f(p: dict) -> Any:
        # need_weights=True takes torch's explicit softmax path (need_weights=False calls the
        # fused scaled_dot_product_attention, which torch.func batches only with a warning)
        y, _ = torch.func.functional_call(mha, p, (xt, xt, xt), {"attn_mask": mask, "need_weights": True})
        return y + xt if model.residual else y

    jac = torch.func.jacrev(f)(theta)
    n = x.size
    J = torch.cat([jac[k].reshape(n, -1) for k in names], dim=1)
    K = (J @ J.T).reshape(*x.shape, *x.shape)
    return {k: v.reshape(n, -1).numpy() for k, v in jac.items()}, K.numpy()


# -- oracles ---------------------------------------------------------------------------------------
@pytest.mark.properties
@needs_torch
@settings(max_examples=examples(8))
@given(data=st.data())
def test_global_ntk_equals_dense_autodiff_ntk(case64, data):
    model, params, x = _problem(*_draw(data, case64))
    traj = _run(case64, model, params, x)
    N = kpflow.global_ntk(traj)
    got = N.todense()
    check_meta(case64, got)
    ref_case = case64 if case64.name in ("torch", "jax") else _make_case("torch", "float64")
    ref = traj if ref_case is case64 else _run(ref_case, model, params, x)
    expected = ref_case.to_numpy(kpflow.dense_global_ntk(ref))
    assert rel_err(case64.to_numpy(got), expected) <= TOL


@pytest.mark.properties
@needs_torch
@settings(max_examples=examples(8))
@given(data=st.data())
def test_parameter_kernel_equals_torch_multihead_attention_jacobian_gram(case64, data):
    model, params, x = _problem(*_draw(data, case64))
    traj = _run(case64, model, params, x)
    got = kpflow.parameter_kernel(traj).todense()
    check_meta(case64, got)
    _, expected = _torch_mha_jacobian(model, params, x)
    assert rel_err(case64.to_numpy(got), expected) <= TOL
    # a single layer is feed-forward: P = I, so NTK_S = K
    P = kpflow.propagator(traj)
    V = case64.randn(2, *traj.state_shape, seed=1)
    case64.assert_close(P.matmat(V), case64.to_numpy(V), rtol=0.0)


@needs_torch
@pytest.mark.parametrize("causal", [False, True])
def test_key_bias_contributes_exactly_zero(causal):
    model, params, x = _problem(2, 3, 2, 2, causal, True, True, 7)
    d = model.d_model
    jac, full = _torch_mha_jacobian(model, params, x)
    # torch's own Jacobian of y with respect to the key bias (rows d:2d of in_proj_bias)
    J_kb = jac["in_proj_bias"][:, d : 2 * d]
    J_qb = jac["in_proj_bias"][:, :d]
    assert np.linalg.norm(J_kb) <= 1e-14 * np.linalg.norm(J_qb)
    assert np.linalg.norm(J_kb @ J_kb.T) <= 1e-14 * np.linalg.norm(full)
    # kpflow's key site, with a column of ones for the bias added, gives the same K
    case = _make_case("numpy", "float64")
    traj = _run(case, model, params, x)
    q, k, v, o = traj.sites
    with_bias = LinearSite(
        "in_proj.k+bias",
        site_variables([k.variables], 1),
        state_shape=traj.state_shape,
        width=k.width,
        apply=k.spec.apply,
        adjoint=k.spec.adjoint,
        operands=k.operands,
        static=k.static,
    )
    K = KroneckerCoreKernel([q, k, v, o], like=traj.states).todense()
    K_b = KroneckerCoreKernel([q, with_bias, v, o], like=traj.states).todense()
    assert rel_err(K_b, K) <= 1e-14
    # and directly: D_K maps a key tangent constant over the tokens to zero
    U = np.broadcast_to(np.random.default_rng(0).standard_normal((3, 2, 1, d)), (3, 2, 3, d))
    DU = k.apply_D(np.reshape(U, (3, 6, d)))
    assert np.linalg.norm(DU) <= 1e-13 * np.linalg.norm(U)


# -- the sites -------------------------------------------------------------------------------------
@pytest.mark.properties
@settings(max_examples=examples(6))
@given(data=st.data())
def test_linear_sites_satisfy_the_adjoint_identity(case64, data):
    model, params, x = _problem(*_draw(data, case64))
    traj = _run(case64, model, params, x)
    assert [type(s) for s in traj.sites] == [LinearSite, LinearSite, LinearSite, Site]
    for i, site in enumerate(traj.sites):
        U = case64.randn(2, site.m, site.width, seed=i)
        V = case64.randn(2, *traj.state_shape, seed=10 + i)
        DU, DtV = site.apply_D(U), site.apply_DT(V)
        check_meta(case64, DU)
        check_meta(case64, DtV)
        lhs = float(np.sum(case64.to_numpy(DU) * case64.to_numpy(V)))
        rhs = float(np.sum(case64.to_numpy(U) * case64.to_numpy(DtV)))
        scale = np.linalg.norm(case64.to_numpy(DU)) * np.linalg.norm(case64.to_numpy(V))
        assert abs(lhs - rhs) <= 1e-12 * (scale + 1e-300), site.name


def test_exact_rules_fall_back_and_still_agree_with_the_dense_kernel():
    case = _make_case("numpy", "float64")
    model, params, x = _problem(2, 3, 2, 2, False, True, True, 3)
    traj = _run(case, model, params, x)
    K = kpflow.parameter_kernel(traj)
    Kd = np.reshape(K.todense(), (12 * 2, 12 * 2))
    assert la.trace(K).value == pytest.approx(np.trace(Kd), rel=1e-12)
    assert la.fro_norm(K).value == pytest.approx(np.linalg.norm(Kd), rel=1e-12)
    top = la.eigsh(K, 3).eigenvalues
    np.testing.assert_allclose(top, np.linalg.eigvalsh(Kd)[::-1][:3], rtol=1e-10)
    dense = np.reshape(K.todense(), (2, 3, 4, 2, 3, 4))
    np.testing.assert_allclose(K.partial_trace((2,)).todense(), np.einsum("abicdi->abcd", dense), rtol=1e-12)
    # NTK_S = J_S J_Sᵀ through the state Jacobian, whose parameter side holds the sites' entries
    J = kpflow.state_jacobian(traj)
    Jd = np.reshape(J.todense(), (24, -1))
    np.testing.assert_allclose(Jd @ Jd.T, Kd, rtol=1e-12, atol=1e-12 * np.abs(Kd).max())


# -- errors ----------------------------------------------------------------------------------------
def test_errors_name_the_call_the_argument_and_what_came():
    with pytest.raises(
        ValueError, match=r"SelfAttention: expected d_model divisible by n_heads, got d_model=5"
    ):
        SelfAttention(5, 2)
    with pytest.raises(ValueError, match=r"SelfAttention: expected n_heads to be a positive int, got 0"):
        SelfAttention(4, 0)
    model = SelfAttention(4, 2)
    params = model.init(0)
    for bad in (np.ones((3, 4)), np.ones((2, 3, 5)), np.ones((0, 3, 4)), np.ones((2, 0, 4))):
        with pytest.raises(ValueError, match=r"SelfAttention.run: expected x of shape \(B, N, d_model=4\)"):
            model.run(params, bad)
    with pytest.raises(ValueError, match=r"SelfAttention.run: expected h0=None"):
        model.run(params, np.ones((2, 3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"missing the key\(s\) \['out_proj.bias'\]"):
        model.run({k: v for k, v in params.items() if k != "out_proj.bias"}, np.ones((2, 3, 4)))
    with pytest.raises(TypeError, match=r"SelfAttention.init: expected rng"):
        model.init("seed")
    traj = model.run(params, np.ones((2, 3, 4)))
    with pytest.raises(IndexError, match=r"AttentionTrajectory: one block"):
        traj.step_jvp(1, traj.states[None])
    site = traj.sites[0]
    with pytest.raises(TypeError, match=r"LinearSite\('in_proj.q'\): D_w is a general linear map"):
        site.dense_unit_D()
    from kpflow.ntk.shortcuts import unit_grams

    with pytest.raises(ValueError, match=r"unit_grams: the kernel has a site with a general D_w"):
        unit_grams(kpflow.parameter_kernel(traj))
    fn = site.spec.apply
    with pytest.raises(ValueError, match=r"LinearSite\('w'\): expected width \(k_w\) to be a positive int"):
        LinearSite("w", np.ones((6, 2)), state_shape=(2, 3, 4), width=0, apply=fn, adjoint=fn)
    with pytest.raises(TypeError, match=r"LinearSite\('w'\): expected a hashable static tuple"):
        LinearSite("w", np.ones((6, 2)), state_shape=(2, 3, 4), width=4, apply=fn, adjoint=fn, static=([1],))
    with pytest.raises(TypeError, match=r"LinearSite\('w'\): expected apply and adjoint to be callables"):
        LinearSite("w", np.ones((6, 2)), state_shape=(2, 3, 4), width=4, apply=None, adjoint=fn)  # type: ignore[arg-type]
