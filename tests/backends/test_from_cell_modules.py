"""``from_module`` of recurrent torch modules: cells, user cells, multi-layer and time-major RNNs.

Every NTK is checked in float64 against an independent dense reference: torch.func.jacrev of
the torch module's own forward (nn.GRU / nn.LSTM / nn.RNN, or the cell module called step by
step), whose parameters are the module's.  The multi-layer RNNs' layer stack has its own
file, tests/backends/test_from_cell_stack.py; here its readout, frozen parameters and refusals.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="from_module maps torch.nn modules")

from kpflow.backends.torch import from_module  # noqa: E402

import kpflow  # noqa: E402
import kpflow.linalg as kla  # noqa: E402
from kpflow.models.sites import Site  # noqa: E402

F64 = torch.float64
B, T, N_IN, H = 2, 3, 2, 3


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _jacrev_ntk(f, params):
    """J Jᵀ of ``f(params)`` (flattened) over the trained ``params`` (a dict of tensors)."""
    names = sorted(params)
    values = tuple(params[k].detach() for k in names)
    jac = torch.func.jacrev(lambda *v: f(dict(zip(names, v, strict=True))), argnums=tuple(range(len(names))))(
        *values
    )
    n = jac[0].shape[: jac[0].ndim - values[0].ndim].numel()
    J = torch.cat([j.reshape(n, -1) for j in jac], dim=1)
    return J @ J.T


def _trained(module, torch_names):
    """The module's trained parameters under kpflow's names (``torch_names``: kpflow -> torch)."""
    named = dict(module.named_parameters())
    return {k: named[t] for k, t in torch_names.items() if named[t].requires_grad}


def _block(N, S, cols):
    """The (B·T·w)² block of a dense NTK_S on the per-site columns ``cols``."""
    lo, hi = cols
    return N.reshape(B, T, S, B, T, S)[:, :, lo:hi, :, :, lo:hi].reshape(B * T * (hi - lo), -1)


# -- multi-layer nn.GRU: the readout (the layer stack itself: tests/backends/test_from_cell_stack.py) ---
def test_two_layer_gru_with_a_readout_gives_the_output_ntk_of_readout_after_the_module():
    torch.manual_seed(2)
    net, readout = torch.nn.GRU(N_IN, H, num_layers=2, dtype=F64), torch.nn.Linear(H, 2, dtype=F64)
    model, params, ro_model, ro_params = from_module(net, readout)
    x = torch.randn(T, B, N_IN, dtype=F64)
    N = kpflow.output_ntk(model.run(params, x), ro_params).todense().reshape(B * T * 2, -1)
    both = {**params, **{f"readout.{k}": v for k, v in ro_params.items()}}

    def f(p):
        out = torch.func.functional_call(net, {k: v for k, v in p.items() if "readout" not in k}, (x,))[0]
        return torch.func.functional_call(readout, {k[8:]: v for k, v in p.items() if "readout" in k}, (out,))

    assert _rel(N, _jacrev_ntk(lambda p: f(p).transpose(0, 1), both)) <= 1e-12
    assert ro_model.n_out == 2


# -- the torch cells ----------------------------------------------------------------------------------
def _unroll_cell(cell, x, h0, p):
    """The cell's own forward called step by step, h (or h of (h, c)) at every step: (B, T, H)."""
    h, out = h0, []
    for t in range(x.shape[1]):
        h = torch.func.functional_call(cell, p, (x[:, t], h))
        out.append(h[0] if isinstance(h, tuple) else h)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("cls", [torch.nn.GRUCell, torch.nn.LSTMCell, torch.nn.RNNCell])
