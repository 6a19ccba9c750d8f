"""from_module on Equinox / Flax NNX modules over drawn sizes: NTK_S and K against jax.jacrev.

Each module comes with ``cut(m, x, z)``, the update map f(z; θ) of its chosen states written
in the test from the module's own submodules: state l computed from the earlier states of z
(x for the first).  The references share no code with kpflow:

- the states are f iterated as many times as there are states from z = 0 (exact: state l
  reads earlier states only), and their last block is checked against the module's own
  forward pass, ``m(x)``;
- NTK_S = J Jᵀ with J = jax.jacrev of those states over the module's trained leaves;
- K = J_f J_fᵀ with J_f = jax.jacrev of f(z; θ) at the states, over the same leaves;

all in float64.  K's exact methods (trace, effective rank, top eigenvalues) must match the
dense reference K.  Every draw traces and compiles afresh, so the ci profile keeps one or
two draws per module (``examples``); ``nox -s properties`` runs 50.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

jax = pytest.importorskip("jax", reason="from_module for Equinox / Flax needs jax")
jnp = pytest.importorskip("jax.numpy")
eqx = pytest.importorskip("equinox", reason="the Equinox properties need equinox")

from kpflow.backends.jax import from_module  # noqa: E402

import kpflow  # noqa: E402
from tests.backends.test_jax_modules_any import _x64, rel  # noqa: E402, F401  (_x64: the autouse fixture)
from tests.conftest import HYPOTHESIS_PROFILE, THOROUGH_PROFILES, examples  # noqa: E402

pytestmark = pytest.mark.properties

#: ci / dev: each test's explicit example only, one mid-size module (every draw traces and
#: compiles afresh: seconds of CPU each); ``nox -s properties``: 50 fresh draws per module.
DRAWS = settings(
    max_examples=examples(1),
    phases=tuple(Phase) if HYPOTHESIS_PROFILE in THOROUGH_PROFILES else (Phase.explicit,),
)

F64 = jnp.float64
NTK_TOL = 1e-10
ACTIVATIONS = {"tanh": jnp.tanh, "gelu": jax.nn.gelu, "sigmoid": jax.nn.sigmoid}
activation = st.sampled_from(sorted(ACTIVATIONS))


def shapes(build):
    """The Equinox module ``build(key)`` with its leaves as shapes (every leaf is drawn later)."""
    return eqx.filter_eval_shape(lambda: build(jax.random.key(0)))


def split(module):
    """(trained leaves, rebuild(leaves) -> module) over the module's trained float leaves.

    The module may come from ``eqx.filter_eval_shape`` / ``nnx.eval_shape`` (leaves
    ``jax.ShapeDtypeStruct``): the tests draw every leaf on the host anyway, and building
    the shapes alone compiles no random initializer.
    """
    if isinstance(module, eqx.Module):
        trained, static = eqx.partition(
            module, lambda a: isinstance(a, jax.ShapeDtypeStruct) or eqx.is_inexact_array(a)
        )
        leaves, treedef = jax.tree_util.tree_flatten(trained)
        return leaves, lambda ls: eqx.combine(jax.tree_util.tree_unflatten(treedef, ls), static)
    nnx = pytest.importorskip("flax.nnx")
    graphdef, trained, rest = nnx.split(module, nnx.Param, ...)
    leaves, treedef = jax.tree_util.tree_flatten(trained)
    return leaves, lambda ls: nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, ls), rest)


def references(module, cut, n_states: int, x, seed: int):
    """(module with leaves drawn on the host, its own output, states, NTK_S, K): dense jacrev references.

    Every float leaf is drawn (zero biases and unit norm scales would test nothing).
    """
    shapes, rebuild = split(module)
    rng = np.random.default_rng(seed)
    leaves = [jnp.asarray(0.6 * rng.standard_normal(a.shape), dtype=a.dtype) for a in shapes]

    def states_of(ls):
        m = rebuild(ls)

        def one(v):
            z = jnp.zeros_like(cut(m, v, None))
            for _ in range(n_states):  # f is nilpotent in z: n_states passes give the states
                z = cut(m, v, z)
            return z

        return jax.vmap(one)(x)

    @jax.jit  # one compiled program: eager jax would compile every operation on its own
    def dense(ls):
        z = states_of(ls)
        own = jax.vmap(lambda v: rebuild(ls)(v))(x)  # the module's own forward pass

        def f_of(ls):
            m = rebuild(ls)
            return jax.vmap(lambda v, zb: cut(m, v, zb))(x, z)

        def gram(fn):
            jac = jax.jacrev(fn)(ls)
            J = jnp.concatenate([j.reshape(z.size, -1) for j in jac], axis=1)
            return (J @ J.T).reshape(*z.shape, *z.shape)

        return own, z, gram(states_of), gram(f_of)

    return rebuild(leaves), *dense(leaves)


def check(module, cut, n_states: int, x, seed: int, **kwargs):
    """from_module(module, **kwargs) against the references: states, NTK_S, K and K's exact rules."""
    module, own, z, ntk_ref, K_ref = references(module, cut, n_states, x, seed)
    own = own.reshape(x.shape[0], -1)
    assert rel(z[:, -own.shape[1] :], own) <= 1e-12  # the last state is the module's own output
    model, params = from_module(module, **kwargs)
    traj = model.run(params, x)
    assert rel(traj.states, z) <= 1e-12
    dense = np.asarray(kpflow.global_ntk(traj).todense())
    assert dense.dtype == np.float64
    assert rel(dense, ntk_ref) <= NTK_TOL
    K = kpflow.parameter_kernel(traj)
    n = int(np.prod(traj.state_shape))
    Kd = np.asarray(K_ref).reshape(n, n)
    assert rel(np.asarray(K.todense()).reshape(n, n), Kd) <= NTK_TOL
    evals = np.sort(np.clip(np.linalg.eigvalsh(Kd), 0, None))[::-1]
    tr = kpflow.linalg.trace(K, method="exact")
    assert tr.method == "exact"
    assert abs(float(tr.value) - evals.sum()) <= 1e-10 * evals.sum()
    er = kpflow.linalg.effective_rank(K, method="exact")
    erank = evals.sum() ** 2 / (evals**2).sum()
    assert er.method == "exact"
    assert abs(float(er.value) - erank) <= 1e-9 * erank
    k = min(3, n)
    top = np.asarray(kpflow.linalg.eigsh(K, k, method="dense").eigenvalues)
    assert np.allclose(np.sort(top)[::-1], evals[:k], rtol=1e-10, atol=1e-12 * evals[0])
    return model, params, traj


