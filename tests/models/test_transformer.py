"""TransformerEncoder: NTK_S and K against autodiff, and ``from_module`` for torch's attention modules.

The independent reference is torch itself: ``nn.TransformerEncoderLayer`` /
``nn.TransformerEncoder``, whose per-block states are computed here by calling the layer's
own submodules (``self_attn``, ``linear1``, ``norm1``, ...) through
``torch.func.functional_call`` in torch's order (no kpflow forward code), and differentiated
by ``torch.func.jacrev``; the last block is also checked against the module's own output.
"""

from __future__ import annotations

import math
from importlib.util import find_spec
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kpflow
from kpflow.models import TransformerEncoder
from kpflow.models.sites import LinearSite
from kpflow.models.transformer import erf, gelu
from kpflow.ntk.kernel import KroneckerCoreKernel
from tests.conftest import _make_case, check_meta, examples
from tests.ntk_helpers import rel_err

TOL = 1e-9
needs_torch = pytest.mark.skipif(find_spec("torch") is None, reason="the references need torch")
#: torch.func batches the fused attention of nn.TransformerEncoderLayer with this warning
SDPA_WARNING = "ignore:There is a performance drop:UserWarning"

#: jax compiles every primitive per new shape, so on jax the sizes come from this fixed set
JAX_SIZES = ((1, 1, 1, 1, 1), (2, 3, 2, 1, 3))


def _draw(data: Any, case: Any) -> dict:
    if case.name == "jax":
        B, N, H, dk, d_ff = data.draw(st.sampled_from(JAX_SIZES), label="sizes")
    else:
        size = st.integers(1, 3)
        B, N, H, dk, d_ff = data.draw(
            st.tuples(st.integers(1, 2), size, st.integers(1, 2), st.integers(1, 2), size), label="sizes"
        )
    flags = data.draw(
        st.fixed_dictionaries(
            {
                "norm_first": st.booleans(),
                "activation": st.sampled_from(["relu", "gelu"]),
                "causal": st.booleans(),
                "bias": st.booleans(),
                "positional": st.sampled_from([None, "sinusoidal", "learned"]),
                "final_norm": st.booleans(),
            }
        ),
        label="flags",
    )
    seed = data.draw(st.integers(0, 2**16), label="seed")
    return {"B": B, "N": N, "H": H, "dk": dk, "d_ff": d_ff, "seed": seed, **flags}


def _problem(B: int, N: int, H: int, dk: int, d_ff: int, seed: int, **flags: Any) -> tuple:
    model = TransformerEncoder(H * dk, H, d_ff, 2, max_len=N + 1, **flags)
    rng = np.random.default_rng(seed)
    params = {k: np.asarray(v) for k, v in model.init(rng).items()}
    # attention weights scaled up so that the softmax is well away from uniform
    params = {k: 1.5 * v if "self_attn" in k else v for k, v in params.items()}
    return model, params, rng.standard_normal((B, N, H * dk))


def _run(case: Any, model: Any, params: dict, x: np.ndarray) -> Any:
    return model.run({k: case.asarray(v) for k, v in params.items()}, case.asarray(x))


# -- the torch reference: torch's submodules in torch's order --------------------------------------
def _torch_module(model: TransformerEncoder, params: dict, *, layer_only: bool = False) -> Any:
    """The torch module with kpflow's parameters (a TransformerEncoderLayer when ``layer_only``)."""
    import torch

    layer = torch.nn.TransformerEncoderLayer(
        model.d_model,
        model.n_heads,
        model.d_ff,
        dropout=0.0,
        activation=model.activation,
        batch_first=True,
        norm_first=model.norm_first,
        bias=model.bias,
        dtype=torch.float64,
    )
    if layer_only:
        module = layer
        names = {k: k.removeprefix("layers.0.") for k in params}
    else:
        norm = (
            torch.nn.LayerNorm(model.d_model, bias=model.bias, dtype=torch.float64)
            if model.final_norm
            else None
        )
        module = torch.nn.TransformerEncoder(layer, model.n_layers, norm=norm, enable_nested_tensor=False)
        names = {k: k for k in params}
    with torch.no_grad():
        for k, v in params.items():
            module.get_parameter(names[k]).copy_(torch.as_tensor(v))
    return module


