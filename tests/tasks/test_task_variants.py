"""The research code's task variants, each against a construction written here."""

from __future__ import annotations

import numpy as np
import pytest

from kpflow.tasks import FlipFlop, LowRankForecast, MemoryTask, MultiMemory


def _flipflop_targets(x):
    y = np.zeros_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[2]):
            keep = 0.0
            for t in range(x.shape[1]):
                if x[b, t, c] != 0:
                    keep = x[b, t, c]
                y[b, t, c] = keep
    return y


def test_flipflop_research_noise_and_anti_channel():
    task = FlipFlop.research(anti=True)
    assert (task.T, task.n_in, task.n_out, task.p_pulse) == (90, 4, 3, 0.05)
    assert task.noise == pytest.approx(0.03 * np.sqrt(2))
    clean = FlipFlop.research(anti=True, noise=False).sample(64, 3)
    noisy = task.sample(64, 3)
    sign = clean.inputs[:, :, 3]
    assert set(np.unique(sign)) == {-1.0, 1.0} and bool((sign == sign[:, :1]).all())  # constant per trial
    np.testing.assert_array_equal(clean.targets, sign[:, :, None] * _flipflop_targets(clean.inputs[:, :, :3]))
    np.testing.assert_array_equal(noisy.targets, clean.targets)  # the targets stay noiseless
    eps = noisy.inputs - clean.inputs
    assert eps.std() == pytest.approx(0.03 * np.sqrt(2), rel=0.03)
    assert abs(eps.mean()) < 1e-3
    # the default stays the noiseless pro flip-flop of n_bits channels
    x, y, _ = FlipFlop(T=30).sample(4, 0)
    assert x.shape == (4, 30, 3)
    np.testing.assert_array_equal(y, _flipflop_targets(x))


@pytest.mark.parametrize("name", ["memory_pro", "memory_anti", "delay_pro", "delay_anti"])
def test_memory_research_layout_for_analysis(name):
    task = MemoryTask.research(name, analysis=True)
    x, y, mask = task.sample(6)
    theta = 2 * np.pi * np.arange(6) / 6
    stim = np.stack([np.cos(theta), np.sin(theta)], axis=1)  # (B, 2)
    t = np.arange(90)
    on = (t < 30) | (name.startswith("delay") & (t >= 30))  # delay: on to the end
    np.testing.assert_allclose(x[:, :, 0], np.broadcast_to((t < 60) * 1.0, (6, 90)))
    np.testing.assert_allclose(x[:, :, 1:], on[None, :, None] * stim[:, None, :], atol=1e-15)
    sign = -1.0 if name.endswith("anti") else 1.0
    np.testing.assert_allclose(y[:, :, 0], x[:, :, 0])
    np.testing.assert_allclose(y[:, :, 1:], sign * (t >= 60)[None, :, None] * stim[:, None, :], atol=1e-15)
    np.testing.assert_array_equal(mask, 1.0)


def test_memory_research_training_noise_and_default_delay_unchanged():
    task = MemoryTask.research("delay_pro")
    assert task.noise == pytest.approx(0.1 * np.sqrt(2)) and task.angles == "random"
    x, _, _ = task.sample(200, 0)
    clean = x[:, :, 0] - (np.arange(90) < 60)
    assert clean.std() == pytest.approx(0.1 * np.sqrt(2), rel=0.03)
    # without stim_in_response a delay task's stimulus goes off at the go cue
    x, _, _ = MemoryTask(delay=True, T_fix=2, T_stim=3, T_mem=4, T_resp=5).sample(3, 0)
    assert bool((x[:, 9:, 1:] == 0).all()) and bool((x[:, 8, 1:] != 0).any())


def test_multimemory_research_context_blocks_and_trials():
    task = MultiMemory.research(analysis=True)
    assert (task.T, task.n_in, task.n_out) == (120, 7, 3)
    x, y, mask = task.sample(8)
    np.testing.assert_array_equal(x[:, :30, 0], 1.0)
    np.testing.assert_array_equal(x[:, :30, 1:3], 0.0)
    np.testing.assert_array_equal(y[:, :30], np.broadcast_to([1.0, 0.0, 0.0], (8, 30, 3)))
    cue = np.repeat(np.eye(4), 2, axis=0)  # blocks of two trials per task, in order
    np.testing.assert_array_equal(x[:, :30, 3:], np.broadcast_to(cue[:, None, :], (8, 30, 4)))
    np.testing.assert_array_equal(x[:, 30:, 3:], 0.0)
    for k, name in enumerate(("memory_pro", "memory_anti", "delay_pro", "delay_anti")):
        xk, yk, _ = MemoryTask.research(name, analysis=True).sample(2)
        np.testing.assert_allclose(x[2 * k : 2 * k + 2, 30:, :3], xk, atol=1e-15)
        np.testing.assert_allclose(y[2 * k : 2 * k + 2, 30:], yk, atol=1e-15)
    np.testing.assert_array_equal(mask, 1.0)
    noisy, _, _ = MultiMemory.research().sample(4, 1)
    assert float(np.abs(noisy[:, 40:, 3:]).max()) > 0  # the research noise reaches the cue
    x, _, _ = MultiMemory(T_fix=1, T_stim=2, T_mem=2, T_resp=2, blocks=True).sample(5, 0)
    assert x[:, :, 3:].argmax(axis=2)[:, 0].tolist() == [0, 0, 1, 2, 3]
    assert bool((x[:, :, 3:].sum(axis=2) == 1).all())  # without a context period the cue stays on


def test_lowrank_forecast_sine_is_the_research_recursion():
    task = LowRankForecast.research(D_inp=7, D_targ=4, T=12, noise=False, seed=5)
    x, y, mask = task.sample(3, 9)
    A, C = task.maps()
    W_inp, b_inp, W_targ, b_targ = task.feature_maps()
    assert np.allclose(A.T @ A, np.eye(10)) and C.shape == (100, 10)
    z = np.random.default_rng(9).standard_normal((3, 10))  # z_0: the batch's first draw
    for t in range(12):
        np.testing.assert_allclose(x[:, t], np.sin((z @ C.T) @ W_inp.T + b_inp), atol=1e-12)
        z = 0.8 * z + 0.2 * z @ A.T
        np.testing.assert_allclose(y[:, t], np.sin((z @ C.T) @ W_targ.T + b_targ), atol=1e-12)
    assert x.shape == (3, 12, 7) and y.shape == (3, 12, 4) and mask.shape == (3, 12)
    # the default task is still the rotation, observed linearly
    x, y, _ = LowRankForecast(T=5).sample(2, 0)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])


def test_variant_options_are_checked():
    with pytest.raises(ValueError, match=r"MemoryTask: expected angles to be one of \('random', 'even'\)"):
        MemoryTask(angles="grid")
    with pytest.raises(ValueError, match="MemoryTask.research: expected name"):
        MemoryTask.research("go")
    with pytest.raises(
        ValueError, match=r"LowRankForecast: expected kind to be one of \('rotation', 'sine'\)"
    ):
        LowRankForecast(kind="linear")
    with pytest.raises(ValueError, match="D_inp is a knob of kind='sine'"):
        LowRankForecast(D_inp=3)
    with pytest.raises(ValueError, match="feature maps belong to kind='sine'"):
        LowRankForecast().feature_maps()
    with pytest.raises(TypeError, match="FlipFlop: expected anti to be a bool"):
        FlipFlop(anti=1)
    with pytest.raises(ValueError, match="MultiMemory: expected T_context to be a non-negative int"):
        MultiMemory(T_context=-1)