def inputs(shape, seed: int):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype=F64)


# -- Equinox ---------------------------------------------------------------------------------------
@DRAWS
@example(n_in=2, width=3, depth=1, n_out=2, batch=3, bias=True, act="tanh", seed=1)
@given(
    n_in=st.integers(1, 3),
    width=st.integers(1, 4),
    depth=st.integers(0, 2),
    n_out=st.integers(1, 2),
    batch=st.integers(1, 3),
    bias=st.booleans(),
    act=activation,
    seed=st.integers(0, 2**16),
)
def test_equinox_mlp_of_any_size_matches_jacrev(n_in, width, depth, n_out, batch, bias, act, seed):
    fn = ACTIVATIONS[act]
    mlp = shapes(
        lambda key: eqx.nn.MLP(
            n_in, n_out, width, depth, activation=fn, use_bias=bias, use_final_bias=bias, dtype=F64, key=key
        )
    )
    widths = [width] * depth + [n_out]

    def cut(m, v, z):  # layer l reads the activation of state l − 1
        if z is None:
            return jnp.zeros(sum(widths), F64)
        out, lo = [], 0
        for l, layer in enumerate(m.layers):
            out.append(layer(v if l == 0 else fn(z[lo - widths[l - 1] : lo])))
            lo += widths[l]
        return jnp.concatenate(out)

    model, params, _ = check(mlp, cut, len(widths), inputs((batch, n_in), seed), seed, states="layers.*")
    traced = model.traced
    assert traced.state_names == [f"layers.{l}" for l in range(depth + 1)]
    assert {traced.names[l] for l in traced.plan.weights} == {f"layers.{l}.weight" for l in range(depth + 1)}
    assert params["layers.0.weight"].shape == (widths[0], n_in)  # a weight site: (out, in)


class ResidualMLP(eqx.Module):
    """Blocks h ← h + MLP(LN(h)), then a final LN: states each block's LN and MLP, and the last LN."""

    norms: list
    mlps: list
    out: eqx.nn.LayerNorm

    def __call__(self, x):
        for norm, mlp in zip(self.norms, self.mlps, strict=True):
            x = x + mlp(norm(x))
        return self.out(x)


