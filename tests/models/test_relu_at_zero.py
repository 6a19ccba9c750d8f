"""relu's derivative at exactly 0 is one convention everywhere: forward, autodiff, analytic D,
and torch.nn's own relu RNN."""

from __future__ import annotations

import pytest

import kpflow
from kpflow.models import MLP, RNN, LeakyRNN


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