def _torch_states(module: Any, theta: dict, x: Any, causal: bool, fixed: Any = None) -> Any:
    """The residual stream after every block, (B, S, N, d), by torch's own submodules.

    With ``fixed`` (states of shape (B, S, N, d)) each block reads the given previous state
    instead: the one-step map whose Jacobian in θ is J_θ (K = J_θ J_θᵀ).
    """
    import torch
    from torch.func import functional_call

    layers = [module] if isinstance(module, torch.nn.TransformerEncoderLayer) else list(module.layers)
    prefixes = (
        [""] if len(layers) == 1 and layers[0] is module else [f"layers.{l}." for l in range(len(layers))]
    )
    N = x.shape[1]
    mask = torch.triu(torch.full((N, N), -math.inf, dtype=x.dtype), diagonal=1) if causal else None

    def call(sub: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        own = {k[len(name) + 1 :]: v for k, v in theta.items() if k.startswith(name + ".")}
        return functional_call(sub, own, args, kwargs)

    out, z = [], x
    for layer, pre in zip(layers, prefixes, strict=True):

        def sa(a: Any, layer: Any = layer, pre: str = pre) -> Any:
            y, _ = call(layer.self_attn, pre + "self_attn", a, a, a, attn_mask=mask, need_weights=True)
            return y

        def ff(a: Any, layer: Any = layer, pre: str = pre) -> Any:
            return call(
                layer.linear2, pre + "linear2", layer.activation(call(layer.linear1, pre + "linear1", a))
            )

        def n1(a: Any, layer: Any = layer, pre: str = pre) -> Any:
            return call(layer.norm1, pre + "norm1", a)

        def n2(a: Any, layer: Any = layer, pre: str = pre) -> Any:
            return call(layer.norm2, pre + "norm2", a)

        for block in ("sa", "ff"):
            if fixed is not None and out:
                z = fixed[:, len(out) - 1]
            if block == "sa":
                z = z + sa(n1(z)) if layer.norm_first else n1(z + sa(z))
            else:
                z = z + ff(n2(z)) if layer.norm_first else n2(z + ff(z))
            out.append(z)
    if getattr(module, "norm", None) is not None:
        if fixed is not None:
            z = fixed[:, len(out) - 1]
        out.append(call(module.norm, "norm", z))
    return torch.stack(out, dim=1)


def _jacobian_gram(f: Any, theta: dict, names: list[str], shape: tuple) -> np.ndarray:
    import torch

    jac = torch.func.jacrev(f)(theta)
    n = int(np.prod(shape))
    J = torch.cat([jac[k].reshape(n, -1) for k in names], dim=1)
    return (J @ J.T).reshape(*shape, *shape).numpy()


# -- oracles ---------------------------------------------------------------------------------------
@pytest.mark.properties
@needs_torch
@settings(max_examples=examples(6))
@given(data=st.data())
def test_global_ntk_and_kernel_equal_the_dense_autodiff_ones(case64, data):
    model, params, x = _problem(**_draw(data, case64))
    traj = _run(case64, model, params, x)
    got = kpflow.global_ntk(traj).todense()
    check_meta(case64, got)
    ref_case = case64 if case64.name in ("torch", "jax") else _make_case("torch", "float64")
    ref = traj if ref_case is case64 else _run(ref_case, model, params, x)
    assert rel_err(case64.to_numpy(got), ref_case.to_numpy(kpflow.dense_global_ntk(ref))) <= TOL
    K = case64.to_numpy(kpflow.parameter_kernel(traj).todense())
    K_auto = ref_case.to_numpy(kpflow.parameter_kernel(ref, method="autodiff").todense())
    assert rel_err(K, K_auto) <= TOL


CONFIGS = [(nf, act, causal) for nf in (False, True) for act in ("relu", "gelu") for causal in (False, True)]


@needs_torch
@pytest.mark.filterwarnings(SDPA_WARNING)
@pytest.mark.parametrize("layer_only", [True, False], ids=["layer", "encoder"])
@pytest.mark.parametrize(("norm_first", "activation", "causal"), CONFIGS)
def test_global_ntk_of_torch_modules_equals_jacrev_of_their_submodules(
    layer_only, norm_first, activation, causal
):
    import torch
    from kpflow.backends.torch import from_module

    flags = {"norm_first": norm_first, "activation": activation, "causal": causal}
    problem = _problem(2, 3, 2, 2, 3, 11, final_norm=norm_first and not layer_only, **flags)
    host_model, host_params, host_x = problem
    if layer_only:
        host_model = TransformerEncoder(4, 2, 3, 1, **flags)
        host_params = {k: v for k, v in host_params.items() if k.startswith("layers.0.")}
    module = _torch_module(host_model, host_params, layer_only=layer_only)
    model, params = from_module(module, causal=causal, detach=True)
    assert repr(model) == repr(host_model)
    x = torch.tensor(host_x)
    traj = model.run(params, x)
    theta = {k: p.detach().clone() for k, p in module.named_parameters()}
    names = list(theta)
    # the states: torch's submodules, and the module's own output for the last block
    states = _torch_states(module, theta, x, causal)
    assert float((traj.states - states).abs().max()) <= 1e-13
    mask = torch.nn.Transformer.generate_square_subsequent_mask(3, dtype=torch.float64) if causal else None
    with torch.no_grad():
        assert float((traj.states[:, -1] - module(x, mask, is_causal=causal)).abs().max()) <= 1e-13
    # NTK_S of every block, and of the output alone through the module itself
    got = kpflow.global_ntk(traj).todense().numpy()
    expected = _jacobian_gram(lambda th: _torch_states(module, th, x, causal), theta, names, traj.state_shape)
    assert rel_err(got, expected) <= TOL
    last = got[:, -1][:, :, :, :, -1]

    def output(th: dict) -> Any:
        kwargs = {"src_mask" if layer_only else "mask": mask, "is_causal": causal}
        return torch.func.functional_call(module, th, (x,), kwargs)

    assert rel_err(last, _jacobian_gram(output, theta, names, tuple(x.shape))) <= TOL
    # K: the one-step map, each block reading the given previous state
    fixed = traj.states.detach()
    K_ref = _jacobian_gram(
        lambda th: _torch_states(module, th, x, causal, fixed), theta, names, traj.state_shape
    )
    assert rel_err(kpflow.parameter_kernel(traj).todense().numpy(), K_ref) <= TOL


@needs_torch
@pytest.mark.parametrize("norm_first", [False, True])
def test_layer_norm_scale_and_shift_terms_equal_jacrev_of_the_norm_parameters_alone(norm_first):
    import torch

    model, params, x = _problem(2, 3, 2, 1, 3, 5, norm_first=norm_first, activation="gelu", final_norm=True)
    module = _torch_module(model, params)
    traj = _run(_make_case("numpy", "float64"), model, params, x)
    xt = torch.tensor(x)
    fixed = torch.tensor(traj.states)
    theta = {k: p.detach().clone() for k, p in module.named_parameters()}
    norm_sites = [s for s in traj.sites if ".norm" in "." + s.name]
    assert [s.name for s in norm_sites] == [
        f"layers.{l}.norm{i}.{w}" for l in range(2) for i in (1, 2) for w in ("weight", "bias")
    ] + ["norm.weight", "norm.bias"]
    for which in ("weight", "bias"):
        sites = [s for s in norm_sites if s.name.endswith(which)]
        names = [s.name for s in sites]
        rest = {k: v for k, v in theta.items() if k not in names}

        def f(th: dict, rest: dict = rest) -> Any:
            return _torch_states(module, {**rest, **th}, xt, False, fixed)

        expected = _jacobian_gram(f, {k: theta[k] for k in names}, names, traj.state_shape)
        got = KroneckerCoreKernel(sites, like=traj.states).todense()
        assert rel_err(got, expected) <= TOL, which
        # γ's site variable is the constant 1: G = 11ᵀ (its A_w is a column of ones)
        for s in sites:
            assert s.p == 1 and bool(np.all(s.variables == 1.0))


# -- the sites and the steps -----------------------------------------------------------------------
@pytest.mark.properties
@settings(max_examples=examples(4))
@given(data=st.data())
def test_sites_and_steps_satisfy_the_adjoint_identity(case64, data):
    model, params, x = _problem(**_draw(data, case64))
    traj = _run(case64, model, params, x)
    assert all(isinstance(s, LinearSite) for s in traj.sites)

    def check(DU: Any, U: Any, V: Any, DtV: Any, what: str) -> None:
        check_meta(case64, DU)
        check_meta(case64, DtV)
        a, b = case64.to_numpy(DU), case64.to_numpy(V)
        u, c = case64.to_numpy(U), case64.to_numpy(DtV)
        lhs, rhs = float(np.sum(a * b)), float(np.sum(u * c))
        # d = 1 makes every LayerNorm's Jacobian zero: D is zero up to rounding, hence the floor
        scale = np.linalg.norm(a) * np.linalg.norm(b) + np.linalg.norm(u) * np.linalg.norm(c)
        assert abs(lhs - rhs) <= 1e-12 * scale + 1e-15 * np.linalg.norm(u) * np.linalg.norm(b), what

    for i, site in enumerate(traj.sites):
        U = case64.randn(2, site.m, site.width, seed=i)
        V = case64.randn(2, *traj.state_shape, seed=100 + i)
        check(site.apply_D(U), U, V, site.apply_DT(V), site.name)
    for t in range(1, traj.n_steps):
        v = case64.randn(2, traj.state_shape[0], *traj.state_shape[2:], seed=t)
        w = case64.randn(2, *v.shape[1:], seed=50 + t)
        check(traj.step_jvp(t, v), v, w, traj.step_vjp(t, w), f"step {t}")


def test_erf_and_gelu_agree_with_the_reference_to_rounding():
    u = np.linspace(-9.0, 9.0, 3601)
    ref = np.array([math.erf(v) for v in u])
    assert np.max(np.abs(erf(np, u) - ref)) <= 3e-15
    g = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in u])
    assert np.max(np.abs(gelu(np, u) - g)) <= 3e-14


