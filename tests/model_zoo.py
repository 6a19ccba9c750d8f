"""Small instances of every built-in model and of hook cells, with params and inputs on any case.

``ZOO[name]`` is a :class:`Spec`: a factory for a small model and the shape of its input.
:func:`small` draws the params, the input (and an initial state, for recurrent models) on
the host in float64 with a seed and puts them on a test case's backend and dtype, so that the
same problem can be rebuilt on a reference backend.  Every concrete model class that
``kpflow.models`` exports has an entry (``tests/models/test_model_zoo.py`` checks it);
adding a model to the zoo is one line here.

The hook cells (``tanh_rnn_step``, ``shared_weight_step``, ``gated_step``) are written with
weight hooks (:class:`kpflow.models.Recurrent`); their autodiff derivatives need torch or
jax (``Spec.autodiff``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from kpflow.models import (
    GRU,
    LSTM,
    MLP,
    RNN,
    LeakyRNN,
    Model,
    Recurrent,
    RecurrentModel,
    SelfAttention,
    TransformerEncoder,
)


# -- hook cells ------------------------------------------------------------------------------------
def _sigmoid(xp, u):
    return 1.0 / (1.0 + xp.exp(-u))


def tanh_rnn_step(params, h, x, site):
    xp = array_namespace(h, x)
    return xp.tanh(site("weight_hh", h) + site("weight_ih", x) + site("bias_ih") + site("bias_hh"))


def shared_weight_step(params, h, x, site):
    # W acts on h and on tanh(h), b twice: K_W and K_b carry cross terms between the calls
    xp = array_namespace(h, x)
    first = xp.tanh(site("W", h) + site("U", x) + site("b"))
    return first + 0.5 * xp.tanh(site("W", xp.tanh(h)) + site("b"))


def gated_step(params, h, x, site):
    xp = array_namespace(h, x)
    r = _sigmoid(xp, site("W_ir", x) + site("W_hr", h) + site("b_r"))
    z = _sigmoid(xp, site("W_iz", x) + site("W_hz", h) + site("b_z"))
    n = xp.tanh(site("W_in", x) + site("b_in") + r * (site("W_hn", h) + site("b_hn")))
    return (1.0 - z) * n + z * h


def hook_tanh_rnn(n_in: int, H: int) -> Recurrent:
    """The tanh RNN written with hooks, with the built-in RNN's parameter names and shapes."""
    return Recurrent(tanh_rnn_step, n_in=n_in, n_hidden=H, param_shapes=RNN(n_in, H).param_shapes())


def hook_shared_weight(n_in: int, H: int) -> Recurrent:
    """A cell that uses one weight at two hook calls."""
    shapes = {"W": (H, H), "U": (H, n_in), "b": (H,)}
    return Recurrent(shared_weight_step, n_in=n_in, n_hidden=H, param_shapes=shapes)


def hook_gated(n_in: int, H: int) -> Recurrent:
    """A GRU-like gated cell with one weight per gate."""
    shapes = {}
    for g in "rzn":
        shapes[f"W_i{g}"] = (H, n_in)
        shapes[f"W_h{g}"] = (H, H)
    shapes.update({"b_r": (H,), "b_z": (H,), "b_in": (H,), "b_hn": (H,)})
    return Recurrent(gated_step, n_in=n_in, n_hidden=H, param_shapes=shapes)


#: The hook cells by name: ``CELLS[name](n_in, H)``.
CELLS: dict[str, Callable[[int, int], Recurrent]] = {
    "tanh_rnn": hook_tanh_rnn,
    "shared_weight": hook_shared_weight,
    "gated": hook_gated,
}

# -- the property tests' registry ------------------------------------------------------------------
#: The models of the NTK property tests (``tests/ntk/``), built by ``MODELS[name](n_in, H)`` from
#: an input of shape (B, T, n_in) (recurrent) or (B, n_in) (feedforward).
MODELS: dict[str, Callable[[int, int], Model]] = {
    "rnn_tanh": lambda n_in, H: RNN(n_in, H),
    "rnn_relu": lambda n_in, H: RNN(n_in, H, nonlinearity="relu"),
    "rnn_nobias": lambda n_in, H: RNN(n_in, H, bias=False),
    "leaky_tanh_bias": lambda n_in, H: LeakyRNN(n_in, H, dt=0.3, bias=True),
    "leaky_relu": lambda n_in, H: LeakyRNN(n_in, H, dt=0.7, nonlinearity="relu"),
    "mlp_tanh": lambda n_in, H: MLP((n_in, H, H + 1, 2)),
    "mlp_relu_nonlinear_out": lambda n_in, H: MLP((n_in, H, 3), nonlinearity="relu", linear_output=False),
    "mlp_one_layer": lambda n_in, H: MLP((n_in, H), bias=False),
    "gru": lambda n_in, H: GRU(n_in, H),
    "gru_nobias": lambda n_in, H: GRU(n_in, H, bias=False),
    "lstm": lambda n_in, H: LSTM(n_in, H),
    "lstm_nobias": lambda n_in, H: LSTM(n_in, H, bias=False),
}


# -- the zoo: one small instance of every model ----------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """A small model and its input shape; ``autodiff``: its derivatives need torch or jax."""

    make: Callable[[], Model]
    x_shape: tuple[int, ...]
    autodiff: bool = False


ZOO: dict[str, Spec] = {
    "rnn": Spec(lambda: RNN(2, 3), (2, 4, 2)),
    "leaky": Spec(lambda: LeakyRNN(2, 3, dt=0.3, bias=True), (2, 4, 2)),
    "gru": Spec(lambda: GRU(2, 3), (2, 4, 2)),
    "lstm": Spec(lambda: LSTM(2, 3), (2, 4, 2)),
    "mlp": Spec(lambda: MLP((2, 4, 3)), (3, 2)),
    "attention": Spec(lambda: SelfAttention(4, 2), (2, 3, 4)),
    "transformer": Spec(lambda: TransformerEncoder(4, 2, 3, 2, max_len=4), (2, 3, 4)),
    "hook_tanh_rnn": Spec(lambda: hook_tanh_rnn(2, 3), (2, 4, 2), autodiff=True),
    "hook_gated": Spec(lambda: hook_gated(2, 3), (2, 4, 2), autodiff=True),
}


@dataclass
class Built:
    """A model with host float64 parameters, input and h0, and its trajectory on one backend."""

    name: str
    model: Model
    host_params: dict[str, np.ndarray]
    host_x: np.ndarray
    host_h0: np.ndarray | None
    traj: Any


def on_backend(case: Any, model: Model, params: dict, x: np.ndarray, h0: np.ndarray | None) -> Any:
    """Run ``model`` on the case's backend with the given host arrays."""
    p = {k: case.asarray(v) for k, v in params.items()}
    return model.run(p, case.asarray(x), None if h0 is None else case.asarray(h0))


def small(case: Any, name: str, *, seed: int = 0, with_h0: bool = False) -> Built:
    """``ZOO[name]`` run on ``case`` (backend and dtype), its params, x (and h0) drawn from ``seed``."""
    spec = ZOO[name]
    model = spec.make()
    rng = np.random.default_rng(seed)
    params = {k: np.asarray(v) for k, v in model.init(rng).items()}
    x = rng.standard_normal(spec.x_shape)
    h0 = None
    if with_h0 and isinstance(model, RecurrentModel):
        h0 = 0.5 * rng.standard_normal((spec.x_shape[0], model.state_size))
    return Built(name, model, params, x, h0, on_backend(case, model, params, x, h0))
