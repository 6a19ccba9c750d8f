"""A hook cell run on parameters that require grad: per-unit sites, no warning, gradients flow."""

from __future__ import annotations

import pytest

import kpflow
from kpflow.models import Recurrent

torch = pytest.importorskip("torch")


def _step(params, h, x, site):
    return torch.tanh(site("W", h) + site("U", x) + site("b"))


def test_diagonal_detection_reads_numbers_only_and_keeps_the_graph():
    model = Recurrent(_step, n_in=2, n_hidden=3, param_shapes={"W": (3, 3), "U": (3, 2), "b": (3,)})
    like = torch.zeros(1, dtype=torch.float64)
    params = {k: v.requires_grad_() for k, v in model.init(0, like=like).items()}
    traj = model.run(params, torch.ones(2, 4, 2, dtype=torch.float64))  # the suite turns warnings into errors
    assert all(site.unit_D is not None for site in traj.sites)
    assert all(site.unit_D.requires_grad for site in traj.sites)
    kpflow.global_ntk(traj).matvec(torch.ones(2, 4, 3, dtype=torch.float64)).sum().backward()
    assert all(float(p.grad.norm()) > 0 for p in params.values())