@needs_torch
def test_gelu_derivative_is_the_exact_one():
    import torch

    from kpflow.models.transformer import _gelu_derivative

    u = torch.linspace(-9.0, 9.0, 721, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(torch.nn.functional.gelu(u).sum(), u)
    assert float((_gelu_derivative(np, u.detach().numpy()) - grad.numpy()).__abs__().max()) <= 1e-14


# -- from_module -----------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("causal", [False, True])
def test_multihead_attention_maps_to_self_attention_without_residual(causal):
    import torch
    from kpflow.backends.torch import from_module

    from kpflow.models import SelfAttention

    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(4, 2, batch_first=True, dtype=torch.float64)
    model, params = from_module(mha, causal=causal)
    assert isinstance(model, SelfAttention) and not model.residual and model.causal == causal
    assert params["in_proj_weight"] is mha.in_proj_weight  # detach=False: the Parameter itself
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    mask = torch.triu(torch.ones(3, 3, dtype=torch.bool), diagonal=1) if causal else None
    with torch.no_grad():
        traj = model.run(params, x)
        y, _ = mha(x, x, x, attn_mask=mask)
    assert float((traj.states - y).abs().max()) <= 1e-14
    _, detached = from_module(mha, detach=True)
    assert not detached["out_proj.weight"].requires_grad
    assert detached["out_proj.weight"].data_ptr() == mha.out_proj.weight.data_ptr()


@needs_torch
def test_encoder_params_share_the_module_storage():
    import torch
    from kpflow.backends.torch import from_module

    layer = torch.nn.TransformerEncoderLayer(4, 2, 3, dropout=0.0, batch_first=True, dtype=torch.float64)
    enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    model, params = from_module(enc)
    assert sorted(params) == sorted(n for n, _ in enc.named_parameters())
    assert params["layers.1.norm2.weight"] is enc.layers[1].norm2.weight
    _, params = from_module(layer, detach=True)
    assert params["layers.0.linear1.weight"].data_ptr() == layer.linear1.weight.data_ptr()
    # detach=False: gradients through kpflow reach the module
    model, params = from_module(layer)
    model.run(params, torch.randn(1, 2, 4, dtype=torch.float64)).states.sum().backward()
    assert layer.norm1.weight.grad is not None


def _refusals() -> list:
    if find_spec("torch") is None:
        return []
    import torch

    nn, F64 = torch.nn, torch.float64

    def layer(**kw: Any) -> Any:
        options = {"dropout": 0.0, "batch_first": True, "dtype": F64, **kw}
        return nn.TransformerEncoderLayer(4, 2, 3, **options)

    def encoder(norm: Any = None, **kw: Any) -> Any:
        return nn.TransformerEncoder(layer(**kw), 2, norm=norm, enable_nested_tensor=False)

    def no_linear1_bias() -> Any:
        m = layer()
        m.linear1.bias = None
        return m

    return [
        (lambda: nn.MultiheadAttention(4, 2, dtype=F64), r"batch_first=False"),
        (lambda: nn.MultiheadAttention(4, 2, dropout=0.1, batch_first=True), r"dropout=0.1"),
        (lambda: nn.MultiheadAttention(4, 2, kdim=3, vdim=3, batch_first=True), r"kdim=3, vdim=3"),
        (lambda: nn.MultiheadAttention(4, 2, add_bias_kv=True, batch_first=True), r"add_bias_kv=True"),
        (lambda: nn.MultiheadAttention(4, 2, add_zero_attn=True, batch_first=True), r"add_zero_attn=True"),
        (lambda: layer(dropout=0.1), r"self_attn.dropout=0.1.*dropout.p=0.1"),
        (lambda: layer(batch_first=False), r"self_attn.batch_first=False"),
        (lambda: layer(activation=torch.tanh), r"activation=.*custom callable"),
        (lambda: layer(activation=nn.GELU(approximate="tanh")), r"tanh-approximate GELU"),
        (no_linear1_bias, r"biases \[.*\] present but \['linear1.bias'\] absent"),
        (lambda: encoder(norm=nn.LayerNorm(4, eps=1e-3, dtype=F64)), r"norm.eps=0.001"),
        (lambda: encoder(norm=nn.RMSNorm(4, dtype=F64)), r"norm=RMSNorm"),
        (
            lambda: encoder(norm=nn.LayerNorm(4, bias=False, dtype=F64)),
            r"norm.bias=absent but the layers' bias=True",
        ),
        (lambda: encoder(layer_norm_eps=1e-6, norm=nn.LayerNorm(4, dtype=F64)), r"norm.eps=1e-05"),
    ]


@needs_torch
@pytest.mark.parametrize(("factory", "message"), _refusals())
def test_unsupported_attention_settings_are_named(factory, message):
    from kpflow.backends.torch import from_module

    with pytest.raises(ValueError, match=r"from_module: unsupported \w+ setting\(s\): .*" + message):
        from_module(factory())


@needs_torch
def test_from_module_refuses_causal_for_recurrent_modules_and_readouts_for_attention():
    import torch
    from kpflow.backends.torch import from_module

    with pytest.raises(
        ValueError, match=r"from_module: causal=True applies to attention modules only, got GRU"
    ):
        from_module(torch.nn.GRU(2, 3, batch_first=True), causal=True)
    mha = torch.nn.MultiheadAttention(4, 2, batch_first=True)
    with pytest.raises(ValueError, match=r"a readout is supported for the recurrent modules only"):
        from_module(mha, torch.nn.Linear(4, 1))
    enc = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(4, 2, 3, dropout=0.0, batch_first=True),
        2,
        enable_nested_tensor=False,
    )
    enc.layers[1] = torch.nn.TransformerEncoderLayer(4, 2, 5, dropout=0.0, batch_first=True)
    with pytest.raises(ValueError, match=r"layers.1 differs from layers.0"):
        from_module(enc)


