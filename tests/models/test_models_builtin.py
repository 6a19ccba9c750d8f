"""The built-in models: initialisation, forward passes against torch.nn and the formulas, dtypes."""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kpflow.ntk as ntk
from kpflow.models import MLP, RNN, LeakyRNN, Linear, RecurrentModel
from tests.conftest import check_meta, examples
from tests.ntk_helpers import MODELS, NAMES, draw_shape, host_problem, on_backend

needs_torch = pytest.mark.skipif(find_spec("torch") is None, reason="needs torch")


@pytest.mark.parametrize("name", NAMES)
def test_init_follows_like_and_is_the_same_on_every_backend(case, name):
    model = MODELS[name](3, 2)
    params = model.init(4, like=case.randn(1))
    host = model.init(4)
    assert set(params) == set(model.param_shapes())
    for k, shape in model.param_shapes().items():
        check_meta(case, params[k])
        assert tuple(params[k].shape) == shape
        assert host[k].dtype == np.float64
        case.assert_close(params[k], np.asarray(host[k]))


@pytest.mark.parametrize("name", NAMES)
def test_float32_stays_float32_and_matches_float64(case, name):
    # no silent casts: a float32 run gives float32 states and a float32 K
    model, params, x, h0 = host_problem(name, 2, 3, 2, 2, 0, True)
    traj = on_backend(case, model, params, x, h0)
    check_meta(case, traj.states)
    V = case.randn(2, *traj.state_shape, seed=1)
    out = ntk.global_ntk(traj).matmat(V)
    check_meta(case, out)
    ref = on_backend(_numpy64(), model, params, x, h0)
    expected = ntk.global_ntk(ref).matmat(np.asarray(case.to_numpy(V)))
    case.assert_close(out, np.asarray(expected), rtol=max(case.rtol, 1e-4) * 10)


def _numpy64():
    from tests.conftest import _make_case

    return _make_case("numpy", "float64")


@needs_torch
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@settings(max_examples=examples(5))
@given(data=st.data())
def test_rnn_matches_torch_nn_rnn(nonlinearity, bias, data):
    import torch

    B, T, H, n_in, seed, with_h0 = draw_shape(data, _numpy64())
    model = RNN(n_in, H, nonlinearity=nonlinearity, bias=bias)
    module = torch.nn.RNN(n_in, H, nonlinearity=nonlinearity, bias=bias, batch_first=True).double()
    params = {k: v.detach() for k, v in module.named_parameters()}
    params = {k[: -len("_l0")]: v for k, v in params.items()}
    x = torch.randn(B, T, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    h0 = torch.randn(B, H, dtype=torch.float64) if with_h0 else None
    traj = model.run(params, x, h0)
    expected, _ = module(x, None if h0 is None else h0[None])
    torch.testing.assert_close(traj.states, expected.detach(), rtol=1e-13, atol=1e-14)


@needs_torch
def test_mlp_matches_torch_linear_layers():
    import torch

    model = MLP((3, 4, 5, 2))
    params = model.init(0, like=torch.zeros(1, dtype=torch.float64))
    layers = torch.nn.ModuleList([torch.nn.Linear(a, b).double() for a, b in [(3, 4), (4, 5), (5, 2)]])
    layers.load_state_dict({k.removeprefix("layers."): v for k, v in params.items()})
    x = torch.randn(6, 3, dtype=torch.float64)
    z1 = torch.tanh(layers[0](x))
    z2 = torch.tanh(layers[1](z1))
    z3 = layers[2](z2)
    traj = model.run(params, x)
    torch.testing.assert_close(traj.states, torch.cat([z1, z2, z3], dim=-1), rtol=1e-13, atol=1e-14)
    for l, (lo, hi) in enumerate(traj.blocks):
        torch.testing.assert_close(traj.layer_states(l), [z1, z2, z3][l])
        assert hi - lo == model.widths[l + 1]


@pytest.mark.parametrize("bias", [True, False])
def test_leaky_rnn_follows_its_formula(bias):
    dt = 0.25
    model = LeakyRNN(2, 3, dt=dt, bias=bias, nonlinearity="tanh")
    params = model.init(1)
    rng = np.random.default_rng(0)
    x, h = rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 3))
    traj = model.run(params, x, h)
    W, U = params["weight_hh"], params["weight_ih"]
    b = params["bias"] if bias else 0.0
    for t in range(4):
        h = (1 - dt) * h + dt * (np.tanh(h) @ W.T + x[:, t] @ U.T + b)
        np.testing.assert_allclose(traj.states[:, t], h, rtol=1e-14, atol=1e-15)
    # D = dt·I: K = dt² (G ⊗ I_H) with G = A Aᵀ (one bias column)
    A = np.concatenate(
        [np.tanh(np.asarray(traj.prev_states)).reshape(8, 3), x.reshape(8, 2)]
        + ([np.ones((8, 1))] if bias else []),
        axis=1,
    )
    K = ntk.parameter_kernel(traj).todense().reshape(24, 24)
    np.testing.assert_allclose(K, dt**2 * np.kron(A @ A.T, np.eye(3)), rtol=1e-13, atol=1e-14)