def test_torch_cells_map_to_the_builtin_models_with_exact_rules_and_equal_jacrev(cls):
    torch.manual_seed(3)
    cell = cls(N_IN, H, dtype=F64)
    model, params = from_module(cell, recurrent=True, detach=True)
    x = torch.randn(B, T, N_IN, dtype=F64)
    h0 = torch.randn(B, H, dtype=F64)
    h0_arg = (h0, torch.randn(B, H, dtype=F64)) if cls is torch.nn.LSTMCell else h0
    traj = model.run(params, x, h0_arg)
    assert type(model).__name__ == {"GRUCell": "GRU", "LSTMCell": "LSTM", "RNNCell": "RNN"}[cls.__name__]
    ref = _jacrev_ntk(lambda p: _unroll_cell(cell, x, h0_arg, p), _trained(cell, {k: k for k in params}))
    N = kpflow.global_ntk(traj, part="h").todense().reshape(B * T * H, -1)
    assert _rel(N, ref) <= 1e-12
    K = kpflow.parameter_kernel(traj)
    tr, dense_trace = kla.trace(K), float(torch.trace(K.todense().reshape(K.size_in, -1)))
    assert tr.method == "exact" and abs(float(tr.value) - dense_trace) <= 1e-10 * abs(dense_trace)


def test_frozen_cell_and_layer_parameters_are_left_out():
    torch.manual_seed(4)
    cell = torch.nn.GRUCell(N_IN, H, dtype=F64)
    cell.weight_ih.requires_grad_(False)
    model, params = from_module(cell, detach=True)
    assert model.frozen == {"weight_ih"} and "weight_ih" in params
    x = torch.randn(B, T, N_IN, dtype=F64)
    traj = model.run(params, x)
    ref = _jacrev_ntk(lambda p: _unroll_cell(cell, x, None, p), _trained(cell, {k: k for k in params}))
    assert _rel(kpflow.global_ntk(traj).todense().reshape(B * T * H, -1), ref) <= 1e-12

    net = torch.nn.GRU(N_IN, H, num_layers=2, dtype=F64)
    net.weight_hh_l1.requires_grad_(False)
    net.bias_ih_l0.requires_grad_(False)
    model, params = from_module(net, detach=True)
    assert model.frozen == {"weight_hh_l1", "bias_ih_l0"}
    xt = torch.randn(T, B, N_IN, dtype=F64)
    traj = model.run(params, xt)
    ref = _jacrev_ntk(
        lambda p: torch.func.functional_call(net, p, (xt,))[0].transpose(0, 1),
        _trained(net, {k: k for k in params}),
    )
    N = _block(kpflow.global_ntk(traj).todense(), 2 * H, (H, 2 * H))
    assert _rel(N, ref) <= 1e-12


# -- a user cell module ---------------------------------------------------------------------------------
class LeakyCell(torch.nn.Module):
    """h' = h + α ⊙ (tanh(W_in x + W_rec h + b) − h), α a trained vector."""

    def __init__(self, n_in, n_hidden):
        super().__init__()
        self.input_size, self.hidden_size = n_in, n_hidden
        self.inp = torch.nn.Linear(n_in, n_hidden, dtype=F64)
        self.rec = torch.nn.Linear(n_hidden, n_hidden, bias=False, dtype=F64)
        self.alpha = torch.nn.Parameter(torch.rand(n_hidden, dtype=F64))

    def forward(self, x, h):
        return h + self.alpha * (torch.tanh(self.inp(x) + self.rec(h)) - h)


class PairCell(torch.nn.Module):
    """A state (h, c): c' = c + tanh(W x + U h), h' = tanh(c') (a tuple state, as LSTMCell's)."""

    def __init__(self, n_in, n_hidden):
        super().__init__()
        self.input_size, self.hidden_size = n_in, n_hidden
        self.w = torch.nn.Linear(n_in, n_hidden, dtype=F64)
        self.u = torch.nn.Linear(n_hidden, n_hidden, dtype=F64)

    def forward(self, x, state):
        h, c = state
        c = c + torch.tanh(self.w(x) + self.u(h))
        return torch.tanh(c), c


