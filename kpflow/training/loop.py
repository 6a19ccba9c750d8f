"""The training loop: full-batch, minibatch or online gradient descent with checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kpflow._array import array_namespace, device_of, host_rng
from kpflow.models.base import Model, NonFiniteStatesError, owned_copy
from kpflow.models.linear import Linear
from kpflow.training.loss import loss_and_gradients
from kpflow.training.optim import SGD, Adam

__all__ = ["Checkpoint", "TrainResult", "TrainingDiverged", "train"]


@dataclass(frozen=True)
class Checkpoint:
    """The parameters after ``step`` updates (step 0: the initial ones).

    Attributes
    ----------
    step : int
    params, readout_params : dict of str to array
        Arrays of their own: later training steps never change them.
    """

    step: int
    params: dict[str, Any]
    readout_params: dict[str, Any]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    params, readout_params : dict of str to array
        The final parameters.
    losses : numpy.ndarray of shape (steps,)
        The loss of each step's batch before that step's update (host float64).
    checkpoints : tuple of Checkpoint
        In the order of ``checkpoints`` given to :func:`train`, sorted by step.
    """

    params: dict[str, Any]
    readout_params: dict[str, Any]
    losses: np.ndarray
    checkpoints: tuple[Checkpoint, ...]

    def checkpoint(self, step: int) -> Checkpoint:
        """The checkpoint taken after ``step`` updates; KeyError if none was asked for.

        Examples
        --------
        >>> import numpy as np
        >>> from kpflow.models import RNN, Linear
        >>> from kpflow.training import SGD, train
        >>> model, readout = RNN(1, 3), Linear(3, 1)
        >>> data = (np.ones((2, 4, 1)), np.zeros((2, 4, 1)), None)
        >>> r = train(model, readout, model.init(0), readout.init(1), data, steps=2,
        ...           optimizer=SGD(0.1), checkpoints=[0, 2])
        >>> r.checkpoint(2).step
        2
        """
        for c in self.checkpoints:
            if c.step == step:
                return c
        taken = [c.step for c in self.checkpoints]
        msg = f"TrainResult.checkpoint: no checkpoint at step {step}; taken at {taken}"
        raise KeyError(msg)


class TrainingDiverged(RuntimeError):
    """Training stopped because the loss became non-finite (inf or nan).

    Attributes
    ----------
    step : int
        The step whose batch gave the non-finite loss (no update was made from it).
    result : TrainResult
        Training up to there: ``params`` are the last finite parameters (those of ``step``),
        ``losses`` the finite losses before it, ``checkpoints`` those taken so far plus one
        at ``step`` (the last finite parameters).
    """

    def __init__(self, message: str, step: int, result: TrainResult) -> None:
        super().__init__(message)
        self.step = step
        self.result = result


def _steps(checkpoints: Any, steps: int, where: str) -> list[int]:
    if isinstance(checkpoints, int | np.integer) or not isinstance(
        checkpoints, Sequence | np.ndarray | range
    ):
        msg = f"{where}: expected checkpoints to be a sequence of ints, got {checkpoints!r}"
        raise TypeError(msg)
    out = []
    for c in checkpoints:
        if isinstance(c, bool) or not isinstance(c, int | np.integer) or not 0 <= int(c) <= steps:
            msg = f"{where}: expected every checkpoint to be an int in [0, steps = {steps}], got {c!r}"
            raise ValueError(msg)
        out.append(int(c))
    return sorted(set(out))


def _copy(params: dict[str, Any]) -> dict[str, Any]:
    return {k: owned_copy(v) for k, v in params.items()}


