"""``from_module``: kpflow on ``torch.nn`` RNN/GRU/LSTM modules equals the modules themselves.

The oracle is ``torch.func.jacrev`` through the module's own forward pass
(``torch.func.functional_call``): J_full = dz/dθ over all module parameters and
NTK = J_full J_fullᵀ, compared with kpflow's matrix-free NTK_S = P K Pᵀ in float64.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="from_module needs torch")

from kpflow.backends.torch import from_module  # noqa: E402

import kpflow.ntk as ntk  # noqa: E402

F64 = torch.float64
KINDS = ("rnn_tanh", "rnn_relu", "gru", "lstm")
# (B, T, H, n_in, bias)
SIZES = [(2, 3, 4, 2, True), (3, 2, 2, 4, True), (1, 4, 3, 1, False)]


def make_module(kind: str, n_in: int, hidden: int, *, bias: bool = True, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = {"batch_first": True, "bias": bias, "dtype": F64}
    if kind == "rnn_tanh":
        return torch.nn.RNN(n_in, hidden, nonlinearity="tanh", **common)
    if kind == "rnn_relu":
        return torch.nn.RNN(n_in, hidden, nonlinearity="relu", **common)
    if kind == "gru":
        return torch.nn.GRU(n_in, hidden, **common)
    return torch.nn.LSTM(n_in, hidden, **common)


def make_inputs(kind: str, B: int, T: int, H: int, n_in: int, with_h0: bool, seed: int = 1):
    """x (B, T, n_in) and h0 in the module's convention and in kpflow's (or None, None)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, n_in, generator=gen, dtype=F64)
    if not with_h0:
        return x, None, None
    h0 = 0.5 * torch.randn(1, B, H, generator=gen, dtype=F64)
    if kind == "lstm":
        c0 = 0.5 * torch.randn(1, B, H, generator=gen, dtype=F64)
        return x, (h0, c0), (h0[0], c0[0])
    return x, h0, h0[0]


def module_call(module, params, x, h0_module):
    """The module's output sequence (B, T, H) through ``functional_call``."""
    args = (x,) if h0_module is None else (x, h0_module)
    return torch.func.functional_call(module, params, args)[0]


def jacobian_gram(f, *param_dicts) -> torch.Tensor:
    """J Jᵀ with J = d f / d (all params), f's output flattened."""
    jac = torch.func.jacrev(f, argnums=tuple(range(len(param_dicts))))(*param_dicts)
    blocks = []
    for jd, pd in zip(jac, param_dicts, strict=True):
        for name, p in pd.items():
            j = jd[name]
            n_out = j.numel() // p.numel()
            blocks.append(j.reshape(n_out, p.numel()))
    J = torch.cat(blocks, dim=1)
    return J @ J.T


def module_ntk(module, x, h0_module) -> torch.Tensor:
    """Dense NTK of the module's output sequence, by jacrev through the module itself."""
    theta = {n: p.detach() for n, p in module.named_parameters()}
    return jacobian_gram(lambda th: module_call(module, th, x, h0_module), theta)


def module_output_ntk(module, readout, x, h0_module) -> torch.Tensor:
    """Dense output NTK of readout(module(x)), all parameters of both trained."""
    theta = {n: p.detach() for n, p in module.named_parameters()}
    theta_ro = {n: p.detach() for n, p in readout.named_parameters()}

    def f(th, th_ro):
        return torch.func.functional_call(readout, th_ro, (module_call(module, th, x, h0_module),))

    return jacobian_gram(f, theta, theta_ro)


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.norm(got - expected) / torch.linalg.norm(expected))


