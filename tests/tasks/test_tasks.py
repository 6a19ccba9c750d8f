"""kpflow.tasks: shapes, namespaces, dtypes, seeding, the tasks' semantics and argument errors."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kpflow
from kpflow.tasks import (
    MEMORY_TASKS,
    ContextIntegration,
    Disk,
    FlipFlop,
    LowRankForecast,
    MemoryTask,
    MultiMemory,
    Task,
    TaskBatch,
)
from tests.conftest import check_meta

PERIODS = {"T_fix": 2, "T_stim": 3, "T_mem": 4, "T_resp": 3}

TASKS = {
    "flipflop": lambda: FlipFlop(T=20, p_pulse=0.2),
    "memory_pro": lambda: MemoryTask(**PERIODS),
    "delay_anti": lambda: MemoryTask(anti=True, delay=True, noise=0.1, grace=1, **PERIODS),
    "multi": lambda: MultiMemory(**PERIODS),
    "forecast": lambda: LowRankForecast(n_latent=3, n_obs=6, T=8, noise=0.01),
    "integration": lambda: ContextIntegration(T_fix=1, T_stim=6, T_delay=1, T_resp=2),
    "disk": lambda: Disk(),
    "disk_one_hot": lambda: Disk(one_hot=True),
}
B = 5


def expected_shapes(task: Task, batch: int) -> tuple[tuple[int, ...], ...]:
    if isinstance(task, Disk):
        return (batch, 2), (batch, task.n_out), (batch,)
    T = task.T  # type: ignore[attr-defined]
    return (batch, T, task.n_in), (batch, T, task.n_out), (batch, T)


# -- shapes, namespaces, dtypes -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TASKS))
def test_default_is_numpy_float64_of_the_documented_shapes(name):
    task = TASKS[name]()
    batch = task.sample(B, 0)
    assert isinstance(batch, TaskBatch)
    for arr, shape in zip(batch, expected_shapes(task, B), strict=True):
        assert type(arr) is np.ndarray
        assert arr.dtype == np.float64
        assert arr.shape == shape
        assert np.all(np.isfinite(arr))
    assert set(np.unique(batch.mask).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_like_gives_namespace_dtype_device_and_the_numpy_values(case, name):
    task = TASKS[name]()
    like = case.asarray(np.zeros(1))
    batch = task.sample(B, 3, like=like)
    ref = task.sample(B, 3)
    host_dtype = np.dtype(case.dtype_name)
    for got, want, shape in zip(batch, ref, expected_shapes(task, B), strict=True):
        check_meta(case, got)
        assert tuple(got.shape) == shape
        # the same host draw, converted once: exactly numpy's values rounded to the dtype
        np.testing.assert_array_equal(case.to_numpy(got), want.astype(host_dtype).astype(np.float64))


def test_dtype_argument_overrides_likes_dtype(case64):
    xp = case64.xp
    batch = FlipFlop(T=4).sample(2, 0, like=case64.asarray(np.zeros(1)), dtype=xp.float32)
    for arr in batch:
        assert arr.dtype == xp.float32
    assert case64.to_numpy(batch.inputs).shape == (2, 4, 3)


def test_numpy_float32_stays_float32_without_like():
    for arr in MemoryTask(**PERIODS).sample(2, 0, dtype=np.float32):
        assert arr.dtype == np.float32
    Q, C = LowRankForecast(n_latent=2, n_obs=3).maps(dtype=np.float32)
    assert Q.dtype == C.dtype == np.float32


def test_maps_follow_like(case):
    Q, C = LowRankForecast(n_latent=2, n_obs=3).maps(like=case.asarray(np.zeros(1)))
    check_meta(case, Q)
    check_meta(case, C)


# -- seeding --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_seed_same_batch_other_seed_other_batch(name):
    task = TASKS[name]()
    a, b, c = task.sample(B, 7), task.sample(B, 7), task.sample(B, 8)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.inputs, c.inputs)
    g1, g2 = np.random.default_rng(7), np.random.default_rng(7)
    np.testing.assert_array_equal(task.sample(B, g1).inputs, task.sample(B, g2).inputs)
    # a generator is advanced by each draw
    assert not np.array_equal(task.sample(B, g1).inputs, task.sample(B, np.random.default_rng(7)).inputs)
    np.testing.assert_array_equal(task.sample(B, np.int64(7)).inputs, a.inputs)


# -- flip-flop ------------------------------------------------------------------------------------
def flipflop_reference(x: np.ndarray) -> np.ndarray:
    """The flip-flop target by a plain loop: the sign of each channel's last pulse so far."""
    y = np.zeros_like(x)
    batch, T, n = x.shape
    for b in range(batch):
        for i in range(n):
            held = 0.0
            for t in range(T):
                if x[b, t, i] != 0:
                    held = float(np.sign(x[b, t, i]))
                y[b, t, i] = held
    return y


