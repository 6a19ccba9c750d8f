"""A trajectory owns what it was computed from: in-place updates of params, x, h0 or a readout
never leak into it (nor into the operators built on it)."""

from __future__ import annotations

import numpy as np
import pytest

import kpflow
from kpflow.models import GRU, LSTM, MLP, RNN, Linear


def _dense(op) -> np.ndarray:
    M = np.asarray(op.todense())
    n = int(np.prod(op.shape_in))
    return M.reshape(n, n)


@pytest.mark.parametrize("make", [lambda: GRU(2, 3), lambda: LSTM(2, 3), lambda: MLP((2, 4, 3))])
def test_in_place_updates_of_params_and_inputs_never_change_a_trajectory(make):
    model = make()
    params = model.init(0)
    x_shape = (3, 2) if isinstance(model, MLP) else (3, 4, 2)
    x = np.random.default_rng(1).standard_normal(x_shape)
    traj = model.run(params, x)
    before = _dense(kpflow.global_ntk(traj))
    states = np.array(traj.states)
    for v in params.values():
        v += 0.3  # an optimizer step, in place
    x *= 2.0
    after = _dense(kpflow.global_ntk(traj))
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(np.asarray(traj.states), states)
    fresh = _dense(kpflow.global_ntk(model.run(params, x)))
    assert np.linalg.norm(fresh - before) > 1e-2 * np.linalg.norm(before)  # the update was real


def test_in_place_update_of_the_readout_never_changes_an_output_ntk():
    model, readout = RNN(2, 3), Linear(3, 2)
    traj = model.run(model.init(0), np.ones((2, 3, 2)))
    ro = readout.init(1)
    N = kpflow.output_ntk(traj, ro)
    before = _dense(N)
    ro["weight"] *= 3.0
    np.testing.assert_array_equal(_dense(N), before)


def test_an_optimizer_step_on_a_torch_module_leaves_the_old_trajectory_exact():
    torch = pytest.importorskip("torch")
    from kpflow.backends.torch import from_module

    torch.manual_seed(0)
    gru = torch.nn.GRU(2, 3, batch_first=True, dtype=torch.float64)
    model, params = from_module(gru)  # the defaults: the module's own Parameters
    x = torch.randn(2, 4, 2, dtype=torch.float64)
    traj = model.run(params, x)
    with torch.no_grad():
        old = kpflow.global_ntk(traj).todense().reshape(24, 24).clone()
    # Gradients still flow from the trajectory into the module (the copy is a clone).
    traj.states.pow(2).sum().backward()
    assert gru.weight_hh_l0.grad is not None and float(gru.weight_hh_l0.grad.abs().sum()) > 0
    torch.optim.SGD(gru.parameters(), lr=0.5).step()
    with torch.no_grad():
        again = kpflow.global_ntk(traj).todense().reshape(24, 24)
        new = kpflow.global_ntk(model.run(params, x)).todense().reshape(24, 24)
    assert float((again - old).norm()) <= 1e-13 * float(old.norm())
    assert float((new - old).norm()) > 1e-2 * float(old.norm())
