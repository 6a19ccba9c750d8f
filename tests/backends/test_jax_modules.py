"""``kpflow.backends.jax.from_module``: Equinox and Flax NNX modules as kpflow models.

Three oracles, in float64 (the test session turns jax's x64 on, tests/conftest.py):

- the module's own forward pass, stepped over time in a Python loop, gives the states;
- the same weights in torch (``torch.nn.RNN``/``GRU``/``LSTM`` through
  ``kpflow.backends.torch.from_module``), in jax (the module through this adapter) and in
  numpy (kpflow's own model) give the same states and the same dense NTK_S;
- where the module's parameters are kpflow's one to one (no biases, or an MLP), NTK_S
  equals J Jᵀ with J = ``jax.jacrev`` through the module's own forward pass.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import BACKENDS

if "jax" not in BACKENDS:
    pytest.skip("jax is not among the selected test backends (KPFLOW_TEST_BACKENDS)", allow_module_level=True)

jax = pytest.importorskip("jax", reason="from_module for Equinox / Flax needs jax")
jnp = pytest.importorskip("jax.numpy")

from kpflow.backends.jax import from_module  # noqa: E402

import kpflow  # noqa: E402

F64 = jnp.float64
STATE_TOL = 1e-12
NTK_TOL = 1e-10
B, T, N_IN, H = 3, 4, 2, 3


def eqx_module():
    return pytest.importorskip("equinox", reason="the Equinox cases need equinox")


def nnx_module():
    return pytest.importorskip("flax.nnx", reason="the Flax NNX cases need flax")


def inputs(seed: int = 1, *, shape=(B, T, N_IN)):
    return jax.random.normal(jax.random.key(seed), shape, dtype=F64)


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def randomize(module, seed: int = 7):
    """Every float array of the module redrawn (Flax's and Equinox's zero bias inits would test nothing)."""
    leaves, treedef = jax.tree_util.tree_flatten(module)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [
        0.6 * jax.random.normal(k, leaf.shape, dtype=leaf.dtype)
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating)
        else leaf
        for k, leaf in zip(keys, leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, new)


# -- the modules, built in float64 ------------------------------------------------------------------
def make_eqx(kind: str, *, bias: bool = True):
    eqx = eqx_module()
    key = jax.random.key(0)
    if kind == "gru":
        return randomize(eqx.nn.GRUCell(N_IN, H, use_bias=bias, dtype=F64, key=key))
    return randomize(eqx.nn.LSTMCell(N_IN, H, use_bias=bias, dtype=F64, key=key))


def make_nnx(kind: str, **kwargs):
    nnx = nnx_module()
    cls = {
        "simple": nnx.SimpleCell,
        "gru": nnx.GRUCell,
        "lstm": nnx.LSTMCell,
        "optlstm": nnx.OptimizedLSTMCell,
    }[kind]
    # SimpleCell computes in dtype=float32 by default (the others in the params' dtype)
    cell = cls(N_IN, H, dtype=F64, param_dtype=F64, rngs=nnx.Rngs(0), **kwargs)
    graphdef, state = nnx.split(cell)
    return nnx.merge(graphdef, randomize(state))


def eqx_loop(cell, x, h0):
    """The Equinox cell's own step over time; states (B, T, H) (the LSTM: h and c, (B, T, 2H))."""
    step = jax.vmap(cell)
    h, out = h0, []
    for t in range(x.shape[1]):
        h = step(x[:, t], h)
        out.append(jnp.concatenate(h, axis=-1) if isinstance(h, tuple) else h)
    return jnp.stack(out, axis=1)


def nnx_loop(cell, x, carry):
    """The Flax cell's own step over time; the LSTMs' carry is (c, h), returned as [h; c]."""
    out = []
    for t in range(x.shape[1]):
        carry, _ = cell(carry, x[:, t])
        out.append(jnp.concatenate(carry[::-1], axis=-1) if isinstance(carry, tuple) else carry)
    return jnp.stack(out, axis=1)


def initial(seed: int = 3):
    return 0.5 * jax.random.normal(jax.random.key(seed), (B, H), dtype=F64)


# -- states equal the module's own forward pass -----------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_equinox_cells_reproduce_their_own_loop(kind, bias):
    cell = make_eqx(kind, bias=bias)
    model, params = from_module(cell)
    assert type(model).__name__ == kind.upper() and model.bias == bias
    x, h, c = inputs(), initial(3), initial(4)
    h0 = (h, c) if kind == "lstm" else h
    traj = model.run(params, x, h0)
    assert traj.states.dtype == F64
    assert rel(traj.states, eqx_loop(cell, x, h0)) <= STATE_TOL


