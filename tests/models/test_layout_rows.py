"""The batch-row declarations: ``Layout.independent_rows`` (a model's) and ``Site.batch_major`` (a site's).

A model whose batch rows never mix declares it once (``independent_rows``: every built-in
model, a hook model or a ``from_module`` mapping only where it is true) and each site whose
rows lie per batch row says so (``batch_major``).  The declarations are checked here against
what the trajectory does: a probe that lives in one batch row stays in that row through Pᵀ
and P, and every site's D_wᵀ maps it into that row's rows of A_w only.  A model whose rows do
mix (a batch-centring hook layer) fails that check and does not declare it.
"""

from __future__ import annotations

import numpy as np
import pytest

from kpflow.models import (
    GRU,
    LSTM,
    MLP,
    RNN,
    FeedForward,
    Implicit,
    LeakyRNN,
    Recurrent,
    SelfAttention,
    TransformerEncoder,
)
from kpflow.models.layout import Layout
from kpflow.ntk import propagator

torch = pytest.importorskip("torch")

F64 = torch.float64


def _rows_outside(V, b, B):
    """‖V outside batch row b‖ for V of shape (k, B, …)."""
    mask = torch.ones(B, dtype=torch.bool)
    mask[b] = False
    return float(torch.linalg.vector_norm(V[:, mask]))