@given(
    n_bits=st.integers(1, 4),
    T=st.integers(1, 30),
    p=st.floats(0.0, 1.0, allow_nan=False),
    seed=st.integers(0, 2**32 - 1),
)
def test_flipflop_target_is_the_sign_of_the_last_pulse(n_bits, T, p, seed):
    x, y, mask = FlipFlop(n_bits=n_bits, T=T, p_pulse=p).sample(3, seed)
    assert set(np.unique(x).tolist()) <= {-1.0, 0.0, 1.0}
    np.testing.assert_array_equal(y, flipflop_reference(x))
    np.testing.assert_array_equal(mask, np.ones((3, T)))


def test_flipflop_pulse_rate_and_signs():
    x, _, _ = FlipFlop(T=400, p_pulse=0.05).sample(50, 0)
    rate = float(np.mean(x != 0))
    assert 0.04 < rate < 0.06
    assert 0.4 < float(np.mean(x[x != 0] > 0)) < 0.6
    y = FlipFlop(T=400, p_pulse=0.05).sample(50, 0).targets
    assert float(np.mean(y == 0)) < 0.05  # the memory is mostly set after a few pulses


# -- memory tasks ---------------------------------------------------------------------------------
def periods_masks(task):
    t = np.arange(task.T)
    go = task.T_fix + task.T_stim + task.T_mem
    stim = (t >= task.T_fix) & (t < task.T_fix + task.T_stim)
    memory = (t >= task.T_fix + task.T_stim) & (t < go)
    return stim, memory, t >= go


@pytest.mark.parametrize("delay", [False, True])
@pytest.mark.parametrize("anti", [False, True])
def test_memory_task_periods(anti, delay):
    task = MemoryTask(anti=anti, delay=delay, **PERIODS)
    x, y, mask = task.sample(6, 1)
    stim, memory, respond = periods_masks(task)
    direction = x[:, task.T_fix, 1:]
    np.testing.assert_allclose(np.linalg.norm(direction, axis=-1), 1.0)
    np.testing.assert_array_equal(x[:, :, 0], np.broadcast_to(~respond, (6, task.T)))
    np.testing.assert_array_equal(y[:, :, 0], np.broadcast_to(~respond, (6, task.T)))
    np.testing.assert_array_equal(x[:, stim, 1:], np.broadcast_to(direction[:, None], (6, stim.sum(), 2)))
    shown = direction[:, None] if delay else np.zeros((6, 1, 2))
    np.testing.assert_array_equal(x[:, memory, 1:], np.broadcast_to(shown, (6, memory.sum(), 2)))
    assert not np.any(x[:, respond, 1:]) and not np.any(x[:, : task.T_fix, 1:])
    sign = -1.0 if anti else 1.0
    np.testing.assert_array_equal(y[:, respond, 1:], np.broadcast_to(sign * direction[:, None], (6, 3, 2)))
    assert not np.any(y[:, ~respond, 1:])
    np.testing.assert_array_equal(mask, np.ones((6, task.T)))
    assert task.name == f"{'delay' if delay else 'memory'}_{'anti' if anti else 'pro'}"


@pytest.mark.parametrize("delay", [False, True])
def test_anti_targets_are_the_negative_of_pro_targets(delay):
    pro = MemoryTask(delay=delay, **PERIODS).sample(8, 4)
    anti = MemoryTask(anti=True, delay=delay, **PERIODS).sample(8, 4)
    np.testing.assert_array_equal(anti.inputs, pro.inputs)
    np.testing.assert_array_equal(anti.targets[..., 0], pro.targets[..., 0])
    np.testing.assert_array_equal(anti.targets[..., 1:], -pro.targets[..., 1:])
    assert np.any(pro.targets[..., 1:] != 0)


