"""``output_ntk(...).todense()`` from Jᵀ on unit outputs (kpflow/ntk/output_gram.py), float64.

Each case against torch.func.jacrev of torch.nn modules holding the same weights (an
independent forward: nn.Sequential, nn.GRU, nn.LSTM, nn.Linear); the dense output NTK
never applies P (the forward recursion), only Pᵀ; the three contraction orders agree.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the references are torch.func.jacrev of torch.nn modules")

import kpflow  # noqa: E402
from kpflow.models import GRU, LSTM, MLP, Linear, Recurrent  # noqa: E402
from kpflow.ntk.output_gram import _contract, output_ntk_gram  # noqa: E402
from kpflow.ntk.propagator import Propagator  # noqa: E402

F64 = torch.float64


def _jacrev_ntk(module, x, out_shape):
    """Σ_θ (dy/dθ)(dy/dθ)ᵀ of ``module(x)`` by torch.func.jacrev over its parameters."""
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    theta = tuple(dict(module.named_parameters())[n].detach() for n in names)

    def f(*values):
        return torch.func.functional_call(module, dict(zip(names, values, strict=True)), (x,))

    jac = torch.func.jacrev(f, argnums=tuple(range(len(names))))(*theta)
    n = int(np.prod(out_shape))
    J = torch.cat([j.reshape(n, -1) for j in jac], dim=1)
    return (J @ J.T).reshape(*out_shape, *out_shape)


def _rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


class _Seq(torch.nn.Module):
    """A recurrent module read out at every step: readout(rnn(x)[0]) (for an LSTM, h)."""

    def __init__(self, rnn, readout):
        super().__init__()
        self.rnn, self.readout = rnn, readout

    def forward(self, x):
        return self.readout(self.rnn(x)[0])


def test_mlp_output_ntk_equals_jacrev_of_nn_sequential():
    torch.manual_seed(0)
    B, widths = 7, (3, 6, 5)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)
    ).to(F64)
    params = {
        f"layers.{i}.{k}": getattr(net[2 * i], k).detach() for i in range(2) for k in ("weight", "bias")
    }
    readout = {k: getattr(net[4], k).detach() for k in ("weight", "bias")}
    x = torch.randn(B, 3, dtype=F64)
    traj = MLP(widths, linear_output=False).run(params, x)
    N = kpflow.output_ntk(traj, readout)
    dense = N.todense()
    assert dense.dtype == F64 and dense.shape == (B, 2, B, 2)
    assert _rel(dense, _jacrev_ntk(net, x, (B, 2))) <= 1e-12


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_recurrent_output_ntk_equals_jacrev_of_the_torch_module(kind):
    torch.manual_seed(1)
    B, T, n_in, H, n_out = 3, 4, 2, 5, 2
    cls = torch.nn.GRU if kind == "gru" else torch.nn.LSTM
    net = _Seq(cls(n_in, H, batch_first=True), torch.nn.Linear(H, n_out)).to(F64)
    params = {
        k: getattr(net.rnn, f"{k}_l0").detach() for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    }
    readout = {k: getattr(net.readout, k).detach() for k in ("weight", "bias")}
    x = torch.randn(B, T, n_in, dtype=F64)
    model = GRU(n_in, H) if kind == "gru" else LSTM(n_in, H)
    dense = kpflow.output_ntk(model.run(params, x), readout).todense()
    assert _rel(dense, _jacrev_ntk(net, x, (B, T, n_out))) <= 1e-12


def test_hook_cell_output_ntk_sends_every_unit_output_and_equals_jacrev():
    torch.manual_seed(2)
    B, T, n_in, H = 2, 3, 2, 4

    def step(params, h, x, site):
        return torch.tanh(site("weight_hh", h) + site("bias_hh") + site("weight_ih", x) + site("bias_ih"))

    net = _Seq(torch.nn.RNN(n_in, H, batch_first=True), torch.nn.Linear(H, 1)).to(F64)
    params = {
        k: getattr(net.rnn, f"{k}_l0").detach() for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    }
    readout = {k: getattr(net.readout, k).detach() for k in ("weight", "bias")}
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    cell = Recurrent(step, n_in=n_in, n_hidden=H, param_shapes=shapes)
    x = torch.randn(B, T, n_in, dtype=F64)
    dense = kpflow.output_ntk(cell.run(params, x), readout).todense()
    assert _rel(dense, _jacrev_ntk(net, x, (B, T, 1))) <= 1e-12


def test_dense_output_ntk_never_runs_the_forward_recursion(monkeypatch):
    # the products route (NTK_out on every unit output) runs P; the Gram of Jᵀ needs Pᵀ only
    model, readout = GRU(2, 3), Linear(3, 2)
    params = model.init(0, like=torch.zeros(1, dtype=F64))
    traj = model.run(params, torch.randn(2, 5, 2, dtype=F64))
    N = kpflow.output_ntk(traj, readout.init(1, like=params["weight_hh"]))
    reference = N @ kpflow.Identity(N.shape_in, like=params["weight_hh"])  # a product operator
    expected = reference.todense()

    def refuse(self, X):
        raise AssertionError("P was applied")

    monkeypatch.setattr(Propagator, "_matmat", refuse)
    assert _rel(N.todense(), expected) <= 1e-12


@pytest.mark.parametrize(("B", "R", "k"), [(1, 6, 4), (4, 1, 1), (3, 4, 2)])
def test_the_three_contraction_orders_agree(B, R, k):
    rng = np.random.default_rng(B + R + k)
    from array_api_compat import torch as xp

    A = torch.asarray(rng.standard_normal((B * R, 5)))
    U = torch.asarray(rng.standard_normal((k, B, R, 3)))
    # independent: Σ_{r,s,j} U[q,b,r,j] G[b,r,c,s] U[Q,c,s,j]
    G = (A @ A.T).reshape(B, R, B, R)
    ref = torch.einsum("qbrj,brcs,Qcsj->bqcQ", U, G, U)
    for route in ("pairs", "parameters", "sites", None):
        assert _rel(_contract(xp, A, U, B, R, route), ref) <= 1e-13


def test_autodiff_kernel_falls_back_to_products_and_float32_stays_float32():
    model, readout = MLP((2, 3)), Linear(3, 1)
    params = model.init(0, like=torch.zeros(1, dtype=torch.float32))
    traj = model.run(params, torch.randn(4, 2))
    ro = readout.init(1, like=params["layers.0.weight"])
    auto = kpflow.output_ntk(traj, ro, method="autodiff")
    assert output_ntk_gram(auto) is None
    fast = kpflow.output_ntk(traj, ro).todense()
    assert fast.dtype == torch.float32
    assert _rel(auto.todense(), fast) <= 1e-5