def train(
    model: Model,
    readout: Linear,
    params: dict[str, Any],
    readout_params: dict[str, Any],
    data: Any,
    *,
    steps: int,
    optimizer: SGD | Adam,
    batch_size: int | None = None,
    rng: Any = None,
    checkpoints: Sequence[int] = (),
    h0: Any = None,
    method: str = "auto",
    progress: Any = None,
) -> TrainResult:
    """Train the model and its linear readout on the masked mean squared error.

    Parameters
    ----------
    model, readout : Model, Linear
    params, readout_params : dict of str to array
        Initial parameters (copied: the caller's arrays are never changed).
    data : TaskBatch, (x, targets, mask) or a task
        A fixed data set (any triple that unpacks as ``x, targets, mask``; ``mask`` may be
        None), or a task configuration with ``sample(batch, rng, like=)`` (e.g.
        :class:`kpflow.tasks.FlipFlop`): then every step draws a fresh batch of
        ``batch_size`` trials (online learning) in the parameters' namespace and dtype.
    steps : int
        Number of updates.
    optimizer : SGD or Adam
    batch_size : int, optional
        Fixed data: None trains on the full batch each step, an int on a random subset of
        that many trials per step (drawn from ``rng``).  A task needs it.
    rng : int, numpy.random.Generator or None
        The host generator of the minibatches or sampled batches.
    checkpoints : sequence of int
        Steps (0 … ``steps``) after which to keep a copy of the parameters.
    h0 : array, optional
        Initial state of a recurrent model (fixed data, full batch only).
    method : {"auto", "kpflow", "autodiff"}
        How gradients are computed (see :func:`loss_and_gradients`): ``"kpflow"`` is BPTT
        through the sites with no framework (numpy, cupy); ``"autodiff"`` torch or jax.
    progress : bool or callable, optional
        A progress bar over the steps (tqdm when installed), or ``progress(done, total)``.

    Returns
    -------
    TrainResult

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN, Linear
    >>> from kpflow.tasks import FlipFlop
    >>> from kpflow.training import Adam, train
    >>> model, readout = RNN(3, 16), Linear(16, 3)
    >>> batch = FlipFlop(T=20).sample(16, rng=0)
    >>> r = train(model, readout, model.init(0), readout.init(1), batch, steps=30, optimizer=Adam(0.02))
    >>> bool(r.losses[-1] < 0.5 * r.losses[0])
    True
    """
    where = "train"
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        msg = f"{where}: expected steps to be an int >= 0, got {steps!r}"
        raise ValueError(msg)
    if not isinstance(optimizer, SGD | Adam):
        msg = f"{where}: expected optimizer to be kpflow.training.SGD or Adam, got {type(optimizer).__name__}"
        raise TypeError(msg)
    keep = _steps(checkpoints, int(steps), where)
    gen = host_rng(rng, where)
    like = next(iter(params.values()))
    xp = array_namespace(like)
    sample = getattr(data, "sample", None)
    if callable(sample):
        if batch_size is None:
            msg = f"{where}: training on a task ({type(data).__name__}) needs batch_size"
            raise ValueError(msg)
        if h0 is not None:
            msg = f"{where}: h0 is for fixed data; a task's batches start from zero states"
            raise ValueError(msg)

        def batch_at(step: int) -> tuple[Any, Any, Any]:
            return tuple(sample(batch_size, gen, like=like))  # type: ignore[return-value]
    else:
        try:
            x, targets, mask = data
        except (TypeError, ValueError) as err:
            got = type(data).__name__
            msg = f"{where}: expected data to be a task or to unpack as (x, targets, mask), got {got}"
            raise TypeError(msg) from err
        B = int(x.shape[0])
        if batch_size is not None:
            if (
                isinstance(batch_size, bool)
                or not isinstance(batch_size, int | np.integer)
                or not 0 < batch_size <= B
            ):
                msg = f"{where}: expected batch_size to be an int in [1, {B}] (trials), got {batch_size!r}"
                raise ValueError(msg)
            if h0 is not None:
                msg = f"{where}: h0 with minibatches is not supported; pass batch_size=None"
                raise ValueError(msg)

        def batch_at(step: int) -> tuple[Any, Any, Any]:
            if batch_size is None:
                return x, targets, mask
            idx = xp.asarray(np.sort(gen.choice(B, size=int(batch_size), replace=False)), device=device_of(x))
            pick = (xp.take(a, idx, axis=0) if a is not None else None for a in (x, targets, mask))
            return tuple(pick)  # type: ignore[return-value]

    from kpflow.backends import get_backend

    # No autograd graph across steps (torch parameters from from_module require grad): the
    # gradients come from kpflow's BPTT or from torch.func/jax transforms, which differentiate
    # under no_grad as well.
    with get_backend(like).no_grad():
        return _loop(
            model,
            readout,
            params,
            readout_params,
            optimizer,
            keep,
            int(steps),
            batch_at,
            h0,
            method,
            progress,
        )


def _loop(
    model: Model,
    readout: Linear,
    params: dict[str, Any],
    readout_params: dict[str, Any],
    optimizer: SGD | Adam,
    keep: list[int],
    steps: int,
    batch_at: Any,
    h0: Any,
    method: str,
    progress: Any,
) -> TrainResult:
    current = {("model", k): v for k, v in _copy(params).items()}
    current |= {("readout", k): v for k, v in _copy(readout_params).items()}
    state = optimizer.init(current)
    saved: list[Checkpoint] = []
    losses = np.empty(steps)

    def split(flat: dict[tuple[str, str], Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        return (
            {k: v for (part, k), v in flat.items() if part == "model"},
            {k: v for (part, k), v in flat.items() if part == "readout"},
        )

    from kpflow.linalg._progress import Progress

    bar = Progress(progress, steps, "train", unit="steps")
    try:
        for step in range(steps + 1):
            if step in keep:
                p, rp = split(current)
                saved.append(Checkpoint(step, _copy(p), _copy(rp)))
            if step == steps:
                break
            p, rp = split(current)
            xb, yb, mb = batch_at(step)
            try:
                out = loss_and_gradients(model, readout, p, rp, xb, yb, mb, h0=h0, method=method)
            except NonFiniteStatesError:
                out = None
            losses[step] = np.nan if out is None else float(out.loss)
            finite = (
                out is not None
                and np.isfinite(losses[step])
                and all(
                    bool(array_namespace(g).all(array_namespace(g).isfinite(g)))
                    for g in [*out.grads.values(), *out.readout_grads.values()]
                )
            )
            if not finite:
                if not saved or saved[-1].step != step:
                    saved.append(Checkpoint(step, _copy(p), _copy(rp)))
                result = TrainResult(p, rp, losses[:step].copy(), tuple(saved))
                what = "states" if out is None else "loss" if not np.isfinite(losses[step]) else "gradient"
                msg = (
                    f"train: the {what} became non-finite at step {step}; training "
                    f"stopped there. The last finite parameters (step {step}) are kept in this error's "
                    ".result (and as its last checkpoint); lower the learning rate or the initial scale"
                )
                raise TrainingDiverged(msg, step, result)
            assert out is not None  # (finite implies it)
            grads = {("model", k): v for k, v in out.grads.items()}
            grads |= {("readout", k): v for k, v in out.readout_grads.items()}
            current, state = optimizer.update(current, grads, state)
            bar.update(1)
    finally:
        bar.close()
    p, rp = split(current)
    return TrainResult(p, rp, losses, tuple(saved))
