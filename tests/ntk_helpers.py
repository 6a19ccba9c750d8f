"""The shared helpers of the model and NTK property tests.

Every model is built through ``MODELS[name](n_in, H)`` (``tests/model_zoo.py``, re-exported
here); adding a model to every property test is one line there.  ``build`` draws its parameters, inputs and
initial state on the host (float64) and puts them on the case's backend, so
the same weights can be rebuilt on a reference autodiff backend.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

import numpy as np
from hypothesis import strategies as st

from kpflow.models import RecurrentModel
from tests.model_zoo import MODELS, Built, on_backend

NAMES = sorted(MODELS)
RECURRENT = [n for n in NAMES if isinstance(MODELS[n](1, 1), RecurrentModel)]

#: an autodiff backend to compute dense references on, preferring torch
REFERENCE = "torch" if find_spec("torch") is not None else ("jax" if find_spec("jax") is not None else None)


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