def _site_rows_outside(site, U, b, B):
    """‖D_wᵀ V outside batch row b's rows of A_w‖: rows (use, batch row, site of the row)."""
    k, n, k_w = U.shape
    return _rows_outside(U.reshape(k, n // site.m, B, -1, k_w).transpose(1, 2), b, B)


def _mixing(traj):
    """The largest leak of a one-row probe into another batch row, through Pᵀ, P and each D_wᵀ."""
    B = int(traj.layout.shape[0])
    P = propagator(traj)
    leak = 0.0
    for b in (0, B - 1):
        V = torch.zeros((1, *traj.state_shape), dtype=F64)
        V[:, b] = torch.asarray(np.random.default_rng(b).standard_normal(V[:, b].shape))
        X = P._rmatmat(V)
        leak = max(leak, _rows_outside(X, b, B), _rows_outside(P._matmat(V), b, B))
        for site in traj.sites:
            leak = max(leak, _site_rows_outside(site, site.apply_DT(X), b, B))
    return leak / float(torch.linalg.vector_norm(X))


def _hook_cell(**declared):
    def step(params, h, x, site):
        # W at two calls: its rows are (call, b, t)
        return torch.tanh(site("W", h) + site("U", x) + site("b")) + 0.5 * torch.tanh(
            site("W", torch.tanh(h))
        )

    return Recurrent(step, n_in=2, n_hidden=3, param_shapes={"W": (3, 3), "U": (3, 2), "b": (3,)}, **declared)


def _feedforward(centre=False, **declared):
    def hidden(params, z, site):
        u = site("W0", z) + site("b0")
        return torch.tanh(u - torch.mean(u, dim=0, keepdim=True) if centre else u)

    shapes = {"W0": (4, 2), "b0": (4,), "W1": (3, 4)}
    layers = [hidden, lambda params, z, site: site("W1", z)]
    return FeedForward(layers, n_in=2, widths=[4, 3], param_shapes=shapes, **declared)


def _implicit(**declared):
    def residual(params, z, x, site):
        return z - torch.tanh(site("W", z) + site("U", x))

    return Implicit(residual, n_in=2, n_state=3, param_shapes={"W": (3, 3), "U": (3, 2)}, **declared)


#: name: (factory, x shape, declared independent rows)
DECLARED = {
    "rnn": (lambda: RNN(2, 3), (3, 4, 2), True),
    "leaky": (lambda: LeakyRNN(2, 3, dt=0.3, bias=True), (3, 4, 2), True),
    "gru": (lambda: GRU(2, 3), (3, 4, 2), True),
    "lstm": (lambda: LSTM(2, 3), (3, 4, 2), True),
    "mlp": (lambda: MLP((2, 4, 3)), (3, 2), True),
    "attention": (lambda: SelfAttention(4, 2, causal=True), (3, 3, 4), True),
    "transformer": (lambda: TransformerEncoder(4, 2, 3, 1, max_len=4, final_norm=True), (3, 3, 4), True),
    "hook_cell": (lambda: _hook_cell(), (3, 4, 2), False),
    "hook_cell_declared": (lambda: _hook_cell(independent_rows=True), (3, 4, 2), True),
    "feedforward": (lambda: _feedforward(), (3, 2), False),
    "feedforward_declared": (lambda: _feedforward(independent_rows=True), (3, 2), True),
    "implicit_declared": (lambda: _implicit(independent_rows=True), (3, 2), True),
}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_a_declared_model_never_mixes_rows(name):
    make, x_shape, declared = DECLARED[name]
    model = make()
    params = model.init(0, like=torch.zeros(1, dtype=F64))
    traj = model.run(params, torch.asarray(np.random.default_rng(1).standard_normal(x_shape)))
    assert traj.layout.independent_rows is declared
    if declared:
        assert all(site.batch_major for site in traj.sites)
        assert _mixing(traj) <= 1e-14


def test_a_batch_centring_layer_mixes_rows_and_does_not_declare_it():
    model = _feedforward(centre=True)
    params = model.init(0, like=torch.zeros(1, dtype=F64))
    traj = model.run(params, torch.asarray(np.random.default_rng(2).standard_normal((3, 2))))
    assert traj.layout.independent_rows is False
    assert _mixing(traj) > 1e-2  # the check above sees mixing where there is some


def test_from_module_declares_independent_rows_where_true():
    from kpflow.backends.torch import from_module

    torch.manual_seed(0)
    x = torch.randn(3, 4, 2, dtype=F64)
    for module in (
        torch.nn.GRU(2, 3, batch_first=True, dtype=F64),  # the built-in GRU
        torch.nn.LSTM(2, 3, num_layers=2, batch_first=True, dtype=F64),  # a layer stack
    ):
        model, params = from_module(module, detach=True)
        traj = model.run(params, x)
        assert traj.layout.independent_rows is True
        assert all(site.batch_major for site in traj.sites)
        assert _mixing(traj) <= 1e-14

    class Cell(torch.nn.Module):  # a user cell: kpflow cannot tell whether it mixes rows
        input_size, hidden_size = 2, 3

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(5, 3, dtype=F64)

        def forward(self, x, h):
            return torch.tanh(self.lin(torch.cat([x, h], dim=-1)))

    cell, params = from_module(Cell(), recurrent=True, detach=True)
    assert cell.run(params, x).layout.independent_rows is False


def test_the_declarations_take_true_or_false_only():
    with pytest.raises(TypeError, match="independent_rows to be True or False, got 1"):
        Layout((2, 3), ("batch", "units"), "single", site_axes=1, independent_rows=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="FeedForward: expected independent_rows to be True or False"):
        _feedforward(independent_rows="yes")
    with pytest.raises(TypeError, match="Recurrent: expected independent_rows"):
        _hook_cell(independent_rows=None)
    with pytest.raises(TypeError, match="Implicit: expected independent_rows"):
        _implicit(independent_rows=0)
    from kpflow.models.sites import LinearSite, Site

    with pytest.raises(TypeError, match=r"Site\('w'\): expected batch_major to be True or False, got 1"):
        Site("w", torch.ones(3, 1, dtype=F64), state_shape=(3, 2), scale=1.0, width=2, batch_major=1)
    with pytest.raises(TypeError, match="LinearSite.*batch_major"):
        LinearSite(
            "w",
            torch.ones(3, 1, dtype=F64),
            state_shape=(3, 2),
            width=2,
            apply=lambda xp, ops, U: U,
            adjoint=lambda xp, ops, V: V,
            batch_major="no",
        )
    assert Layout((2, 3), ("batch", "units"), "single", site_axes=1).independent_rows is False
