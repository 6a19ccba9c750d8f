"""A registry of model factories and the shared helpers of the model and NTK tests.

Every model is built through ``MODELS[name](n_in, H)``; adding a model to every
property test is one line here.  ``build`` draws its parameters, inputs and
initial state on the host (float64) and puts them on the case's backend, so
the same weights can be rebuilt on a reference autodiff backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any

import numpy as np
from hypothesis import strategies as st

from kpflow.models import GRU, LSTM, MLP, RNN, LeakyRNN, Model, RecurrentModel

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

NAMES = sorted(MODELS)
RECURRENT = [n for n in NAMES if isinstance(MODELS[n](1, 1), RecurrentModel)]

#: an autodiff backend to compute dense references on, preferring torch
REFERENCE = "torch" if find_spec("torch") is not None else ("jax" if find_spec("jax") is not None else None)


@dataclass
class Built:
    """A model with host float64 parameters, input and h0, and its trajectory on one backend."""

    name: str
    model: Model
    host_params: dict[str, np.ndarray]
    host_x: np.ndarray
    host_h0: np.ndarray | None
    traj: Any


def shapes() -> st.SearchStrategy:
    """(B, T, H, n_in, seed, with_h0) with every size from 1 to 4."""
    size = st.integers(1, 4)
    return st.tuples(size, size, size, size, st.integers(0, 2**16), st.booleans())


#: jax compiles every primitive afresh for each new shape (seconds per example in eager
#: mode), so on jax the sizes come from this fixed set and only the weights vary.
JAX_SIZES = ((1, 1, 1, 1), (2, 3, 2, 3))


def draw_shape(data: Any, case: Any) -> tuple:
    """Draw (B, T, H, n_in, seed, with_h0) for ``case`` (sizes from a fixed set on jax)."""
    if case.name != "jax":
        return data.draw(shapes(), label="shape")
    sizes = data.draw(st.sampled_from(JAX_SIZES), label="sizes")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    return (*sizes, seed, data.draw(st.booleans(), label="with_h0"))


def host_problem(name: str, B: int, T: int, H: int, n_in: int, seed: int, with_h0: bool) -> tuple:
    """Model, host params, x and h0 for the registry entry ``name``."""
    model = MODELS[name](n_in, H)
    rng = np.random.default_rng(seed)
    params = {k: np.asarray(v) for k, v in model.init(rng).items()}
    # scale up a little so that the nonlinearities are well inside their curved range
    params = {k: 1.5 * v for k, v in params.items()}
    if isinstance(model, RecurrentModel):
        x = rng.standard_normal((B, T, n_in))
        h0 = 0.5 * rng.standard_normal((B, model.state_size)) if with_h0 else None
    else:
        x = rng.standard_normal((B, n_in))
        h0 = None
    return model, params, x, h0


def on_backend(case: Any, model: Model, params: dict, x: np.ndarray, h0: np.ndarray | None) -> Any:
    """Run ``model`` on the case's backend with the given host arrays."""
    p = {k: case.asarray(v) for k, v in params.items()}
    return model.run(p, case.asarray(x), None if h0 is None else case.asarray(h0))


def build(case: Any, name: str, B: int, T: int, H: int, n_in: int, seed: int, with_h0: bool) -> Built:
    model, params, x, h0 = host_problem(name, B, T, H, n_in, seed, with_h0)
    return Built(name, model, params, x, h0, on_backend(case, model, params, x, h0))


def reference_case() -> Any:
    """A float64 ``Case`` on the reference autodiff backend."""
    from tests.conftest import _make_case

    return _make_case(REFERENCE, "float64")


def reference_traj(built: Built) -> Any:
    """The same problem on the reference autodiff backend."""
    return on_backend(reference_case(), built.model, built.host_params, built.host_x, built.host_h0)


def rel_err(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected)) / max(float(np.linalg.norm(expected)), 1e-300)


def inner(case: Any, a: Any, b: Any) -> float:
    return float(np.sum(case.to_numpy(a) * case.to_numpy(b)))
