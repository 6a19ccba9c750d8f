"""from_module on any Equinox / Flax NNX module: sites found from the computation, against jax.jacrev.

Every reference is J Jᵀ with J = jax.jacrev of the states computed by the module's own
submodules (no kpflow code), over the module's trained leaves, in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="from_module for Equinox / Flax needs jax")
jnp = pytest.importorskip("jax.numpy")
eqx = pytest.importorskip("equinox", reason="the Equinox cases need equinox")

from kpflow.backends.jax import from_module  # noqa: E402

import kpflow  # noqa: E402

F64 = jnp.float64
NTK_TOL = 1e-10
B, D = 3, 4


@pytest.fixture(autouse=True, scope="module")
def _x64():
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def randomize(tree, seed: int = 7):
    """Every float leaf redrawn on the host (zero biases and unit norm scales would test nothing)."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    new = [
        jnp.asarray(0.6 * rng.standard_normal(leaf.shape), dtype=leaf.dtype)
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating)
        else leaf
        for leaf in leaves
    ]
    return jax.tree_util.tree_unflatten(treedef, new)


def inputs(shape, seed: int = 1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype=F64)


def reference_ntk(states_of, trained):
    """J Jᵀ of ``states_of(trained)`` (B, n) with J = jacrev over the leaves of ``trained``."""

    @jax.jit  # one compiled program: eager jax would compile every operation on its own
    def ntk(trained):
        out = states_of(trained)
        jac = jax.jacrev(states_of)(trained)
        J = jnp.concatenate([j.reshape(out.size, -1) for j in jax.tree_util.tree_leaves(jac)], axis=1)
        return (J @ J.T).reshape(*out.shape, *out.shape)

    return ntk(trained)


def eqx_reference(module, states_fn, x, frozen=lambda path: False):
    """The reference NTK over the module's float leaves but those ``frozen(path)`` names."""
    trained, static = eqx.partition(module, eqx.is_inexact_array)
    paths = jax.tree_util.tree_flatten_with_path(trained)[0]
    keep = [not frozen(jax.tree_util.keystr(p)) for p, _ in paths]
    leaves, treedef = jax.tree_util.tree_flatten(trained)

    def states_of(chosen):
        it = iter(chosen)
        full = [next(it) if k else leaf for k, leaf in zip(keep, leaves, strict=True)]
        m = eqx.combine(jax.tree_util.tree_unflatten(treedef, full), static)
        return jax.vmap(lambda v: states_fn(m, v))(x)

    return reference_ntk(states_of, [leaf for k, leaf in zip(keep, leaves, strict=True) if k])


def check(model, params, x, reference, h0=None, *, rules=False):
    traj = model.run(params, x) if h0 is None else model.run(params, x, h0)
    ntk = kpflow.global_ntk(traj)
    dense = np.asarray(ntk.todense())
    assert dense.dtype == np.float64
    assert rel(dense, reference) <= NTK_TOL
    if rules:  # K's exact rules on the found sites equal the dense K
        K = kpflow.parameter_kernel(traj)
        n = int(np.prod(traj.state_shape))
        Kd = np.asarray(K.todense()).reshape(n, n)
        assert abs(float(kpflow.linalg.trace(K, method="exact").value) - np.trace(Kd)) <= 1e-10 * np.trace(Kd)
        top = np.sort(np.linalg.eigvalsh(Kd))[::-1][:3]
        got = np.asarray(kpflow.linalg.eigsh(K, 3, method="dense").eigenvalues)
        assert rel(np.sort(got)[::-1], top) <= 1e-10
        lam = np.clip(np.linalg.eigvalsh(Kd), 0, None)
        erank = lam.sum() ** 2 / (lam**2).sum()
        assert abs(float(kpflow.linalg.effective_rank(K, method="exact").value) - erank) <= 1e-9 * erank
    return traj