@pytest.mark.parametrize("kind", ["simple", "gru", "lstm", "optlstm"])
def test_flax_cells_reproduce_their_own_loop(kind):
    nnx = nnx_module()
    kwargs = {"activation_fn": nnx.relu} if kind == "simple" else {}
    cell = make_nnx(kind, **kwargs)
    model, params = from_module(cell)
    x, h, c = inputs(), initial(3), initial(4)
    lstm = kind in ("lstm", "optlstm")
    traj = model.run(params, x, (h, c) if lstm else h)
    assert rel(traj.states, nnx_loop(cell, x, (c, h) if lstm else h)) <= STATE_TOL
    if kind == "simple":
        assert model.nonlinearity == "relu"


def mlp_states(layers, act, x, final_act):
    """The per-layer outputs of ``layers`` (the module's own Linear layers) concatenated, (B, Σ n_l)."""
    out, z = [], x
    for l, layer in enumerate(layers):
        z = layer(z)
        if l < len(layers) - 1 or final_act:
            z = act(z)
        out.append(z)
    return jnp.concatenate(out, axis=-1)


@pytest.mark.parametrize(
    ("act", "final", "scan"), [("relu", False, False), ("tanh", True, False), ("tanh", False, True)]
)
def test_equinox_mlp_reproduces_the_module(act, final, scan):
    eqx = eqx_module()
    fn = {"relu": jax.nn.relu, "tanh": jnp.tanh}[act]
    kwargs = {"final_activation": fn} if final else {}
    mlp = eqx.nn.MLP(N_IN, 2, 4, 3, activation=fn, scan=scan, dtype=F64, key=jax.random.key(0), **kwargs)
    mlp = randomize(mlp)
    model, params = from_module(mlp)
    assert model.widths == (N_IN, 4, 4, 4, 2) and model.nonlinearity == act
    assert model.linear_output is not final
    x = inputs(shape=(5, N_IN))
    traj = model.run(params, x)
    assert rel(traj.states[:, traj.blocks[-1][0] :], jax.vmap(mlp)(x)) <= STATE_TOL
    if not scan:
        assert rel(traj.states, jax.vmap(lambda v: mlp_states(mlp.layers, fn, v, final))(x)) <= STATE_TOL


@pytest.mark.parametrize("final", [False, True])
def test_flax_sequential_mlp_reproduces_the_module(final):
    nnx = nnx_module()
    rngs = nnx.Rngs(0)
    layers = [nnx.Linear(N_IN, 4, param_dtype=F64, rngs=rngs), nnx.tanh]
    layers += [nnx.Linear(4, 2, param_dtype=F64, rngs=rngs)] + ([nnx.tanh] if final else [])
    graphdef, state = nnx.split(nnx.Sequential(*layers))
    seq = nnx.merge(graphdef, randomize(state))
    model, params = from_module(seq)
    assert model.widths == (N_IN, 4, 2) and model.linear_output is not final
    x = inputs(shape=(5, N_IN))
    traj = model.run(params, x)
    linears = [item for item in seq.layers if isinstance(item, nnx.Linear)]
    assert rel(traj.states, mlp_states(linears, jnp.tanh, x, final)) <= STATE_TOL
    assert rel(traj.states[:, 4:], seq(x)) <= STATE_TOL