def test_delay_keeps_the_stimulus_on_only_through_the_memory_period():
    memory = MemoryTask(**PERIODS).sample(4, 2).inputs
    delay = MemoryTask(delay=True, **PERIODS).sample(4, 2).inputs
    _, mem, _ = periods_masks(MemoryTask(**PERIODS))
    np.testing.assert_array_equal(memory[:, ~mem], delay[:, ~mem])
    assert not np.any(memory[:, mem, 1:]) and np.all(np.linalg.norm(delay[:, mem, 1:], axis=-1) > 0.99)


def test_memory_noise_and_grace():
    clean = MemoryTask(**PERIODS).sample(4, 5)
    noisy = MemoryTask(noise=0.5, grace=2, **PERIODS).sample(4, 5)
    np.testing.assert_array_equal(noisy.targets, clean.targets)  # noise only on the inputs
    assert 0.3 < float(np.std(noisy.inputs - clean.inputs)) < 0.7
    go = PERIODS["T_fix"] + PERIODS["T_stim"] + PERIODS["T_mem"]
    expected = np.ones(go + PERIODS["T_resp"])
    expected[go : go + 2] = 0.0
    np.testing.assert_array_equal(noisy.mask, np.broadcast_to(expected, (4, expected.size)))


def test_multi_memory_cues_each_trial_with_its_task():
    task = MultiMemory(**PERIODS)
    x, y, _ = task.sample(64, 0)
    cues = x[:, :, 3:]
    assert np.all(cues == cues[:, :1])  # on, unchanged, for the whole trial
    np.testing.assert_array_equal(cues.sum(axis=-1), 1.0)
    which = np.argmax(cues[:, 0], axis=-1)
    assert set(which.tolist()) == {0, 1, 2, 3}
    _, mem, respond = periods_masks(task)
    for b in range(64):
        name = task.tasks[which[b]]
        direction = x[b, task.T_fix, 1:3]
        sign = -1.0 if name.endswith("anti") else 1.0
        np.testing.assert_array_equal(y[b, respond, 1:], np.broadcast_to(sign * direction, (3, 2)))
        shown = direction if name.startswith("delay") else np.zeros(2)
        np.testing.assert_array_equal(x[b, mem, 1:3], np.broadcast_to(shown, (mem.sum(), 2)))


def test_multi_memory_task_subset_sets_the_cue_width():
    task = MultiMemory(tasks=["delay_anti", "memory_pro"], **PERIODS)
    assert task.tasks == ("delay_anti", "memory_pro") and task.n_in == 5
    assert task.sample(3, 0).inputs.shape == (3, task.T, 5)
    assert MultiMemory().tasks == MEMORY_TASKS


# -- low-rank forecasting -------------------------------------------------------------------------
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_forecast_target_is_the_next_input(noise):
    x, y, mask = LowRankForecast(T=12, noise=noise).sample(3, 0)
    assert x.shape == y.shape == (3, 12, 100)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    np.testing.assert_array_equal(mask, np.ones((3, 12)))


def test_forecast_latent_is_rotated_by_a_fixed_orthogonal_map():
    task = LowRankForecast()  # n_latent = 10, n_obs = 100
    Q, C = task.maps()
    assert Q.shape == (10, 10) and C.shape == (100, 10)
    np.testing.assert_allclose(Q.T @ Q, np.eye(10), atol=1e-12)
    np.testing.assert_allclose(Q @ Q.T, np.eye(10), atol=1e-12)
    assert math.isclose(float(np.linalg.det(Q)), 1.0, abs_tol=1e-10)
    assert float(np.linalg.norm(Q - np.eye(10))) > 1.0  # it really moves the latent
    assert np.linalg.matrix_rank(C) == 10
    x, y, _ = task.sample(4, 1)
    assert np.linalg.matrix_rank(x.reshape(-1, 100)) == 10  # observations are low rank
    # recover the latent from the observations and check z_{t+1} = Q z_t, o_{t+1} = C Q z_t
    Z = np.linalg.lstsq(C, x.reshape(-1, 100).T, rcond=None)[0].T.reshape(4, task.T, 10)
    np.testing.assert_allclose(Z[:, 1:], Z[:, :-1] @ Q.T, atol=1e-9)
    np.testing.assert_allclose(y, Z @ Q.T @ C.T, atol=1e-9)
    norms = np.linalg.norm(Z, axis=-1)
    np.testing.assert_allclose(norms, np.broadcast_to(norms[:, :1], norms.shape), rtol=1e-9)


