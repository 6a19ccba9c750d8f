"""``spectrum_report`` in the estimate regime: its product counts and its numbers against dense NTK_S."""

from __future__ import annotations

import numpy as np
import pytest

from kpflow.analysis import spectrum_report
from kpflow.models import GRU
from kpflow.ntk import global_ntk

SHAPE = (3, 8, 6)
N = int(np.prod(SHAPE))


@pytest.fixture(scope="module")
def gru():
    model = GRU(2, SHAPE[2])
    x = np.random.default_rng(0).standard_normal((SHAPE[0], SHAPE[1], 2))
    traj = model.run(model.init(0), x)
    D = np.asarray(global_ntk(traj).todense()).reshape(N, N)
    return traj, (D + D.T) / 2


def _ratio(M: np.ndarray) -> float:
    return float(np.trace(M) ** 2 / np.sum(M * M))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_report_shares_one_trace_pair_and_each_number_is_within_its_error(gru, seed):
    traj, D = gru
    m = 40  # below the dimension 144: every NTK_S number is an estimate
    entry = spectrum_report(traj, k=3, num_matvecs=m, rng=seed)["NTK_S"]
    assert entry["trace"]["method"] != "exact" and entry["trace"]["matvecs"] == m
    assert entry["second_trace_matvecs"] == m // 2
    ranks = {None: entry["effective_rank"], **entry["effective_rank_along"]}
    assert all(r["method"] == "estimate" and r["matvecs"] <= m // 2 for r in ranks.values())
    truth = {"trace": float(np.trace(D)), None: _ratio(D)}
    T = D.reshape(*SHAPE, *SHAPE)
    for axis, name in enumerate(("batch", "time", "hidden")):
        src, dst = "abc", "".join("xyz"[a] if a == axis else "abc"[a] for a in range(3))
        truth[name] = _ratio(np.einsum(f"{src}{dst}->{src[axis]}{'xyz'[axis]}", T))
    for key, r in [("trace", entry["trace"]), *ranks.items()]:
        assert abs(r["value"] - truth[key]) <= 5 * r["error"], (key, r, truth[key])
