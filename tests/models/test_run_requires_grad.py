"""``model.run`` with parameters that require grad: differentiable states without autograd's temporaries.

On torch, ``Model.run`` computes the states without a graph and attaches them to the
parameters by one node whose backward is kpflow's J_Sᵀ (BPTT, then per-site gradients); the
GRU's derivative caches are recomputed by a backward pass instead of held.  The references
here are torch's own modules (``torch.nn.GRU`` / ``RNN`` / ``LSTM`` forward and autograd) and
``torch.func`` on them: they share no forward code with kpflow.
"""

from __future__ import annotations

import numpy as np
import pytest

import kpflow

torch = pytest.importorskip("torch")
F64 = torch.float64


def _module(kind: str, seed: int):
    torch.manual_seed(seed)
    cls = {"RNN": torch.nn.RNN, "GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM}[kind]
    return cls(2, 3, batch_first=True, dtype=F64)


def _module_states(module, x):
    """The module's own per-step states, laid out as kpflow's (LSTM: [h; c], by a loop of steps)."""
    if not isinstance(module, torch.nn.LSTM):
        return module(x)[0]
    h = c = torch.zeros(x.shape[0], 3, dtype=F64)
    out = []
    cell = torch.nn.LSTMCell(2, 3, dtype=F64)  # run with the module's own Parameters
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    params = {name: getattr(module, f"{name}_l0") for name in names}
    for t in range(x.shape[1]):
        h, c = torch.func.functional_call(cell, params, (x[:, t], (h, c)))
        out.append(torch.cat([h, c], dim=-1))
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("seed", [0, 1])
def test_state_gradients_equal_the_modules_own_autograd(kind, seed):
    from kpflow.backends.torch import from_module

    module = _module(kind, seed)
    model, params = from_module(module)
    x = torch.randn(2, 5, 2, dtype=F64, generator=torch.Generator().manual_seed(seed + 10))
    traj = model.run(params, x)
    assert type(traj.states.grad_fn).__name__ == "_GivenVjpBackward"  # the graph-free route
    g = torch.randn(traj.states.shape, dtype=F64, generator=torch.Generator().manual_seed(seed + 20))
    module.zero_grad()
    (traj.states * g).sum().backward()
    ours = {n: p.grad.clone() for n, p in module.named_parameters()}
    module.zero_grad()
    ref_states = _module_states(module, x)
    np.testing.assert_allclose(
        traj.states.detach().numpy(), ref_states.detach().numpy(), rtol=1e-12, atol=1e-14
    )
    (ref_states * g).sum().backward()
    for n, p in module.named_parameters():
        scale = float(p.grad.abs().max())
        assert scale > 0
        assert float((ours[n] - p.grad).abs().max()) <= 1e-12 * scale, n


def test_differentiable_ntk_products_through_recomputed_caches_match_torch_func():
    # d/dθ of vᵀ NTK_S v: through the GRU's recomputed caches and the states' kpflow node,
    # against torch.func of the module itself (NTK_S = J Jᵀ with J = jacrev of the module).
    from kpflow.backends.torch import from_module

    gru = _module("GRU", 3)
    model, params = from_module(gru)
    x = torch.randn(2, 3, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    v = torch.randn(2, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(5))
    gru.zero_grad()
    ntk = kpflow.global_ntk(model.run(params, x))
    (v * ntk.matvec(v)).sum().backward()
    ours = {n: p.grad.clone() for n, p in gru.named_parameters()}

    names = [n for n, _ in gru.named_parameters()]

    def quadratic(theta):
        def states(th):
            return torch.func.functional_call(gru, dict(zip(names, th, strict=True)), (x,))[0]

        jac = torch.func.jacrev(states)(theta)
        flat = torch.cat([j.reshape(v.numel(), -1) for j in jac], dim=1)  # (N, p)
        w = flat.T @ v.reshape(-1)
        return w @ w

    theta = tuple(p.detach() for _, p in gru.named_parameters())
    ref = torch.func.grad(quadratic)(theta)
    for n, r in zip(names, ref, strict=True):
        assert float((ours[n] - r).abs().max()) <= 1e-10 * float(r.abs().max()), n


def test_a_second_derivative_through_the_states_raises():
    from kpflow.backends.torch import from_module

    model, params = from_module(_module("GRU", 0))
    traj = model.run(params, torch.randn(2, 3, 2, dtype=F64))
    (grad,) = torch.autograd.grad(traj.states.pow(2).sum(), [params["weight_hh"]], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        grad.sum().backward()


def _saved_bytes(fn):
    """Bytes of the tensors autograd saves for backward while ``fn`` runs, and fn's result."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


def test_a_run_saves_no_per_step_temporaries():
    from kpflow.backends.torch import from_module

    torch.manual_seed(0)
    gru = torch.nn.GRU(2, 16, batch_first=True, dtype=F64)
    model, params = from_module(gru)
    x = torch.randn(4, 30, 2, dtype=F64)
    saved, traj = _saved_bytes(lambda: model.run(params, x))
    inputs = sum(p.numel() for p in params.values()) * 8 + 2 * traj.states.numel() * 8 + x.numel() * 8
    # The caches' inputs (params, previous states, x) and the finiteness checks' transients;
    # nothing per step.
    assert saved <= 2 * inputs
    plain, states = _saved_bytes(lambda: model.unroll(params, x))  # autograd's own route
    assert plain > 5 * saved
    np.testing.assert_array_equal(states.detach().numpy(), traj.states.detach().numpy())


def test_inputs_that_require_grad_take_autograds_route():
    from kpflow.backends.torch import from_module

    gru = _module("GRU", 0)
    model, params = from_module(gru)
    x = torch.randn(2, 3, 2, dtype=F64, requires_grad=True)
    traj = model.run(params, x)
    assert type(traj.states.grad_fn).__name__ != "_GivenVjpBackward"
    traj.states.sum().backward()
    assert x.grad is not None and gru.weight_hh_l0.grad is not None


def test_mlp_state_gradients_equal_torch_nn():
    from kpflow.models import MLP

    torch.manual_seed(0)
    layers = torch.nn.ModuleList([torch.nn.Linear(3, 4, dtype=F64), torch.nn.Linear(4, 2, dtype=F64)])
    params = {name: p for name, p in layers.named_parameters(prefix="layers")}
    x = torch.randn(5, 3, dtype=F64)
    traj = MLP((3, 4, 2)).run(params, x)
    assert type(traj.states.grad_fn).__name__ == "_GivenVjpBackward"
    g = torch.randn(traj.states.shape, dtype=F64)
    layers.zero_grad()
    (traj.states * g).sum().backward()
    ours = {n: p.grad.clone() for n, p in params.items()}
    layers.zero_grad()
    z1 = torch.tanh(layers[0](x))
    ref = torch.cat([z1, layers[1](z1)], dim=1)  # the last layer linear, as MLP's default
    np.testing.assert_allclose(traj.states.detach().numpy(), ref.detach().numpy(), rtol=1e-13)
    (ref * g).sum().backward()
    for n, p in params.items():
        assert float((ours[n] - p.grad).abs().max()) <= 1e-12 * float(p.grad.abs().max()), n
