"""Checkpoint files: round trips, torch state dicts, and files that must be refused (by name)."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from kpflow.models import GRU, RNN, LeakyRNN, Linear
from kpflow.training import Checkpoint, CheckpointError, load_checkpoint, load_state_dict, save_checkpoint

torch = pytest.importorskip("torch")

MARKER = "kpflow_pickle_ran"


class _Payload:
    """Unpickling this runs code: it creates a marker directory."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _checkpoint(seed=0):
    model, readout = RNN(2, 3), Linear(3, 2)
    return model, readout, Checkpoint(7, model.init(seed), readout.init(seed + 1))


def test_npz_round_trip_keeps_names_values_and_step(tmp_path):
    model, readout, c = _checkpoint()
    path = save_checkpoint(tmp_path / "c", c)
    assert path.name == "c.npz"
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(
            ["step"] + [f"params/{k}" for k in c.params] + [f"readout/{k}" for k in c.readout_params]
        )
    back = load_checkpoint(path, model, readout)
    assert back.step == 7
    for k in c.params:
        np.testing.assert_array_equal(back.params[k], c.params[k])
    for k in c.readout_params:
        np.testing.assert_array_equal(back.readout_params[k], c.readout_params[k])
    t = load_checkpoint(path, model, readout, like=torch.zeros(1, dtype=torch.float32))
    assert t.params["weight_hh"].dtype == torch.float32


def _write_npz(path, entries):
    np.savez(path, **entries)
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: e.pop("params/weight_hh"), r"missing params entries \['weight_hh'\]"),
        (lambda e: e.update({"params/weight_hx": np.ones(2)}), r"extra params entries \['weight_hx'\]"),
        (
            lambda e: e.update({"params/bias_ih": np.ones(4)}),
            r"'bias_ih' has shape \(4,\); the model expects \(3,\)",
        ),
        (lambda e: e.update({"params/weight_ih": np.full((3, 2), np.nan)}), r"'weight_ih' has 6 non-finite"),
        (
            lambda e: e.update({"readout/bias": np.array([1.0, np.inf])}),
            r"readout entry 'bias' has 1 non-finite",
        ),
        (lambda e: e.update({"params/bias_hh": np.arange(3)}), r"'bias_hh' has dtype int64"),
        (lambda e: e.update({"optimizer/lr": np.ones(1)}), r"extra entry 'optimizer/lr'"),
        (lambda e: e.pop("step"), r"entry 'step' is missing"),
    ],
)
def test_bad_npz_entries_are_named(tmp_path, change, message):
    model, readout, c = _checkpoint()
    path = save_checkpoint(tmp_path / "c.npz", c)
    with np.load(path, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    change(entries)
    _write_npz(tmp_path / "bad.npz", entries)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "bad.npz", model, readout)


def test_a_crafted_pickle_in_an_npz_is_refused_without_running(tmp_path):
    model, _, c = _checkpoint()
    marker = tmp_path / MARKER
    entries = {"step": np.asarray(0), **{f"params/{k}": v for k, v in c.params.items()}}
    entries["params/weight_hh"] = np.array([_Payload(str(marker))], dtype=object)
    np.savez(tmp_path / "evil.npz", **entries)  # numpy pickles the object array into the zip
    with zipfile.ZipFile(tmp_path / "evil.npz") as z:
        assert any(n.startswith("params/weight_hh") for n in z.namelist())
    with pytest.raises(CheckpointError, match="only unpickling could read"):
        load_checkpoint(tmp_path / "evil.npz", model)
    with pytest.raises(CheckpointError, match="only unpickling could read"):
        load_state_dict(model, tmp_path / "evil.npz")
    assert not marker.exists()
    # the payload is live: unpickling it does run code
    import pickle

    pickle.loads(pickle.dumps(_Payload(str(marker))))
    assert marker.exists()