# -- Equinox ---------------------------------------------------------------------------------------
# An eqx.nn.MLP, a residual MLP with LayerNorm and GELU and a MultiheadAttention block are
# checked over drawn sizes in test_jax_modules_properties.py.
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_equinox_cells_unrolled_match_jacrev(kind):
    cls = {"gru": eqx.nn.GRUCell, "lstm": eqx.nn.LSTMCell}[kind]
    cell = randomize(cls(2, 3, dtype=F64, key=jax.random.key(0)))
    model, params = from_module(cell, recurrent=True)
    assert model.hidden == ((3,) if kind == "gru" else (3, 3))
    x = inputs((2, 4, 2))
    h0 = 0.5 * inputs((2, model.state_size), seed=3)  # the LSTM's (h, c) as [h; c]
    trained, static = eqx.partition(cell, eqx.is_inexact_array)

    def states_of(p):
        c = eqx.combine(p, static)
        h, out = (h0 if kind == "gru" else (h0[:, :3], h0[:, 3:])), []
        for t in range(x.shape[1]):
            h = jax.vmap(c)(x[:, t], h)
            out.append(h if kind == "gru" else jnp.concatenate(h, axis=-1))
        return jnp.stack(out, axis=1)

    traj = check(model, params, x, reference_ntk(states_of, trained), h0)
    assert rel(traj.states, states_of(trained)) <= 1e-12


class Tied(eqx.Module):
    """A frozen input layer and one Linear applied twice (its two calls are two states), its
    weight read a third time as a field of the (state) submodule."""

    inp: eqx.nn.Linear
    shared: eqx.nn.Linear

    def __call__(self, x):
        h = jnp.tanh(self.inp(x))
        return self.shared(jnp.tanh(self.shared(h) + self.shared.weight @ h))


def test_equinox_tied_and_frozen_leaves_match_jacrev():
    k1, k2 = jax.random.split(jax.random.key(0))
    module = randomize(Tied(eqx.nn.Linear(2, D, dtype=F64, key=k1), eqx.nn.Linear(D, D, dtype=F64, key=k2)))
    model, params = from_module(module, states="shared", frozen="inp.*", example=jnp.zeros(2, F64))
    assert model.traced.state_names == ["shared#0", "shared#1"]
    assert model.frozen == {"inp.weight", "inp.bias"}
    uses = [model.traced.names[u.leaf] for u in model.traced.plan.uses]
    assert uses.count("shared.weight") == 3  # the field read through the state wrapper too

    def states(m, v):
        h = jnp.tanh(m.inp(v))
        s0 = m.shared(h)
        return jnp.concatenate([s0, m.shared(jnp.tanh(s0 + m.shared.weight @ h))])

    x = inputs((B, 2))
    reference = eqx_reference(module, states, x, frozen=lambda p: p.startswith(".inp"))
    check(model, params, x, reference, rules=True)


class Tokens(eqx.Module):
    embed: eqx.nn.Embedding
    proj: eqx.nn.Linear

    def __call__(self, ids):  # ids: (tokens,) ints
        return jax.vmap(self.proj)(jnp.tanh(jax.vmap(self.embed)(ids)))


def test_equinox_embedding_of_token_ids_is_a_weight_site_and_matches_jacrev():
    k1, k2 = jax.random.split(jax.random.key(0))
    module = randomize(
        Tokens(eqx.nn.Embedding(5, D, dtype=F64, key=k1), eqx.nn.Linear(D, 2, dtype=F64, key=k2))
    )
    ids = jnp.asarray([[0, 4, 2], [1, 1, 3]], dtype=jnp.int32)
    model, params = from_module(module, example=ids[0])
    assert {model.traced.names[l] for l in model.traced.plan.weights} == {"embed.weight", "proj.weight"}
    assert params["embed.weight"].shape == (D, 5)  # one-hot site variables: (out = D, in = vocab)

    def states(m, v):
        e = jax.vmap(m.embed)(v)
        return jnp.concatenate([e.reshape(-1), jax.vmap(m.proj)(jnp.tanh(e)).reshape(-1)])

    check(model, params, ids, eqx_reference(module, states, ids))


# -- Flax NNX ----------------------------------------------------------------------------------------
def nnx_module():
    return pytest.importorskip("flax.nnx", reason="the Flax NNX cases need flax")


def nnx_reference(module, states_fn, x):
    nnx = nnx_module()
    graphdef, trained, rest = nnx.split(module, nnx.Param, ...)

    def states_of(p):
        m = nnx.merge(graphdef, p, rest)
        return jax.vmap(lambda v: states_fn(m, v))(x)

    return reference_ntk(states_of, trained)


def nnx_randomized(module):
    nnx = nnx_module()
    graphdef, trained, rest = nnx.split(module, nnx.Param, ...)
    return nnx.merge(graphdef, randomize(trained), rest)


