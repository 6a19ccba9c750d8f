"""Frozen parameters, parametrizations and tied weights in ``from_module`` and ``Model.with_frozen``.

The NTK is the kernel of gradient descent on the parameters it moves.  The oracle is
``torch.func.jacrev`` of the ``torch.nn`` module's own forward (``functional_call``) over
the parameters with ``requires_grad=True`` alone, the frozen ones held at their values,
J Jᵀ compared with kpflow's matrix-free NTK_S in float64.  Parametrized and tied modules
are refused with an error naming the parametrization or the tied names.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="from_module needs torch")

from kpflow.backends.torch import from_module  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import kpflow  # noqa: E402
import kpflow.ntk as ntk  # noqa: E402
from kpflow.models import GRU, MLP, SelfAttention  # noqa: E402
from kpflow.training import SGD, loss_and_gradients, train  # noqa: E402

F64 = torch.float64
B, T, H, N_IN = 2, 3, 3, 2


def make_module(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind]
    return cls(N_IN, H, batch_first=True, dtype=F64)


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, N_IN, generator=torch.Generator().manual_seed(seed), dtype=F64)


def trainable_gram(f, *modules: torch.nn.Module) -> torch.Tensor:
    """J Jᵀ with J = d f / d (the modules' parameters with requires_grad=True), f flattened."""
    trained = [{n: p.detach() for n, p in m.named_parameters() if p.requires_grad} for m in modules]
    jac = torch.func.jacrev(f, argnums=tuple(range(len(modules))))(*trained)
    blocks = []
    for jd, pd in zip(jac, trained, strict=True):
        for name, p in pd.items():
            blocks.append(jd[name].reshape(-1, p.numel()))
    J = torch.cat(blocks, dim=1)
    return J @ J.T


def call(module: torch.nn.Module, trained: dict, x: torch.Tensor) -> torch.Tensor:
    """The module's output sequence with ``trained`` substituted, the frozen parameters as they are."""
    fixed = {n: p.detach() for n, p in module.named_parameters() if not p.requires_grad}
    return torch.func.functional_call(module, trained | fixed, (x,))[0]


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.norm(got - expected) / torch.linalg.norm(expected))


FROZEN = [("weight_ih",), ("bias_hh",), ("weight_hh", "bias_ih")]


@pytest.mark.parametrize("frozen", FROZEN, ids=lambda f: "+".join(f))
@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_global_ntk_with_frozen_parameters_equals_jacrev_over_the_trained_ones(kind, frozen):
    module = make_module(kind)
    for name in frozen:
        getattr(module, f"{name}_l0").requires_grad_(False)
    x = inputs()
    model, params = from_module(module, detach=True)
    traj = model.run(params, x)
    S = traj.states.shape[-1]
    N = ntk.global_ntk(traj).todense()[:, :, :H, :, :, :H].reshape(B * T * H, B * T * H)
    reference = trainable_gram(lambda th: call(module, th, x), module)
    assert rel_err(N, reference) <= 1e-10
    assert model.frozen == frozenset(frozen)
    # J_S's parameters are the trained ones; its Gram is NTK_S
    J = kpflow.state_jacobian(traj)
    trained = {n: p for n, p in params.items() if n not in frozen}
    assert J.shape_in == (sum(p.numel() for p in trained.values()),)
    assert sorted(J.to_params(J.rmatvec(traj.states))) == sorted(trained)
    Jd = J.todense().reshape(B * T * S, -1)
    assert rel_err(Jd @ Jd.T, ntk.global_ntk(traj).todense().reshape(B * T * S, B * T * S)) <= 1e-12
    # the autodiff K and the dense reference hold the frozen parameters fixed too
    K = ntk.parameter_kernel(traj).todense()
    assert rel_err(K, ntk.parameter_kernel(traj, method="autodiff").todense()) <= 1e-12


