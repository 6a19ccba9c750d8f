"""The paper's qualitative findings, reproduced as tests on small networks (float64, numpy).

- the leaky RNN's K has effective rank H·pr(G) exactly (K = dt² (G ⊗ I_H));
- NTK_S is low-rank along time and along the hidden axis;
- target components outside the dominant NTK modes are learned more slowly.
"""

from __future__ import annotations

import numpy as np
import pytest

import kpflow
from kpflow import linalg
from kpflow.models import GRU, LeakyRNN, Linear
from kpflow.tasks import FlipFlop
from kpflow.training import SGD, Adam, init_params, train
from tests.conftest import BACKENDS

pytestmark = pytest.mark.skipif("numpy" not in BACKENDS, reason="numpy is not among the selected backends")


@pytest.mark.parametrize(("B", "T", "H", "dt"), [(2, 5, 3, 0.1), (4, 7, 6, 0.5), (1, 3, 9, 1.0)])
def test_the_leaky_rnns_k_has_effective_rank_h_times_the_participation_ratio_of_g(B, T, H, dt) -> None:
    model = LeakyRNN(2, H, dt=dt, bias=True)
    rng = np.random.default_rng(B + T)
    traj = model.run(model.init(rng), rng.standard_normal((B, T, 2)))
    # G from the definition, independently: rows [tanh h_{t-1}; x_t; 1] over all (b, t) sites
    h_prev = np.concatenate([np.zeros((B, 1, H)), traj.states[:, :-1]], axis=1)
    A = np.concatenate([np.tanh(h_prev), traj.x, np.ones((B, T, 1))], axis=-1).reshape(B * T, -1)
    G = A @ A.T
    pr_G = np.trace(G) ** 2 / np.sum(G * G)
    K = kpflow.parameter_kernel(traj)
    er = linalg.effective_rank(K)
    assert er.method == "exact"
    assert float(er) == pytest.approx(H * pr_G, rel=1e-12)
    dense = K.todense().reshape(B * T * H, B * T * H)
    w = np.linalg.eigvalsh(dense)
    assert float(er) == pytest.approx(w.sum() ** 2 / np.sum(w**2), rel=1e-10)


def test_ntk_s_is_low_rank_along_time_and_along_the_hidden_axis() -> None:
    """Partial-trace effective ranks of NTK_S are small next to T and H.

    Along time at initialisation and after training; along the hidden axis after training.
    At initialisation (torch's small default weights) the hidden-axis rank is close to H (14
    of 16 here, 28 of 32 for H = 32), and training collapses it (to about 3): GD concentrates
    the NTK on a few hidden directions.
    """
    B, T, H = 4, 20, 16
    model, readout = GRU(3, H), Linear(H, 3)
    batch = FlipFlop(T=T).sample(B, rng=0)
    r = train(
        model,
        readout,
        init_params(model, 0),
        readout.init(1),
        batch,
        steps=100,
        optimizer=Adam(0.02),
        checkpoints=[0, 100],
    )
    for step in (0, 100):
        traj = model.run(r.checkpoint(step).params, batch.inputs)
        N = kpflow.global_ntk(traj)
        D = N.todense().reshape(B, T, H, B, T, H)
        # partial traces of the dense matrix over the other axes: time (t, s) and hidden (i, j)
        for keep, pattern, size in ((1, "btibsi->ts", T), (2, "btibtj->ij", H)):
            M = np.einsum(pattern, D)
            w = np.linalg.eigvalsh((M + M.T) / 2)
            value = float(linalg.effective_rank(N, keep=(keep,), method="exact"))
            assert value == pytest.approx(w.sum() ** 2 / np.sum(w**2), rel=1e-8)
            if step == 100 or keep == 1:
                assert value <= size / 2.5, (step, keep, value)