# -- errors ----------------------------------------------------------------------------------------
def test_errors_name_the_call_the_argument_and_what_came():
    with pytest.raises(ValueError, match=r"TransformerEncoder: expected d_model divisible by n_heads"):
        TransformerEncoder(5, 2, 3, 1)
    with pytest.raises(ValueError, match=r"TransformerEncoder: expected activation to be one of"):
        TransformerEncoder(4, 2, 3, 1, activation="tanh")
    with pytest.raises(ValueError, match=r"TransformerEncoder: expected positional to be one of"):
        TransformerEncoder(4, 2, 3, 1, positional="rope")
    with pytest.raises(ValueError, match=r'positional="learned" needs max_len'):
        TransformerEncoder(4, 2, 3, 1, positional="learned")
    with pytest.raises(ValueError, match=r"expected layer_norm_eps to be a positive float, got 0"):
        TransformerEncoder(4, 2, 3, 1, layer_norm_eps=0)
    with pytest.raises(ValueError, match=r"expected n_layers to be a positive int, got 0"):
        TransformerEncoder(4, 2, 3, 0)
    model = TransformerEncoder(4, 2, 3, 1, positional="learned", max_len=2)
    params = model.init(0)
    with pytest.raises(
        ValueError, match=r"TransformerEncoder.run: expected at most max_len=2 tokens, got N=3"
    ):
        model.run(params, np.ones((1, 3, 4)))
    with pytest.raises(ValueError, match=r"TransformerEncoder.run: expected x of shape \(B, N, d_model=4\)"):
        model.run(params, np.ones((1, 2, 5)))
    with pytest.raises(ValueError, match=r"TransformerEncoder.run: expected h0=None"):
        model.run(params, np.ones((1, 2, 4)), np.ones((1, 4)))