def test_the_old_ntk_over_every_parameter_is_far_from_the_trained_one():
    """The defect's size: a GRU with weight_ih frozen, NTK over all parameters vs the trained ones."""
    module = make_module("gru")
    module.weight_ih_l0.requires_grad_(False)
    x = inputs()
    model, params = from_module(module, detach=True)
    trained = ntk.global_ntk(model.run(params, x)).todense().reshape(B * T * H, -1)
    every_model, every_params = from_module(make_module("gru"), detach=True)  # same weights, all trained
    every = ntk.global_ntk(every_model.run(every_params, x)).todense().reshape(B * T * H, -1)
    assert rel_err(every, trained) > 0.1


@pytest.mark.parametrize("frozen", [("bias_ih",), ("weight_hh",)], ids=lambda f: "+".join(f))
def test_output_ntk_with_frozen_module_parameters_equals_jacrev(frozen):
    module = make_module("gru")
    for name in frozen:
        getattr(module, f"{name}_l0").requires_grad_(False)
    torch.manual_seed(5)
    readout = torch.nn.Linear(H, 2, dtype=F64)
    x = inputs()
    model, params, _, readout_params = from_module(module, readout, detach=True)
    traj = model.run(params, x)
    N_out = ntk.output_ntk(traj, readout_params).todense().reshape(B * T * 2, B * T * 2)

    def f(th, th_ro):
        return torch.func.functional_call(readout, th_ro, (call(module, th, x),))

    assert rel_err(N_out, trainable_gram(f, module, readout)) <= 1e-10
    dense = ntk.dense_output_ntk(traj, readout_params).reshape(B * T * 2, B * T * 2)
    assert rel_err(N_out, dense) <= 1e-10


def test_gradients_through_kpflow_reach_the_trained_parameters_only():
    module = make_module("gru")
    module.weight_ih_l0.requires_grad_(False)
    x = inputs()
    model, params = from_module(module)
    loss = torch.sum(model.run(params, x).states ** 2)
    loss.backward()
    assert module.weight_ih_l0.grad is None
    mine = module.weight_hh_l0.grad.clone()
    module.zero_grad()
    torch.sum(module(x)[0] ** 2).backward()
    assert rel_err(mine, module.weight_hh_l0.grad) <= 1e-12


@pytest.mark.parametrize("method", ["kpflow", "autodiff"])
def test_training_leaves_frozen_parameters_unchanged(method):
    model = GRU(N_IN, H).with_frozen(["weight_ih", "bias_hh"])
    readout = kpflow.models.Linear(H, 1)
    like = torch.zeros(1, dtype=F64)
    params, ro = model.init(0, like=like), readout.init(1, like=like)
    x, y = inputs(), torch.ones(B, T, 1, dtype=F64)
    out = loss_and_gradients(model, readout, params, ro, x, y, method=method)
    assert sorted(out.grads) == sorted(params)
    assert not torch.any(out.grads["weight_ih"]) and not torch.any(out.grads["bias_hh"])
    assert torch.any(out.grads["weight_hh"])
    result = train(model, readout, params, ro, (x, y, None), steps=3, optimizer=SGD(0.1), method=method)
    assert torch.equal(result.params["weight_ih"], params["weight_ih"])
    assert torch.equal(result.params["bias_hh"], params["bias_hh"])
    assert not torch.equal(result.params["weight_hh"], params["weight_hh"])


# -- attention and Transformer encoders ----------------------------------------------------------------
D, N_TOK = 4, 3  # token width (2 heads of 2) and tokens


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, N_TOK, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