def test_forecast_maps_are_fixed_by_the_task_seed():
    a, b, c = LowRankForecast(seed=1), LowRankForecast(seed=1), LowRankForecast(seed=2)
    np.testing.assert_array_equal(a.maps()[0], b.maps()[0])
    assert not np.array_equal(a.maps()[0], c.maps()[0])
    # the sample rng draws only the initial latents: the maps are the same across samples
    Q, C = a.maps()
    for seed in (0, 1):
        x = a.sample(2, seed).inputs
        Z = np.linalg.lstsq(C, x.reshape(-1, 100).T, rcond=None)[0].T.reshape(2, a.T, 10)
        np.testing.assert_allclose(Z[:, 1:], Z[:, :-1] @ Q.T, atol=1e-9)


# -- context-dependent integration -----------------------------------------------------------------
def test_integration_target_is_the_sign_of_the_cued_coherence_at_low_noise():
    task = ContextIntegration(T_fix=2, T_stim=10, T_delay=3, T_resp=4, noise=1e-6)
    x, y, mask = task.sample(200, 0)
    stim = slice(2, 12)
    assert not np.any(x[:, :2, :2]) and not np.any(x[:, 12:, :2])  # evidence only in the stimulus
    coherence = x[:, stim, :2].mean(axis=1)  # ≈ the noiseless coherence
    magnitudes = np.round(np.abs(coherence), 4)
    assert set(magnitudes.ravel().tolist()) == {0.05, 0.15, 0.5}
    cue = x[:, 0, 2:]
    assert np.all(x[:, :, 2:] == cue[:, None]) and np.all(cue.sum(axis=-1) == 1)
    cued = np.where(cue[:, 0] == 1.0, coherence[:, 0], coherence[:, 1])
    other = np.where(cue[:, 0] == 1.0, coherence[:, 1], coherence[:, 0])
    np.testing.assert_array_equal(y[:, -4:, 0], np.broadcast_to(np.sign(cued)[:, None], (200, 4)))
    assert not np.any(y[:, :-4])
    assert np.any(np.sign(cued) != np.sign(other))  # so the context matters in this batch
    np.testing.assert_array_equal(mask, np.ones((200, task.T)))


def test_integration_target_is_the_sign_of_the_cued_channels_mean_at_high_noise():
    task = ContextIntegration(T_stim=20, T_resp=2, noise=2.0)
    x, y, _ = task.sample(100, 3)
    channel = np.argmax(x[:, 0, 2:], axis=-1)
    mean = np.array([x[b, :20, channel[b]].mean() for b in range(100)])
    np.testing.assert_array_equal(y[:, 20:, 0], np.broadcast_to(np.sign(mean)[:, None], (100, 2)))


# -- disk -----------------------------------------------------------------------------------------
@given(
    radius=st.floats(0.05, 2.0),
    half_width=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_disk_labels_match_the_radius(radius, half_width, seed):
    x, y, mask = Disk(radius=radius, half_width=half_width).sample(50, seed)
    assert np.all(np.abs(x) <= half_width)
    inside = np.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2) < radius
    np.testing.assert_array_equal(y[:, 0], np.where(inside, 1.0, -1.0))
    x1, y1, _ = Disk(radius=radius, half_width=half_width, one_hot=True).sample(50, seed)
    np.testing.assert_array_equal(x1, x)
    np.testing.assert_array_equal(y1, np.stack([inside, ~inside], axis=1).astype(float))
    np.testing.assert_array_equal(mask, np.ones(50))