# -- the same weights in torch, jax and numpy ---------------------------------------------------------
def torch_twin(kind: str, params: dict):
    """A ``torch.nn`` module holding kpflow's params (``nonlinearity`` for the RNN)."""
    torch = pytest.importorskip("torch", reason="the torch twin needs torch")
    if "torch" not in BACKENDS:
        pytest.skip("torch is not among the selected test backends")
    cls = {"rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
    kwargs = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    module = cls[kind](N_IN, H, batch_first=True, bias="bias_ih" in params, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for name, value in params.items():
            getattr(module, f"{name}_l0").copy_(torch.from_numpy(np.array(value)))
    return module


CROSS = [
    ("eqx", "gru", "gru"),
    ("eqx", "lstm", "lstm"),
    ("nnx", "simple", "rnn_tanh"),
    ("nnx", "gru", "gru"),
    ("nnx", "lstm", "lstm"),
    ("nnx", "optlstm", "lstm"),
]


@pytest.mark.parametrize(("lib", "kind", "torch_kind"), CROSS, ids=[f"{c[0]}-{c[1]}" for c in CROSS])
def test_torch_jax_and_numpy_agree_on_states_and_ntk(lib, kind, torch_kind):
    import torch
    from kpflow.backends.torch import from_module as from_torch_module

    cell = make_eqx(kind) if lib == "eqx" else make_nnx(kind)
    model_j, params_j = from_module(cell)
    x, h = inputs(), initial(3)
    h0 = (h, initial(4)) if torch_kind == "lstm" else h
    traj_j = model_j.run(params_j, x, h0)

    module = torch_twin(torch_kind, params_j)
    model_t, params_t = from_torch_module(module, detach=True)
    to_t = lambda a: torch.from_numpy(np.array(a))  # noqa: E731
    traj_t = model_t.run(params_t, to_t(x), tuple(map(to_t, h0)) if isinstance(h0, tuple) else to_t(h0))

    params_n = {name: np.array(a) for name, a in params_j.items()}
    h0_n = tuple(map(np.array, h0)) if isinstance(h0, tuple) else np.array(h0)
    traj_n = type(model_j)(N_IN, H).run(params_n, np.array(x), h0_n) if kind != "simple" else None
    if traj_n is None:
        traj_n = kpflow.models.RNN(N_IN, H, nonlinearity="tanh").run(params_n, np.array(x), h0_n)

    with torch.no_grad():
        states_t = traj_t.states.numpy()
        ntk_t = kpflow.global_ntk(traj_t).todense().numpy()
    ntk_j = np.asarray(kpflow.global_ntk(traj_j).todense())
    ntk_n = kpflow.global_ntk(traj_n).todense()
    assert ntk_j.dtype == np.float64 and ntk_j.shape == (B, T, model_j.state_size) * 2
    for states, ntk in ((states_t, ntk_t), (traj_n.states, ntk_n)):
        assert rel(traj_j.states, states) <= NTK_TOL
        assert rel(ntk_j, ntk) <= NTK_TOL


# -- where the parameters are one to one, NTK_S is the module's own J Jᵀ ---------------------------
def module_ntk(f, theta):
    """J Jᵀ with J = jacrev of f (an output array) over the array leaves of theta."""
    jac = jax.jacrev(f)(theta)
    out = f(theta)
    blocks = [j.reshape(out.size, -1) for j in jax.tree_util.tree_leaves(jac)]
    J = jnp.concatenate(blocks, axis=1)
    return (J @ J.T).reshape(*out.shape, *out.shape)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_equinox_cells_without_bias_give_the_module_ntk(kind):
    eqx = eqx_module()
    cell = make_eqx(kind, bias=False)
    x, h = inputs(), initial(3)
    h0 = (h, initial(4)) if kind == "lstm" else h
    params_m, static = eqx.partition(cell, eqx.is_array)
    reference = module_ntk(lambda p: eqx_loop(eqx.combine(p, static), x, h0), params_m)
    model, params = from_module(cell)
    assert rel(kpflow.global_ntk(model.run(params, x, h0)).todense(), reference) <= NTK_TOL


def test_equinox_mlp_gives_the_module_ntk():
    eqx = eqx_module()
    mlp = randomize(eqx.nn.MLP(N_IN, 2, 3, 2, activation=jnp.tanh, dtype=F64, key=jax.random.key(0)))
    x = inputs(shape=(4, N_IN))
    params_m, static = eqx.partition(mlp, eqx.is_array)
    reference = module_ntk(
        lambda p: jax.vmap(lambda v: mlp_states(eqx.combine(p, static).layers, jnp.tanh, v, False))(x),
        params_m,
    )
    model, params = from_module(mlp)
    assert rel(kpflow.global_ntk(model.run(params, x)).todense(), reference) <= NTK_TOL


# -- readouts ------------------------------------------------------------------------------------------
def test_readouts_map_to_linear():
    eqx, nnx = eqx_module(), nnx_module()
    x = inputs()
    for cell, readout in (
        (make_eqx("gru"), eqx.nn.Linear(H, 2, dtype=F64, key=jax.random.key(5))),
        (make_nnx("gru"), nnx.Linear(H, 2, use_bias=False, param_dtype=F64, rngs=nnx.Rngs(5))),
    ):
        model, params, readout_model, readout_params = from_module(cell, readout)
        y = readout_model.apply(readout_params, model.run(params, x).states)
        expected = jax.vmap(jax.vmap(readout))(model.run(params, x).states)
        assert rel(y, expected) <= STATE_TOL
        assert readout_model.bias == isinstance(readout, eqx.nn.Linear)
        assert kpflow.ntk.output_ntk(model.run(params, x), readout_params).shape_in == (B, T, 2)


# -- refusals ------------------------------------------------------------------------------------------
def test_unsupported_modules_are_refused_by_name():
    eqx = eqx_module()
    nnx_module()  # the message lists both libraries' modules
    with pytest.raises(
        TypeError, match=r"expected module to be an equinox\.Module or a flax\.nnx\.Module.*got str"
    ):
        from_module("gru")
    with pytest.raises(
        TypeError, match=r"mapped onto kpflow's models: equinox\.nn\.GRUCell.*OptimizedLSTMCell"
    ):
        from_module("gru")
    # any other module is traced (tests/backends/test_jax_modules_any.py), its output the state
    model, _ = from_module(eqx.nn.Linear(2, 3, dtype=F64, key=jax.random.key(0)))
    assert type(model).__name__ == "ModuleStack" and model.state_size == 3
    with pytest.raises(TypeError, match="expected readout to be an equinox.nn.Linear, a flax.nnx.Linear"):
        from_module(make_eqx("gru"), make_eqx("gru"))
    with pytest.raises(ValueError, match=r"readout's in_features to equal the module's hidden size 3, got 4"):
        from_module(make_eqx("gru"), eqx.nn.Linear(4, 1, dtype=F64, key=jax.random.key(0)))
    with pytest.raises(TypeError, match="readout's 'weight' is float32.*float64"):
        from_module(make_eqx("gru"), eqx.nn.Linear(H, 1, dtype=jnp.float32, key=jax.random.key(0)))
    mlp = eqx.nn.MLP(2, 1, 3, 1, dtype=F64, key=jax.random.key(0))
    with pytest.raises(ValueError, match="a readout is supported for the recurrent cells only, got MLP"):
        from_module(mlp, eqx.nn.Linear(1, 1, dtype=F64, key=jax.random.key(0)))


@pytest.mark.parametrize(
    ("build", "setting"),
    [
        (
            lambda eqx, nnx: eqx.nn.MLP(2, 1, 3, 1, activation=jax.nn.gelu, key=jax.random.key(0)),
            "activation=",
        ),
        (
            lambda eqx, nnx: eqx.nn.MLP(2, 1, 3, 1, use_final_bias=False, key=jax.random.key(0)),
            "use_final_bias",
        ),
        (
            lambda eqx, nnx: eqx.nn.MLP(2, 1, 3, 1, final_activation=jnp.tanh, key=jax.random.key(0)),
            "final_activation=",
        ),
        (lambda eqx, nnx: eqx.nn.MLP("scalar", 1, 3, 1, key=jax.random.key(0)), "'scalar'"),
        (lambda eqx, nnx: nnx.SimpleCell(2, 3, residual=True, rngs=nnx.Rngs(0)), "residual=True"),
        (lambda eqx, nnx: nnx.SimpleCell(2, 3, activation_fn=nnx.gelu, rngs=nnx.Rngs(0)), "activation_fn="),
        (lambda eqx, nnx: nnx.GRUCell(2, 3, gate_fn=nnx.hard_sigmoid, rngs=nnx.Rngs(0)), "gate_fn="),
        (
            lambda eqx, nnx: nnx.OptimizedLSTMCell(2, 3, activation_fn=nnx.relu, rngs=nnx.Rngs(0)),
            "activation_fn=",
        ),
        (
            lambda eqx, nnx: nnx.LSTMCell(2, 3, dtype=jnp.float32, param_dtype=F64, rngs=nnx.Rngs(0)),
            "dtype=float32 with param_dtype=float64",
        ),
    ],
)
def test_unsupported_settings_are_named(build, setting):
    module = build(eqx_module(), nnx_module())
    with pytest.raises(ValueError, match=f"unsupported {type(module).__name__} setting.*{setting}"):
        from_module(module)


def test_malformed_flax_sequential_is_refused():
    nnx = nnx_module()
    rngs = nnx.Rngs(0)
    for items in (
        [nnx.Linear(2, 3, rngs=rngs), nnx.Linear(3, 1, rngs=rngs)],  # no activation between
        [nnx.Linear(2, 3, rngs=rngs), nnx.gelu, nnx.Linear(3, 1, rngs=rngs)],
        [nnx.Linear(2, 3, rngs=rngs), nnx.tanh, nnx.Linear(3, 1, rngs=rngs), nnx.relu],
        [nnx.tanh, nnx.Linear(2, 3, rngs=rngs)],
    ):
        with pytest.raises(ValueError, match=r"expected a flax\.nnx\.Sequential of flax\.nnx\.Linear"):
            from_module(nnx.Sequential(*items))
    seq = nnx.Sequential(nnx.Linear(2, 3, rngs=rngs), nnx.tanh, nnx.Linear(3, 1, use_bias=False, rngs=rngs))
    with pytest.raises(ValueError, match="use_bias differing between layers"):
        from_module(seq)