def with_drawn_biases(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Biases drawn (torch zeroes the attention's), so that every parameter matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=F64))
    return module


def trainable_jacobian(f, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: d f / d p} over the parameters of ``module`` with requires_grad=True, the others fixed."""
    trained = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in module.named_parameters() if not p.requires_grad}
    # torch's math attention: its fused kernel's backward has no batching rule (jacrev loops)
    with sdpa_kernel(SDPBackend.MATH):
        return torch.func.jacrev(lambda th: f(th | fixed))(trained)


MHA_FROZEN = [
    ("in_proj_weight",),
    ("in_proj_bias",),
    ("out_proj.weight",),
    ("out_proj.bias", "in_proj_weight"),
]


@pytest.mark.parametrize("frozen", MHA_FROZEN, ids=lambda f: "+".join(f))
def test_multihead_attention_with_frozen_parameters_equals_jacrev_over_the_trained_ones(frozen):
    torch.manual_seed(0)
    mha = with_drawn_biases(torch.nn.MultiheadAttention(D, 2, batch_first=True, dtype=F64), 3)
    for name in frozen:
        mha.get_parameter(name).requires_grad_(False)
    x = tokens()
    model, params = from_module(mha, detach=True)
    traj = model.run(params, x)
    n = B * N_TOK * D

    def f(th):
        return torch.func.functional_call(mha, th, (x, x, x), {"need_weights": False})[0]

    jac = trainable_jacobian(f, mha)
    J = torch.cat([j.reshape(n, -1) for j in jac.values()], dim=1)
    assert rel_err(ntk.global_ntk(traj).todense().reshape(n, n), J @ J.T) <= 1e-10
    assert model.frozen == frozenset(frozen)
    # the gradient of <g, y> in torch's names, the frozen ones absent; the key bias's is
    # exactly zero (softmax ignores a shift of a row of scores), torch's zero to rounding
    g = torch.randn(B, N_TOK, D, generator=torch.Generator().manual_seed(7), dtype=F64)
    Js = kpflow.state_jacobian(traj)
    grads = Js.to_params(Js.rmatvec(g))
    assert sorted(grads) == sorted(jac)
    for name, j in jac.items():
        expected = torch.tensordot(g, j, dims=3)
        assert float(torch.linalg.norm(grads[name] - expected)) <= 1e-12 * float(torch.linalg.norm(j))
    if "in_proj_bias" in jac:
        assert float(jac["in_proj_bias"][..., D : 2 * D].abs().max()) <= 1e-14
        assert not torch.any(grads["in_proj_bias"][D : 2 * D])


def test_gradients_through_attention_reach_the_trained_parameters_only():
    torch.manual_seed(0)
    mha = with_drawn_biases(torch.nn.MultiheadAttention(D, 2, batch_first=True, dtype=F64), 3)
    mha.in_proj_weight.requires_grad_(False)
    x = tokens()
    model, params = from_module(mha)
    torch.sum(model.run(params, x).states ** 2).backward()
    assert mha.in_proj_weight.grad is None
    mine = {n: p.grad.clone() for n, p in mha.named_parameters() if p.requires_grad}
    mha.zero_grad()
    torch.sum(mha(x, x, x, need_weights=False)[0] ** 2).backward()
    for name, p in mha.named_parameters():
        if p.requires_grad:
            assert rel_err(mine[name], p.grad) <= 1e-12, name


LAYER_FROZEN = [
    ("self_attn.in_proj_weight",),
    ("self_attn.in_proj_bias", "norm1.weight"),
    ("linear1.weight", "norm2.bias"),
    ("self_attn.out_proj.weight", "linear2.bias", "norm1.bias"),
]


@pytest.mark.parametrize("frozen", LAYER_FROZEN, ids=lambda f: "+".join(f))
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_transformer_encoder_layer_with_frozen_parameters_equals_jacrev_over_the_trained_ones(
    norm_first, frozen
):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(
        D, 2, 5, dropout=0.0, batch_first=True, norm_first=norm_first, dtype=F64
    )
    layer = with_drawn_biases(layer, 4)
    for name in frozen:
        layer.get_parameter(name).requires_grad_(False)
    x = tokens()
    model, params = from_module(layer, detach=True)
    traj = model.run(params, x)
    n = B * N_TOK * D
    output = ntk.global_ntk(traj).todense()[:, -1][:, :, :, :, -1].reshape(n, n)  # the module's output
    jac = trainable_jacobian(lambda th: torch.func.functional_call(layer, th, (x,)), layer)
    J = torch.cat([j.reshape(n, -1) for j in jac.values()], dim=1)
    assert rel_err(output, J @ J.T) <= 1e-10
    assert model.frozen == frozenset("layers.0." + name for name in frozen)


class _Encoder(torch.nn.Module):
    """A TransformerEncoder with a learned positional embedding, under kpflow's parameter names.

    Its output is every layer's output and the final norm's, (B, 3, N, d): the states 1, 3
    and 4 of kpflow's TransformerEncoder(n_layers=2, final_norm=True).
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(D, 2, 5, dropout=0.0, batch_first=True, dtype=F64)
        self.layers = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).layers
        self.norm = torch.nn.LayerNorm(D, dtype=F64)
        self.pos_embedding = torch.nn.Parameter(torch.randn(N_TOK + 1, D, dtype=F64))
        with_drawn_biases(self, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, out = x + self.pos_embedding[: x.shape[1]], []
        for layer in self.layers:
            h = layer(h)
            out.append(h)
        return torch.stack([*out, self.norm(h)], dim=1)


ENCODER_FROZEN = [
    ("pos_embedding", "layers.0.linear1.weight", "layers.1.norm1.weight", "norm.bias"),
    ("layers.1.self_attn.in_proj_bias", "layers.0.norm2.weight", "layers.0.self_attn.in_proj_weight"),
]


@pytest.mark.parametrize("frozen", ENCODER_FROZEN, ids=["pos+linear1+norm1+norm", "in_proj+norm2"])
def test_built_in_transformer_encoder_with_frozen_equals_jacrev_and_trains_the_others(frozen):
    from kpflow.models import Linear, TransformerEncoder

    ref = _Encoder()
    for name in frozen:
        ref.get_parameter(name).requires_grad_(False)
    base = TransformerEncoder(D, 2, 5, 2, positional="learned", max_len=N_TOK + 1, final_norm=True)
    model = base.with_frozen(frozen)
    params = {n: p.detach() for n, p in ref.named_parameters()}
    x = tokens()
    traj = model.run(params, x)
    with torch.no_grad():
        assert float((traj.states[:, [1, 3, 4]] - ref(x)).abs().max()) <= 1e-13
    n = B * 3 * N_TOK * D
    N = ntk.global_ntk(traj).todense()[:, [1, 3, 4]][:, :, :, :, :, [1, 3, 4]].reshape(n, n)
    jac = trainable_jacobian(lambda th: torch.func.functional_call(ref, th, (x,)), ref)
    J = torch.cat([j.reshape(n, -1) for j in jac.values()], dim=1)
    assert rel_err(N, J @ J.T) <= 1e-10
    readout = Linear(D, 1)
    ro = readout.init(2, like=x)
    assert rel_err(ntk.output_ntk(traj, ro).todense(), ntk.dense_output_ntk(traj, ro)) <= 1e-10
    # the gradient of <g, z>: kpflow's J_Sᵀ in the parameters' names (pos_embedding's rows are
    # E's own rows), and autograd through model.run, equal torch's over the trained
    # parameters; the frozen ones get none
    g = torch.zeros(traj.states.shape, dtype=F64)
    g[:, [1, 3, 4]] = torch.randn(B, 3, N_TOK, D, generator=torch.Generator().manual_seed(7), dtype=F64)
    expected = {name: torch.tensordot(g[:, [1, 3, 4]], j, dims=4) for name, j in jac.items()}
    Js = kpflow.state_jacobian(traj)
    grads = Js.to_params(Js.rmatvec(g))
    leaves = {k: p.clone().requires_grad_(k not in frozen) for k, p in params.items()}
    torch.sum(model.run(leaves, x).states * g).backward()
    assert sorted(grads) == sorted(expected)
    # and J_S along a direction of the trained parameters (from_params reads E's rows as they are)
    gen = torch.Generator().manual_seed(8)
    direction = {name: torch.randn(j.shape[4:], generator=gen, dtype=F64) for name, j in jac.items()}
    moved = sum(torch.tensordot(jac[name], dp, dims=dp.ndim) for name, dp in direction.items())
    along = Js.matvec(Js.from_params(direction))[:, [1, 3, 4]]
    assert rel_err(along, moved) <= 1e-10
    for name, p in leaves.items():
        if name in frozen:
            assert p.grad is None, name
        else:
            assert rel_err(grads[name], expected[name]) <= 1e-10, name
            assert rel_err(p.grad, expected[name]) <= 1e-10, name


def test_with_frozen_on_a_built_in_model_drops_exactly_the_frozen_rows():
    """An MLP with a frozen bias: K equals K of the unfrozen model minus that bias's term."""
    model = MLP((2, 3, 2))
    params = model.init(0)
    x = np.random.default_rng(0).standard_normal((4, 2))
    full = ntk.parameter_kernel(model.run(params, x)).todense()
    frozen = ntk.parameter_kernel(model.with_frozen(["layers.1.bias"]).run(params, x)).todense()
    # the layer-1 bias adds D_1 (1 1ᵀ ⊗ I) D_1ᵀ with D_1 = I on the last block (linear output)
    bias_term = np.zeros_like(full)
    bias_term[:, 3:, :, 3:] = np.eye(2)[None, :, None, :]
    np.testing.assert_allclose(full - frozen, bias_term, atol=1e-12)
    assert model.frozen == frozenset()


def test_with_frozen_refuses_bad_names_and_unknown_layouts():
    model = GRU(2, 3)
    with pytest.raises(TypeError, match="GRU.with_frozen: expected names to be an iterable.*'weight_ih'"):
        model.with_frozen("weight_ih")
    with pytest.raises(ValueError, match=r"GRU.with_frozen: expected names among.*unknown \['weight'\]"):
        model.with_frozen(["weight"])
    with pytest.raises(ValueError, match="every parameter .* would be frozen"):
        model.with_frozen(model.param_shapes())
    with pytest.raises(TypeError, match="_Opaque.with_frozen: kpflow does not know which site rows"):
        _Opaque(4, 2).with_frozen(["in_proj_bias"])


class _Opaque(SelfAttention):
    """An attention layer whose site layout kpflow is told it does not know."""

    def site_rows(self):
        return None


# -- refusals in from_module ------------------------------------------------------------------------
def test_every_parameter_frozen_is_refused():
    module = make_module("rnn").requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter of the RNN has requires_grad=False"):
        from_module(module)


def test_a_frozen_readout_or_a_wholly_frozen_attention_module_is_refused_by_name():
    readout = torch.nn.Linear(H, 1, dtype=F64)
    readout.bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"the readout's \['bias'\] has requires_grad=False"):
        from_module(make_module("gru"), readout)
    mha = torch.nn.MultiheadAttention(4, 2, batch_first=True, dtype=F64).requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter of the MultiheadAttention has requires_grad=False"):
        from_module(mha)


def _gru_weight_norm(module):
    torch.nn.utils.parametrizations.weight_norm(module, "weight_hh_l0")


def _gru_old_weight_norm(module):
    torch.nn.utils.weight_norm(module, "weight_hh_l0")


def _gru_orthogonal(module):
    torch.nn.utils.parametrizations.orthogonal(module, "weight_hh_l0")


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
@pytest.mark.parametrize(
    ("apply", "named"),
    [
        (_gru_weight_norm, r"weight_hh_l0 by torch.nn.utils.parametrize \(_WeightNorm"),
        (_gru_old_weight_norm, r"weight_hh_l0 by torch.nn.utils.weight_norm \(parameters weight_hh_l0_g"),
        (_gru_orthogonal, r"weight_hh_l0 by torch.nn.utils.parametrize \(_Orthogonal"),
    ],
    ids=["parametrize.weight_norm", "old weight_norm", "orthogonal"],
)
def test_a_parametrized_recurrent_module_is_refused_naming_the_parametrization(apply, named):
    module = make_module("gru")
    apply(module)
    with pytest.raises(ValueError, match=f"from_module: the weight {named}.*Accepted: modules whose weights"):
        from_module(module)


def test_parametrized_attention_and_readout_are_refused():
    mha = torch.nn.MultiheadAttention(4, 2, batch_first=True, dtype=F64)
    torch.nn.utils.spectral_norm(mha.out_proj)
    with pytest.raises(ValueError, match=r"out_proj.weight by torch.nn.utils.spectral_norm \(parameter"):
        from_module(mha)
    readout = torch.nn.Linear(H, 1, dtype=F64)
    torch.nn.utils.parametrizations.spectral_norm(readout)
    with pytest.raises(ValueError, match=r"the weight readout.weight by torch.nn.utils.parametrize"):
        from_module(make_module("rnn"), readout)


def _encoder(n_layers: int = 2) -> torch.nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0, batch_first=True, dtype=F64)
    return torch.nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)


