"""from_module(module, states=...) on feed-forward torch modules: NTK_S against jacrev of the forward.

The reference shares no code with kpflow's route: the states are read off forward hooks of
the module's own forward, and J = dz/dθ comes from ``torch.func.jacrev`` over the trained
parameters (float64), NTK_S = J Jᵀ.
"""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch", reason="from_module maps torch.nn modules")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from kpflow.backends.torch import from_module  # noqa: E402

import kpflow  # noqa: E402
import kpflow.linalg as kla  # noqa: E402
from kpflow.linalg import rules  # noqa: E402

DT = torch.float64


def jacrev_ntk(module, states, inputs):
    """J Jᵀ with J = d(states)/d(trained parameters) by jacrev of the module's own forward."""
    trained = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    subs = dict(module.named_modules())
    names = list(trained)

    def z(*values):
        outs = []

        def grab(mod, args, out):
            outs.append(out[0] if isinstance(out, tuple) else out)

        handles = [subs[s].register_forward_hook(grab) for s in states]
        try:
            torch.func.functional_call(module, dict(zip(names, values, strict=True)), inputs)
        finally:
            for h in handles:
                h.remove()
        B = outs[0].shape[0]
        return torch.cat([o.reshape(B, -1) for o in outs], dim=1)

    values = tuple(trained[n] for n in names)
    n = z(*values).numel()
    J = torch.cat(
        [j.reshape(n, -1) for j in torch.func.jacrev(z, argnums=tuple(range(len(names))))(*values)], 1
    )
    return J @ J.T


def kpflow_ntk(module, inputs, states=None):
    model, params = from_module(module, states=states, detach=True)
    traj = model.run(params, *inputs)
    n = traj.states.numel()
    return traj, model, kpflow.global_ntk(traj).todense().reshape(n, n)


def assert_matches(module, inputs, states=None, rtol=1e-12):
    traj, model, N = kpflow_ntk(module, inputs, states)
    ref = jacrev_ntk(module, model.state_names, inputs)
    assert N.dtype == DT
    assert float(torch.linalg.norm(N - ref)) <= rtol * float(torch.linalg.norm(ref))
    return traj


def mlp(n_in, width, n_out, seed=0):
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, n_out)).double()


class ResidualMLP(torch.nn.Module):
    """An input projection, residual blocks (LayerNorm, Linear, GELU, Linear), a long skip, a readout."""

    def __init__(self, d=4, n_blocks=2):
        super().__init__()
        nn = torch.nn
        self.inp = nn.Linear(3, d)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
            for _ in range(n_blocks)
        )
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        h = h0 = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h + h0)


def test_sequential_mlp_states_default_to_its_children_and_match_jacrev():
    traj = assert_matches(mlp(3, 5, 2), (torch.randn(4, 3, dtype=DT),))
    assert traj.model.state_names == ["0", "1", "2"]
    assert traj.state_shape == (4, 12)


def test_residual_mlp_with_layernorm_gelu_and_a_skip_matches_jacrev():
    torch.manual_seed(1)
    traj = assert_matches(
        ResidualMLP().double(), (torch.randn(3, 3, dtype=DT),), states=["inp", "blocks.0", "blocks.1", "out"]
    )
    kinds = {s.name: type(s).__name__ for s in traj.sites}
    assert {"blocks.0.1", "blocks.0.3", "inp", "out"} <= set(kinds)  # every Linear is a weight site
    # LayerNorm affine: γ and β are sites of one row per token (A = [1]), D through x̂ and downstream
    assert {"blocks.0.0.weight", "blocks.0.0.bias"} <= set(kinds)
    gamma = next(s for s in traj.sites if s.name == "blocks.0.0.weight")
    assert tuple(gamma.variables.shape) == (3, 1) and gamma.width == 4


