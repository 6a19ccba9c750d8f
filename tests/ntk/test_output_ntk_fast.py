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
from kpflow.models import (  # noqa: E402
    GRU,
    LSTM,
    MLP,
    RNN,
    FeedForward,
    Implicit,
    LeakyRNN,
    Linear,
    Recurrent,
    SelfAttention,
    TransformerEncoder,
)
from kpflow.ntk.output_gram import _contract, output_ntk_gram, probe_rows  # noqa: E402
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


# -- the probe route each model declares --------------------------------------------------------
# A model declares that its batch rows never mix (``layout.independent_rows``) and each site
# that its rows lie per batch row (``site.batch_major``); the Gram route then sends the unit
# outputs of all B rows at one position as one probe (k = m·n_out / B), else every unit output
# on its own (k = m·n_out).  Each case is checked against the products route
# (``N @ Identity``, which never reads the declarations) and the probes Pᵀ was applied to are
# counted: one call, k = m·n_out / B.
def _probe_rows_ran(monkeypatch, N):
    """``N.todense()`` with the columns of every Pᵀ call recorded: (dense, [k of each call])."""
    seen = []
    rmatmat = Propagator._rmatmat

    def counted(self, X):
        seen.append(int(X.shape[0]))
        return rmatmat(self, X)

    monkeypatch.setattr(Propagator, "_rmatmat", counted)
    dense = N.todense()
    monkeypatch.setattr(Propagator, "_rmatmat", rmatmat)
    return dense, seen


