"""The built-in models by name: how to build each from its sizes, and what it takes as input.

One table, read by ``kpflow spectrum`` (its ``--model`` choices), ``kpflow demo`` (the
recurrent entries it can train on a task), :func:`kpflow.training.init_params` (which
models can have fixed points embedded) and any code that needs "a model called X of width
H".  Each :class:`ModelEntry` names the class, the options it takes with their defaults,
whether its input is a sequence ``(B, T, n_in)`` or one vector per trial ``(B, n_in)``, and
whether its input width is free or tied to the model's width (attention).

Examples
--------
>>> from kpflow.models import registry
>>> registry.names()
('rnn', 'leaky', 'gru', 'lstm', 'mlp', 'attention', 'transformer')
>>> model = registry.build("gru", n_in=3, n_hidden=8)
>>> type(model).__name__, model.n_hidden
('GRU', 8)
>>> registry.entry("mlp").input_shape(batch=4, time=10, n_in=3, n_hidden=8)
(4, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from kpflow.models.attention import SelfAttention
from kpflow.models.base import Model
from kpflow.models.gru import GRU
from kpflow.models.leaky import LeakyRNN
from kpflow.models.linear import Linear
from kpflow.models.lstm import LSTM
from kpflow.models.mlp import MLP
from kpflow.models.rnn import RNN
from kpflow.models.transformer import TransformerEncoder

__all__ = [
    "MODELS",
    "READOUT",
    "ModelEntry",
    "build",
    "build_for_task",
    "check_readout",
    "entry",
    "entry_for",
    "fixed_point_system",
    "names",
    "readout_for",
]

#: (Φ, R) from (model, host float64 parameters, points (K, H)): W_hh Φ = R makes the points fixed.
FixedPoints = Callable[[Any, Mapping[str, np.ndarray], np.ndarray, str], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ModelEntry:
    """One built-in model: its class, how to build it from sizes, and the input it takes.

    Attributes
    ----------
    name : str
        The registry key (``kpflow spectrum --model NAME``).
    cls : type
        The model class.
    summary : str
        One line for help texts.
    defaults : Mapping[str, Any]
        The options :meth:`build` accepts besides the sizes, with their defaults.
    sequence : bool
        The input is ``(B, T, n_in)`` (a sequence) rather than ``(B, n_in)``.
    free_inputs : bool
        The input width is ``n_in``; ``False``: it is the model's width (``n_hidden``).
    fixed_points : callable or None
        Builds the linear system W_hh Φ = R whose solution makes given states fixed points
        of the autonomous dynamics (see :func:`fixed_point_system`); ``None``: not supported.

    Examples
    --------
    >>> from kpflow.models.registry import entry
    >>> e = entry("leaky")
    >>> e.cls.__name__, dict(e.defaults), e.sequence
    ('LeakyRNN', {'dt': 0.2, 'bias': True}, True)
    """

    name: str
    cls: type
    summary: str
    make: Callable[..., Model] = field(repr=False)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    sequence: bool = True
    free_inputs: bool = True
    fixed_points: FixedPoints | None = field(default=None, repr=False)

    def build(self, n_in: int, n_hidden: int, **options: Any) -> Model:
        """The model with input width ``n_in``, width ``n_hidden`` and ``options`` over the defaults.

        Raises
        ------
        ValueError
            For an option this entry does not take (the message lists the ones it does), or
            for ``n_in`` ≠ ``n_hidden`` when the input width is tied to the width.

        Examples
        --------
        >>> from kpflow.models.registry import entry
        >>> entry("mlp").build(3, 5, depth=2).widths
        (3, 5, 5)
        """
        where = f"registry entry {self.name!r}"
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            msg = f"{where}: unknown option(s) {unknown}; expected some of {sorted(self.defaults)}"
            raise ValueError(msg)
        if not self.free_inputs and n_in != n_hidden:
            msg = f"{where}: expected n_in == n_hidden (its input width is its width), got {n_in}, {n_hidden}"
            raise ValueError(msg)
        return self.make(n_in, n_hidden, **{**self.defaults, **options})

    def n_inputs(self, n_in: int, n_hidden: int) -> int:
        """The input width this entry takes: ``n_in``, or ``n_hidden`` when the two are tied.

        Examples
        --------
        >>> from kpflow.models.registry import entry
        >>> entry("attention").n_inputs(3, 8), entry("rnn").n_inputs(3, 8)
        (8, 3)
        """
        return n_in if self.free_inputs else n_hidden

    def input_shape(self, batch: int, time: int, n_in: int, n_hidden: int) -> tuple[int, ...]:
        """The shape of ``x`` for ``batch`` trials of ``time`` steps (``time`` unused without a sequence).

        Examples
        --------
        >>> from kpflow.models.registry import entry
        >>> entry("transformer").input_shape(2, 5, 3, 4)
        (2, 5, 4)
        """
        width = self.n_inputs(n_in, n_hidden)
        return (batch, time, width) if self.sequence else (batch, width)


def _tanh_rnn_fixed_points(
    model: Any, host: Mapping[str, np.ndarray], pts: np.ndarray, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """h* = tanh(W h* + b)  ⇔  W h* = atanh(h*) − b (tanh only; entries in (−1, 1))."""
    if model.nonlinearity != "tanh":
        msg = f"{where}: fixed points can be embedded in a tanh RNN, got nonlinearity={model.nonlinearity!r}"
        raise ValueError(msg)
    if not np.all(np.abs(pts) < 1):
        biggest = float(np.abs(pts).max())
        msg = f"{where}: a tanh RNN's fixed points need entries in (-1, 1), got max |h*| = {biggest:g}"
        raise ValueError(msg)
    bias = host.get("bias_ih", 0.0) + host.get("bias_hh", 0.0)
    return pts.T, np.arctanh(pts).T - np.reshape(bias, (-1, 1))


def _leaky_fixed_points(
    model: Any, host: Mapping[str, np.ndarray], pts: np.ndarray, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """h* = (1 − dt) h* + dt (W φ(h*) + b)  ⇔  W φ(h*) = h* − b."""
    rate = np.tanh(pts) if model.nonlinearity == "tanh" else np.maximum(pts, 0.0)
    return rate.T, pts.T - np.reshape(host.get("bias", 0.0), (-1, 1))


#: what each fixed-point rule covers, for error messages
_FIXED_POINT_MODELS: dict[Any, str] = {_tanh_rnn_fixed_points: "tanh RNN", _leaky_fixed_points: "LeakyRNN"}


def _mlp(n_in: int, n_hidden: int, *, depth: int) -> MLP:
    return MLP((n_in,) + (n_hidden,) * depth)


def _attention(n_in: int, n_hidden: int, *, n_heads: int, causal: bool) -> SelfAttention:
    return SelfAttention(n_hidden, n_heads, causal=causal)


def _transformer(
    n_in: int, n_hidden: int, *, n_heads: int, n_layers: int, causal: bool
) -> TransformerEncoder:
    return TransformerEncoder(n_hidden, n_heads, 2 * n_hidden, n_layers, causal=causal)


_ENTRIES = (
    ModelEntry(
        "rnn",
        RNN,
        "Elman RNN, h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)",
        lambda n_in, n_hidden: RNN(n_in, n_hidden),
        fixed_points=_tanh_rnn_fixed_points,
    ),
    ModelEntry(
        "leaky",
        LeakyRNN,
        "leaky (rate) RNN, h_t = (1 - dt) h_{t-1} + dt (W_hh tanh(h_{t-1}) + W_ih x_t + b)",
        lambda n_in, n_hidden, *, dt, bias: LeakyRNN(n_in, n_hidden, dt=dt, bias=bias),
        defaults=MappingProxyType({"dt": 0.2, "bias": True}),
        fixed_points=_leaky_fixed_points,
    ),
    ModelEntry("gru", GRU, "GRU cell (torch.nn.GRU's equations)", lambda n_in, n_hidden: GRU(n_in, n_hidden)),
    ModelEntry(
        "lstm", LSTM, "LSTM cell (torch.nn.LSTM's equations)", lambda n_in, n_hidden: LSTM(n_in, n_hidden)
    ),
    ModelEntry(
        "mlp",
        MLP,
        "tanh MLP with depth hidden layers of width n_hidden, one input vector per trial",
        _mlp,
        defaults=MappingProxyType({"depth": 3}),
        sequence=False,
    ),
    ModelEntry(
        "attention",
        SelfAttention,
        "one multi-head self-attention layer with a residual, tokens of width n_hidden",
        _attention,
        defaults=MappingProxyType({"n_heads": 1, "causal": True}),
        free_inputs=False,
    ),
    ModelEntry(
        "transformer",
        TransformerEncoder,
        "post-norm Transformer encoder (feed-forward width 2 n_hidden), tokens of width n_hidden",
        _transformer,
        defaults=MappingProxyType({"n_heads": 1, "n_layers": 1, "causal": True}),
        free_inputs=False,
    ),
)

#: The readout that training and the analyses put after a model: y = C z_feat + c.
READOUT = Linear

#: name → :class:`ModelEntry`, in the order help texts list them.
MODELS: Mapping[str, ModelEntry] = MappingProxyType({e.name: e for e in _ENTRIES})


def names(*, sequence: bool | None = None, free_inputs: bool | None = None) -> tuple[str, ...]:
    """The registry's names, optionally only those with the given input kind.

    Parameters
    ----------
    sequence, free_inputs : bool, optional
        Keep the entries whose attribute of that name has this value.

    Examples
    --------
    >>> from kpflow.models.registry import names
    >>> names(sequence=True, free_inputs=True)   # what a task's (B, T, n_in) inputs can drive
    ('rnn', 'leaky', 'gru', 'lstm')
    """
    return tuple(
        e.name
        for e in _ENTRIES
        if (sequence is None or e.sequence == sequence)
        and (free_inputs is None or e.free_inputs == free_inputs)
    )


def entry(name: str) -> ModelEntry:
    """The entry called ``name``.

    Raises
    ------
    ValueError
        For a name not in the registry (the message lists the names).

    Examples
    --------
    >>> from kpflow.models.registry import entry
    >>> entry("lstm").cls.__name__
    'LSTM'
    """
    if name not in MODELS:
        msg = f"registry: unknown model {name!r}; expected one of {list(MODELS)}"
        raise ValueError(msg)
    return MODELS[name]


def build(name: str, n_in: int, n_hidden: int, **options: Any) -> Model:
    """The built-in model ``name`` of input width ``n_in`` and width ``n_hidden``.

    See :meth:`ModelEntry.build` for the options and errors.

    Examples
    --------
    >>> from kpflow.models.registry import build
    >>> build("leaky", 2, 6, dt=0.5).dt
    0.5
    """
    return entry(name).build(n_in, n_hidden, **options)


def readout_for(model: Any, n_out: int) -> Linear:
    """The linear readout (:data:`READOUT`) of ``model``'s features onto ``n_out`` outputs.

    Its input width is the width of ``model.feature_columns`` (an LSTM's h, not its c).

    Examples
    --------
    >>> from kpflow.models import LSTM
    >>> from kpflow.models.registry import readout_for
    >>> r = readout_for(LSTM(2, 5), 3)
    >>> r.n_in, r.n_out
    (5, 3)
    """
    lo, hi = model.feature_columns
    return READOUT(hi - lo, n_out)


def build_for_task(name: str, task: Any, n_hidden: int, **options: Any) -> tuple[Model, Linear]:
    """The model ``name`` of width ``n_hidden`` that reads ``task``'s inputs, and its readout.

    Parameters
    ----------
    name : str
        A registry name whose entry takes a free input width (``names(free_inputs=True)``).
    task : kpflow.tasks.Task
        Gives ``n_in`` (the model's input width) and ``n_out`` (the readout's outputs).
    n_hidden : int
    **options
        As in :meth:`ModelEntry.build`.

    Examples
    --------
    >>> from kpflow.models.registry import build_for_task
    >>> from kpflow.tasks import FlipFlop
    >>> model, readout = build_for_task("gru", FlipFlop(n_bits=2, T=5), 8)
    >>> (model.n_in, model.n_hidden), (readout.n_in, readout.n_out)
    ((2, 8), (8, 2))
    """
    model = build(name, task.n_in, n_hidden, **options)
    return model, readout_for(model, task.n_out)


def entry_for(model: Any) -> ModelEntry | None:
    """The entry of ``model``'s class (or of its nearest registered base class), or ``None``.

    Examples
    --------
    >>> from kpflow.models import RNN, Recurrent
    >>> from kpflow.models.registry import entry_for
    >>> entry_for(RNN(1, 2)).name
    'rnn'
    """
    for cls in type(model).__mro__:
        for e in _ENTRIES:
            if cls is e.cls:
                return e
    return None


def fixed_point_system(
    model: Any, host: Mapping[str, np.ndarray], points: np.ndarray, where: str = "fixed_point_system"
) -> tuple[np.ndarray, np.ndarray]:
    """(Φ, R) such that W_hh Φ = R makes every row of ``points`` a fixed point of the model at x = 0.

    Parameters
    ----------
    model : Model
        A registry model whose entry has ``fixed_points`` (the tanh RNN and the leaky RNN).
    host : mapping of str to numpy.ndarray
        The model's parameters on the host (the biases are read).
    points : numpy.ndarray of shape (K, H)
    where : str
        The caller's name, for error messages.

    Returns
    -------
    Phi, R : numpy.ndarray of shape (H, K)

    Raises
    ------
    ValueError
        For a model without a fixed-point rule, or points the rule cannot take (a tanh RNN's
        entries must be in (−1, 1)).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import LeakyRNN
    >>> from kpflow.models.registry import fixed_point_system
    >>> Phi, R = fixed_point_system(LeakyRNN(1, 2, dt=0.1), {"bias": np.zeros(2)}, np.array([[0.5, -0.5]]))
    >>> Phi.shape, bool(np.allclose(R[:, 0], [0.5, -0.5]))
    ((2, 1), True)
    """
    e = entry_for(model)
    if e is None or e.fixed_points is None:
        able = [_FIXED_POINT_MODELS[x.fixed_points] for x in _ENTRIES if x.fixed_points is not None]
        msg = f"{where}: fixed points can be embedded in a {' or a '.join(able)}, got {model!r}"
        raise ValueError(msg)
    return e.fixed_points(model, host, points, where)


def check_readout(readout: Any, where: str) -> None:
    """Raise unless ``readout`` is the readout training and the analyses take (:data:`READOUT`).

    Raises
    ------
    TypeError
        Naming ``where``, the expected class and the one that came.

    Examples
    --------
    >>> from kpflow.models import RNN, Linear
    >>> from kpflow.models.registry import check_readout
    >>> check_readout(Linear(3, 1), "f")
    >>> check_readout(RNN(3, 1), "f")
    Traceback (most recent call last):
    ...
    TypeError: f: expected readout to be a kpflow.models.Linear, got RNN
    """
    if not isinstance(readout, READOUT):
        got = type(readout).__name__
        msg = f"{where}: expected readout to be a kpflow.models.{READOUT.__name__}, got {got}"
        raise TypeError(msg)