def test_disk_default_classes_are_balanced():
    _, y, _ = Disk().sample(4000, 0)
    assert 0.45 < float(np.mean(y > 0)) < 0.55


# -- errors ---------------------------------------------------------------------------------------
BAD_CONFIGS = [
    (FlipFlop, {"p_pulse": 1.5}, ValueError, r"^FlipFlop: expected p_pulse .*\[0, 1\].*got 1\.5$"),
    (FlipFlop, {"p_pulse": "a"}, TypeError, r"^FlipFlop: expected p_pulse to be a real number.*got 'a'$"),
    (FlipFlop, {"T": 0}, ValueError, r"^FlipFlop: expected T to be a positive int, got 0$"),
    (FlipFlop, {"n_bits": 2.0}, ValueError, r"^FlipFlop: expected n_bits to be a positive int, got 2\.0$"),
    (FlipFlop, {"n_bits": True}, ValueError, r"^FlipFlop: expected n_bits .*got True$"),
    (MemoryTask, {"anti": 1}, TypeError, r"^MemoryTask: expected anti to be a bool, got 1$"),
    (MemoryTask, {"T_stim": 0}, ValueError, r"^MemoryTask: expected T_stim to be a positive int, got 0$"),
    (MemoryTask, {"T_mem": -1}, ValueError, r"^MemoryTask: expected T_mem to be a non-negative int, got -1$"),
    (
        MemoryTask,
        {"noise": -0.1},
        ValueError,
        r"^MemoryTask: expected noise to be a finite real number >= 0, got -0\.1$",
    ),
    (MemoryTask, {"noise": math.nan}, ValueError, r"^MemoryTask: expected noise .*got nan$"),
    (MemoryTask, {"grace": 30}, ValueError, r"^MemoryTask: expected grace to be at most T_resp=20, got 30$"),
    (MultiMemory, {"tasks": ("go",)}, ValueError, r"^MultiMemory: expected tasks to be distinct names"),
    (MultiMemory, {"tasks": ()}, ValueError, r"^MultiMemory: expected tasks .*got \(\)$"),
    (MultiMemory, {"tasks": ("memory_pro",) * 2}, ValueError, r"^MultiMemory: expected tasks .*distinct"),
    (MultiMemory, {"tasks": "memory_pro"}, TypeError, r"^MultiMemory: expected tasks to be a tuple"),
    (LowRankForecast, {"n_obs": 5}, ValueError, r"^LowRankForecast: expected n_obs to be at least n_latent"),
    (LowRankForecast, {"seed": -1}, ValueError, r"^LowRankForecast: expected seed .*got -1$"),
    (ContextIntegration, {"coherences": (0.1, 0.0)}, ValueError, r"^ContextIntegration: expected every "),
    (ContextIntegration, {"coherences": 0.1}, TypeError, r"^ContextIntegration: expected coherences "),
    (ContextIntegration, {"T_resp": 0}, ValueError, r"^ContextIntegration: expected T_resp .*got 0$"),
    (Disk, {"radius": 0.0}, ValueError, r"^Disk: expected radius to be a finite real number > 0, got 0\.0$"),
    (Disk, {"half_width": -1.0}, ValueError, r"^Disk: expected half_width .*got -1\.0$"),
    (Disk, {"one_hot": "yes"}, TypeError, r"^Disk: expected one_hot to be a bool, got 'yes'$"),
]


