"""``part=`` reads the model's declared state parts (``model.state_parts``), not its class."""

import numpy as np
import pytest

import kpflow
from kpflow.models import GRU, LSTM


class _SplitGRU(GRU):
    """A GRU whose state is declared as two parts, units 0:2 and 2:3."""

    @property
    def state_parts(self):
        return {"h": (0, 2), "c": (2, 3)}


def _dense(op, n):
    return np.asarray(op.todense()).reshape(n, n)


@pytest.mark.parametrize("part, cols", [("h", slice(0, 2)), ("c", slice(2, 3))])
def test_a_declared_part_gives_that_block_of_the_ntk_and_of_the_state_jacobian(part, cols):
    model = _SplitGRU(2, 3)
    traj = model.run(model.init(0), np.random.default_rng(1).standard_normal((2, 3, 2)))
    B, T, H = traj.state_shape
    full = np.asarray(kpflow.global_ntk(traj).todense()).reshape(B, T, H, B, T, H)
    width = cols.stop - cols.start
    want = full[:, :, cols, :, :, cols].reshape(B * T * width, B * T * width)
    block = kpflow.global_ntk(traj, part=part)
    assert block.shape_in == (B, T, width)
    np.testing.assert_allclose(_dense(block, B * T * width), want, rtol=1e-12, atol=1e-14)
    J = kpflow.state_jacobian(traj, part=part)
    Jd = np.asarray(J.todense()).reshape(B * T * width, -1)
    np.testing.assert_allclose(Jd @ Jd.T, want, rtol=1e-12, atol=1e-14)


def test_parts_come_from_the_model_and_unknown_ones_are_refused():
    assert LSTM(2, 3).state_parts == {"h": (0, 3), "c": (3, 6)}
    assert GRU(2, 3).state_parts == {"h": (0, 3)}
    traj = GRU(2, 3).run(GRU(2, 3).init(0), np.ones((1, 2, 2)))
    with pytest.raises(ValueError, match=r"part='c' needs an LSTM.*GRU has no cell state"):
        kpflow.global_ntk(traj, part="c")
    with pytest.raises(ValueError, match=r"expected part to be one of \('all', 'h'\), got 'x'"):
        kpflow.state_jacobian(traj, part="x")
