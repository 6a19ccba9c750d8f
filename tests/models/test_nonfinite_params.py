"""Non-finite params are rejected by name, even where a saturating nonlinearity would hide them."""

from __future__ import annotations

import numpy as np
import pytest

from kpflow.models import RNN


def test_an_inf_weight_behind_a_saturating_tanh_is_rejected():
    model = RNN(2, 3)
    params = model.init(0)
    params["weight_ih"][0, 0] = np.inf
    with pytest.raises(ValueError, match=r"RNN.run: expected finite values in params\['weight_ih'\]"):
        model.run(params, np.ones((1, 2, 2)))
