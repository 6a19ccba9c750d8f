"""The saved linearisation's own routes (float64): a norm as a saved linear map.

Each product from the saved linearisation is checked against the uncached ``torch.func``
route (the forward re-run per product, the norm's own autograd formulas) and against
``torch.func.jacrev`` of the module's own forward.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="from_module maps torch.nn modules")

from kpflow.backends.torch import from_module  # noqa: E402

import kpflow  # noqa: E402
from tests.backends.test_from_module_graph import _graph_nodes, jacrev_ntk  # noqa: E402

DT = torch.float64


class NormBlock(torch.nn.Module):
    """Linear, a norm (not a state), tanh, a residual add, a second norm, a readout."""

    def __init__(self, make):
        super().__init__()
        nn = torch.nn
        self.inp = nn.Linear(3, 4)
        self.norm1, self.mid, self.norm2 = make(4), nn.Linear(4, 4), make(4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = self.inp(x)
        h = h + torch.tanh(self.mid(self.norm1(h)))
        return self.out(self.norm2(h) * h)


NORMS = {
    "LayerNorm": lambda n: torch.nn.LayerNorm(n),
    "LayerNorm_no_bias": lambda n: torch.nn.LayerNorm(n, bias=False),
    "RMSNorm": lambda n: torch.nn.RMSNorm(n),
}


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_norms_as_saved_linear_maps_match_the_uncached_route_and_jacrev(norm):
    torch.manual_seed(4)
    net = NormBlock(NORMS[norm]).double()
    with torch.no_grad():  # away from γ = 1, β = 0
        for m in (net.norm1, net.norm2):
            for p in m.parameters():
                p.normal_()
    model, params = from_module(net, states=["inp", "mid", "out"], detach=True)
    traj = model.run(params, torch.randn(3, 2, 3, dtype=DT))
    V = torch.randn(3, *traj.state_shape, dtype=DT)
    n = traj.states.numel()
    with torch.no_grad():
        for cut in (False, True):
            saved = traj._linearisation(cut).matmat(V)
            f, zeros = traj._all_sites_fn(traj._values(), cut=cut)
            uncached = traj._gram_matmat(f, zeros, V)  # the norms' own autograd formulas
            assert torch.allclose(saved, uncached, rtol=1e-12, atol=1e-13)
        N = kpflow.global_ntk(traj).todense().reshape(n, n)
        K = kpflow.parameter_kernel(traj).todense().reshape(n, n)
    ref = jacrev_ntk(net, model.state_names, (traj.inputs[0],))
    assert float(torch.linalg.norm(N - ref)) <= 1e-12 * float(torch.linalg.norm(ref))
    K_ref = kpflow.parameter_kernel(traj, method="autodiff").todense().reshape(n, n)
    assert torch.allclose(K, K_ref, rtol=1e-12, atol=1e-13)
    names = {type(g).__name__ for o in traj._linearisation(False).outs for g in _graph_nodes(o.grad_fn)}
    assert "_TangentLineBackward" in names
    assert not names & {"NativeLayerNormBackward0", "RsqrtBackward0", "MeanBackward1"}


def test_products_reuse_their_scratch_without_mixing_probes():
    # a frozen input layer, then one Linear whose output is the only state: J_w passes the
    # middle's block straight to the output
    torch.manual_seed(5)
    nn = torch.nn
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    net[0].requires_grad_(False)
    model, params = from_module(net, states=["2"], detach=True)
    traj = model.run(params, torch.randn(5, 3, dtype=DT))
    V = torch.randn(3, *traj.state_shape, dtype=DT)
    keep = V.clone()
    with torch.no_grad():
        lin = traj._linearisation(False)
        block = lin.matmat(V)
        one_by_one = torch.cat([lin.matmat(V[i : i + 1]) for i in range(3)])
        f, zeros = traj._all_sites_fn(traj._values(), cut=False)
        ref = traj._gram_matmat(f, zeros, V)
    assert torch.equal(V, keep)  # the probes are not written to
    assert torch.allclose(block, ref, rtol=1e-12, atol=1e-13)
    assert torch.equal(block, one_by_one)  # no probe's result holds another's scratch
