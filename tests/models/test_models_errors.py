"""Bad input to the models gives a clear error naming the call and the argument."""

from __future__ import annotations

import numpy as np
import pytest

from kpflow.models import MLP, RNN, LeakyRNN, Linear
from tests.ntk_helpers import MODELS, NAMES, RECURRENT


def _problem(name):
    model = MODELS[name](2, 3)
    params = model.init(0)
    x = np.ones((2, 4, 2)) if name in RECURRENT else np.ones((2, 2))
    return model, params, x


@pytest.mark.parametrize("name", NAMES)
def test_x_of_wrong_rank_is_rejected(name):
    model, params, x = _problem(name)
    with pytest.raises(ValueError, match=r"\.run: expected x of shape"):
        model.run(params, x[..., None])


@pytest.mark.parametrize("name", NAMES)
def test_x_of_wrong_feature_size_is_rejected(name):
    model, params, x = _problem(name)
    with pytest.raises(ValueError, match=r"expected x of shape .*n_in=2"):
        model.run(params, np.ones((*x.shape[:-1], 5)))


@pytest.mark.parametrize("name", NAMES)
def test_missing_and_extra_param_keys_are_rejected(name):
    model, params, x = _problem(name)
    key = sorted(params)[0]
    with pytest.raises(ValueError, match=rf"params is missing the key\(s\) \['{key}'\]"):
        model.run({k: v for k, v in params.items() if k != key}, x)
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['typo'\]"):
        model.run({**params, "typo": np.ones(1)}, x)
    with pytest.raises(TypeError, match="expected params to be a dict"):
        model.run(list(params.values()), x)


@pytest.mark.parametrize("name", NAMES)
def test_param_of_wrong_shape_is_rejected(name):
    model, params, x = _problem(name)
    key = sorted(params)[-1]
    bad = {**params, key: np.ones((*params[key].shape, 2))}
    with pytest.raises(ValueError, match=rf"expected params\['{key}'\] of shape"):
        model.run(bad, x)


@pytest.mark.parametrize("name", RECURRENT)
def test_h0_of_wrong_shape_is_rejected(name):
    model, params, x = _problem(name)
    with pytest.raises(ValueError, match="expected h0 (of shape|to be the LSTM's initial state)"):
        model.run(params, x, np.ones((3, model.state_size)))


def test_mlp_rejects_any_h0():
    model, params, x = _problem("mlp_tanh")
    with pytest.raises(ValueError, match="expected h0=None"):
        model.run(params, x, np.ones((2, 3)))


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_states_are_rejected(name):
    model, params, x = _problem(name)
    with pytest.raises(ValueError, match="expected finite values in x, got inf or nan"):
        model.run(params, np.full_like(x, np.inf))
    bad = {k: np.full_like(v, np.nan) for k, v in params.items()}
    with pytest.raises(ValueError, match=r"expected finite values in params\["):
        model.run(bad, x)


@pytest.mark.parametrize("name", NAMES)
def test_a_single_non_finite_param_is_rejected_by_name(name):
    # An inf weight can hide behind a saturating tanh: the states stay finite, the NTK is
    # meaningless.  Each param is checked, and the message names it.
    model, params, x = _problem(name)
    for key in params:
        bad = dict(params)
        bad[key] = params[key].copy()
        bad[key].reshape(-1)[0] = np.inf
        with pytest.raises(ValueError, match=rf"expected finite values in params\[{key!r}\]"):
            model.run(bad, x)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_dtype_and_namespace_raise_type_error(name):
    import array_api_strict as xps

    model, params, x = _problem(name)
    with pytest.raises(TypeError, match="expected x of dtype"):
        model.run(params, x.astype(np.float32))
    with pytest.raises(TypeError, match="x comes from array_api_strict"):
        model.run(params, xps.asarray(x))
    if len(params) > 1:  # a one-parameter model cannot mix dtypes
        first = sorted(params)[0]
        with pytest.raises(TypeError, match="params mix dtypes"):
            model.run({**params, first: params[first].astype(np.float32)}, x)


def test_constructors_reject_bad_options():
    with pytest.raises(ValueError, match="RNN: expected nonlinearity"):
        RNN(2, 3, nonlinearity="gelu")
    with pytest.raises(ValueError, match="RNN: expected n_hidden to be a positive int"):
        RNN(2, 0)
    with pytest.raises(ValueError, match=r"LeakyRNN: expected dt to be a float in \(0, 1\]"):
        LeakyRNN(2, 3, dt=0.0)
    with pytest.raises(ValueError, match="MLP: expected widths"):
        MLP((3,))
    with pytest.raises(ValueError, match="MLP: expected every width"):
        MLP((3, -1))
    with pytest.raises(ValueError, match="Linear: expected n_out"):
        Linear(3, 1.5)


def test_init_rejects_a_bad_rng():
    for model in (RNN(2, 3), MLP((2, 3)), Linear(2, 1)):
        with pytest.raises(TypeError, match=r"\.init: expected rng"):
            model.init("seed")