def state_block(N: torch.Tensor, B: int, T: int, S: int, H: int) -> torch.Tensor:
    """The h-block (first H of S per site) of a dense (B, T, S, B, T, S) NTK, as a matrix."""
    return N[:, :, :H, :, :, :H].reshape(B * T * H, B * T * H)


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0=None", "h0"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "B{}T{}H{}n{}".format(*s) + ("" if s[4] else "-nobias"))
@pytest.mark.parametrize("kind", KINDS)
def test_states_and_global_ntk_equal_the_module_through_jacrev(kind, size, with_h0):
    B, T, H, n_in, bias = size
    module = make_module(kind, n_in, H, bias=bias)
    x, h0_module, h0 = make_inputs(kind, B, T, H, n_in, with_h0)
    model, params = from_module(module, detach=True)
    traj = model.run(params, x, h0)

    with torch.no_grad():
        expected_states = module_call(module, dict(module.named_parameters()), x, h0_module)
    S = traj.states.shape[-1]
    assert S == (2 * H if kind == "lstm" else H)
    assert float(torch.max(torch.abs(traj.states[..., :H] - expected_states))) <= 1e-12

    N = ntk.global_ntk(traj).todense()
    assert tuple(N.shape) == (B, T, S, B, T, S)
    reference = module_ntk(module, x, h0_module)
    # For the LSTM, the NTK of h alone is the h-block of the (h, c) NTK (docs/models_gru_lstm.md).
    assert rel_err(state_block(N, B, T, S, H), reference) <= 1e-10


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0=None", "h0"])
@pytest.mark.parametrize("kind", KINDS)
def test_output_ntk_equals_jacrev_through_module_and_readout(kind, with_h0):
    B, T, H, n_in, n_out = 2, 3, 3, 2, 2
    module = make_module(kind, n_in, H)
    torch.manual_seed(5)
    readout = torch.nn.Linear(H, n_out, dtype=F64)
    x, h0_module, h0 = make_inputs(kind, B, T, H, n_in, with_h0)
    model, params, readout_model, readout_params = from_module(module, readout, detach=True)
    traj = model.run(params, x, h0)

    y = readout_model.apply(readout_params, traj.states[..., :H])
    with torch.no_grad():
        expected = readout(module_call(module, dict(module.named_parameters()), x, h0_module))
    assert float(torch.max(torch.abs(y - expected))) <= 1e-12

    N_out = ntk.output_ntk(traj, readout_params).todense()
    assert tuple(N_out.shape) == (B, T, n_out, B, T, n_out)
    reference = module_output_ntk(module, readout, x, h0_module)
    assert rel_err(N_out.reshape(B * T * n_out, B * T * n_out), reference) <= 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_params_share_the_module_storage_and_updates_show_through(kind):
    module = make_module(kind, 2, 3)
    readout = torch.nn.Linear(3, 2, dtype=F64)
    for detach in (False, True):
        _, params, _, readout_params = from_module(module, readout, detach=detach)
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        pairs = [(params[n], getattr(module, f"{n}_l0")) for n in names]
        pairs += [(readout_params["weight"], readout.weight), (readout_params["bias"], readout.bias)]
        for mine, theirs in pairs:
            assert mine.data_ptr() == theirs.data_ptr()
            assert mine.shape == theirs.shape
            assert mine.requires_grad is (not detach)
        if not detach:
            assert params["weight_hh"] is module.weight_hh_l0
    _, params = from_module(module, detach=True)
    with torch.no_grad():
        module.weight_hh_l0.mul_(2.0)
    assert torch.equal(params["weight_hh"], module.weight_hh_l0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_through_kpflow_reach_the_module(kind):
    module = make_module(kind, 2, 3)
    x, h0_module, h0 = make_inputs(kind, 2, 4, 3, 2, True)
    model, params = from_module(module)
    H = 3
    loss = torch.sum(model.run(params, x, h0).states[..., :H] ** 2)
    mine = torch.autograd.grad(loss, [params["weight_hh"], params["bias_ih"]])
    theirs_loss = torch.sum(module(x, h0_module)[0] ** 2)
    theirs = torch.autograd.grad(theirs_loss, [module.weight_hh_l0, module.bias_ih_l0])
    for a, b in zip(mine, theirs, strict=True):
        assert rel_err(a, b) <= 1e-12


def test_the_model_kind_and_settings_follow_the_module():
    rnn = torch.nn.RNN(2, 3, nonlinearity="relu", bias=False, batch_first=True)
    model, params = from_module(rnn)
    assert type(model).__name__ == "RNN"
    assert model.nonlinearity == "relu"
    assert not model.bias
    assert sorted(params) == ["weight_hh", "weight_ih"]
    model, params = from_module(torch.nn.LSTM(2, 3, batch_first=True))
    assert type(model).__name__ == "LSTM"
    assert model.state_size == 6
    assert params["weight_ih"].shape == (12, 2)
    readout = torch.nn.Linear(3, 1, bias=False)
    _, _, readout_model, readout_params = from_module(torch.nn.GRU(2, 3, batch_first=True), readout)
    assert not readout_model.bias
    assert sorted(readout_params) == ["weight"]


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        # num_layers > 1 and batch_first=False are mapped (tests/backends/test_from_cell_modules.py)
        ({"bidirectional": True}, "bidirectional=True"),
        ({"num_layers": 2, "dropout": 0.5}, "dropout=0.5"),
    ],
)
@pytest.mark.parametrize("cls", [torch.nn.RNN, torch.nn.GRU, torch.nn.LSTM])
def test_unsupported_settings_are_named(cls, kwargs, setting):
    options = {"batch_first": True, **kwargs}
    with pytest.raises(ValueError, match=f"from_module: unsupported {cls.__name__} setting.*{setting}"):
        from_module(cls(2, 3, **options))


def test_lstm_projection_is_unsupported():
    with pytest.raises(ValueError, match="proj_size=2"):
        from_module(torch.nn.LSTM(2, 3, batch_first=True, proj_size=2))


def test_wrong_module_or_readout_gives_a_clear_error():
    gru = torch.nn.GRU(2, 3, batch_first=True)
    with pytest.raises(
        TypeError, match="got a Linear; accepted: any torch.nn.Module with states=.*torch.nn.RNN"
    ):
        from_module(torch.nn.Linear(2, 3))
    with pytest.raises(TypeError, match="expected readout to be a torch.nn.Linear or None, got GRU"):
        from_module(gru, gru)
    with pytest.raises(ValueError, match="readout.in_features.*hidden_size=3, got 4"):
        from_module(gru, torch.nn.Linear(4, 1))
    with pytest.raises(TypeError, match="readout's 'weight' is torch.float64"):
        from_module(gru, torch.nn.Linear(3, 1, dtype=F64))
