"""Checkpoints on disk: ``.npz`` save and load with parameter names, and torch ``state_dict`` loading.

Loading never executes code from a file: ``.npz`` files are read with
``numpy.load(allow_pickle=False)`` (an object array, which would need unpickling, is an
error) and torch files with ``torch.load(weights_only=True)`` (which refuses any object
but tensors and plain containers).  Every entry is checked against the model's parameter
shapes: a missing, extra, misshapen, non-floating or non-finite entry raises a
``ValueError`` that names it.

Layout of a kpflow ``.npz`` checkpoint: ``params/<name>`` for each model parameter,
``readout/<name>`` for each readout parameter, and ``step`` (a 0-d int).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kpflow._array import to_host
from kpflow.models.arrays import convert_host
from kpflow.models.base import Model
from kpflow.models.linear import Linear
from kpflow.training.loop import Checkpoint

__all__ = ["CheckpointError", "load_checkpoint", "load_state_dict", "save_checkpoint"]

#: Keys under which training scripts commonly nest the model's state dict.
NESTED_KEYS = ("model", "model_state_dict", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint file or state dict that does not fit the model (names the entry).

    Examples
    --------
    >>> from kpflow.training import CheckpointError
    >>> issubclass(CheckpointError, ValueError)
    True
    """


def save_checkpoint(path: Any, checkpoint: Checkpoint) -> Path:
    """Write a :class:`Checkpoint` to an ``.npz`` file (host float64 copies, with names).

    Parameters
    ----------
    path : str or os.PathLike
        The file; numpy appends ``.npz`` when it lacks that suffix.
    checkpoint : Checkpoint
        E.g. one of ``train(...).checkpoints``, or ``Checkpoint(0, params, readout_params)``.

    Returns
    -------
    pathlib.Path
        The file written.

    Examples
    --------
    >>> import os, tempfile
    >>> from kpflow.models import RNN, Linear
    >>> from kpflow.training import Checkpoint, load_checkpoint, save_checkpoint
    >>> model, readout = RNN(1, 3), Linear(3, 2)
    >>> path = os.path.join(tempfile.mkdtemp(), "step0.npz")
    >>> _ = save_checkpoint(path, Checkpoint(0, model.init(0), readout.init(1)))
    >>> c = load_checkpoint(path, model, readout)
    >>> c.step, sorted(c.params), c.readout_params["weight"].shape
    (0, ['bias_hh', 'bias_ih', 'weight_hh', 'weight_ih'], (2, 3))
    """
    where = "save_checkpoint"
    if not isinstance(checkpoint, Checkpoint):
        kind = type(checkpoint).__name__
        msg = f"{where}: expected checkpoint to be a kpflow.training.Checkpoint, got {kind}"
        raise TypeError(msg)
    entries: dict[str, np.ndarray] = {"step": np.asarray(int(checkpoint.step), dtype=np.int64)}
    for group, params in (("params", checkpoint.params), ("readout", checkpoint.readout_params)):
        for name, value in params.items():
            entries[f"{group}/{name}"] = np.asarray(to_host(value), dtype=np.float64)
    out = Path(os.fspath(path))
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    np.savez(out, **entries)  # type: ignore[arg-type]
    return out


