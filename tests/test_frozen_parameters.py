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
    with pytest.raises(TypeError, match="SelfAttention.with_frozen: kpflow does not know which site rows"):
        SelfAttention(4, 2).with_frozen(["in_proj_bias"])


# -- refusals in from_module ------------------------------------------------------------------------
def test_every_parameter_frozen_is_refused():
    module = make_module("rnn").requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter of the RNN has requires_grad=False"):
        from_module(module)


def test_a_frozen_readout_or_attention_parameter_is_refused_by_name():
    readout = torch.nn.Linear(H, 1, dtype=F64)
    readout.bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"the readout's \['bias'\] has requires_grad=False"):
        from_module(make_module("gru"), readout)
    mha = torch.nn.MultiheadAttention(4, 2, batch_first=True, dtype=F64)
    mha.out_proj.weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"parameters \['out_proj.weight'\] have requires_grad=False"):
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
