"""init_params(scale=...): the research code's g × U(±1/√H) beside the Gaussian N(0, g²/H)."""

from __future__ import annotations

import numpy as np
import pytest

from kpflow.models import GRU, LSTM, RNN
from kpflow.training import init_params


@pytest.mark.parametrize("cell, gates", [(RNN, 1), (GRU, 3), (LSTM, 4)])
def test_torch_scale_is_g_times_uniform_on_every_gate(cell, gates):
    H, g = 300, 2.0
    W = init_params(cell(2, H), 0, g=g, scale="torch")["weight_hh"]
    assert W.shape == (gates * H, H)
    bound = g / np.sqrt(H)
    for block in np.split(W, gates, axis=0):
        assert np.abs(block).max() <= bound
        assert np.abs(block).max() > 0.99 * bound  # uniform up to the bound, not clipped Gaussian
        # variance g²/(3H): the sample variance of H² draws is within 1% (≈ 0.3% standard error)
        assert block.var() == pytest.approx(g**2 / (3 * H), rel=0.01)
        assert abs(block.mean()) < 4 * bound / np.sqrt(3 * H * H)


def test_gaussian_scale_keeps_variance_g2_over_h_and_is_the_default():
    H, g = 300, 1.15
    W = init_params(RNN(1, H), 0, g=g)["weight_hh"]
    assert W.var() == pytest.approx(g**2 / H, rel=0.015)
    np.testing.assert_array_equal(W, init_params(RNN(1, H), 0, g=g, scale="gaussian")["weight_hh"])
    # research g = 2 (torch scale) has the variance of gaussian g = 2/√3
    Wt = init_params(RNN(1, H), 1, g=2.0, scale="torch")["weight_hh"]
    Wg = init_params(RNN(1, H), 1, g=2.0 / np.sqrt(3.0))["weight_hh"]
    assert Wt.var() == pytest.approx(Wg.var(), rel=0.03)


def test_scale_only_changes_weight_hh_and_bad_scale_names_the_choices():
    a = init_params(RNN(2, 5), 3, g=1.0, scale="torch")
    b = init_params(RNN(2, 5), 3)
    for k in ("weight_ih", "bias_ih", "bias_hh"):
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match=r"init_params: expected scale to be one of \('gaussian', 'torch'\)"):
        init_params(RNN(2, 5), 0, g=1.0, scale="uniform")
