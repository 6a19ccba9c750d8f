"""The model registry: every entry builds and runs, and the CLI and the demo offer exactly its models."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from kpflow.analysis import demo
from kpflow.cli import build_parser
from kpflow.models import Model, registry
from kpflow.ntk import global_ntk


def _choices(parser: argparse.ArgumentParser, command: str, flag: str) -> tuple[str, ...]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    return tuple(action.choices)


@pytest.mark.parametrize("name", registry.names())
def test_every_entry_builds_runs_and_gives_an_ntk_product(name):
    entry = registry.entry(name)
    n_in, H = entry.n_inputs(2, 4), 4
    model = entry.build(n_in, H)
    assert isinstance(model, Model) and type(model) is entry.cls
    assert registry.entry_for(model) is entry
    rng = np.random.default_rng(0)
    params = model.init(rng)
    x = rng.standard_normal(entry.input_shape(batch=2, time=3, n_in=2, n_hidden=H))
    traj = model.run(params, x)
    assert np.all(np.isfinite(np.asarray(traj.states)))
    N = global_ntk(traj)
    v = rng.standard_normal(N.shape_in)
    Nv = np.asarray(N.matvec(v))
    assert Nv.shape == tuple(N.shape_in) and np.all(np.isfinite(Nv))
    assert float(np.sum(v * Nv)) >= 0.0  # NTK_S is PSD


def test_the_cli_offers_every_entry_and_builds_the_registry_model():
    parser = build_parser()
    assert _choices(parser, "spectrum", "--model") == registry.names()
    from kpflow.cli import _make_model

    for name in registry.names():
        args = parser.parse_args(["spectrum", "--model", name, "--hidden", "4", "--inputs", "2"])
        assert type(_make_model(args)) is registry.entry(name).cls


def test_the_demo_offers_every_entry_a_task_can_drive():
    # a task's inputs are (B, T, n_in) with its own n_in: sequence models with a free input width
    drivable = registry.names(sequence=True, free_inputs=True)
    assert demo.MODELS == drivable == _choices(build_parser(), "demo", "--model")
    left_out = set(registry.names()) - set(drivable)
    assert left_out == {"mlp", "attention", "transformer"}
    assert all(not registry.entry(n).sequence or not registry.entry(n).free_inputs for n in left_out)
    from kpflow.tasks import FlipFlop

    for name in drivable:
        model, readout = demo._model(demo.DemoConfig(model=name, hidden=5), FlipFlop(n_bits=3, T=4))
        assert type(model) is registry.entry(name).cls
        assert (model.n_in, model.n_hidden, readout.n_in, readout.n_out) == (3, 5, 5, 3)
    with pytest.raises(ValueError, match=r"DemoConfig: expected model to be one of \('rnn'"):
        demo.DemoConfig(model="mlp")


def test_registry_errors_name_what_was_expected():
    with pytest.raises(ValueError, match=r"registry: unknown model 'resnet'; expected one of \['rnn'"):
        registry.build("resnet", 1, 2)
    with pytest.raises(ValueError, match=r"'gru': unknown option\(s\) \['dt'\]; expected some of \[\]"):
        registry.build("gru", 1, 2, dt=0.1)
    with pytest.raises(ValueError, match=r"'attention': expected n_in == n_hidden .*got 3, 4"):
        registry.build("attention", 3, 4)


def test_fixed_points_follow_the_entry_of_the_model_class():
    from kpflow.models import GRU, RNN, LeakyRNN
    from kpflow.training import init_params

    class MyRNN(RNN):
        pass

    points = np.array([[0.3, -0.2, 0.1]])
    for model in (RNN(1, 3), MyRNN(1, 3), LeakyRNN(1, 3, dt=0.5, bias=True)):
        params = init_params(model, 0, fixed_points=points)
        traj = model.run(params, np.zeros((1, 5, 1)), points)
        np.testing.assert_allclose(np.asarray(traj.states)[:, -1], points, atol=1e-12)
    with pytest.raises(ValueError, match="fixed points can be embedded in a tanh RNN or a LeakyRNN, got GRU"):
        registry.fixed_point_system(GRU(1, 3), {}, points)
    with pytest.raises(ValueError, match="tanh RNN, got nonlinearity='relu'"):
        init_params(RNN(1, 3, nonlinearity="relu"), 0, fixed_points=points)


def test_a_readout_other_than_linear_is_refused_by_training_and_analysis():
    from kpflow.analysis import predicted_loss_decrease
    from kpflow.models import RNN
    from kpflow.training import loss_and_gradients

    model = RNN(1, 3)
    x, y = np.ones((2, 4, 1)), np.zeros((2, 4, 3))
    wrong = RNN(3, 3)  # has n_in == 3 like a Linear(3, ·): only the type check catches it
    for call in (
        lambda: loss_and_gradients(model, wrong, model.init(0), wrong.init(1), x, y),
        lambda: predicted_loss_decrease(model, wrong, model.init(0), wrong.init(1), x, y, lr=1e-3),
    ):
        with pytest.raises(TypeError, match=r"expected readout to be a kpflow.models.Linear, got RNN"):
            call()


def test_every_exported_built_in_model_class_has_a_registry_entry():
    import inspect

    import kpflow.models
    from kpflow.models import FeedForward, Implicit, Linear, Recurrent

    # the hook models take the user's function, and Linear is the readout (registry.READOUT)
    not_built_in = {FeedForward, Implicit, Recurrent, Linear}
    exported = {
        obj
        for name in kpflow.models.__all__
        if inspect.isclass(obj := getattr(kpflow.models, name))
        and issubclass(obj, Model)
        and not inspect.isabstract(obj)
        and obj not in not_built_in
    }
    registered = {e.cls for e in registry.MODELS.values()}
    assert registry.READOUT is Linear
    assert exported == registered, sorted(c.__name__ for c in exported ^ registered)
