"""kpflow.training: exact gradients (kpflow's BPTT, autodiff, torch.nn references), optimizers, loop, init.

The independent references are torch.nn modules (nn.RNN, nn.GRU, nn.LSTM, a Sequential of
nn.Linear for the MLP, nn.Linear for the readout) differentiated by torch.autograd, and
central finite differences on numpy; neither shares forward code with kpflow.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpflow.models import GRU, LSTM, MLP, RNN, LeakyRNN, Linear
from kpflow.tasks import FlipFlop
from kpflow.training import SGD, Adam, TrainingDiverged, init_params, loss_and_gradients, masked_mse, train
from tests.conftest import BACKENDS
from tests.ntk_helpers import MODELS, NAMES, host_problem

needs_torch = pytest.mark.skipif("torch" not in BACKENDS, reason="torch is not among the selected backends")
needs_numpy = pytest.mark.skipif("numpy" not in BACKENDS, reason="numpy is not among the selected backends")


def _problem(name: str, B: int, T: int, H: int, n_in: int, seed: int) -> tuple:
    """Host float64 model, params, readout, readout params, x, targets and a 0/1 mask with a zero."""
    model, params, x, h0 = host_problem(name, B, T, H, n_in, seed, True)
    lo, hi = model.feature_columns
    readout = Linear(hi - lo, 2)
    rng = np.random.default_rng(seed + 7)
    rp = readout.init(rng)
    site_shape = x.shape[:-1]
    targets = rng.standard_normal((*site_shape, 2))
    mask = (rng.random(site_shape) < 0.7).astype(np.float64)
    mask.flat[0] = 1.0
    return model, params, readout, rp, x, targets, mask, h0


def _loss_np(model, readout, params, rp, x, targets, mask, h0) -> float:
    out = loss_and_gradients(model, readout, params, rp, x, targets, mask, h0=h0, method="kpflow")
    return float(out.loss)


@needs_numpy
@pytest.mark.parametrize("name", NAMES)
def test_kpflow_bptt_gradients_match_central_finite_differences(name: str) -> None:
    model, params, readout, rp, x, targets, mask, h0 = _problem(name, 2, 3, 3, 2, 0)
    out = loss_and_gradients(model, readout, params, rp, x, targets, mask, h0=h0, method="kpflow")
    rng = np.random.default_rng(1)
    dirs = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    rdirs = {k: rng.standard_normal(v.shape) for k, v in rp.items()}
    eps = 1e-6

    def at(s: float) -> float:
        p = {k: v + s * dirs[k] for k, v in params.items()}
        r = {k: v + s * rdirs[k] for k, v in rp.items()}
        return _loss_np(model, readout, p, r, x, targets, mask, h0)

    fd = (at(eps) - at(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(out.grads[k] * dirs[k])) for k in params)
    analytic += sum(float(np.sum(out.readout_grads[k] * rdirs[k])) for k in rp)
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(analytic))
    assert set(out.grads) == set(params)
    assert all(out.grads[k].shape == params[k].shape for k in params)


def _torch_reference(name: str, params, rp, x, targets, mask, h0) -> tuple[float, dict, dict]:
    """Loss and gradients through torch.nn modules and torch.autograd (no kpflow forward code)."""
    import torch

    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    model = MODELS[name](x.shape[-1], 3)
    if isinstance(model, RNN | GRU | LSTM):
        cls = {RNN: torch.nn.RNN, GRU: torch.nn.GRU, LSTM: torch.nn.LSTM}[type(model)]
        kw = {"nonlinearity": model.nonlinearity} if isinstance(model, RNN) else {}
        net = cls(x.shape[-1], model.n_hidden, batch_first=True, bias=model.bias, dtype=torch.float64, **kw)
        named = {k.removesuffix("_l0"): v for k, v in net.named_parameters()}
        with torch.no_grad():
            for k, v in named.items():
                v.copy_(t(params[k]))
        if isinstance(model, LSTM):
            H = model.n_hidden
            hc = (t(h0[None, :, :H]), t(h0[None, :, H:]))
            feats, _ = net(t(x), hc)
        else:
            feats, _ = net(t(x), t(h0[None]))
    else:
        assert isinstance(model, MLP)
        layers = []
        for l in range(model.n_layers):
            lin = torch.nn.Linear(model.widths[l], model.widths[l + 1], bias=model.bias, dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(t(params[f"layers.{l}.weight"]))
                if model.bias:
                    lin.bias.copy_(t(params[f"layers.{l}.bias"]))
            layers.append(lin)
            if not model.is_linear(l):
                layers.append(torch.nn.Tanh() if model.nonlinearity == "tanh" else torch.nn.ReLU())
        net = torch.nn.Sequential(*layers)
        named = {}
        for i, l in enumerate(k for k in range(len(layers)) if isinstance(layers[k], torch.nn.Linear)):
            named[f"layers.{i}.weight"] = layers[l].weight
            if model.bias:
                named[f"layers.{i}.bias"] = layers[l].bias
        feats = net(t(x))
    head = torch.nn.Linear(feats.shape[-1], 2, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(t(rp["weight"]))
        head.bias.copy_(t(rp["bias"]))
    err = head(feats) - t(targets)
    m = t(mask)[..., None]
    loss = (m * err**2).sum() / (m.sum() * 2)
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in named.items()}
    return float(loss.detach()), grads, {"weight": head.weight.grad.numpy(), "bias": head.bias.grad.numpy()}


TORCH_NN = [n for n in NAMES if not n.startswith("leaky")]


@needs_torch
@needs_numpy
@pytest.mark.parametrize("name", TORCH_NN)
@settings(max_examples=4)
@given(seed=st.integers(0, 2**16), B=st.integers(1, 3), T=st.integers(1, 4))
def test_numpy_bptt_equals_torch_nn_autograd(name: str, seed: int, B: int, T: int) -> None:
    model, params, readout, rp, x, targets, mask, h0 = _problem(name, B, T, 3, 2, seed)
    if isinstance(model, MLP):
        h0 = None
    out = loss_and_gradients(model, readout, params, rp, x, targets, mask, h0=h0, method="kpflow")
    loss, grads, rgrads = _torch_reference(name, params, rp, x, targets, mask, h0)
    assert abs(float(out.loss) - loss) <= 1e-12 * max(1.0, loss)
    for k, g in grads.items():
        np.testing.assert_allclose(out.grads[k], g, rtol=1e-9, atol=1e-12, err_msg=k)
    for k, g in rgrads.items():
        np.testing.assert_allclose(out.readout_grads[k], g, rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("torch", "jax")])
@pytest.mark.parametrize("name", NAMES)
def test_kpflow_and_autodiff_gradients_agree(backend: str, name: str) -> None:
    model, params, readout, rp, x, targets, mask, h0 = _problem(name, 2, 3, 3, 2, 3)
    if backend == "torch":
        import torch

        conv = lambda a: None if a is None else torch.tensor(a)  # noqa: E731
    else:
        import jax.numpy as jnp

        conv = lambda a: None if a is None else jnp.asarray(a)  # noqa: E731
    P = {k: conv(v) for k, v in params.items()}
    R = {k: conv(v) for k, v in rp.items()}
    args = (conv(x), conv(targets), conv(mask))
    a = loss_and_gradients(model, readout, P, R, *args, h0=conv(h0), method="kpflow")
    b = loss_and_gradients(model, readout, P, R, *args, h0=conv(h0), method="autodiff")
    assert abs(float(a.loss) - float(b.loss)) <= 1e-12
    for k in params:
        np.testing.assert_allclose(np.asarray(a.grads[k]), np.asarray(b.grads[k]), rtol=1e-10, atol=1e-12)
    for k in rp:
        np.testing.assert_allclose(
            np.asarray(a.readout_grads[k]), np.asarray(b.readout_grads[k]), rtol=1e-10, atol=1e-12
        )
    np.testing.assert_allclose(np.asarray(a.outputs), np.asarray(b.outputs), rtol=1e-12, atol=1e-12)


def test_masked_mse_ignores_masked_steps_and_averages_over_counted_entries() -> None:
    rng = np.random.default_rng(0)
    y, t = rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 4, 2))
    mask = np.zeros((3, 4))
    mask[0, 1] = mask[2, 3] = 1.0
    loss, grad = masked_mse(y, t, mask)
    expected = (np.sum((y[0, 1] - t[0, 1]) ** 2) + np.sum((y[2, 3] - t[2, 3]) ** 2)) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-14)
    y2 = y.copy()
    y2[1] += 100.0  # masked out: no change
    assert float(masked_mse(y2, t, mask)[0]) == pytest.approx(expected, rel=1e-14)
    assert np.all(grad[mask == 0] == 0)
    full, _ = masked_mse(y, t)
    assert float(full) == pytest.approx(np.mean((y - t) ** 2), rel=1e-14)


def test_sgd_momentum_matches_the_written_recursion() -> None:
    opt = SGD(lr=0.1, momentum=0.9)
    p = {"w": np.array([1.0, -2.0])}
    state = opt.init(p)
    gs = [np.array([0.5, 1.0]), np.array([-1.0, 2.0]), np.array([0.25, 0.0])]
    v = np.zeros(2)
    w = p["w"].copy()
    for g in gs:
        p, state = opt.update(p, {"w": g}, state)
        v = 0.9 * v + g
        w = w - 0.1 * v
    np.testing.assert_allclose(p["w"], w, rtol=1e-15)


@needs_torch
def test_adam_matches_torch_optim_adam() -> None:
    import torch

    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(5)
    gs = [rng.standard_normal(5) for _ in range(6)]
    opt = Adam(lr=0.05, beta1=0.8, beta2=0.99, eps=1e-6)
    p = {"w": w0.copy()}
    state = opt.init(p)
    tw = torch.tensor(w0.copy(), requires_grad=True)
    topt = torch.optim.Adam([tw], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    for g in gs:
        p, state = opt.update(p, {"w": g}, state)
        tw.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(p["w"], tw.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_optimizers_refuse_bad_hyperparameters_by_name() -> None:
    with pytest.raises(ValueError, match=r"SGD: expected lr to be a finite float > 0, got -1"):
        SGD(lr=-1)
    with pytest.raises(ValueError, match=r"SGD: expected momentum in \[0, 1\), got 1.0"):
        SGD(lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match=r"Adam: expected beta2 in \[0, 1\)"):
        Adam(beta2=1.5)
    with pytest.raises(ValueError, match=r"expected grads with the keys of params"):
        SGD(0.1).update({"w": np.ones(1)}, {"v": np.ones(1)}, {})


@needs_numpy
def test_training_a_gru_on_flip_flop_with_kpflow_gradients_lowers_the_loss_and_keeps_checkpoints() -> None:
    model, readout = GRU(3, 16), Linear(16, 3)
    params, rp = init_params(model, 0), readout.init(1)
    before = {k: v.copy() for k, v in params.items()}
    batch = FlipFlop(T=25).sample(32, rng=0)
    r = train(
        model,
        readout,
        params,
        rp,
        batch,
        steps=60,
        optimizer=Adam(0.02),
        checkpoints=[60, 0, 30],
        method="kpflow",
    )
    assert r.losses.shape == (60,)
    assert r.losses[-5:].mean() < 0.5 * r.losses[0]
    assert [c.step for c in r.checkpoints] == [0, 30, 60]
    for k in params:  # the caller's arrays are untouched; checkpoint 0 is the start, 60 the end
        np.testing.assert_array_equal(params[k], before[k])
        np.testing.assert_array_equal(r.checkpoint(0).params[k], before[k])
        np.testing.assert_array_equal(r.checkpoint(60).params[k], r.params[k])
    assert not np.array_equal(r.checkpoint(30).params["weight_hh"], r.params["weight_hh"])
    with pytest.raises(KeyError, match="no checkpoint at step 5"):
        r.checkpoint(5)


@needs_numpy
def test_minibatches_and_online_batches_are_seeded_and_reproducible() -> None:
    model, readout = RNN(3, 8), Linear(8, 3)
    batch = FlipFlop(T=10).sample(16, rng=1)
    runs = [
        train(
            model,
            readout,
            model.init(0),
            readout.init(1),
            batch,
            steps=5,
            optimizer=SGD(0.1),
            batch_size=4,
            rng=s,
        )
        for s in (3, 3, 4)
    ]
    np.testing.assert_array_equal(runs[0].losses, runs[1].losses)
    assert not np.array_equal(runs[0].losses, runs[2].losses)
    online = [
        train(
            model,
            readout,
            model.init(0),
            readout.init(1),
            FlipFlop(T=10),
            steps=4,
            optimizer=SGD(0.1),
            batch_size=4,
            rng=s,
        )
        for s in (5, 5)
    ]
    np.testing.assert_array_equal(online[0].losses, online[1].losses)
    full = train(model, readout, model.init(0), readout.init(1), batch, steps=1, optimizer=SGD(0.1))
    loss0 = loss_and_gradients(model, readout, model.init(0), readout.init(1), *batch).loss
    assert full.losses[0] == pytest.approx(float(loss0), rel=1e-14)


@needs_numpy
def test_one_sgd_step_on_the_full_batch_moves_the_parameters_by_minus_lr_times_the_gradient() -> None:
    model, readout = LeakyRNN(3, 6, dt=0.2, bias=True), Linear(6, 3)
    params, rp = model.init(0), readout.init(1)
    batch = FlipFlop(T=8).sample(4, rng=2)
    g = loss_and_gradients(model, readout, params, rp, *batch, method="kpflow")
    r = train(model, readout, params, rp, batch, steps=1, optimizer=SGD(0.3), method="kpflow")
    for k in params:
        np.testing.assert_allclose(r.params[k], params[k] - 0.3 * g.grads[k], rtol=1e-14, atol=1e-15)
    for k in rp:
        np.testing.assert_allclose(
            r.readout_params[k], rp[k] - 0.3 * g.readout_grads[k], rtol=1e-14, atol=1e-15
        )


@pytest.mark.parametrize(
    "backend", [b for b in BACKENDS if b in ("numpy", "torch", "array_api_strict", "jax")]
)
def test_training_keeps_float32_on_every_backend(backend: str) -> None:
    if backend == "jax":
        import jax.numpy as jnp

        like = jnp.zeros(1, dtype=jnp.float32)
    elif backend == "torch":
        import torch

        like = torch.zeros(1, dtype=torch.float32)
    elif backend == "array_api_strict":
        import array_api_strict as xp

        like = xp.zeros(1, dtype=xp.float32)
    else:
        like = np.zeros(1, dtype=np.float32)
    model, readout = RNN(3, 5), Linear(5, 3)
    params = init_params(model, 0, g=1.2, like=like)
    rp = readout.init(1, like=like)
    r = train(model, readout, params, rp, FlipFlop(T=6), steps=2, optimizer=Adam(0.01), batch_size=3, rng=0)
    assert all(v.dtype == like.dtype for v in [*r.params.values(), *r.readout_params.values()])


@needs_torch
def test_training_from_module_parameters_keeps_no_graph_and_leaves_the_module_alone() -> None:
    import torch
    from kpflow.backends.torch import from_module

    torch.manual_seed(0)
    gru = torch.nn.GRU(3, 6, batch_first=True, dtype=torch.float64)
    model, params = from_module(gru)
    before = gru.weight_hh_l0.detach().clone()
    readout = Linear(6, 3)
    rp = readout.init(1, like=params["weight_hh"])
    batch = FlipFlop(T=6).sample(4, rng=0, like=params["weight_hh"])
    for method in ("kpflow", "autodiff"):
        r = train(model, readout, params, rp, batch, steps=3, optimizer=SGD(0.1), method=method)
        assert all(not v.requires_grad and v.grad_fn is None for v in r.params.values())
    assert torch.equal(gru.weight_hh_l0.detach(), before)


def test_init_params_g_scale_and_fixed_points() -> None:
    H = 200
    W = init_params(RNN(1, H), 0, g=2.0)["weight_hh"]
    assert np.std(W) == pytest.approx(2.0 / np.sqrt(H), rel=0.02)
    Wg = init_params(GRU(1, 8), 0, g=0.5)["weight_hh"]
    assert Wg.shape == (24, 8)
    rng = np.random.default_rng(3)
    for model in (RNN(2, 6), LeakyRNN(2, 6, dt=0.1, bias=True), LeakyRNN(2, 6, dt=0.5, nonlinearity="relu")):
        points = rng.uniform(-0.8, 0.8, (3, 6))
        if isinstance(model, LeakyRNN) and model.nonlinearity == "relu":
            points = np.abs(points)
        params = init_params(model, 1, g=1.5, fixed_points=points)
        traj = model.run(params, np.zeros((3, 30, 2)), points)
        np.testing.assert_allclose(traj.states[:, -1], points, atol=1e-10)
        # not a fixed point elsewhere: a perturbed start moves
        moved = model.run(params, np.zeros((3, 1, 2)), points + 0.1).states[:, 0]
        assert np.abs(moved - (points + 0.1)).max() > 1e-4


def test_init_params_refuses_what_it_cannot_do_by_name() -> None:
    with pytest.raises(ValueError, match=r"init_params: expected g to be a finite float > 0, got -1"):
        init_params(RNN(1, 3), 0, g=-1)
    with pytest.raises(ValueError, match=r"init_params: g and fixed_points need a recurrent model"):
        init_params(MLP((2, 3)), 0, g=1.0)
    with pytest.raises(ValueError, match=r"expected fixed_points of shape \(K, 3\), got \(2, 4\)"):
        init_params(RNN(1, 3), 0, fixed_points=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"entries in \(-1, 1\)"):
        init_params(RNN(1, 3), 0, fixed_points=np.full((1, 3), 1.5))
    with pytest.raises(ValueError, match="linearly dependent"):
        init_params(RNN(1, 3), 0, fixed_points=np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="fixed points can be embedded in a tanh RNN or a LeakyRNN"):
        init_params(GRU(1, 3), 0, fixed_points=np.zeros((1, 3)))


@needs_numpy
def test_training_refuses_bad_arguments_by_name() -> None:
    model, readout = RNN(3, 4), Linear(4, 3)
    params, rp = model.init(0), readout.init(1)
    batch = FlipFlop(T=5).sample(2, rng=0)
    with pytest.raises(ValueError, match=r"train: expected steps to be an int >= 0, got -1"):
        train(model, readout, params, rp, batch, steps=-1, optimizer=SGD(0.1))
    with pytest.raises(TypeError, match=r"train: expected optimizer to be kpflow.training.SGD or Adam"):
        train(model, readout, params, rp, batch, steps=1, optimizer="adam")
    with pytest.raises(ValueError, match=r"every checkpoint to be an int in \[0, steps = 2\], got 3"):
        train(model, readout, params, rp, batch, steps=2, optimizer=SGD(0.1), checkpoints=[3])
    with pytest.raises(ValueError, match=r"needs batch_size"):
        train(model, readout, params, rp, FlipFlop(T=5), steps=1, optimizer=SGD(0.1))
    with pytest.raises(ValueError, match=r"expected batch_size to be an int in \[1, 2\]"):
        train(model, readout, params, rp, batch, steps=1, optimizer=SGD(0.1), batch_size=3)
    with pytest.raises(ValueError, match=r"expected targets of shape \(2, 5, 3\)"):
        loss_and_gradients(model, readout, params, rp, batch.inputs, batch.targets[..., :2], batch.mask)
    with pytest.raises(ValueError, match=r"expected a readout with n_in = 4"):
        loss_and_gradients(model, Linear(5, 3), params, Linear(5, 3).init(0), *batch)
    with pytest.raises(ValueError, match=r"expected method to be one of"):
        loss_and_gradients(model, readout, params, rp, *batch, method="bptt")
    if "torch" not in BACKENDS:
        return
    with pytest.raises(TypeError, match="has no automatic differentiation"):
        loss_and_gradients(model, readout, params, rp, *batch, method="autodiff")


@needs_numpy
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_a_diverging_run_stops_with_a_clear_error_and_keeps_its_last_finite_parameters() -> None:
    model, readout = RNN(3, 6, nonlinearity="relu"), Linear(6, 3)
    params = init_params(model, 0, g=3.0)
    batch = FlipFlop(T=30).sample(8, rng=0)
    with pytest.raises(
        TrainingDiverged, match=r"train: the (states|loss|gradient) became non-finite at step \d+"
    ) as info:
        train(model, readout, params, readout.init(1), batch, steps=200, optimizer=SGD(50.0), checkpoints=[0])
    err = info.value
    assert err.step > 0
    assert err.result.losses.shape == (err.step,) and np.all(np.isfinite(err.result.losses))
    last = err.result.checkpoints[-1]
    assert last.step == err.step
    assert all(np.all(np.isfinite(v)) for v in last.params.values())
    for k in params:
        np.testing.assert_array_equal(last.params[k], err.result.params[k])


@pytest.mark.parametrize("name", NAMES)
@needs_numpy
def test_the_ntk_is_the_operator_of_gradient_descent_on_the_states(name: str) -> None:
    """One GD step on θ moves the states by −η NTK_S g_z to first order (error linear in η)."""
    import kpflow

    model, params, readout, rp, x, targets, mask, h0 = _problem(name, 3, 4, 4, 2, 11)
    out = loss_and_gradients(model, readout, params, rp, x, targets, mask, h0=h0, method="kpflow")
    traj = model.run(params, x, h0)
    predicted_unit = -np.asarray(kpflow.global_ntk(traj).matvec(out.state_gradient))
    errors = []
    for eta in (1e-3, 1e-4):
        moved = model.run({k: v - eta * out.grads[k] for k, v in params.items()}, x, h0).states
        actual = moved - traj.states
        predicted = eta * predicted_unit
        errors.append(np.linalg.norm(actual - predicted) / np.linalg.norm(predicted))
    assert errors[0] <= 1e-3, errors
    assert errors[1] <= 1e-3
    if errors[0] > 1e-10:  # (a single linear layer is linear in θ: the prediction is exact)
        assert 5.0 <= errors[0] / errors[1] <= 20.0  # the error is O(η): 10× smaller for a 10× smaller step


@needs_numpy
@needs_torch
def test_a_gru_on_flip_flop_trains_alike_on_numpy_and_torch_and_its_loss_falls_tenfold() -> None:
    import torch

    model, readout = GRU(3, 24), Linear(24, 3)
    batch = FlipFlop(T=25).sample(16, rng=0)
    runs = {}
    for backend in ("numpy", "torch"):
        like = np.zeros(1) if backend == "numpy" else torch.zeros(1, dtype=torch.float64)
        params, rp = init_params(model, 0, like=like), readout.init(1, like=like)
        data = batch if backend == "numpy" else FlipFlop(T=25).sample(16, rng=0, like=like)
        runs[backend] = train(model, readout, params, rp, data, steps=120, optimizer=Adam(0.05)).losses
    assert runs["numpy"][-10:].mean() <= runs["numpy"][0] / 10
    # the same run: equal to rounding while the two are comparable (the first 100 steps here)
    np.testing.assert_allclose(runs["torch"][:100], runs["numpy"][:100], rtol=1e-6)
    assert runs["torch"][-10:].mean() <= runs["torch"][0] / 10
