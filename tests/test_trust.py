"""Defects a review and a new user's trial found: each test failed before its fix.

- a trajectory owns what it was computed from (in-place updates of params, x, h0 or a
  readout never leak into it);
- relu's derivative at exactly 0 is one convention everywhere (forward, autodiff, analytic D);
- non-finite params are rejected by name;
- ``Site`` validates ``unit_D`` and ``variables``;
- the LSTM's h-only NTK as an operator, and ``keep=`` by axis name;
- the command line: ``--version``, flag bounds named, jax's default dtype.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import kpflow
from kpflow import linalg
from kpflow.models import GRU, LSTM, MLP, RNN, LeakyRNN, Linear, Site


def _dense(op) -> np.ndarray:
    M = np.asarray(op.todense())
    n = int(np.prod(op.shape_in))
    return M.reshape(n, n)


# -- 1. stale trajectories ---------------------------------------------------------------------
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


# -- 3. relu at exactly 0 ----------------------------------------------------------------------
def _relu_problems(torch):
    """Models whose relu sees pre-activations exactly 0: zero biases and zero (padding) rows."""
    F64 = torch.float64
    x = torch.randn(3, 4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    x[1] = 0.0  # a padded sequence
    x[:, 0] = 0.0
    rnn = RNN(2, 3, nonlinearity="relu")
    p_rnn = {k: torch.as_tensor(v) for k, v in rnn.init(0).items()}
    p_rnn["bias_ih"] = torch.zeros(3, dtype=F64)
    p_rnn["bias_hh"] = torch.zeros(3, dtype=F64)
    leaky = LeakyRNN(2, 3, dt=0.5, nonlinearity="relu")  # φ(h0 = 0) at t = 0
    p_leaky = {k: torch.as_tensor(v) for k, v in leaky.init(1).items()}
    mlp = MLP((2, 4, 3), nonlinearity="relu")
    p_mlp = {k: torch.as_tensor(v) for k, v in mlp.init(2).items()}
    p_mlp = {k: (torch.zeros_like(v) if k.startswith("bias") else v) for k, v in p_mlp.items()}
    x_mlp = x[:, 0, :].clone()
    x_mlp[0] = torch.tensor([1.0, -1.0], dtype=F64)
    return [(rnn, p_rnn, x), (leaky, p_leaky, x), (mlp, p_mlp, x_mlp)]


def test_relu_at_zero_analytic_ntk_equals_the_autodiff_reference():
    torch = pytest.importorskip("torch")
    for model, params, x in _relu_problems(torch):
        traj = model.run(params, x)
        fast = kpflow.global_ntk(traj).todense()
        dense = kpflow.dense_global_ntk(traj)
        err = float((fast - dense).norm() / dense.norm())
        assert err <= 1e-12, f"{model!r}: relative error {err:.2e}"


def test_relu_at_zero_matches_torch_nn_rnn():
    # The independent reference: torch's own relu RNN, whose relu has slope 0 at 0.
    torch = pytest.importorskip("torch")
    from kpflow.backends.torch import from_module

    torch.manual_seed(3)
    module = torch.nn.RNN(2, 3, nonlinearity="relu", batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        module.bias_ih_l0.zero_()
        module.bias_hh_l0.zero_()
    x = torch.zeros(2, 3, 2, dtype=torch.float64)
    x[0, 1] = 1.0
    model, params = from_module(module, detach=True)
    names = dict(module.named_parameters())
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(module, p, (x,))[0])(
        {k: v.detach() for k, v in names.items()}
    )
    J = torch.cat([j.reshape(18, -1) for j in jac.values()], dim=1)
    reference = J @ J.T
    fast = kpflow.global_ntk(model.run(params, x)).todense().reshape(18, 18)
    assert float((fast - reference).norm()) <= 1e-12 * float(reference.norm())


# -- 4. non-finite params ----------------------------------------------------------------------
def test_an_inf_weight_behind_a_saturating_tanh_is_rejected():
    model = RNN(2, 3)
    params = model.init(0)
    params["weight_ih"][0, 0] = np.inf
    with pytest.raises(ValueError, match=r"RNN.run: expected finite values in params\['weight_ih'\]"):
        model.run(params, np.ones((1, 2, 2)))


# -- 5. Site validation ------------------------------------------------------------------------
def test_site_rejects_a_unit_D_of_the_wrong_shape_dtype_or_namespace():
    A = np.ones((6, 2))
    good = np.ones((6, 3, 1, 1))
    Site("w", A, state_shape=(2, 3, 3), unit_D=good)  # accepted
    with pytest.raises(ValueError, match=r"Site\('w'\): expected unit_D of shape \(m=6, n_units, a, g\)"):
        Site("w", A, state_shape=(2, 3, 3), unit_D=np.ones((6, 3, 1)))
    with pytest.raises(ValueError, match="m=6"):
        Site("w", A, state_shape=(2, 3, 3), unit_D=np.ones((3, 3, 1, 1)))
    with pytest.raises(TypeError, match="expected unit_D of dtype float64"):
        Site("w", A, state_shape=(2, 3, 3), unit_D=good.astype(np.float32))
    import array_api_strict as xps

    with pytest.raises(TypeError, match="unit_D comes from array_api_strict"):
        Site("w", A, state_shape=(2, 3, 3), unit_D=xps.ones((6, 3, 1, 1)))
    with pytest.raises(ValueError, match=r"expected variables \(A_w\) of shape \(m, p\)"):
        Site("w", np.ones(6), state_shape=(2, 3, 3), scale=1.0, width=3)
    with pytest.raises(ValueError, match="does not divide"):
        Site("w", np.ones((4, 2)), state_shape=(2, 3, 3), scale=1.0, width=3)
    with pytest.raises(ValueError, match="finite scale"):
        Site("w", A, state_shape=(2, 3, 3), scale=float("nan"), width=3)


def test_a_broadcasting_unit_D_no_longer_splits_the_trace():
    # A unit_D of one site, shape (1, n_units, 1, 1), broadcast over the sites in the matvec
    # but was reshaped by the exact rule, so the two traces disagreed.  Now it is refused.
    traj = RNN(1, 3).run(RNN(1, 3).init(0), np.ones((1, 4, 1)))
    site = traj.sites[0]
    with pytest.raises(ValueError, match="unit_D"):
        Site("hidden", site.variables, state_shape=traj.state_shape, unit_D=site.unit_D[:1])


# -- 8. the LSTM's h block, axis names ---------------------------------------------------------
def test_lstm_h_and_c_blocks_equal_the_blocks_of_the_dense_ntk():
    lstm = LSTM(2, 3)
    traj = lstm.run(lstm.init(0), np.random.default_rng(0).standard_normal((2, 3, 2)))
    full = kpflow.global_ntk(traj).todense()
    h = kpflow.global_ntk(traj, part="h")
    c = kpflow.global_ntk(traj, part="c")
    assert h.shape_in == c.shape_in == (2, 3, 3)
    np.testing.assert_allclose(h.todense(), full[:, :, :3, :, :, :3], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(c.todense(), full[:, :, 3:, :, :, 3:], rtol=1e-13, atol=1e-15)
    top = linalg.eigsh(h, 3, method="lanczos", rng=0, tol=1e-12)
    dense_top = np.linalg.eigvalsh(h.todense().reshape(18, 18))[::-1][:3]
    np.testing.assert_allclose(np.asarray(top.eigenvalues), dense_top, rtol=1e-10)


def test_part_is_checked():
    rnn = RNN(1, 2)
    traj = rnn.run(rnn.init(0), np.ones((1, 2, 1)))
    assert kpflow.global_ntk(traj, part="h").shape_in == (1, 2, 2)
    with pytest.raises(ValueError, match="part='c' needs an LSTM"):
        kpflow.global_ntk(traj, part="c")
    with pytest.raises(ValueError, match="expected part to be one of"):
        kpflow.global_ntk(traj, part="hidden")


def test_keep_accepts_axis_names():
    traj = GRU(2, 3).run(GRU(2, 3).init(0), np.random.default_rng(0).standard_normal((2, 4, 2)))
    for op in (kpflow.parameter_kernel(traj), kpflow.global_ntk(traj), kpflow.propagator(traj)):
        assert op.axis_names == ("batch", "time", "hidden")
    K = kpflow.parameter_kernel(traj)
    for name, index in (("batch", 0), ("time", 1), ("hidden", 2)):
        assert float(linalg.effective_rank(K, keep=name)) == float(linalg.effective_rank(K, keep=index))
    both = linalg.effective_rank(K, keep=("batch", "time"))
    assert float(both) == float(linalg.effective_rank(K, keep=(0, 1)))
    with pytest.raises(ValueError, match=r"keep='units' is not an axis .* \('batch', 'time', 'hidden'\)"):
        linalg.effective_rank(K, keep="units")
    with pytest.raises(ValueError, match="has no axis names"):
        linalg.effective_rank(kpflow.Diagonal(np.ones(3)), keep="time")
    mlp = MLP((2, 3))
    assert kpflow.global_ntk(mlp.run(mlp.init(0), np.ones((2, 2)))).axis_names == ("batch", "units")


# -- 8. the command line -----------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kpflow", *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_version_flag_prints_the_version():
    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"kpflow {kpflow.__version__}"


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [("--matvecs", "1", "an integer >= 16"), ("--seed", "-1", "a non-negative integer"), ("--k", "0", "")],
)
def test_flag_bounds_are_checked_at_the_flag(flag, value, expected):
    from kpflow.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["spectrum", flag, value])
    assert exit_info.value.code == 2
    out = _cli("spectrum", flag, value)
    assert out.returncode == 2
    assert f"argument {flag}: expected {expected}" in out.stderr
    assert "kpflow.linalg" not in out.stderr  # no internal names


def test_the_smallest_matvecs_budget_runs():
    from kpflow.cli import MIN_MATVECS, main

    argv = ["spectrum", "--model", "rnn", "--batch", "4", "--time", "10", "--hidden", "8", "--json"]
    assert main([*argv, "--matvecs", str(MIN_MATVECS)]) == 0


def test_jax_default_dtype_works_without_x64():
    pytest.importorskip("jax")
    code = (
        "import json, sys; from kpflow.cli import main; "
        "sys.exit(main(['spectrum', '--backend', 'jax', '--model', 'leaky', '--batch', '2', '--time', '3', "
        "'--hidden', '3', '--k', '2', '--matvecs', '16', '--json']))"
    )
    env = {"JAX_ENABLE_X64": "0", "PATH": "/usr/bin:/bin"}
    import os

    env.update({k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "VIRTUAL_ENV", "HOME"))})
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stderr
    assert '"dtype": "float32"' in out.stdout