class Tied(torch.nn.Module):
    """A tied embedding / readout and one Linear used twice."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(7, 4)
        self.mid = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 7, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        h = torch.tanh(self.mid(self.emb(ids)))
        return self.head(torch.tanh(self.mid(h)))


def test_tied_weights_and_a_shared_layer_keep_their_cross_terms():
    torch.manual_seed(2)
    traj = assert_matches(Tied().double(), (torch.randint(0, 7, (2, 3)),), states=["emb", "head"])
    mid = next(s for s in traj.sites if s.name == "mid")
    assert mid.variables.shape[0] == 2 * 2 * 3  # two calls × B·N rows: one site, cross terms inside
    assert "emb.weight" in {s.name for s in traj.sites}  # embedding and readout: one site, every use


def test_frozen_parameters_are_left_out():
    net = mlp(3, 5, 2, seed=3)
    net[0].weight.requires_grad_(False)
    _, params = from_module(net)
    assert "0.weight" not in params and params["2.weight"] is net[2].weight
    assert_matches(net, (torch.randn(4, 3, dtype=DT),))


def test_convolutions_are_weight_sites_and_match_jacrev():
    torch.manual_seed(4)
    nn = torch.nn
    net1 = nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1, stride=2), nn.Tanh(), nn.Conv1d(3, 2, 2, dilation=2)
    ).double()
    traj = assert_matches(net1, (torch.randn(2, 2, 7, dtype=DT),))
    assert {s.name for s in traj.sites} == {"0", "2"}
    net2 = nn.Sequential(nn.Conv2d(1, 2, (2, 3), padding=1), nn.ReLU(), nn.Conv2d(2, 1, 2)).double()
    assert_matches(net2, (torch.randn(2, 1, 4, 4, dtype=DT),), states=["0", "2"])


def test_exact_rules_apply_to_found_sites_and_match_dense():
    net = mlp(3, 4, 2, seed=5)
    model, params = from_module(net, states=["0", "2"], detach=True)
    traj = model.run(params, torch.randn(5, 3, dtype=DT))
    assert all(type(s).__name__ == "Site" for s in traj.sites)  # D diagonal into its state's columns
    K = kpflow.parameter_kernel(traj)
    n = traj.states.numel()
    dense = K.todense().reshape(n, n)
    ref = kpflow.parameter_kernel(traj, method="autodiff").todense().reshape(n, n)
    assert torch.allclose(dense, ref, rtol=1e-12, atol=1e-13)
    evals = torch.linalg.eigvalsh(ref).flip(0)
    tr = kla.trace(K, method="exact")
    assert abs(float(tr.value) - float(torch.trace(ref))) <= 1e-12 * float(torch.trace(ref))
    top = rules.exact_eigsh(K, 3)  # the Kronecker core's spectrum rule (None if it declined)
    assert top is not None
    assert torch.allclose(top.eigenvalues, evals[:3], rtol=1e-10, atol=1e-12)
    er = kla.effective_rank(K, method="exact")
    assert abs(float(er.value) - float(evals.sum() ** 2 / (evals**2).sum())) <= 1e-10


@pytest.mark.parametrize("norm", ["LayerNorm", "RMSNorm"])
def test_norm_affine_whose_output_is_a_state_is_a_per_unit_site_with_exact_rules(norm):
    torch.manual_seed(9)
    nn = torch.nn
    net = nn.Sequential(nn.Linear(3, 4), getattr(nn, norm)(4), nn.Tanh(), nn.Linear(4, 2)).double()
    with torch.no_grad():  # away from γ = 1, β = 0
        for p in net[1].parameters():
            p.normal_()
    traj = assert_matches(net, (torch.randn(5, 3, dtype=DT),), states=["0", "1", "3"])
    kinds = {s.name: type(s).__name__ for s in traj.sites}
    own = ["1.weight", "1.bias"] if norm == "LayerNorm" else ["1.weight"]
    assert all(kinds.pop(n) == "Site" for n in own)  # D_γ = diag(x̂), D_β = I into state "1"
    K = kpflow.parameter_kernel(traj)
    n = traj.states.numel()
    dense = K.todense().reshape(n, n)
    ref = kpflow.parameter_kernel(traj, method="autodiff").todense().reshape(n, n)
    assert torch.allclose(dense, ref, rtol=1e-12, atol=1e-13)
    evals = torch.linalg.eigvalsh(ref).flip(0)
    tr = rules.exact_trace(K)  # the Kronecker core's own rules, not probes
    assert tr is not None and abs(float(tr) - float(torch.trace(ref))) <= 1e-12 * float(torch.trace(ref))
    top = rules.exact_eigsh(K, 3)
    assert top is not None and torch.allclose(top.eigenvalues, evals[:3], rtol=1e-10, atol=1e-12)
    er = kla.effective_rank(K, method="exact")
    assert abs(float(er.value) - float(evals.sum() ** 2 / (evals**2).sum())) <= 1e-10


@settings(max_examples=4, deadline=None, derandomize=True)
@given(
    B=st.integers(1, 3),
    n_in=st.integers(1, 3),
    width=st.integers(1, 4),
    n_out=st.integers(1, 2),
    seed=st.integers(0, 9),
)
def test_any_sizes_match_jacrev(B, n_in, width, n_out, seed):
    assert_matches(mlp(n_in, width, n_out, seed), (torch.randn(B, n_in, dtype=DT),))


def test_states_by_pattern_regex_and_callable():
    net = ResidualMLP().double()
    model, _ = from_module(net, states="blocks.*")
    assert model.state_names == ["blocks.0", "blocks.1"]
    model, _ = from_module(net, states=re.compile(r"blocks\.\d+\.3"))
    assert model.state_names == ["blocks.0.3", "blocks.1.3"]
    model, _ = from_module(net, states=lambda name, sub: isinstance(sub, torch.nn.LayerNorm))
    assert model.state_names == ["blocks.0.0", "blocks.1.0"]


def test_errors_list_what_is_accepted():
    with pytest.raises(TypeError, match=r"got a LayerNorm; accepted: any torch.nn.Module with states="):
        from_module(torch.nn.LayerNorm(3))
    with pytest.raises(ValueError, match=r"states names \['nope'\], which are not submodules"):
        from_module(mlp(2, 2, 1), states=["nope"])
    with pytest.raises(TypeError, match=r"expected states to be a list of submodule names"):
        from_module(mlp(2, 2, 1), states=3)
    with pytest.raises(ValueError, match=r"readout= and causal= apply to the built-in mappings only"):
        from_module(mlp(2, 2, 1), readout=torch.nn.Linear(1, 1))


def test_all_sites_in_one_pass_equal_the_per_site_core():
    from kpflow.ntk.kernel import KroneckerCoreKernel

    torch.manual_seed(6)
    model, params = from_module(ResidualMLP().double(), states=["inp", "blocks.0", "blocks.1", "out"])
    traj = model.run(params, torch.randn(3, 3, dtype=DT))
    K = kpflow.parameter_kernel(traj)
    assert K._own_matmat is not None  # the one-pass route
    V = torch.randn(4, *traj.state_shape, dtype=DT)
    per_site = KroneckerCoreKernel(traj.sites, like=traj.states).matmat(V)  # two passes per site
    assert torch.allclose(K.matmat(V), per_site, rtol=1e-12, atol=1e-13)


def test_fused_global_product_equals_p_k_pt():
    torch.manual_seed(7)
    model, params = from_module(ResidualMLP().double(), states=["inp", "blocks.0", "blocks.1", "out"])
    traj = model.run(params, torch.randn(3, 3, dtype=DT))
    N = kpflow.global_ntk(traj)
    V = torch.randn(3, *traj.state_shape, dtype=DT)
    P, K = kpflow.propagator(traj), kpflow.parameter_kernel(traj)
    composed = P.matmat(K.matmat(P.T.matmat(V)))  # four passes: Pᵀ, K (two), P
    assert torch.allclose(N.matmat(V), composed, rtol=1e-12, atol=1e-13)


class ReadsOutside(torch.nn.Module):
    """A Linear whose weight the forward also reads directly (a hand-written tied readout)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)
        self.out = torch.nn.Identity()

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return self.out(h @ self.lin.weight.T)