@DRAWS
@example(d=3, hidden=4, blocks=1, batch=2, affine=(True, True), act="gelu", seed=2)
@given(
    d=st.integers(2, 4),
    hidden=st.integers(1, 4),
    blocks=st.integers(1, 2),
    batch=st.integers(1, 3),
    affine=st.sampled_from([(True, True), (True, False), (False, False)]),
    act=activation,
    seed=st.integers(0, 2**16),
)
def test_equinox_residual_mlp_with_layernorm_of_any_size_matches_jacrev(
    d, hidden, blocks, batch, affine, act, seed
):
    def build(key):
        norm = lambda: eqx.nn.LayerNorm(d, use_weight=affine[0], use_bias=affine[1], dtype=F64)  # noqa: E731
        mlps = [
            eqx.nn.MLP(d, d, hidden, 1, activation=ACTIVATIONS[act], dtype=F64, key=key)
            for _ in range(blocks)
        ]
        return ResidualMLP([norm() for _ in range(blocks)], mlps, norm())

    module = shapes(build)

    def cut(m, v, z):  # LN of the stream, the MLP of that LN; the stream skips past both
        if z is None:
            return jnp.zeros((2 * blocks + 1) * d, F64)
        out, h = [], v
        for b in range(blocks):
            out.append(m.norms[b](h))
            out.append(m.mlps[b](z[2 * b * d : (2 * b + 1) * d]))
            h = h + z[(2 * b + 1) * d : (2 * b + 2) * d]
        return jnp.concatenate([*out, m.out(h)])

    x = inputs((batch, d), seed)
    states = [f"{kind}.{b}" for b in range(blocks) for kind in ("norms", "mlps")] + ["out"]
    model, _, _ = check(module, cut, len(states), x, seed, states=states[::-1], example=jnp.zeros(d, F64))
    assert model.traced.state_names == states  # forward order, whatever the order given
    affines = [name for name, on in zip(("weight", "bias"), affine, strict=True) if on]
    norms = [p for p in states if not p.startswith("mlps")]
    biases = {f"mlps.{b}.layers.{l}.bias" for b in range(blocks) for l in range(2)}
    generic = {model.traced.names[l] for l in model.traced.plan.generic}  # the autodiff rule
    assert generic == {f"{p}.{a}" for p in norms for a in affines} | biases


class SelfAttention(eqx.Module):
    """Post-norm self-attention over a sequence (tokens, d): LN(x + MHA(x, x, x))."""

    attn: eqx.nn.MultiheadAttention
    norm: eqx.nn.LayerNorm

    def __call__(self, x):
        return jax.vmap(self.norm)(x + self.attn(x, x, x))