def test_tied_weights_are_refused_naming_the_tied_parameters():
    gru = torch.nn.GRU(3, 3, batch_first=True, dtype=F64)
    gru.weight_ih_l0 = gru.weight_hh_l0
    with pytest.raises(ValueError, match="the parameters weight_ih_l0 = weight_hh_l0 are one tensor"):
        from_module(gru)
    enc = _encoder()
    enc.layers[1] = enc.layers[0]  # one layer object used twice: every parameter shared
    with pytest.raises(ValueError, match=r"layers.0.self_attn.in_proj_weight = layers.1.self_attn.in_proj"):
        from_module(enc)
    layer = _encoder(1).layers[0]
    layer.norm2.weight = layer.norm1.weight
    with pytest.raises(ValueError, match="norm1.weight = norm2.weight are one tensor.*tied weights"):
        from_module(layer)
    rnn = make_module("rnn")
    readout = torch.nn.Linear(H, H, bias=False, dtype=F64)
    readout.weight = rnn.weight_hh_l0
    with pytest.raises(ValueError, match="weight_hh_l0 = readout.weight are one tensor"):
        from_module(rnn, readout)


# -- the jax adapter: Equinox parametrizations --------------------------------------------------------
@pytest.mark.parametrize("wrapper", ["WeightNorm", "SpectralNorm"])
def test_equinox_parametrizations_are_refused_by_name(wrapper):
    jax = pytest.importorskip("jax", reason="the Equinox cases need jax")
    eqx = pytest.importorskip("equinox", reason="the Equinox cases need equinox")
    from kpflow.backends.jax import from_module as jax_from_module

    def wrap(layer):
        if wrapper == "WeightNorm":
            return eqx.nn.WeightNorm(layer)
        return eqx.nn.SpectralNorm(layer, "weight", key=jax.random.key(2))

    mlp = eqx.nn.MLP(2, 1, 3, 1, key=jax.random.key(0))
    mlp = eqx.tree_at(lambda m: m.layers[0], mlp, wrap(mlp.layers[0]))
    with pytest.raises(
        ValueError, match=rf"the MLP's layers\[0\] is an equinox.nn.{wrapper} of its Linear's"
    ):
        jax_from_module(mlp)
    cell = eqx.nn.GRUCell(2, 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match=f"the readout is an equinox.nn.{wrapper}.*Accepted: plain"):
        jax_from_module(cell, wrap(eqx.nn.Linear(3, 1, key=jax.random.key(1))))