def _check_route(monkeypatch, traj, B_expected, n_out=2, seed=1):
    like = traj.states
    lo, hi = traj.layout.features
    readout = Linear(hi - lo, n_out).init(seed, like=like)
    N = kpflow.output_ntk(traj, readout)
    products = (N @ kpflow.Identity(N.shape_in, like=like)).todense()
    assert probe_rows(traj, N.state_ntk.K.sites) == B_expected
    dense, seen = _probe_rows_ran(monkeypatch, N)
    assert seen == [traj.m * n_out // B_expected], "the Gram route did not run with the declared probes"
    assert dense.dtype == F64 and tuple(dense.shape) == tuple(products.shape)
    assert _rel(dense, products) <= 1e-12
    return dense


def _hook_shared_weight(**declared):
    def step(params, h, x, site):
        first = torch.tanh(site("W", h) + site("U", x) + site("b"))
        return first + 0.5 * torch.tanh(site("W", torch.tanh(h)) + site("b"))

    shapes = {"W": (3, 3), "U": (3, 2), "b": (3,)}
    return Recurrent(step, n_in=2, n_hidden=3, param_shapes=shapes, **declared)


def _feedforward(**declared):
    def hidden(params, z, site):
        return torch.tanh(site("W0", z) + site("b0"))

    def output(params, z, site):
        return torch.tanh(site("W1", z))

    shapes = {"W0": (4, 2), "b0": (4,), "W1": (3, 4)}
    return FeedForward([hidden, output], n_in=2, widths=[4, 3], param_shapes=shapes, **declared)


def _implicit(**declared):
    def residual(params, z, x, site):
        return z - torch.tanh(site("W", z) + site("U", x) + site("b"))

    shapes = {"W": (3, 3), "U": (3, 2), "b": (3,)}
    return Implicit(residual, n_in=2, n_state=3, param_shapes=shapes, solve_tol=1e-15, **declared)


#: name: (model factory, x shape, the declared rows per probe (B or 1), outputs)
ROUTES = {
    "rnn": (lambda: RNN(2, 3), (2, 4, 2), 2, 2),
    "leaky": (lambda: LeakyRNN(2, 3, dt=0.3, bias=True), (2, 4, 2), 2, 2),
    "gru": (lambda: GRU(2, 3), (3, 4, 2), 3, 2),
    "lstm": (lambda: LSTM(2, 3), (2, 4, 2), 2, 2),
    "mlp": (lambda: MLP((2, 4, 3)), (3, 2), 3, 2),
    "attention": (lambda: SelfAttention(4, 2), (2, 3, 4), 2, 2),
    # learned positions: a site of one row per token (b, n), site variable onehot(n)
    "transformer_learned": (
        lambda: TransformerEncoder(4, 2, 3, 1, max_len=4, final_norm=True),
        (2, 3, 4),
        2,
        1,
    ),
    "transformer_sinusoidal": (lambda: TransformerEncoder(4, 1, 3, 1, norm_first=True), (2, 3, 4), 2, 1),
    "hook_cell": (lambda: _hook_shared_weight(), (2, 3, 2), 1, 1),
    # a weight used at two calls: its rows are (call, b, t), regrouped per batch row
    "hook_cell_declared": (lambda: _hook_shared_weight(independent_rows=True), (2, 3, 2), 2, 1),
    "feedforward": (lambda: _feedforward(), (3, 2), 1, 1),
    "feedforward_declared": (lambda: _feedforward(independent_rows=True), (3, 2), 3, 2),
    "implicit_declared": (lambda: _implicit(independent_rows=True), (2, 2), 2, 2),
}


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_each_model_takes_the_route_its_declaration_says(monkeypatch, name):
    make, x_shape, B, n_out = ROUTES[name]
    model = make()
    params = model.init(0, like=torch.zeros(1, dtype=F64))
    x = torch.asarray(np.random.default_rng(3).standard_normal(x_shape))
    _check_route(monkeypatch, model.run(params, x), B, n_out)


def _mixing_layers():
    """A two-layer feed-forward hook model whose first layer centres over the batch (rows mix)."""

    def hidden(params, z, site):
        u = site("W0", z) + site("b0")
        return torch.tanh(u - torch.mean(u, dim=0, keepdim=True))

    def output(params, z, site):
        return torch.tanh(site("W1", z))

    return hidden, output, {"W0": (4, 2), "b0": (4,), "W1": (3, 4)}


def test_a_model_whose_rows_mix_takes_one_row_per_probe_and_equals_jacrev(monkeypatch):
    hidden, output, shapes = _mixing_layers()
    model = FeedForward([hidden, output], n_in=2, widths=[4, 3], param_shapes=shapes)
    params = model.init(0, like=torch.zeros(1, dtype=F64))
    readout = Linear(3, 2).init(1, like=params["W0"])
    x = torch.asarray(np.random.default_rng(4).standard_normal((3, 2)))
    dense = _check_route(monkeypatch, model.run(params, x), 1)

    # independent: torch.func.jacrev of the same forward written out, the readout trained too
    theta = {**params, **{f"readout.{k}": v for k, v in readout.items()}}
    names = sorted(theta)

    def f(*values):
        p = dict(zip(names, values, strict=True))
        u = x @ p["W0"].T + p["b0"]
        z = torch.tanh(torch.tanh(u - u.mean(0, keepdim=True)) @ p["W1"].T)
        return z @ p["readout.weight"].T + p["readout.bias"]

    jac = torch.func.jacrev(f, argnums=tuple(range(len(names))))(*(theta[n] for n in names))
    J = torch.cat([j.reshape(6, -1) for j in jac], dim=1)
    assert _rel(dense, (J @ J.T).reshape(3, 2, 3, 2)) <= 1e-12

    # the declaration is what keeps it right: declared independent, the probes mix rows
    wrong = FeedForward([hidden, output], n_in=2, widths=[4, 3], param_shapes=shapes, independent_rows=True)
    N = kpflow.output_ntk(wrong.run(params, x), readout)
    assert _rel(N.todense(), dense) > 1e-3


class _Cell(torch.nn.Module):
    """A user cell module: kpflow cannot tell whether it mixes batch rows."""

    input_size, hidden_size = 2, 3

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(5, 3, dtype=F64)

    def forward(self, x, h):
        return torch.tanh(self.lin(torch.cat([x, h], dim=-1)))


#: name: (module factory, from_module options, x shape, the declared rows per probe)
MAPPED = {
    "nn.GRU": (lambda: torch.nn.GRU(2, 3, batch_first=True, dtype=F64), {}, (2, 3, 2), 2),
    "nn.LSTM_2_layers_time_major": (lambda: torch.nn.LSTM(2, 3, num_layers=2, dtype=F64), {}, (3, 2, 2), 2),
    "user_cell": (_Cell, {"recurrent": True}, (2, 3, 2), 1),
    "nn.Sequential": (
        lambda: torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).to(F64),
        {},
        (3, 2),
        1,
    ),
}


@pytest.mark.parametrize("name", sorted(MAPPED))
def test_from_module_mappings_take_the_route_they_declare(monkeypatch, name):
    from kpflow.backends.torch import from_module

    make, options, x_shape, B = MAPPED[name]
    torch.manual_seed(5)
    model, params = from_module(make(), detach=True, **options)
    x = torch.asarray(np.random.default_rng(6).standard_normal(x_shape))
    _check_route(monkeypatch, model.run(params, x), B)