@pytest.mark.parametrize(("cls", "kwargs", "exc", "match"), BAD_CONFIGS)
def test_bad_config_arguments_are_named(cls, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(**kwargs)


def test_configs_are_keyword_only():
    with pytest.raises(TypeError):
        FlipFlop(3)  # type: ignore[misc]


BAD_SAMPLES = [
    ({"batch": 0}, ValueError, r"^FlipFlop\.sample: expected batch to be a positive int, got 0$"),
    ({"batch": 2.0}, ValueError, r"^FlipFlop\.sample: expected batch to be a positive int, got 2\.0$"),
    ({"rng": "seed"}, TypeError, r"^FlipFlop\.sample: expected rng to be an int, a numpy\.random\.Gen.*str$"),
    ({"rng": 1.5}, TypeError, r"^FlipFlop\.sample: expected rng .*got float$"),
    ({"dtype": np.int32}, TypeError, r"^FlipFlop\.sample: expected dtype to be a real floating numpy dtype"),
    ({"dtype": "nonsense"}, TypeError, r"^FlipFlop\.sample: expected dtype to be a real floating numpy"),
    ({"device": "gpu"}, ValueError, r"^FlipFlop\.sample: expected device None or 'cpu'.*got 'gpu'$"),
    ({"like": [0.0]}, TypeError, r"^FlipFlop\.sample: expected an array-API array, got builtins\.list$"),
    ({"like": np.zeros(1, dtype=np.int64)}, TypeError, r"^FlipFlop\.sample: expected like's dtype to be a"),
]


@pytest.mark.parametrize(("kwargs", "exc", "match"), BAD_SAMPLES)
def test_bad_sample_arguments_are_named(kwargs, exc, match):
    args = {"batch": 2, "rng": 0, **kwargs}
    batch, rng = args.pop("batch"), args.pop("rng")
    with pytest.raises(exc, match=match):
        FlipFlop(T=3).sample(batch, rng, **args)


def test_bad_dtype_in_a_namespace_is_named(case64):
    with pytest.raises(TypeError, match=r"^FlipFlop\.sample: expected dtype to be a real floating dtype of"):
        FlipFlop(T=3).sample(2, 0, like=case64.asarray(np.zeros(1)), dtype=case64.xp.int32)


# -- configurations are values --------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TASKS))
def test_configs_are_frozen_hashable_values(name):
    task = TASKS[name]()
    assert dataclasses.is_dataclass(task)
    assert task == TASKS[name]() and hash(task) == hash(TASKS[name]())
    field = dataclasses.fields(task)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(task, field, getattr(task, field))
    assert {task: 1}[TASKS[name]()] == 1
    changed = dataclasses.replace(task, **{field: getattr(task, field)})
    assert changed == task


def test_sequences_are_stored_as_tuples_and_numbers_normalised():
    assert hash(ContextIntegration(coherences=[0.1, 0.2])) == hash(ContextIntegration(coherences=(0.1, 0.2)))
    assert FlipFlop(T=np.int64(5)) == FlipFlop(T=5) and type(FlipFlop(T=np.int64(5)).T) is int
    assert type(Disk(radius=1).radius) is float
    assert FlipFlop(p_pulse=1) == FlipFlop(p_pulse=1.0)


def test_defaults_are_the_documented_ones():
    assert (FlipFlop().n_bits, FlipFlop().p_pulse, FlipFlop().T) == (3, 0.05, 100)
    assert (LowRankForecast().n_latent, LowRankForecast().n_obs) == (10, 100)
    assert MemoryTask().T == 90 and MultiMemory().n_in == 7
    assert math.isclose(math.pi * Disk().radius ** 2, 2.0)


def test_task_batch_unpacks_and_is_frozen():
    batch = FlipFlop(T=3).sample(2, 0)
    x, y, mask = batch
    assert x is batch.inputs and y is batch.targets and mask is batch.mask
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.inputs = y  # type: ignore[misc]


# -- public API -----------------------------------------------------------------------------------
def test_public_names_exist_and_are_documented():
    import kpflow.tasks as tasks

    assert kpflow.tasks is tasks and "tasks" in kpflow.__all__
    assert len(tasks.__all__) == len(set(tasks.__all__))
    for name in tasks.__all__:
        obj = getattr(tasks, name)
        if callable(obj):
            assert obj.__doc__ and "Examples" in obj.__doc__, name
    for cls in (FlipFlop, MemoryTask, MultiMemory, LowRankForecast, ContextIntegration, Disk):
        assert issubclass(cls, Task)
        assert "Examples" in (cls.sample.__doc__ or "")


def test_importing_kpflow_tasks_imports_no_framework():
    code = (
        "import sys, kpflow, kpflow.tasks\n"
        "kpflow.tasks.FlipFlop(T=3).sample(2, 0)\n"
        "heavy = ('torch', 'jax', 'cupy', 'scipy', 'matplotlib', 'array_api_strict')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"kpflow.tasks imported: {out.stdout.strip()}"
