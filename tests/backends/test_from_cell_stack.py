"""``from_module`` of multi-layer ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``: the layer stack.

Every check is float64 against a dense reference that shares no code with kpflow: the torch
module's own forward, single-layer torch modules chained by hand, or torch cells unrolled by
hand, differentiated by ``torch.func.jacrev``.  The layer stack's constraint is
z = f(z) with f(z)^l_t = cell_l(h^{l−1}_t, z^l_{t−1}) (h⁰ = x): K is the Gram of ∂f/∂θ at fixed
z (each layer's per-unit sites, so its exact rules answer), P = (I − ∂f/∂z)⁻¹ = dz/de for a
source e added to every layer's output before the layer above reads it, and NTK_S = P K Pᵀ
is the module's own J_S J_Sᵀ.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="from_module maps torch.nn modules")

from kpflow.backends.torch import from_module  # noqa: E402

import kpflow  # noqa: E402
import kpflow.linalg as kla  # noqa: E402
from kpflow.models.sites import Site  # noqa: E402
from tests.backends.test_from_cell_modules import _jacrev_ntk as _gram  # noqa: E402
from tests.backends.test_from_cell_modules import _rel  # noqa: E402
from tests.conftest import examples  # noqa: E402

F64 = torch.float64
B, T, N_IN, H = 2, 3, 2, 3
WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _make(cls, layers, batch_first, seed, nonlinearity="tanh"):
    torch.manual_seed(seed)
    options = {"nonlinearity": nonlinearity} if cls is torch.nn.RNN else {}
    return cls(N_IN, H, num_layers=layers, batch_first=batch_first, dtype=F64, **options)


def _cell(net, l):
    """Layer l of ``net`` as the torch cell of its kind (weights given at the call)."""
    n_in = N_IN if l == 0 else H
    if isinstance(net, torch.nn.LSTM):
        return torch.nn.LSTMCell(n_in, H, dtype=F64)
    if isinstance(net, torch.nn.GRU):
        return torch.nn.GRUCell(n_in, H, dtype=F64)
    return torch.nn.RNNCell(n_in, H, nonlinearity=net.nonlinearity, dtype=F64)


def _split(z, layers, lstm):
    """Layer l's state of the stacked z: h, or (h, c) for an LSTM."""
    out = []
    for l in range(layers):
        h = z[..., l * H : (l + 1) * H]
        out.append((h, z[..., (layers + l) * H : (layers + l + 1) * H]) if lstm else h)
    return out


def _join(states, lstm):
    if lstm:
        return torch.cat([s[0] for s in states] + [s[1] for s in states], dim=-1)
    return torch.cat(states, dim=-1)


def _unrolled_cells(net, x, h0, p, e=None):
    """The stacked states (B, T, S) of ``net``'s layers as torch cells stepped by hand.

    ``x`` is (B, T, n_in), ``h0`` the stacked (B, S) initial state, ``p`` the weights under
    torch's names; ``e`` (B, T, S), optional, is added to every layer's output at every step
    before the layer above (and the next step) reads it.
    """
    layers, lstm = net.num_layers, isinstance(net, torch.nn.LSTM)
    cells = [_cell(net, l) for l in range(layers)]
    state, out = _split(h0, layers, lstm), []
    for t in range(x.shape[1]):
        inp, new = x[:, t], []
        sources = None if e is None else _split(e[:, t], layers, lstm)
        for l, cell in enumerate(cells):
            s = torch.func.functional_call(cell, {w: p[f"{w}_l{l}"] for w in WEIGHTS}, (inp, state[l]))
            if sources is not None:
                s = (s[0] + sources[l][0], s[1] + sources[l][1]) if lstm else s + sources[l]
            new.append(s)
            inp = s[0] if lstm else s
        state = new
        out.append(_join(new, lstm))
    return torch.stack(out, dim=1)


CASES = [
    (torch.nn.GRU, 2, False, "tanh"),
    (torch.nn.GRU, 3, True, "tanh"),
    (torch.nn.LSTM, 2, True, "tanh"),
    (torch.nn.LSTM, 3, False, "tanh"),
    (torch.nn.RNN, 2, False, "tanh"),
    (torch.nn.RNN, 3, True, "relu"),
]