def test_target_components_outside_the_dominant_modes_are_learned_more_slowly() -> None:
    """Residuals along a top output-NTK mode shrink faster under GD than along a weak mode."""
    model, readout = GRU(2, 6), Linear(6, 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 2))
    params, rp = init_params(model, 1), readout.init(2)
    traj = model.run(params, x)
    theta = kpflow.output_ntk(traj, rp)
    n = int(np.prod(theta.shape_in))
    w, V = np.linalg.eigh(theta.todense().reshape(n, n))
    y0 = readout.apply(rp, traj.states)
    remaining = {}
    for label, i in (("top", n - 1), ("weak", n // 2)):
        delta = 0.05 * V[:, i].reshape(y0.shape)
        target = y0 - delta
        r = train(
            model, readout, params, rp, (x, target, None), steps=20, optimizer=SGD(0.5), method="kpflow"
        )
        y = readout.apply(r.readout_params, model.run(r.params, x).states)
        remaining[label] = np.linalg.norm(y - target) / np.linalg.norm(delta)
    assert w[n - 1] > 10 * w[n // 2]
    assert remaining["top"] < 0.5 * remaining["weak"]
    assert remaining["weak"] > 0.5  # a weak mode is barely learned in the same steps


def test_a_sweep_of_g_shows_the_initial_dynamics_biasing_the_ntk() -> None:
    """Larger g: P Pᵀ and NTK_S lower-rank, NTK_S aligned with P Pᵀ; self-referential bias stays high."""
    from kpflow import analysis
    from kpflow.models import RNN

    model = RNN(3, 12)
    x = FlipFlop(T=10).sample(2, rng=0).inputs
    rows = {}
    for g in (0.5, 3.0):
        traj = model.run(init_params(model, 0, g=g), x)
        r = analysis.effective_ranks(traj)
        rows[g] = (r.PPT["global"], r.NTK["global"], float(analysis.misdirection(traj)))
        assert analysis.self_referential_bias(traj, 3).overlaps["hidden"] > 0.8  # high at initialisation
    assert rows[3.0][0] < rows[0.5][0] / 10
    assert rows[3.0][1] < rows[0.5][1] / 2
    assert rows[3.0][2] > rows[0.5][2] + 0.3


def test_g_sweep_tabulates_the_same_numbers_as_direct_calls() -> None:
    from kpflow import analysis
    from kpflow.models import RNN

    model = RNN(3, 12)
    x = FlipFlop(T=10).sample(2, rng=0).inputs
    s = analysis.g_sweep(model, x, [0.5, 3.0], seed=0)
    for i, g in enumerate((0.5, 3.0)):
        traj = model.run(init_params(model, 0, g=g), x)
        r = analysis.effective_ranks(traj)
        assert s.table["NTK"][i] == pytest.approx(r.NTK["global"], rel=1e-12)
        assert s.table["PPT"][i] == pytest.approx(r.PPT["global"], rel=1e-12)
        assert s.table["NTK time"][i] == pytest.approx(r.NTK["time"], rel=1e-12)
        assert s.table["misdirection"][i] == pytest.approx(float(analysis.misdirection(traj)), rel=1e-12)
        bias = analysis.self_referential_bias(traj, 3).overlaps["hidden"]
        assert s.table["self-referential bias"][i] == pytest.approx(float(bias), rel=1e-12)
    assert s.rows()[1]["g"] == 3.0
    with pytest.raises(
        ValueError, match=r"g_sweep: expected gs to be a non-empty sequence of positive finite"
    ):
        analysis.g_sweep(model, x, [0.0])


def test_a_dimension_sweep_over_the_forecasting_latent_size() -> None:
    """The trained NTK_S's effective rank grows with the latent dimension the task needs."""
    from kpflow import analysis
    from kpflow.models import GRU
    from kpflow.tasks import LowRankForecast

    s = analysis.dimension_sweep(
        lambda d: LowRankForecast(n_latent=d, n_obs=12, T=12),
        lambda n_in, n_out: GRU(n_in, 10),
        [1, 4],
        batch=4,
        steps=60,
        lr=0.02,
    )
    assert s.values.tolist() == [1.0, 4.0]
    assert np.all(np.isfinite(s.table["final loss"]))
    assert s.table["NTK"][1] > s.table["NTK"][0]
    with pytest.raises(ValueError, match=r"dimension_sweep: expected dims to be positive ints"):
        analysis.dimension_sweep(lambda d: None, lambda a, b: None, [1.5], batch=1, steps=1)
