"""Every model's state layout (axes, block kind, blocks, parts) and P through the layout's path.

The layout is data (:class:`kpflow.models.layout.Layout`): a trajectory's geometry is read from
it and :func:`kpflow.ntk.propagator` picks its path from ``layout.kind`` alone.  The reference
for P is independent of every trajectory's step code: the dense L = ∂f/∂z of the model's own
update map by ``torch.func.jacrev``, and (I − L)⁻¹ by a dense inverse, in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import kpflow.ntk as ntk
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
from kpflow.models.layout import KINDS, Layout

torch = pytest.importorskip("torch")

F64 = torch.zeros(1, dtype=torch.float64)


def _recurrent_hooks() -> Recurrent:
    def step(params, h, x, site):
        return torch.tanh(site("W", h) + site("U", x) + site("b"))

    return Recurrent(step, n_in=2, n_hidden=3, param_shapes={"W": (3, 3), "U": (3, 2), "b": (3,)})


def _feedforward_hooks() -> FeedForward:
    def hidden(params, z, site):
        return torch.tanh(site("W0", z))

    def output(params, z, site):
        return site("W1", z)

    return FeedForward([hidden, output], n_in=2, widths=[4, 3], param_shapes={"W0": (4, 2), "W1": (3, 4)})


def _implicit() -> Implicit:
    def residual(params, z, x, site):
        return z - torch.tanh(site("W", z) + site("U", x))

    return Implicit(residual, n_in=2, n_state=3, param_shapes={"W": (3, 3), "U": (3, 2)})


def _rx(shape: tuple[int, ...], seed: int = 0):
    return torch.as_tensor(np.random.default_rng(seed).standard_normal(shape))


# (name, model factory, input shape, expected kind, axes, site_axes, n_steps, parts, features)
CASES = [
    (
        "rnn",
        lambda: RNN(2, 3),
        (2, 4, 2),
        "recurrent",
        ("batch", "time", "hidden"),
        2,
        4,
        {"h": (0, 3)},
        (0, 3),
    ),
    (
        "gru",
        lambda: GRU(2, 3),
        (2, 4, 2),
        "recurrent",
        ("batch", "time", "hidden"),
        2,
        4,
        {"h": (0, 3)},
        (0, 3),
    ),
    (
        "lstm",
        lambda: LSTM(2, 3),
        (2, 4, 2),
        "recurrent",
        ("batch", "time", "hidden"),
        2,
        4,
        {"h": (0, 3), "c": (3, 6)},
        (0, 3),
    ),
    (
        "leaky",
        lambda: LeakyRNN(2, 3, dt=0.1),
        (2, 4, 2),
        "recurrent",
        ("batch", "time", "hidden"),
        2,
        4,
        {"h": (0, 3)},
        (0, 3),
    ),
    (
        "hooks",
        _recurrent_hooks,
        (2, 4, 2),
        "recurrent",
        ("batch", "time", "hidden"),
        2,
        4,
        {"h": (0, 3)},
        (0, 3),
    ),
    ("mlp", lambda: MLP((2, 4, 3)), (5, 2), "depth", ("batch", "units"), 1, 2, {"h": (0, 7)}, (4, 7)),
    ("feedforward", _feedforward_hooks, (5, 2), "depth", ("batch", "units"), 1, 2, {"h": (0, 7)}, (4, 7)),
    (
        "attention",
        lambda: SelfAttention(4, 2),
        (2, 3, 4),
        "single",
        ("batch", "token", "feature"),
        2,
        1,
        {"h": (0, 4)},
        (0, 4),
    ),
    (
        "transformer",
        lambda: TransformerEncoder(4, 2, 6, 1, final_norm=True),
        (2, 3, 4),
        "recurrent",
        ("batch", "state", "token", "feature"),
        3,
        3,
        {"h": (0, 4)},
        (0, 4),
    ),
    ("implicit", _implicit, (3, 2), "solved", ("batch", "state"), 1, 1, {"h": (0, 3)}, (0, 3)),
]
IDS = [c[0] for c in CASES]


def _run(factory, x_shape):
    model = factory()
    params = model.init(0, like=F64)
    x = _rx(x_shape)
    return model, params, x, model.run(params, x)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_layout_of_every_model_agrees_with_its_states(case) -> None:
    _, factory, x_shape, kind, axes, site_axes, n_steps, parts, features = case
    model, _, _, traj = _run(factory, x_shape)
    lay = traj.layout
    assert isinstance(lay, Layout)
    assert lay.kind == kind and lay.kind in KINDS
    assert lay.shape == tuple(traj.states.shape)
    assert lay.axes == axes == traj.axis_names
    assert len(lay.axes) == traj.states.ndim
    assert lay.site_axes == site_axes
    assert traj.site_shape == tuple(traj.states.shape[:site_axes])
    assert traj.m * traj.site_state_size == math.prod(traj.states.shape)
    assert traj.n_steps == n_steps == len(lay.blocks)
    assert dict(lay.parts) == parts == dict(model.state_parts)
    assert traj.feature_columns == features == tuple(model.feature_columns)
    assert traj.triangular == (kind != "solved")
    # blocks tile the block axis, and block/join are inverse
    if lay.block_axis is not None:
        sizes = [hi - lo for lo, hi in lay.blocks]
        assert sum(sizes) == traj.states.shape[lay.block_axis]
    if kind == "depth":
        assert traj.blocks == list(model.blocks)
    V = _rx((2, *traj.state_shape), seed=1)
    assert torch.equal(traj.join([traj.block(V, t) for t in range(traj.n_steps)]), V)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_no_step_methods_where_the_layout_has_no_steps(case) -> None:
    _, factory, x_shape, kind, *_ = case
    _, _, _, traj = _run(factory, x_shape)
    if kind not in ("single", "solved"):
        return
    v = _rx((1, *traj.state_shape))
    with pytest.raises(IndexError, match=f"one block \\(a '{kind}' layout\\), so no step t=1"):
        traj.step_jvp(1, v)
    with pytest.raises(IndexError, match=f"one block \\(a '{kind}' layout\\), so no step t=1"):
        traj.step_vjp(1, v)
    if kind == "solved":  # L is the trajectory's own whole-state map: never the zero of one block
        from kpflow.models import Trajectory

        with pytest.raises(NotImplementedError, match="'solved' trajectory overrides state_jvp"):
            Trajectory.state_jvp(traj, v)
        with pytest.raises(NotImplementedError, match="'solved' trajectory overrides state_vjp"):
            Trajectory.state_vjp(traj, v)
        assert float(torch.linalg.vector_norm(traj.state_jvp(v))) > 0


def _dense_propagator(model, params, x, z):
    """(I − L)⁻¹ with L = ∂f/∂z of the model's update map, by jacrev and a dense inverse."""
    n = z.numel()
    L = torch.func.jacrev(lambda s: model.update_map(params, s, x))(z).reshape(n, n)
    return torch.linalg.inv(torch.eye(n, dtype=z.dtype) - L)