def test_rnn_kernel_is_D_G_D_with_two_bias_columns():
    model = RNN(2, 3)
    params = model.init(2)
    rng = np.random.default_rng(3)
    x, h0 = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3))
    traj = model.run(params, x, h0)
    prev = np.asarray(traj.prev_states).reshape(6, 3)
    A = np.concatenate([prev, x.reshape(6, 2), np.ones((6, 2))], axis=1)
    D = np.diag((1 - np.asarray(traj.states) ** 2).reshape(-1))  # at the output h_t
    expected = D @ np.kron(A @ A.T, np.eye(3)) @ D
    K = ntk.parameter_kernel(traj).todense().reshape(18, 18)
    np.testing.assert_allclose(K, expected, rtol=1e-13, atol=1e-14)


def test_linear_readout_applies_weight_and_bias(case64):
    readout = Linear(3, 2)
    params = readout.init(0, like=case64.randn(1))
    z = case64.randn(4, 5, 3)
    host = {k: case64.to_numpy(v) for k, v in params.items()}
    expected = case64.to_numpy(z) @ host["weight"].T + host["bias"]
    case64.assert_close(readout.apply(params, z), expected)
    assert set(Linear(3, 2, bias=False).param_shapes()) == {"weight"}


@pytest.mark.parametrize("name", NAMES)
def test_trajectory_geometry_is_consistent(name):
    model, params, x, h0 = host_problem(name, 2, 3, 2, 2, 0, True)
    traj = model.run(params, x, h0)
    assert traj.m * traj.site_state_size == int(np.prod(traj.state_shape))
    if isinstance(model, RecurrentModel):
        assert traj.state_shape == (2, 3, model.state_size)
        assert traj.site_shape == (2, 3)
    else:
        assert traj.site_shape == (2,)
    blocks = [traj.block(np.asarray(traj.states)[None], t) for t in range(traj.n_steps)]
    np.testing.assert_array_equal(traj.join(blocks)[0], traj.states)
    for site in traj.sites:
        assert site.variables.shape[0] == traj.m
        U = np.ones((1, traj.m, site.width))
        assert site.apply_D(U).shape == (1, *traj.state_shape)
        assert site.apply_DT(np.ones((1, *traj.state_shape))).shape == (1, traj.m, site.width)
        assert site.dense_unit_D().shape == (traj.m, site.n_units, site.a, site.g)


@pytest.mark.parametrize("name", [n for n in NAMES if isinstance(MODELS[n](1, 1), RecurrentModel)])
def test_zero_h0_is_the_same_as_no_h0(case64, name):
    model, params, x, _ = host_problem(name, 2, 3, 2, 2, 0, False)
    a = on_backend(case64, model, params, x, None)
    b = on_backend(case64, model, params, x, np.zeros((2, model.state_size)))
    case64.assert_close(b.states, case64.to_numpy(a.states))
    V = case64.randn(2, *a.state_shape, seed=2)
    case64.assert_close(ntk.global_ntk(b).matmat(V), case64.to_numpy(ntk.global_ntk(a).matmat(V)))
