"""The LSTM's h and c parts of NTK_S (``part=``), and ``keep=`` by axis name on the NTK operators."""

from __future__ import annotations

import numpy as np
import pytest

import kpflow
from kpflow import linalg
from kpflow.models import GRU, LSTM, MLP, RNN


def _dense(op) -> np.ndarray:
    M = np.asarray(op.todense())
    n = int(np.prod(op.shape_in))
    return M.reshape(n, n)


def test_lstm_h_and_c_blocks_equal_the_blocks_of_the_dense_ntk():
    lstm = LSTM(2, 3)
    traj = lstm.run(lstm.init(0), np.random.default_rng(0).standard_normal((2, 3, 2)))
    full = kpflow.global_ntk(traj).todense()
    h = kpflow.global_ntk(traj, part="h")
    c = kpflow.global_ntk(traj, part="c")
    assert h.shape_in == c.shape_in == (2, 3, 3)
    np.testing.assert_allclose(h.todense(), full[:, :, :3, :, :, :3], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(c.todense(), full[:, :, 3:, :, :, 3:], rtol=1e-13, atol=1e-15)
    top = linalg.eigsh(h, 3, method="lanczos", rng=0, tol=1e-12)
    dense_top = np.linalg.eigvalsh(h.todense().reshape(18, 18))[::-1][:3]
    np.testing.assert_allclose(np.asarray(top.eigenvalues), dense_top, rtol=1e-10)


def test_part_is_checked():
    rnn = RNN(1, 2)
    traj = rnn.run(rnn.init(0), np.ones((1, 2, 1)))
    assert kpflow.global_ntk(traj, part="h").shape_in == (1, 2, 2)
    with pytest.raises(ValueError, match="part='c' needs an LSTM"):
        kpflow.global_ntk(traj, part="c")
    with pytest.raises(ValueError, match="expected part to be one of"):
        kpflow.global_ntk(traj, part="hidden")


def test_keep_accepts_axis_names():
    traj = GRU(2, 3).run(GRU(2, 3).init(0), np.random.default_rng(0).standard_normal((2, 4, 2)))
    for op in (kpflow.parameter_kernel(traj), kpflow.global_ntk(traj), kpflow.propagator(traj)):
        assert op.axis_names == ("batch", "time", "hidden")
    K = kpflow.parameter_kernel(traj)
    for name, index in (("batch", 0), ("time", 1), ("hidden", 2)):
        assert float(linalg.effective_rank(K, keep=name)) == float(linalg.effective_rank(K, keep=index))
    both = linalg.effective_rank(K, keep=("batch", "time"))
    assert float(both) == float(linalg.effective_rank(K, keep=(0, 1)))
    with pytest.raises(ValueError, match=r"keep='units' is not an axis .* \('batch', 'time', 'hidden'\)"):
        linalg.effective_rank(K, keep="units")
    with pytest.raises(ValueError, match="has no axis names"):
        linalg.effective_rank(kpflow.Diagonal(np.ones(3)), keep="time")
    mlp = MLP((2, 3))
    assert kpflow.global_ntk(mlp.run(mlp.init(0), np.ones((2, 2)))).axis_names == ("batch", "units")