def test_a_weight_read_outside_its_module_is_counted_at_every_use():
    torch.manual_seed(8)
    traj = assert_matches(ReadsOutside().double(), (torch.randn(2, 3, dtype=DT),), states=["lin", "out"])
    assert {s.name for s in traj.sites} == {"lin.weight", "lin.bias"}  # one-row sites, by autodiff


class AttentionBlock(torch.nn.Module):
    """An input projection, nn.MultiheadAttention on a residual stream, a readout."""

    def __init__(self, d=4, heads=2, *, batch_first=True, causal=False, cross=False, weights=True, **kw):
        super().__init__()
        nn = torch.nn
        self.inp = nn.Linear(3, d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=batch_first, **kw)
        self.out = nn.Linear(d, 2)
        self.batch_first, self.causal, self.cross, self.weights = batch_first, causal, cross, weights

    def forward(self, x):
        h = self.inp(x if self.batch_first else x.transpose(0, 1))
        n = h.shape[1] if self.batch_first else h.shape[0]
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1) if self.causal else None
        key = torch.tanh(h) if self.cross else h
        a, _ = self.attn(h, key, key, attn_mask=mask, need_weights=self.weights)
        return self.out(torch.tanh(h + a))


@pytest.mark.parametrize(
    "kw",
    [{"batch_first": False, "causal": True}, {"bias": False, "add_bias_kv": True}],
    ids=["seq_first_causal", "no_bias_bias_kv"],
)
def test_multihead_attention_inside_a_module_is_two_kronecker_sites_matching_jacrev(kw):
    torch.manual_seed(10)
    net = AttentionBlock(**kw).double().eval()
    traj = assert_matches(net, (torch.randn(2, 3, 3, dtype=DT),), states=["inp", "attn", "out"])
    sites = {s.name: s for s in traj.sites}
    p = 4 if kw.get("bias") is False else 5  # d rows of x and of the heads' output, a ones column
    assert tuple(sites["attn.in_proj"].variables.shape) == (6, p) and sites["attn.in_proj"].width == 12
    assert tuple(sites["attn.out_proj"].variables.shape) == (6, p) and sites["attn.out_proj"].width == 4
    assert not {"attn.in_proj_weight", "attn.out_proj.weight"} & set(sites)  # no autodiff rows