def test_a_crafted_torch_file_is_refused_without_running(tmp_path):
    model = LeakyRNN(3, 4, dt=0.7)
    marker = tmp_path / MARKER
    state = {k: torch.asarray(v) for k, v in model.init(0).items()}
    torch.save({"model": state, "extra": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"torch.load\(weights_only=True\) refused"):
        load_state_dict(model, tmp_path / "evil.pt")
    assert not marker.exists()


def test_research_style_torch_checkpoint_loads_into_leaky_rnn(tmp_path):
    # meeree/kpflow's BasicRNN registers W twice (rnn.weight_hh_l0 and rnn.cell.weight_hh),
    # has no bias, and reads out through Wout; its checkpoints nest the state under "model".
    gen = torch.Generator().manual_seed(0)
    W, U = torch.randn(4, 4, generator=gen), torch.randn(4, 3, generator=gen)
    C, c = torch.randn(3, 4, generator=gen), torch.randn(3, generator=gen)
    state = {
        "rnn.weight_ih_l0": U,
        "rnn.weight_hh_l0": W,
        "rnn.cell.weight_ih": U.clone(),
        "rnn.cell.weight_hh": W.clone(),
        "Wout.weight": C,
        "Wout.bias": c,
    }
    torch.save({"model": state, "itr": 10}, tmp_path / "ckpt.pt")
    model = LeakyRNN(3, 4, dt=0.7)
    ck = load_state_dict(model, os.fspath(tmp_path / "ckpt.pt"), Linear(4, 3))
    np.testing.assert_array_equal(ck.params["weight_hh"], W.double().numpy())
    np.testing.assert_array_equal(ck.readout_params["bias"], c.double().numpy())
    # and the kpflow model then runs the research network: h ← (1−dt) h + dt (W tanh h + U x)
    x = np.random.default_rng(1).standard_normal((2, 5, 3))
    h, W64, U64 = np.zeros((2, 4)), W.double().numpy(), U.double().numpy()
    traj = model.run(ck.params, x)
    for t in range(5):
        h = 0.3 * h + 0.7 * (np.tanh(h) @ W64.T + x[:, t] @ U64.T)
        np.testing.assert_allclose(traj.states[:, t], h, atol=1e-12)


def test_torch_gru_state_dict_matches_nn_gru():
    net = torch.nn.GRU(2, 3, batch_first=True, dtype=torch.float64)
    ck = load_state_dict(GRU(2, 3), net.state_dict(), like=torch.zeros(1, dtype=torch.float64))
    x = torch.randn(2, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    traj = GRU(2, 3).run(ck.params, x)
    torch.testing.assert_close(traj.states, net(x)[0].detach(), atol=1e-12, rtol=0)


def test_state_dict_errors_name_the_entry():
    model = RNN(2, 3)
    state = {k + "_l0": torch.asarray(v) for k, v in model.init(0).items()}
    with pytest.raises(CheckpointError, match=r"missing params entries \['bias_hh'\]"):
        load_state_dict(model, {k: v for k, v in state.items() if k != "bias_hh_l0"})
    with pytest.raises(CheckpointError, match=r"extra entries \['weight_ih_l1'\]"):
        load_state_dict(model, {**state, "weight_ih_l1": torch.ones(3, 3)})
    load_state_dict(model, {**state, "weight_ih_l1": torch.ones(3, 3)}, strict=False)
    with pytest.raises(CheckpointError, match=r"'weight_hh' has shape \(3, 2\)"):
        load_state_dict(model, {**state, "weight_hh_l0": torch.ones(3, 2)})
    with pytest.raises(CheckpointError, match=r"'weight_hh' has 1 non-finite"):
        bad = torch.ones(3, 3, dtype=torch.float64)
        bad[0, 0] = float("nan")
        load_state_dict(model, {**state, "weight_hh_l0": bad})
    with pytest.raises(CheckpointError, match=r"matches several keys with different values"):
        load_state_dict(model, {**state, "cell.weight_hh": torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match="non-array entries"):
        load_state_dict(model, {"itr": 3, "optimizer": {}})
    with pytest.raises(TypeError, match="expected model to be a kpflow Model"):
        load_state_dict("rnn", state)
