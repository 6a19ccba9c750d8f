"""``from_module`` for recurrent torch modules: cells, multi-layer and time-major RNNs.

Reached from :func:`kpflow.backends.torch.from_module` for

- ``torch.nn.RNNCell`` / ``GRUCell`` / ``LSTMCell`` (``recurrent=True`` or not): the built-in
  :class:`~kpflow.models.RNN` / :class:`~kpflow.models.GRU` / :class:`~kpflow.models.LSTM`
  (the same equations and parameter names), so every exact rule applies;
- ``torch.nn.RNN`` / ``GRU`` / ``LSTM`` with ``batch_first=False`` (x taken as (T, B, n_in),
  as the module takes it) or ``recurrent=True``: the same built-in models for one layer; with
  ``num_layers = L > 1`` a :class:`~kpflow.backends._torch_cells_stack.LayerStack`, whose
  state stacks every layer's hidden state and whose sites are each layer's built-in per-unit
  sites (exact rules), P the stacked recursion (:mod:`kpflow.backends._torch_cells_stack`);
- any other module with ``recurrent=True``: a user cell ``forward(x_t, h) -> h`` run as a
  :class:`~kpflow.models.Recurrent` hook cell, each ``torch.nn.Linear`` it calls an exact
  weight site (its weight a weight call, its bias a bias call), each other trained 1-D
  parameter a bias call (the autodiff rule differentiates what the cell does with it).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from kpflow.backends._torch_cells_stack import LayerStack
from kpflow.backends._torch_modules_checks import _same_meta, _with_frozen

from kpflow.models import Recurrent

__all__ = ["from_recurrent_module", "is_recurrent_target"]


def is_recurrent_target(module: Any, recurrent: bool) -> bool:
    """Whether ``from_module`` hands ``module`` to :func:`from_recurrent_module`.

    Examples
    --------
    >>> import torch
    >>> from kpflow.backends._torch_cells import is_recurrent_target
    >>> is_recurrent_target(torch.nn.GRUCell(2, 3), False), is_recurrent_target(torch.nn.GRU(2, 3), False)
    (True, True)
    >>> is_recurrent_target(torch.nn.GRU(2, 3, batch_first=True), False)
    False
    """
    nn = torch.nn
    if recurrent or isinstance(module, nn.RNNCell | nn.GRUCell | nn.LSTMCell):
        return True
    if isinstance(module, nn.RNN | nn.GRU | nn.LSTM):
        return int(module.num_layers) > 1 or not module.batch_first
    return False


def _kind(module: Any) -> str:
    nn = torch.nn
    if isinstance(module, nn.LSTM | nn.LSTMCell):
        return "LSTM"
    if isinstance(module, nn.GRU | nn.GRUCell):
        return "GRU"
    return "RNN"


def from_recurrent_module(module: Any, readout: Any, *, detach: bool, where: str) -> tuple[Any, ...]:
    """``from_module`` for a cell, a multi-layer or time-major RNN, or a user cell (see the module).

    Parameters
    ----------
    module : torch.nn.Module
        A torch cell or RNN, or a user cell module ``forward(x_t, h) -> h`` with
        ``input_size`` and ``hidden_size`` attributes.
    readout : torch.nn.Linear or None
        Reads the features (the last layer's h; h of a tuple state).
    detach : bool
        As :func:`kpflow.backends.torch.from_module`.
    where : str
        The public call named in errors.

    Returns
    -------
    (model, params) or (model, params, readout_model, readout_params)
        ``params`` are the module's tensors under the model's names (torch's module names for
        a layer stack and a user cell; ``weight_ih`` ... for one layer and the torch cells).

    Examples
    --------
    >>> import torch
    >>> from kpflow.backends._torch_cells import from_recurrent_module
    >>> lstm = torch.nn.LSTM(2, 3, num_layers=2, dtype=torch.float64)
    >>> model, params = from_recurrent_module(lstm, None, detach=True, where="example")
    >>> traj = model.run(params, torch.ones(4, 5, 2, dtype=torch.float64))   # (T, B, n_in)
    >>> traj.state_shape, traj.feature_columns, sorted(model.state_parts)
    ((5, 4, 12), (3, 6), ['c', 'h'])
    """
    nn = torch.nn
    if not isinstance(module, nn.Module):
        msg = f"{where}: expected module to be a torch.nn.Module, got {type(module).__name__}"
        raise TypeError(msg)
    if isinstance(module, nn.RNNBase):
        model, features, tensors = _from_rnn(module, where)
    elif isinstance(module, nn.RNNCellBase):
        options = {"nonlinearity": module.nonlinearity} if _kind(module) == "RNN" else {}
        model = _builtin(_kind(module), module, **options)
        features = (0, int(module.hidden_size))
        tensors = {name: getattr(module, name) for name in model.param_shapes()}
    else:
        model, features, tensors = _from_user_cell(module, where)
    params = {name: (t.detach() if detach else t) for name, t in tensors.items()}
    _same_meta(params, next(iter(params.values())), "the weight", where)
    model = _with_frozen(model, list(tensors.items()), module, where)
    if readout is None:
        return model, params
    return (model, params, *_readout(readout, features, params, detach, where))


# -- built-in cells ------------------------------------------------------------------------------
class _TorchInputs:
    """Takes x and h0 in the torch module's own layout and hands kpflow's to the model's ``run``.

    ``_time_major``: x is (T, B, n_in) (``batch_first=False``).  ``_layers``: h0 is torch's
    (L, B, H) stack (a pair of them for an LSTM), else kpflow's (B, S) or the LSTM pair of (B, H).
    """

    _time_major = False
    _layers = 0

    def run(self, params: dict[str, Any], x: Any, h0: Any = None) -> Any:
        if self._time_major and getattr(x, "ndim", 0) == 3:
            x = torch.transpose(x, 0, 1)
        if h0 is not None and self._layers:
            h0 = _stacked_h0(h0, self._layers)
        return super().run(params, x, h0)  # type: ignore[misc]


def _stacked_h0(h0: Any, layers: int) -> Any:
    """torch's h0 (L, B, H), or (h0, c0) of them, as kpflow's (B, L·H) (an LSTM: [h; c], (B, 2L·H))."""
    parts = list(h0) if isinstance(h0, tuple | list) else [h0]
    flat = []
    for part in parts:
        if getattr(part, "ndim", 0) == 3 and int(part.shape[0]) == layers:
            part = torch.reshape(torch.transpose(part, 0, 1), (int(part.shape[1]), -1))
        flat.append(part)
    return flat[0] if len(flat) == 1 else torch.cat(flat, dim=-1)


_IN_TORCH_LAYOUT: dict[type, type] = {}


def _in_torch_layout(base: type) -> type:
    """``base`` whose ``run`` takes the torch module's layout (one class per base, made once)."""
    if base not in _IN_TORCH_LAYOUT:
        attrs = {"__module__": base.__module__, "__doc__": base.__doc__}
        _IN_TORCH_LAYOUT[base] = type(base.__name__, (_TorchInputs, base), attrs)
    return _IN_TORCH_LAYOUT[base]


def _builtin(kind: str, module: Any, **options: Any) -> Any:
    from kpflow.models import GRU, LSTM, RNN

    cls = {"RNN": RNN, "GRU": GRU, "LSTM": LSTM}[kind]
    return cls(int(module.input_size), int(module.hidden_size), bias=bool(module.bias), **options)


def _from_rnn(module: Any, where: str) -> tuple[Any, tuple[int, int], dict[str, Any]]:
    """nn.RNN / GRU / LSTM: the built-in model for one layer, a layer stack for several."""
    unsupported = []
    if module.bidirectional:
        unsupported.append("bidirectional=True (kpflow maps unidirectional cells only)")
    if getattr(module, "proj_size", 0):
        unsupported.append(f"proj_size={module.proj_size} (kpflow's LSTM has no projection; use 0)")
    if float(module.dropout) != 0.0 and int(module.num_layers) > 1:
        unsupported.append(f"dropout={module.dropout} (kpflow's layers are deterministic; use dropout=0)")
    if unsupported:
        msg = f"{where}: unsupported {type(module).__name__} setting(s): " + "; ".join(unsupported)
        raise ValueError(msg)
    kind, L, H = _kind(module), int(module.num_layers), int(module.hidden_size)
    model: Any
    if L == 1:
        options = {"nonlinearity": "tanh" if module.mode == "RNN_TANH" else "relu"} if kind == "RNN" else {}
        model = _builtin(kind, module, **options)
        model = _in_torch_layout(type(model))(int(module.input_size), H, bias=bool(module.bias), **options)
        tensors = {name: getattr(module, f"{name}_l0") for name in model.param_shapes()}
        features = (0, H)
    else:
        act = "tanh" if kind != "RNN" or module.mode == "RNN_TANH" else "relu"
        stack = _in_torch_layout(LayerStack)
        model = stack(kind, int(module.input_size), H, L, bias=bool(module.bias), nonlinearity=act)
        tensors = {name: getattr(module, name) for name in model.param_shapes()}
        features = ((L - 1) * H, L * H)
    model._time_major = not module.batch_first
    model._layers = L
    return model, features, tensors


# -- a user cell module forward(x_t, h) -> h -----------------------------------------------------
def _from_user_cell(cell: Any, where: str) -> tuple[Any, tuple[int, int], dict[str, Any]]:
    nn = torch.nn
    sizes = {}
    for attr in ("input_size", "hidden_size"):
        value = getattr(cell, attr, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            msg = (
                f"{where}: recurrent=True takes a cell module forward(x_t, h) -> h with int attributes "
                f"input_size and hidden_size (as torch.nn.GRUCell has); {type(cell).__name__}.{attr} is "
                f"{value!r}. Accepted: torch.nn.RNNCell, GRUCell, LSTMCell, torch.nn.RNN, GRU, LSTM, or a "
                "cell module with input_size and hidden_size set"
            )
            raise ValueError(msg)
        sizes[attr] = int(value)
    n_in, H = sizes["input_size"], sizes["hidden_size"]
    linears = {name: m for name, m in cell.named_modules() if name and isinstance(m, nn.Linear)}
    shapes: dict[str, tuple[int, ...]] = {}
    tensors: dict[str, Any] = {}
    for name, lin in linears.items():
        for pname in ("weight", "bias"):
            p = getattr(lin, pname)
            if p is not None:
                shapes[f"{name}.{pname}"] = tuple(int(n) for n in p.shape)
                tensors[f"{name}.{pname}"] = p
    others, refused = [], []
    for name, p in cell.named_parameters():
        if name in shapes:
            continue
        if p.ndim == 1:
            others.append(name)
            shapes[name], tensors[name] = (int(p.shape[0]),), p
        elif p.requires_grad:
            refused.append(f"{name} {tuple(p.shape)}")
    if refused:
        msg = (
            f"{where}: the cell {type(cell).__name__}'s trained parameter(s) {', '.join(refused)} are "
            "neither in a torch.nn.Linear nor 1-D. Accepted in a user cell: parameters of torch.nn.Linear "
            "submodules (exact weight sites), other 1-D parameters (used elementwise), and frozen parameters "
            "(requires_grad=False) of any shape"
        )
        raise ValueError(msg)
    if not shapes:
        msg = f"{where}: the cell {type(cell).__name__} has no parameter; the NTK of a cell needs some"
        raise ValueError(msg)
    like = next(iter(tensors.values()))
    parts = _state_parts(cell, n_in, H, like, where)
    step = functools.partial(_user_step, cell, linears, tuple(others), H, parts)
    model = _UserCell(step, n_in=n_in, n_hidden=parts * H, param_shapes=shapes)
    model.layer_size, model.parts = H, parts
    return model, (0, H), tensors


def _state_parts(cell: Any, n_in: int, H: int, like: Any, where: str) -> int:
    """How many (B, H) tensors make the cell's state: 1 for a tensor h, n for a tuple (h, c, ...)."""
    meta = {"dtype": like.dtype, "device": like.device}
    x, h = torch.zeros(1, n_in, **meta), torch.zeros(1, H, **meta)
    got: Any = None
    with torch.no_grad():
        try:
            got = cell(x, h)
        except (TypeError, ValueError, RuntimeError, IndexError):
            got = None
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (1, H):
            return 1
        n = len(got) if isinstance(got, tuple | list) else 2
        try:
            got = cell(x, tuple(torch.zeros(1, H, **meta) for _ in range(n)))
        except (TypeError, ValueError, RuntimeError, IndexError):
            got = None
    if isinstance(got, tuple | list) and len(got) == n and all(tuple(g.shape) == (1, H) for g in got):
        return n
    msg = (
        f"{where}: expected the cell's forward(x_t, h) on x_t (B, input_size={n_in}) and h (B, "
        f"hidden_size={H}) to return the next h (B, {H}), or on a tuple state (h, c, ...) of (B, {H}) "
        "tensors a tuple of the same shapes; it did neither"
    )
    raise ValueError(msg)


def _linear_call(site: Any, name: str, has_bias: bool, a: Any) -> Any:
    u = site(f"{name}.weight", a)
    return u + site(f"{name}.bias") if has_bias else u


def _user_step(
    cell: Any, linears: dict, others: tuple, H: int, parts: int, params: Any, z: Any, x: Any, site: Any
) -> Any:
    """The user's cell on the stacked state, its Linear calls and 1-D parameters through the hook."""
    state = z if parts == 1 else tuple(z[..., i * H : (i + 1) * H] for i in range(parts))
    for name, lin in linears.items():
        lin.forward = functools.partial(_linear_call, site, name, lin.bias is not None)
    try:
        values = {name: site(name) for name in others}
        out = torch.func.functional_call(cell, values, (x, state)) if values else cell(x, state)
    finally:
        for lin in linears.values():
            del lin.forward
    return out if parts == 1 else torch.cat(list(out), dim=-1)


class _UserCell(_TorchInputs, Recurrent):
    """A user cell module as a hook cell; a tuple state (h, c, ...) is stacked [h; c; ...], h read out."""

    layer_size = 0
    parts = 1

    def run(self, params: dict[str, Any], x: Any, h0: Any = None) -> Any:
        if isinstance(h0, tuple | list):
            h0 = torch.cat(list(h0), dim=-1)
        return super().run(params, x, h0)

    @property
    def feature_columns(self) -> tuple[int, int]:
        return (0, self.layer_size)


# -- the readout -----------------------------------------------------------------------------------
def _readout(readout: Any, features: tuple[int, int], params: dict, detach: bool, where: str) -> tuple:
    from kpflow.models import Linear

    if not isinstance(readout, torch.nn.Linear):
        msg = f"{where}: expected readout to be a torch.nn.Linear or None, got {type(readout).__name__}"
        raise TypeError(msg)
    width = features[1] - features[0]
    if readout.in_features != width:
        msg = f"{where}: expected readout.in_features to equal the module's hidden_size={width}, got "
        raise ValueError(msg + str(readout.in_features))
    frozen = [name for name, p in readout.named_parameters() if not p.requires_grad]
    if frozen:
        msg = (
            f"{where}: the readout's {frozen} requires_grad=False, but kpflow's output NTK trains the "
            "readout's weight and bias. Accepted: a readout trained whole; for a fixed readout C, map the "
            "module alone and read C NTK_S Cᵀ off the state NTK (kpflow.global_ntk)"
        )
        raise ValueError(msg)
    out = {"weight": readout.weight} | ({"bias": readout.bias} if readout.bias is not None else {})
    out = {k: (v.detach() if detach else v) for k, v in out.items()}
    _same_meta(out, next(iter(params.values())), "the readout's", where)
    return Linear(width, int(readout.out_features), bias=readout.bias is not None), out