@pytest.mark.parametrize(("cls", "layers", "batch_first", "act"), CASES)
def test_stacked_states_and_ntk_equal_jacrev_of_the_torch_module(cls, layers, batch_first, act):
    net = _make(cls, layers, batch_first, 0, act)
    model, params = from_module(net, detach=True)
    assert sorted(params) == sorted(n for n, _ in net.named_parameters())
    x = torch.randn(*((B, T) if batch_first else (T, B)), N_IN, dtype=F64)  # the module's own layout
    lstm = cls is torch.nn.LSTM
    h0 = torch.randn(layers, B, H, dtype=F64)
    h0_arg = (h0, torch.randn(layers, B, H, dtype=F64)) if lstm else h0
    traj = model.run(params, x, h0_arg)
    S = traj.site_state_size
    assert S == (2 if lstm else 1) * layers * H
    assert traj.feature_columns == ((layers - 1) * H, layers * H)
    assert all(type(s) is Site for s in traj.sites)  # per-unit D: the exact rules' sites
    weights = dict(net.named_parameters())

    def own(p):  # the module's own forward: the last layer's h, as (B, T, H)
        out = torch.func.functional_call(net, p, (x, h0_arg))[0]
        return out if batch_first else out.transpose(0, 1)

    last = slice((layers - 1) * H, layers * H)
    with torch.no_grad():
        assert torch.allclose(traj.states[..., last], own(weights), rtol=0, atol=1e-13)
    N = kpflow.global_ntk(traj).todense().reshape(B, T, S, B, T, S)
    assert _rel(N[:, :, last, :, :, last].reshape(B * T * H, -1), _gram(own, weights)) <= 1e-12

    # every layer's h (and c): the torch cells of each layer stepped by hand
    xb = x if batch_first else x.transpose(0, 1)
    flat = [torch.reshape(torch.transpose(a, 0, 1), (B, -1)) for a in (h0_arg if lstm else (h0,))]
    h0_stacked = torch.cat(flat, dim=-1)
    with torch.no_grad():
        assert torch.allclose(traj.states, _unrolled_cells(net, xb, h0_stacked, weights), rtol=0, atol=1e-13)
    full = _gram(lambda p: _unrolled_cells(net, xb, h0_stacked, p), weights)
    assert _rel(N.reshape(B * T * S, -1), full) <= 1e-12


def _fixed_state_map(net, x, z, h0):
    """θ ↦ f(z; θ) at the stacked states z (B, T, S): each layer's torch cell on its own
    z_{t−1} (h0 at t = 0) and on layer l−1's h of z at t (x for layer 0)."""
    layers, lstm = net.num_layers, isinstance(net, torch.nn.LSTM)
    parts, init = _split(z, layers, lstm), _split(h0, layers, lstm)
    cells = [_cell(net, l) for l in range(layers)]

    def prev(l, t):
        if t == 0:
            return init[l]
        return (parts[l][0][:, t - 1], parts[l][1][:, t - 1]) if lstm else parts[l][:, t - 1]

    def f(p):
        out = []
        for l, cell in enumerate(cells):
            weights = {w: p[f"{w}_l{l}"] for w in WEIGHTS}
            steps = []
            for t in range(z.shape[1]):
                inp = x[:, t] if l == 0 else (parts[l - 1][0] if lstm else parts[l - 1])[:, t]
                steps.append(torch.func.functional_call(cell, weights, (inp, prev(l, t))))
            if lstm:
                out.append(tuple(torch.stack([s[i] for s in steps], dim=1) for i in (0, 1)))
            else:
                out.append(torch.stack(steps, dim=1))
        return _join(out, lstm)

    return f


@pytest.mark.parametrize(("cls", "layers"), [(torch.nn.GRU, 2), (torch.nn.LSTM, 2), (torch.nn.RNN, 3)])
def test_exact_rules_of_K_report_exact_and_equal_the_dense_K_of_the_torch_cells(cls, layers):
    net = _make(cls, layers, True, 1)
    model, params = from_module(net, detach=True)
    x = torch.randn(B, T, N_IN, dtype=F64)
    traj = model.run(params, x)
    S = traj.site_state_size
    h0 = torch.zeros(B, S, dtype=F64)
    Kd = _gram(_fixed_state_map(net, x, traj.states.detach(), h0), dict(net.named_parameters()))
    K = kpflow.parameter_kernel(traj)
    assert _rel(K.todense().reshape(B * T * S, -1), Kd) <= 1e-12
    eig = torch.linalg.eigvalsh(Kd)
    tr, er, top = kla.trace(K), kla.effective_rank(K), kla.eigsh(K, k=3)
    assert tr.method == er.method == "exact"
    exact = kla.rules.exact_eigsh(K, 3)  # the closed-form spectrum (None where it does not apply)
    assert exact is not None and top.num_matvecs == 3  # eigsh took it: 3 products check residuals
    assert abs(float(tr.value) - float(eig.sum())) <= 1e-10 * float(eig.sum())
    assert abs(float(er.value) - float(eig.sum() ** 2 / (eig**2).sum())) <= 1e-9
    assert torch.allclose(torch.sort(top.eigenvalues).values, eig[-3:], rtol=1e-9, atol=0)
    assert torch.allclose(torch.sort(exact.eigenvalues).values, eig[-3:], rtol=1e-9, atol=0)