def _read_npz(path: Path, where: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as err:  # an object array: loading it would unpickle
        msg = (
            f"{where}: {path} holds an entry that only unpickling could read (an object array); "
            "kpflow never unpickles checkpoint files"
        )
        raise CheckpointError(msg) from err


def _check_entries(
    expected: Mapping[str, tuple[int, ...]], got: Mapping[str, Any], label: str, where: str
) -> dict[str, np.ndarray]:
    """Host float64 copies of ``got``, checked against ``expected`` shapes by name."""
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {label} entries {missing}")
        if extra:
            parts.append(f"extra {label} entries {extra}")
        msg = f"{where}: {' and '.join(parts)}; expected exactly {sorted(expected)}"
        raise CheckpointError(msg)
    out = {}
    for name, shape in expected.items():
        a = np.asarray(got[name])
        if a.dtype.kind != "f":
            msg = f"{where}: {label} entry {name!r} has dtype {a.dtype}; expected a real floating array"
            raise CheckpointError(msg)
        if tuple(a.shape) != tuple(shape):
            found_shape = tuple(a.shape)
            msg = f"{where}: {label} entry {name!r} has shape {found_shape}; the model expects {tuple(shape)}"
            raise CheckpointError(msg)
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        if bad:
            msg = f"{where}: {label} entry {name!r} has {bad} non-finite value(s) (NaN or inf)"
            raise CheckpointError(msg)
        out[name] = np.asarray(a, dtype=np.float64)
    return out


def _check_model(model: Any, readout: Any, where: str) -> None:
    if not isinstance(model, Model):
        msg = f"{where}: expected model to be a kpflow Model, got {type(model).__name__}"
        raise TypeError(msg)
    if readout is not None and not isinstance(readout, Linear):
        msg = f"{where}: expected readout to be a kpflow Linear or None, got {type(readout).__name__}"
        raise TypeError(msg)


def load_checkpoint(
    path: Any,
    model: Model,
    readout: Linear | None = None,
    *,
    like: Any = None,
    dtype: Any = None,
    device: Any = None,
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, checked against the model.

    Parameters
    ----------
    path : str or os.PathLike
        An ``.npz`` file (read with ``allow_pickle=False``).
    model : Model
        Its ``param_shapes()`` are the entries ``params/<name>`` expected.
    readout : Linear, optional
        Its ``param_shapes()`` are the entries ``readout/<name>`` expected; without it the
        file must hold no readout entries.
    like, dtype, device
        The result's namespace (an array of it), dtype and device, as for
        :func:`init_params`; numpy float64 by default.

    Returns
    -------
    Checkpoint

    Raises
    ------
    CheckpointError
        (a ``ValueError``) for an entry that is missing, extra, misshapen, not real
        floating, non-finite, or an object array (which only unpickling could read).

    Examples
    --------
    A checkpoint read back in float32 (numpy's here; ``like=`` picks torch, jax, ...); a
    file for another model is refused, naming the entry:

    >>> import os, tempfile
    >>> import numpy as np
    >>> from kpflow.models import GRU, RNN, Linear
    >>> from kpflow.training import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
    >>> model, readout = RNN(1, 4), Linear(4, 1)
    >>> path = os.path.join(tempfile.mkdtemp(), "rnn.npz")
    >>> _ = save_checkpoint(path, Checkpoint(3, model.init(0), readout.init(1)))
    >>> c = load_checkpoint(path, model, readout, dtype=np.float32)
    >>> c.step, c.params["weight_hh"].dtype
    (3, dtype('float32'))
    >>> try:
    ...     load_checkpoint(path, GRU(1, 4), readout)
    ... except CheckpointError as err:
    ...     print(type(err).__name__)
    CheckpointError
    """
    where = "load_checkpoint"
    _check_model(model, readout, where)
    data = _read_npz(Path(os.fspath(path)), where)
    step = data.pop("step", None)
    if step is None or step.shape != () or step.dtype.kind not in "iu":
        msg = f"{where}: entry 'step' is missing or not a 0-d integer in {os.fspath(path)}"
        raise CheckpointError(msg)
    groups: dict[str, dict[str, np.ndarray]] = {"params": {}, "readout": {}}
    for key, value in data.items():
        group, _, name = key.partition("/")
        if group not in groups or not name:
            msg = f"{where}: extra entry {key!r}; a checkpoint holds step, params/<name>, readout/<name>"
            raise CheckpointError(msg)
        groups[group][name] = value
    params = _check_entries(model.param_shapes(), groups["params"], "params", where)
    shapes = {} if readout is None else readout.param_shapes()
    readout_params = _check_entries(shapes, groups["readout"], "readout", where)
    convert = {"like": like, "dtype": dtype, "device": device}
    return Checkpoint(int(step), convert_host(params, **convert), convert_host(readout_params, **convert))


def _read_state(state: Any, where: str) -> Mapping[str, Any]:
    if isinstance(state, str | os.PathLike):
        path = Path(os.fspath(state))
        if path.suffix == ".npz":
            return _read_npz(path, where)
        import torch  # a torch file needs torch; only weights, never code

        try:
            return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
        except Exception as err:  # pickle.UnpicklingError and friends: refused content
            msg = (
                f"{where}: torch.load(weights_only=True) refused {path}: {err.__class__.__name__}; "
                "the file holds objects other than tensors, and kpflow never unpickles them"
            )
            raise CheckpointError(msg) from err
    if not isinstance(state, Mapping):
        got = type(state).__name__
        msg = (
            f"{where}: expected state to be a state dict (a mapping of names to arrays) or a path, got {got}"
        )
        raise TypeError(msg)
    return state


def _is_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _unnest(state: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    if all(_is_array(v) for v in state.values()):
        return state
    for key in NESTED_KEYS:
        inner = state.get(key)
        if isinstance(inner, Mapping) and all(_is_array(v) for v in inner.values()):
            return inner
    msg = (
        f"{where}: state holds non-array entries {sorted(k for k, v in state.items() if not _is_array(v))} "
        f"and none of {NESTED_KEYS} is a state dict; pass the state dict itself"
    )
    raise CheckpointError(msg)


def _host(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu()
        if v.dtype.is_floating_point and v.element_size() < 4:  # float16, bfloat16: exact in float32
            v = v.float()
        return np.asarray(v.numpy())
    return np.asarray(v)


def _take(
    names: list[str], keys: dict[str, np.ndarray], prefix: str | None, where: str, label: str
) -> dict[str, np.ndarray]:
    """For each name the key(s) that hold it: ``prefix + name`` (+ ``_l0``), or any ``*.name``."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        forms = (name, name + "_l0")
        if prefix is not None:
            found = [k for k in keys if k in tuple(prefix + f for f in forms)]
        else:
            found = [k for k in keys if k in forms or any(k.endswith("." + f) for f in forms)]
        if not found:
            continue  # reported as missing by _check_entries
        first = keys[found[0]]
        if any(keys[k].shape != first.shape or not np.array_equal(keys[k], first) for k in found[1:]):
            msg = (
                f"{where}: {label} entry {name!r} matches several keys with different values {found}; "
                f"pass {'readout_prefix' if label == 'readout' else 'prefix'}= to choose"
            )
            raise CheckpointError(msg)
        out[name] = first
        for k in found:  # aliases of one tensor (a module registered twice) are all consumed
            del keys[k]
    return out


def load_state_dict(
    model: Model,
    state: Any,
    readout: Linear | None = None,
    *,
    prefix: str | None = None,
    readout_prefix: str | None = None,
    strict: bool = True,
    like: Any = None,
    dtype: Any = None,
    device: Any = None,
) -> Checkpoint:
    """Load a torch ``state_dict`` (a mapping, a ``.pt`` file or an ``.npz``) into kpflow parameters.

    Each model parameter ``name`` (``weight_ih``, ``weight_hh``, ``bias_ih``, …) is read
    from the key ``prefix + name`` or ``prefix + name + "_l0"`` (``nn.RNN``/``nn.GRU``/
    ``nn.LSTM`` layer 0), or without a prefix from any key ending in ``.name`` or
    ``.name_l0``; keys holding the same values (one tensor registered twice) count once.
    The readout's ``weight`` and ``bias`` are read likewise with ``readout_prefix`` (e.g.
    ``"Wout."``).  The research code's models (meeree/kpflow) load as :class:`LeakyRNN`
    (its ``BasicRNN``, no bias) or :class:`RNN`/:class:`GRU` (``nn.RNN``/``nn.GRU``) with
    a :class:`Linear` readout ``Wout``.  A file that nests the state dict under one of
    ``"model"``, ``"model_state_dict"``, ``"state_dict"`` is unwrapped.

    Parameters
    ----------
    model : Model
    state : mapping of str to array, str or os.PathLike
        Torch tensors or numpy arrays; a path is read with ``torch.load(weights_only=True)``
        (``.npz``: ``numpy.load(allow_pickle=False)``).
    readout : Linear, optional
    prefix, readout_prefix : str, optional
        Where the model's and the readout's keys start (e.g. ``"rnn."``, ``"Wout."``).
    strict : bool
        Keys left over are an error (default), else ignored.
    like, dtype, device
        The result's namespace, dtype and device (numpy float64 by default).

    Returns
    -------
    Checkpoint
        Step 0.

    Raises
    ------
    CheckpointError
        For a missing, extra (with ``strict``), ambiguous, misshapen, non-floating or
        non-finite entry (named), or a file ``torch.load(weights_only=True)`` refuses.

    Examples
    --------
    >>> import torch
    >>> from kpflow.models import RNN, Linear
    >>> from kpflow.training import load_state_dict
    >>> net = torch.nn.RNN(2, 4, batch_first=True, dtype=torch.float64)
    >>> head = torch.nn.Linear(4, 3, dtype=torch.float64)
    >>> state = {**{"rnn." + k: v for k, v in net.state_dict().items()},
    ...          **{"Wout." + k: v for k, v in head.state_dict().items()}}
    >>> c = load_state_dict(RNN(2, 4), state, Linear(4, 3), readout_prefix="Wout.")
    >>> bool((c.params["weight_hh"] == net.weight_hh_l0.detach().numpy()).all())
    True
    """
    where = "load_state_dict"
    _check_model(model, readout, where)
    if not isinstance(strict, bool):
        msg = f"{where}: expected strict to be a bool, got {strict!r}"
        raise TypeError(msg)
    raw = _unnest(_read_state(state, where), where)
    keys = {str(k): _host(v) for k, v in raw.items()}
    shapes = model.param_shapes()
    params = _check_entries(shapes, _take(list(shapes), keys, prefix, where, "params"), "params", where)
    readout_params: dict[str, np.ndarray] = {}
    if readout is not None:
        rshapes = readout.param_shapes()
        found = _take(list(rshapes), keys, readout_prefix, where, "readout")
        readout_params = _check_entries(rshapes, found, "readout", where)
    if strict and keys:
        msg = (
            f"{where}: extra entries {sorted(keys)} match no parameter of the model or readout (strict=True)"
        )
        raise CheckpointError(msg)
    convert = {"like": like, "dtype": dtype, "device": device}
    return Checkpoint(0, convert_host(params, **convert), convert_host(readout_params, **convert))