def test_flax_mlp_matches_jacrev():
    nnx = nnx_module()
    rngs = nnx.Rngs(0)
    seq = nnx.Sequential(
        nnx.Linear(2, D, param_dtype=F64, rngs=rngs), nnx.tanh, nnx.Linear(D, 2, param_dtype=F64, rngs=rngs)
    )
    seq = nnx_randomized(seq)
    model, params = from_module(seq, states="layers.*")
    assert model.traced.state_names == ["layers.0", "layers.2"]
    assert params["layers.0.kernel"].shape == (D, 2)  # the (in, out) kernel as (out, in)

    def states(m, v):
        h = m.layers[0](v)
        return jnp.concatenate([h, m.layers[2](jnp.tanh(h))])

    x = inputs((B, 2))
    check(model, params, x, nnx_reference(seq, states, x))
    leaves = model.to_leaves(params)
    assert rel(leaves[model.traced.names.index("layers.0.kernel")], seq.layers[0].kernel[...]) == 0


def attention64(query, key, value, **kwargs):
    """Dot-product attention in the inputs' dtype (Flax's default computes its softmax in float32,
    so the module's own Jacobian would only be float32-accurate)."""
    logits = jnp.einsum("...qhd,...khd->...hqk", query / jnp.sqrt(query.shape[-1]), key)
    return jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(logits, axis=-1), value)


def test_flax_attention_block_matches_jacrev():
    nnx = nnx_module()

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.attn = nnx.MultiHeadAttention(
                2, D, decode=False, attention_fn=attention64, param_dtype=F64, dtype=F64, rngs=rngs
            )
            self.norm = nnx.RMSNorm(D, param_dtype=F64, dtype=F64, rngs=rngs)

        def __call__(self, x):
            return self.norm(x + self.attn(x))

    block = nnx_randomized(Block(nnx.Rngs(0)))
    S = 3
    model, params = from_module(block, example=jnp.zeros((S, D), F64))
    assert model.traced.state_names == ["attn", "norm"]

    def states(m, v):
        a = m.attn(v)
        return jnp.concatenate([a.reshape(-1), m.norm(v + a).reshape(-1)])

    x = inputs((2, S, D))
    check(model, params, x, nnx_reference(block, states, x))


# -- errors list what is accepted ----------------------------------------------------------------------
def test_bad_states_frozen_and_modules_are_refused_with_what_is_accepted():
    mlp = eqx.nn.MLP(2, 1, 3, 1, dtype=F64, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"matches no submodule; the submodules are \['layers.0', "):
        from_module(mlp, states="blocks.*")
    with pytest.raises(TypeError, match=r"expected states to be a submodule path.*got 3"):
        from_module(mlp, states=3)
    with pytest.raises(
        ValueError, match=r"frozen names \['w'\], which match no parameter; the parameters are"
    ):
        from_module(mlp, states="layers.*", frozen=["w"])
    with pytest.raises(
        TypeError, match=r"expected module to be an equinox\.Module or a flax\.nnx\.Module.*got str"
    ):
        from_module("gru", states="x")
    with pytest.raises(TypeError, match="pass example="):
        from_module(eqx.nn.LayerNorm(3), states="x")
    model, params = from_module(mlp, states="layers.*")
    with pytest.raises(ValueError, match=r"expected x of shape \(B, \*\(2,\)\) and dtype float64"):
        model.run(params, jnp.ones((3, 4), F64))


def test_flax_embed_and_layernorm_of_token_ids_match_jacrev():
    nnx = nnx_module()

    class Tagger(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(5, 3, param_dtype=F64, dtype=F64, rngs=rngs)
            self.norm = nnx.LayerNorm(3, param_dtype=F64, dtype=F64, rngs=rngs)
            self.out = nnx.Linear(3, 2, param_dtype=F64, dtype=F64, rngs=rngs)

        def __call__(self, ids):
            return self.out(self.norm(self.embed(ids)))

    module = nnx_randomized(Tagger(nnx.Rngs(0)))
    ids = jnp.asarray([[0, 4, 2], [1, 1, 3]], dtype=jnp.int32)
    model, params = from_module(module, example=ids[0])
    assert {model.traced.names[l] for l in model.traced.plan.weights} == {"embed.embedding", "out.kernel"}

    def states(m, v):
        e = m.embed(v)
        n = m.norm(e)
        return jnp.concatenate([e.reshape(-1), n.reshape(-1), m.out(n).reshape(-1)])

    check(model, params, ids, nnx_reference(module, states, ids))