@pytest.mark.parametrize("cls", [torch.nn.GRU, torch.nn.LSTM])
def test_propagator_is_dz_de_for_a_source_on_every_layer_of_the_unrolled_torch_cells(cls):
    net = _make(cls, 2, False, 2)
    model, params = from_module(net, detach=True)
    x = torch.randn(T, B, N_IN, dtype=F64)
    traj = model.run(params, x)
    S, weights = traj.site_state_size, dict(net.named_parameters())
    zero = torch.zeros(B, S, dtype=F64)

    def unrolled(e):  # z = f(z) + e: dz/de = (I − ∂f/∂z)⁻¹ = P
        return _unrolled_cells(net, x.transpose(0, 1), zero, weights, e)

    with torch.no_grad():
        P_ref = torch.func.jacrev(unrolled)(torch.zeros(B, T, S, dtype=F64)).reshape(B * T * S, -1)
    P = kpflow.propagator(traj)
    assert _rel(P.todense().reshape(B * T * S, -1), P_ref) <= 1e-12
    assert _rel(P.T.todense().reshape(B * T * S, -1), P_ref.T) <= 1e-12
    V = torch.randn(2, *traj.state_shape, dtype=F64)
    assert torch.allclose(P.inverse().matmat(P.matmat(V)), V, rtol=0, atol=1e-12)
    assert torch.allclose(P.inverse().rmatmat(P.rmatmat(V)), V, rtol=0, atol=1e-12)


def test_gradients_through_the_stacked_states_equal_autograd_of_the_torch_cells():
    net = _make(torch.nn.LSTM, 2, True, 3)
    model, params = from_module(net)  # the module's own Parameters: run's backward is kpflow's J_Sᵀ
    x = torch.randn(B, T, N_IN, dtype=F64)
    traj = model.run(params, x)
    g = torch.randn(traj.state_shape, dtype=F64)
    (traj.states * g).sum().backward()
    weights = dict(net.named_parameters())
    names = sorted(weights)
    zero = torch.zeros(B, traj.site_state_size, dtype=F64)
    ref = torch.autograd.grad((_unrolled_cells(net, x, zero, weights) * g).sum(), [weights[k] for k in names])
    for name, expected in zip(names, ref, strict=True):
        assert torch.allclose(weights[name].grad, expected, rtol=1e-12, atol=1e-13), name


# -- hypothesis over sizes --------------------------------------------------------------------------
@settings(max_examples=examples(4))
@given(
    kind=st.sampled_from(["GRU", "LSTM", "RNN"]),
    b=st.integers(1, 2),
    t=st.integers(1, 3),
    h=st.integers(1, 2),
    layers=st.integers(2, 3),
    batch_first=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_multi_layer_ntk_equals_jacrev_over_sizes(kind, b, t, h, layers, batch_first, seed):
    torch.manual_seed(seed)
    net = getattr(torch.nn, kind)(2, h, num_layers=layers, batch_first=batch_first, dtype=F64)
    model, params = from_module(net, detach=True)
    x = torch.randn(*((b, t) if batch_first else (t, b)), 2, dtype=F64)
    traj = model.run(params, x)

    def f(p):
        out = torch.func.functional_call(net, p, (x,))[0]
        return out if batch_first else out.transpose(0, 1)

    ref = _gram(f, dict(net.named_parameters()))
    S = traj.site_state_size
    lo = (layers - 1) * h
    N = kpflow.global_ntk(traj).todense().reshape(b, t, S, b, t, S)[:, :, lo : lo + h, :, :, lo : lo + h]
    assert _rel(N.reshape(b * t * h, -1), ref) <= 1e-11
    K = kpflow.parameter_kernel(traj)
    dense = float(torch.trace(K.todense().reshape(K.size_in, -1)))
    tr = kla.trace(K)
    assert tr.method == "exact" and abs(float(tr.value) - dense) <= 1e-10 * dense