def test_attention_sites_give_the_built_in_mappings_kernel_and_exact_rules():
    torch.manual_seed(11)
    mha = torch.nn.MultiheadAttention(4, 2, batch_first=True).double()
    x = torch.randn(2, 3, 4, dtype=DT)
    built_in, params = from_module(mha, detach=True)  # kpflow.models.SelfAttention
    K_ref = kpflow.parameter_kernel(built_in.run(params, x))

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)  # (torch's fused kernel in the module's own call)

    model, params = from_module(Wrapper(), states=["attn"], detach=True)
    traj = model.run(params, x)
    assert {s.name for s in traj.sites} == {"attn.in_proj", "attn.out_proj"}
    K = kpflow.parameter_kernel(traj)
    n = traj.states.numel()
    dense, ref = K.todense().reshape(n, n), K_ref.todense().reshape(n, n)
    assert torch.allclose(dense, ref, rtol=1e-12, atol=1e-12)
    evals = torch.linalg.eigvalsh(ref).flip(0)
    tr = kla.trace(K, method="exact")
    assert tr.method == "exact" and abs(float(tr.value) - float(torch.trace(ref))) <= 1e-12 * float(evals[0])
    er = kla.effective_rank(K, method="exact")
    assert er.method == "exact"
    assert abs(float(er.value) - float(evals.sum() ** 2 / (evals**2).sum())) <= 1e-10
    top = kla.eigsh(K, 3, method="dense")
    assert torch.allclose(top.eigenvalues, evals[:3], rtol=1e-10, atol=1e-12)


def test_cross_attention_takes_the_autodiff_rule():
    torch.manual_seed(12)
    net = AttentionBlock(cross=True).double().eval()
    traj = assert_matches(net, (torch.randn(2, 3, 3, dtype=DT),), states=["inp", "attn", "out"])
    assert {"attn.in_proj_weight", "attn.out_proj.weight"} <= {s.name for s in traj.sites}


def test_saved_linearisation_is_rebuilt_when_a_parameter_changes_in_place():
    torch.manual_seed(13)
    net = ResidualMLP().double()
    model, params = from_module(net, states=["inp", "blocks.0", "blocks.1", "out"], detach=True)
    traj = model.run(params, torch.randn(3, 3, dtype=DT))
    N = kpflow.global_ntk(traj)
    V = torch.randn(2, *traj.state_shape, dtype=DT)

    def uncached():  # the torch.func route, which reads the parameters afresh
        f, zeros = traj._all_sites_fn(traj._values(), cut=False)
        return traj._gram_matmat(f, zeros, V)

    with torch.no_grad():
        before = N.matmat(V)
        assert torch.allclose(before, uncached(), rtol=1e-12, atol=1e-13)
        net.blocks[0][1].weight.mul_(3.0)  # an in-place update, as an optimizer step makes
        after = N.matmat(V)
    assert not torch.allclose(after, before, rtol=1e-6)
    assert torch.allclose(after, uncached(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(
    "act",
    [
        ("GELU", {"approximate": "tanh"}),
        ("GELU", {}),
        ("Tanh", {}),
        ("SiLU", {}),
        ("Softplus", {"beta": 2.0}),
        ("ELU", {}),
    ],
)
def test_elementwise_activations_linearised_once_match_jacrev(act):
    # the saved linearisation replaces each activation by y(x0) + σ'(x0) (x - x0)
    from kpflow.backends._torch_graph_tap import is_elementwise

    nn = torch.nn
    make = getattr(nn, act[0])
    assert (
        is_elementwise(make(**act[1]))
        and not is_elementwise(nn.LayerNorm(3))
        and not is_elementwise(nn.Softmax(-1))
    )
    torch.manual_seed(3)
    layers = [nn.Linear(3, 5), make(**act[1]), nn.Linear(5, 4), make(**act[1]), nn.Linear(4, 2)]
    traj = assert_matches(nn.Sequential(*layers).double(), (torch.randn(3, 3, dtype=DT),), states=["2", "4"])
    lin = traj._linearisation(False)
    names = {type(n).__name__ for o in lin.outs for n in _graph_nodes(o.grad_fn)}
    assert "_TangentLineBackward" in names  # (the walk reached the activations' tangent lines)
    assert not names & {
        "TanhBackward0",
        "GeluBackward0",
        "SiluBackward0",
        "SoftplusBackward0",
        "EluBackward0",
    }


def _graph_nodes(fn):
    seen, todo = set(), [fn]
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        todo.extend(g for g, _ in f.next_functions)
    return seen
