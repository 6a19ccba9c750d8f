"""e7's probe-group estimator of the temporal rank pr(M) = tr(M)²/tr(M²): its error bar over seeds.

The Jacobian here is a small fixed array J ``(m, F, P)`` (M = Σ_f J_f J_fᵀ, the partial trace
over features of J Jᵀ), so the exact value is cheap; the estimator sees it only through
``matmat`` as it sees e7's network.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.examples.test_paper_examples import PAPER, _load

torch = pytest.importorskip("torch")


class _ArrayJacobian:
    """J_S as a fixed array: ``matmat`` of parameter probes ``(k, P)`` gives ``(k, m, F)``."""

    def __init__(self, J: np.ndarray) -> None:
        self.J = torch.as_tensor(J)
        self.shape_in, self.shape_out = (J.shape[2],), (J.shape[0], J.shape[1])

    def matmat(self, W):
        return torch.einsum("mfp,kp->kmf", self.J, W)


def test_e7_temporal_rank_error_bar_covers_the_exact_value_over_seeds():
    e7 = _load("paper_e7_estimator", PAPER / "e7_attention_rank.py")
    m, F, P = 12, 6, 40
    rng = np.random.default_rng(0)
    J = rng.standard_normal((m, F, P)) * np.sqrt(0.5 ** np.arange(m))[:, None, None]
    J[:, :, :3] += 3 * rng.standard_normal((m, F, 3))  # a few dominant directions, as in e7
    M = np.einsum("afp,bfp->ab", J, J)
    exact = np.trace(M) ** 2 / np.sum(M * M)
    op, seeds = _ArrayJacobian(J), 200
    runs = np.array([e7.split_ratio(e7.partial_trace_samples(op, 4, 4, s)) for s in range(seeds)])
    values, errors = runs[:, 0], runs[:, 1]
    assert np.all((values >= 1.0) & (values <= m))  # pr's range
    coverage = np.mean(np.abs(values - exact) <= 2 * errors)
    half = 3 * np.sqrt(0.95 * 0.05 / seeds)  # the binomial ±3σ band around 95%
    assert 0.95 - half <= coverage <= 0.95 + half, f"±2σ covered pr(M) in {coverage:.1%} of {seeds} seeds"
    assert abs(values.mean() - exact) <= 3 * values.std() / np.sqrt(seeds)