@pytest.mark.parametrize("name", ["gru", "lstm", "mlp", "attention", "transformer", "implicit"])
def test_propagator_through_the_layout_path_equals_dense_inverse(name) -> None:
    case = CASES[IDS.index(name)]
    model, params, x, traj = _run(case[1], case[2])
    n = traj.states.numel()
    P_ref = _dense_propagator(model, params, x, traj.states)
    P = ntk.propagator(traj)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *traj.state_shape)
    got = P.matmat(eye).reshape(n, n).T  # column j = P e_j
    got_T = P.T.matmat(eye).reshape(n, n).T
    tol = 1e-9 if name == "implicit" else 1e-12  # GMRES to its tolerance
    scale = float(torch.linalg.matrix_norm(P_ref))
    assert float(torch.linalg.matrix_norm(got - P_ref)) <= tol * scale
    assert float(torch.linalg.matrix_norm(got_T - P_ref.T)) <= tol * scale
    if case[3] == "single":  # L = 0: P is the identity, applied as such
        V = _rx((2, *traj.state_shape))
        assert P.matmat(V) is V


def test_layout_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="kind"):
        Layout((2, 3), ("batch", "units"), "diagonal", site_axes=1)
    with pytest.raises(ValueError, match="one axis name per axis"):
        Layout((2, 3, 4), ("batch", "time"), "recurrent", site_axes=2)
    with pytest.raises(ValueError, match="widths summing"):
        Layout((2, 7), ("batch", "units"), "depth", site_axes=1, widths=(4, 4))
    with pytest.raises(ValueError, match="part 'c'"):
        Layout((2, 3, 4), ("batch", "time", "hidden"), "recurrent", site_axes=2, parts={"c": (2, 5)})
    with pytest.raises(ValueError, match="recurrent layout"):
        Layout((2, 3), ("batch", "hidden"), "recurrent", site_axes=1)