def test_user_cell_gets_exact_sites_and_equals_jacrev_of_its_forward():
    torch.manual_seed(5)
    cell = LeakyCell(N_IN, H)
    model, params = from_module(cell, recurrent=True, detach=True)
    assert sorted(params) == ["alpha", "inp.bias", "inp.weight", "rec.weight"]
    x = torch.randn(B, T, N_IN, dtype=F64)
    traj = model.run(params, x, torch.randn(B, H, dtype=F64))
    with torch.no_grad():
        assert torch.allclose(traj.states, _unroll_cell(cell, x, traj.h0, dict(cell.named_parameters())))
    # every site here has a diagonal D: per-unit Sites, so K's exact rules answer
    assert all(type(s) is Site for s in traj.sites)
    ref = _jacrev_ntk(lambda p: _unroll_cell(cell, x, traj.h0, p), _trained(cell, {k: k for k in params}))
    assert _rel(kpflow.global_ntk(traj).todense().reshape(B * T * H, -1), ref) <= 1e-12
    K = kpflow.parameter_kernel(traj)
    Kd = K.todense().reshape(K.size_in, -1)
    tr, er = kla.trace(K), kla.effective_rank(K)
    assert tr.method == er.method == "exact"
    assert abs(float(tr.value) - float(torch.trace(Kd))) <= 1e-10 * float(tr.value)
    eig = torch.linalg.eigvalsh(Kd)
    assert abs(float(er.value) - float(eig.sum() ** 2 / (eig**2).sum())) <= 1e-8
    top = kla.eigsh(K, k=2)
    assert torch.allclose(torch.sort(top.eigenvalues).values, eig[-2:], rtol=1e-9, atol=0)
    # frozen: α fixed
    cell.alpha.requires_grad_(False)
    model, params = from_module(cell, recurrent=True, detach=True)
    traj = model.run(params, x)
    zero = torch.zeros(B, H, dtype=F64)
    ref = _jacrev_ntk(lambda p: _unroll_cell(cell, x, zero, p), _trained(cell, {k: k for k in params}))
    assert _rel(kpflow.global_ntk(traj).todense().reshape(B * T * H, -1), ref) <= 1e-12


def test_user_cell_with_a_tuple_state_equals_jacrev_of_its_forward():
    torch.manual_seed(6)
    cell = PairCell(N_IN, H)
    model, params, _, ro_params = from_module(cell, torch.nn.Linear(H, 1, dtype=F64), recurrent=True)
    x = torch.randn(B, T, N_IN, dtype=F64)
    h0 = (torch.randn(B, H, dtype=F64), torch.randn(B, H, dtype=F64))
    traj = model.run(params, x, h0)
    assert traj.site_state_size == 2 * H and traj.feature_columns == (0, H)
    ref = _jacrev_ntk(lambda p: _unroll_cell(cell, x, h0, p), _trained(cell, {k: k for k in params}))
    N = _block(kpflow.global_ntk(traj).todense(), 2 * H, (0, H))
    assert _rel(N, ref) <= 1e-12
    assert kpflow.output_ntk(traj, ro_params).shape_in == (B, T, 1)


# -- refusals ------------------------------------------------------------------------------------------
def test_bad_recurrent_modules_are_refused_naming_what_is_accepted():
    class NoSizes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x, h):
            return torch.tanh(self.lin(x) + h)

    with pytest.raises(ValueError, match=r"input_size and hidden_size.*NoSizes.input_size is None.*Accepted"):
        from_module(NoSizes(), recurrent=True)

    class Matrix(LeakyCell):
        def __init__(self):
            super().__init__(2, 3)
            self.M = torch.nn.Parameter(torch.eye(3, dtype=F64))

    with pytest.raises(ValueError, match=r"M \(3, 3\) are neither in a torch.nn.Linear nor 1-D\. Accepted"):
        from_module(Matrix(), recurrent=True)
    with pytest.raises(ValueError, match="unsupported GRU setting.*bidirectional=True"):
        from_module(torch.nn.GRU(2, 3, num_layers=2, bidirectional=True))
    with pytest.raises(TypeError, match="expected readout to be a torch.nn.Linear or None, got GRUCell"):
        from_module(torch.nn.GRUCell(2, 3), torch.nn.GRUCell(3, 3))
    with pytest.raises(ValueError, match="readout.in_features to equal the module's hidden_size=3, got 4"):
        from_module(torch.nn.GRU(2, 3, num_layers=2), torch.nn.Linear(4, 1))