@DRAWS
@example(heads=2, head_size=1, tokens=2, batch=2, bias=True, seed=3)
@given(
    heads=st.integers(1, 2),
    head_size=st.integers(1, 2),
    tokens=st.integers(1, 3),
    batch=st.integers(1, 2),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_equinox_multihead_attention_of_any_size_matches_jacrev(heads, head_size, tokens, batch, bias, seed):
    d = heads * head_size
    module = shapes(
        lambda key: SelfAttention(
            eqx.nn.MultiheadAttention(
                heads,
                d,
                use_query_bias=bias,
                use_key_bias=bias,
                use_value_bias=bias,
                use_output_bias=bias,
                dtype=F64,
                key=key,
            ),
            eqx.nn.LayerNorm(d, dtype=F64),
        )
    )

    def cut(m, v, z):  # states: the attention's output, then the norm of the residual sum
        if z is None:
            return jnp.zeros(2 * tokens * d, F64)
        a = z[: tokens * d].reshape(tokens, d)
        return jnp.concatenate([m.attn(v, v, v).reshape(-1), jax.vmap(m.norm)(v + a).reshape(-1)])

    x = inputs((batch, tokens, d), seed)
    model, _, _ = check(module, cut, 2, x, seed, example=jnp.zeros((tokens, d), F64))
    traced = model.traced
    assert traced.state_names == ["attn", "norm"]
    projections = {f"attn.{p}_proj.weight" for p in ("query", "key", "value", "output")}
    assert {traced.names[l] for l in traced.plan.weights} == projections  # exact Kronecker sites
    assert all(u.n_calls == tokens for u in traced.plan.uses)  # one hook call per token


class TiedStack(eqx.Module):
    """An input layer, one raw weight W applied ``uses`` times (as ``W @ h`` and ``h @ W.T``), a readout."""

    inp: eqx.nn.Linear
    W: jax.Array
    out: eqx.nn.Linear
    uses: int = eqx.field(static=True)
    act: object = eqx.field(static=True)

    def hidden(self, h):
        for l in range(self.uses):
            h = self.act(h @ self.W.T if l % 2 else self.W @ h)
        return h

    def __call__(self, x):
        return self.out(self.hidden(self.act(self.inp(x))))


@DRAWS
@example(n_in=2, d=3, uses=3, n_out=2, batch=3, bias=False, act="sigmoid", seed=4)
@given(
    n_in=st.integers(1, 3),
    d=st.integers(1, 4),
    uses=st.integers(1, 3),
    n_out=st.integers(1, 2),
    batch=st.integers(1, 3),
    bias=st.booleans(),
    act=activation,
    seed=st.integers(0, 2**16),
)
def test_equinox_tied_weight_of_any_size_is_one_exact_site_matching_jacrev(
    n_in, d, uses, n_out, batch, bias, act, seed
):
    fn = ACTIVATIONS[act]

    def build(key):
        k1, k2 = jax.random.split(key)
        inp = eqx.nn.Linear(n_in, d, use_bias=bias, dtype=F64, key=k1)
        out = eqx.nn.Linear(d, n_out, use_bias=bias, dtype=F64, key=k2)
        return TiedStack(inp, jnp.zeros((d, d), F64), out, uses, fn)

    def cut(m, v, z):  # states: the input layer, the readout of the tied layers
        if z is None:
            return jnp.zeros(d + n_out, F64)
        return jnp.concatenate([m.inp(v), m.out(m.hidden(fn(z[:d])))])

    x = inputs((batch, n_in), seed)
    model, _, traj = check(shapes(build), cut, 2, x, seed, example=jnp.zeros(n_in, F64))
    traced = model.traced
    assert "W" in {traced.names[l] for l in traced.plan.weights}  # x @ W.T is a use of W too
    assert sum(traced.names[u.leaf] == "W" for u in traced.plan.uses) == uses
    assert [s.name for s in traj.sites].count("W") == 1  # one site, the cross terms of its uses inside


# -- Flax NNX ----------------------------------------------------------------------------------------
@DRAWS
@example(n_in=2, d=3, n_out=2, batch=3, bias=True, norm="RMSNorm", act="tanh", seed=5)
@given(
    n_in=st.integers(1, 3),
    d=st.integers(2, 4),
    n_out=st.integers(1, 2),
    batch=st.integers(1, 3),
    bias=st.booleans(),
    norm=st.sampled_from(["LayerNorm", "RMSNorm"]),
    act=activation,
    seed=st.integers(0, 2**16),
)
def test_flax_module_of_any_size_matches_jacrev(n_in, d, n_out, batch, bias, norm, act, seed):
    nnx = pytest.importorskip("flax.nnx", reason="the Flax NNX properties need flax")
    fn = ACTIVATIONS[act]

    class Net(nnx.Module):
        """inp → norm → shared → shared (one Linear called twice) → out."""

        def __init__(self, rngs):
            dense = dict(use_bias=bias, param_dtype=F64, dtype=F64, rngs=rngs)
            self.inp = nnx.Linear(n_in, d, **dense)
            self.norm = getattr(nnx, norm)(d, param_dtype=F64, dtype=F64, rngs=rngs)
            self.shared = nnx.Linear(d, d, **dense)
            self.out = nnx.Linear(d, n_out, **dense)

        def __call__(self, x):
            h = self.shared(fn(self.shared(fn(self.norm(self.inp(x))))))
            return self.out(fn(h))

    module = nnx.eval_shape(lambda: Net(nnx.Rngs(0)))

    def cut(m, v, z):  # states: inp, norm, shared#0, shared#1, out
        if z is None:
            return jnp.zeros(4 * d + n_out, F64)
        blocks = [z[i * d : (i + 1) * d] for i in range(4)]
        layers = [m.norm(blocks[0]), m.shared(fn(blocks[1])), m.shared(fn(blocks[2])), m.out(fn(blocks[3]))]
        return jnp.concatenate([m.inp(v), *layers])

    x = inputs((batch, n_in), seed)
    model, _, traj = check(module, cut, 5, x, seed, example=jnp.zeros(n_in, F64))
    assert model.traced.state_names == ["inp", "norm", "shared#0", "shared#1", "out"]
    traced = model.traced
    assert {traced.names[l] for l in traced.plan.weights} == {"inp.kernel", "shared.kernel", "out.kernel"}
    assert [s.name for s in traj.sites].count("shared.kernel") == 1  # both calls in one site
