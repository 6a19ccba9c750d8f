"""Memory layouts the products stream through: step-major per-step caches, contiguous site D.

P and Pᵀ read ``cache[:, t]`` at every step; :func:`kpflow.models.base.step_major` lays a
``(B, T, ...)`` cache out step by step so that read is one contiguous block.  The sites'
D, flat copies of those caches (one gate's slice of the GRU's), are then contiguous too,
so F and Fᵀ stream through them.  Values never change: the property tests check every
product against dense references; these tests check the layouts and that nothing else moved.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kpflow.models.base import step_major
from tests.conftest import Case


def _contiguous(case: Case, a: Any) -> bool | None:
    """Whether ``a`` is C-contiguous, or None where the backend shows no strides."""
    if case.name == "numpy":
        return bool(a.flags["C_CONTIGUOUS"])
    if case.name == "torch":
        return bool(a.is_contiguous())
    return None


def test_step_major_equals_its_input_and_reads_each_step_contiguously(case64: Case) -> None:
    a = case64.randn(3, 4, 2, 5, seed=1)
    b = step_major(a)
    assert tuple(b.shape) == tuple(a.shape)
    case64.assert_close(b, case64.to_numpy(a), rtol=0.0)
    for t in range(4):
        assert _contiguous(case64, b[:, t, ...]) in (True, None)
    if case64.name in ("numpy", "torch"):
        assert not _contiguous(case64, a[:, 1, ...])  # the layout did change


def test_step_major_keeps_torch_gradients() -> None:
    torch = pytest.importorskip("torch")
    a = torch.arange(24.0, dtype=torch.float64).reshape(2, 3, 4).requires_grad_()
    (step_major(a) * torch.arange(24.0, dtype=torch.float64).reshape(2, 3, 4)).sum().backward()
    assert torch.equal(a.grad, torch.arange(24.0, dtype=torch.float64).reshape(2, 3, 4))


@pytest.mark.parametrize("name", ["gru", "rnn", "leaky"])
def test_recurrent_step_caches_are_step_major_and_site_D_is_contiguous(name: str) -> None:
    from kpflow.models import GRU, RNN, LeakyRNN

    model = {"gru": GRU(2, 3), "rnn": RNN(2, 3), "leaky": LeakyRNN(2, 3, dt=0.5)}[name]
    x = np.random.default_rng(0).standard_normal((4, 5, 2))
    traj = model.run(model.init(0), x)
    caches = [a for a in traj.step_kernel().operands if a.ndim >= 3]
    assert caches
    for a in caches:
        assert a.shape[:2] == (4, 5)
        assert all(a[:, t, ...].flags["C_CONTIGUOUS"] for t in range(5))
    for site in traj.sites:
        D = site.D_operand()
        if D is not None:
            assert D.flags["C_CONTIGUOUS"]
            np.testing.assert_array_equal(np.reshape(D, (site.m, -1)), np.reshape(site.unit_D, (site.m, -1)))
