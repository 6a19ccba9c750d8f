"""``from_module`` for ``torch.nn`` modules (re-exported by :mod:`kpflow.backends.torch`).

Maps ``torch.nn.RNN`` / ``GRU`` / ``LSTM`` (and a ``torch.nn.Linear`` readout),
``torch.nn.MultiheadAttention`` and ``torch.nn.TransformerEncoderLayer`` / ``TransformerEncoder``
onto kpflow's models with the modules' own parameter tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from kpflow.backends._torch_modules_checks import _frozen, _same_meta, _with_frozen

__all__ = ["from_module"]


_RECURRENT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _check_recurrent_module(module: Any, where: str) -> str:
    """The kpflow model kind of ``module`` (``"RNN"``, ``"GRU"``, ``"LSTM"``), or an error."""
    nn = torch.nn
    if isinstance(module, nn.LSTM):
        kind = "LSTM"
    elif isinstance(module, nn.GRU):
        kind = "GRU"
    elif isinstance(module, nn.RNN):
        kind = "RNN"
    else:
        msg = (
            f"{where}: got a {type(module).__name__}; accepted: any torch.nn.Module with states= (the "
            "submodules whose outputs are the states: names, a glob pattern, a re.Pattern or a callable), "
            "an nn.Sequential (states default to its children), torch.nn.RNN / GRU / LSTM, "
            "torch.nn.RNNCell / GRUCell / LSTMCell or a cell module with recurrent=True, "
            "torch.nn.MultiheadAttention, torch.nn.TransformerEncoderLayer and TransformerEncoder"
        )
        raise TypeError(msg)
    unsupported = []
    if module.num_layers != 1:
        unsupported.append(f"num_layers={module.num_layers} (kpflow maps one layer; use num_layers=1)")
    if not module.batch_first:
        unsupported.append("batch_first=False (kpflow takes x as (B, T, n_in); use batch_first=True)")
    if module.bidirectional:
        unsupported.append("bidirectional=True (kpflow maps unidirectional cells only)")
    if getattr(module, "proj_size", 0):
        unsupported.append(f"proj_size={module.proj_size} (kpflow's LSTM has no projection; use 0)")
    if unsupported:
        msg = f"{where}: unsupported {type(module).__name__} setting(s): " + "; ".join(unsupported)
        raise ValueError(msg)
    return kind


def _check_parametrizations(module: Any, what: str, where: str) -> None:
    """Refuse a weight computed by a parametrization: GD moves the parametrization's own parameters."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    found = []
    for prefix, sub in module.named_modules():
        pre = f"{what}{prefix}." if prefix else what
        if parametrize.is_parametrized(sub):
            for name, chain in sub.parametrizations.items():
                kinds = ", ".join(type(p).__name__ for p in chain)
                found.append(
                    f"{pre}{name} by torch.nn.utils.parametrize ({kinds}; parameters {pre}"
                    f"parametrizations.{name}.original*)"
                )
        for hook in sub._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm):
                found.append(
                    f"{pre}{hook.name} by torch.nn.utils.weight_norm (parameters "
                    f"{pre}{hook.name}_g, {pre}{hook.name}_v)"
                )
            elif isinstance(hook, SpectralNorm):
                found.append(
                    f"{pre}{hook.name} by torch.nn.utils.spectral_norm (parameter {pre}{hook.name}_orig)"
                )
    if found:
        msg = (
            f"{where}: the weight {'; the weight '.join(found)} is computed by a parametrization, so "
            "gradient descent moves the parametrization's parameters, not the weight kpflow would map, "
            "and kpflow's NTK would be over the wrong parameters. Accepted: modules whose weights are "
            "plain torch.nn.Parameter tensors (to train the weight itself, remove the parametrization "
            "first: torch.nn.utils.parametrize.remove_parametrizations, torch.nn.utils.remove_weight_norm "
            "or torch.nn.utils.remove_spectral_norm)"
        )
        raise ValueError(msg)


def _check_tied(named: list[tuple[str, Any]], where: str) -> None:
    """Refuse one Parameter under several names: kpflow's models give each place its own parameter."""
    by_tensor: dict[int, list[str]] = {}
    for name, p in named:
        by_tensor.setdefault(id(p), []).append(name)
    tied = [names for names in by_tensor.values() if len(names) > 1]
    if tied:
        groups = "; ".join(" = ".join(names) for names in tied)
        msg = (
            f"{where}: the parameters {groups} are one tensor used in several places (tied weights); "
            "kpflow's model gives each place its own parameter, so its NTK would miss the cross terms "
            "between the uses. Accepted: modules whose parameters are distinct tensors (untie them, "
            "e.g. with torch.nn.Parameter(p.detach().clone()), if that is what you train)"
        )
        raise ValueError(msg)


def from_module(
    module: Any,
    readout: Any = None,
    *,
    states: Any = None,
    detach: bool = False,
    causal: bool = False,
    recurrent: bool = False,
) -> tuple[Any, ...]:
    """A kpflow model and parameters that share a ``torch.nn`` recurrent module's weights.

    Maps ``torch.nn.RNN`` (tanh or relu), ``torch.nn.GRU`` and ``torch.nn.LSTM`` to
    :class:`kpflow.models.RNN`, :class:`kpflow.models.gru.GRU` and
    :class:`kpflow.models.lstm.LSTM` (same equations, gate order and parameter names), and
    optionally a ``torch.nn.Linear`` readout y = C z + c to :class:`kpflow.models.Linear`.
    Also maps ``torch.nn.MultiheadAttention`` to :class:`kpflow.models.SelfAttention`
    (``residual=False``) and ``torch.nn.TransformerEncoderLayer`` / ``TransformerEncoder``
    to :class:`kpflow.models.TransformerEncoder` (``batch_first=True``, dropout 0, relu or
    exact gelu; torch's parameter names, ``layers.0.`` prefixed for a single layer); any
    setting kpflow cannot express raises a ``ValueError`` naming it (docs/torch.md).

    Any feed-forward module (an ``nn.Sequential``, a residual network, a Hugging Face
    transformer) maps with ``states=``: the outputs of the named submodules are the states,
    every ``nn.Linear``, ``nn.Embedding``, ``nn.Conv1d`` / ``Conv2d`` (and Hugging Face
    ``Conv1D``), ``nn.LayerNorm`` / ``nn.RMSNorm`` affine and self-attention
    ``nn.MultiheadAttention`` inside is a Kronecker weight site, every other trained
    parameter a site of one row (autodiff), and
    ``model.run(params, *inputs)`` takes the module's own forward inputs
    (:mod:`kpflow.backends._torch_graph`, docs/your_model.md).

    Parameters
    ----------
    module : torch.nn.RNN, torch.nn.GRU or torch.nn.LSTM
        Unidirectional (and ``proj_size=0`` for the LSTM).  One layer with
        ``batch_first=True`` maps to the built-in model; ``num_layers > 1`` or
        ``batch_first=False`` map to a layer stack (see ``recurrent`` below).
    states : list of str, str, re.Pattern or callable, optional
        For any other ``torch.nn.Module``: the submodules whose outputs are the states, in
        forward order, as ``named_modules`` names, a glob (``"h.*"``: ``*`` within one
        dotted part, ``**`` across), a ``re.Pattern`` matched in full, or a callable
        ``(name, submodule) -> bool``; a tuple-returning submodule contributes its first
        tensor.  Default for an ``nn.Sequential``: every top-level child.  The model's
        state is every state flattened per batch row, (B, Σ_j n_j); the params are the
        trained parameters under their ``named_parameters`` names (frozen ones left out).
    readout : torch.nn.Linear, optional
        A readout with ``in_features == module.hidden_size``, of the module's dtype and
        device.  For the LSTM it reads h (the first H of the kpflow state [h; c]).
    causal : bool
        For the attention modules only: the causal-mask model (token n attends to m ≤ n).
    recurrent : bool
        A cell module ``forward(x_t, h) -> h`` (``torch.nn.RNNCell`` / ``GRUCell`` /
        ``LSTMCell`` are taken as cells without it; ``input_size`` and ``hidden_size``
        attributes for a user cell): ``model.run(params, x, h0)`` takes x (B, T, n_in) and h0
        (B, H) (or a tuple state).  ``torch.nn.RNN/GRU/LSTM`` with ``num_layers > 1`` or
        ``batch_first=False`` are taken too, x and h0 in the module's layout (docs/torch.md).
    detach : bool
        False (default): the params are the module's ``nn.Parameter`` objects themselves,
        so in-place updates (an optimizer step) show through and gradients of anything
        computed from them flow into ``module.weight_*.grad`` (a run keeps no per-step
        autograd temporaries: its states backpropagate through kpflow's J_Sᵀ, docs/torch.md).
        True: detached views (``p.detach()``) on the same storage: updates show through, no
        autograd graph is recorded (equivalent to working under ``torch.no_grad()``).

    Returns
    -------
    (model, params) without ``readout``, or (model, params, readout_model, readout_params)
        ``params`` maps kpflow's (PyTorch's) names ``weight_ih`` (G·H, n_in), ``weight_hh``
        (G·H, H), ``bias_ih`` (G·H,), ``bias_hh`` (G·H,) to the module's ``*_l0`` tensors
        (G = 1, 3, 4 for RNN, GRU, LSTM; no biases when ``bias=False``).
        ``readout_params`` maps ``weight`` C (n_out, H) and ``bias`` c (n_out,) to the
        readout's tensors.  No tensor is copied: every one shares its module tensor's
        storage (same ``data_ptr()``).

    Raises
    ------
    TypeError
        If ``module`` is not one of the three cells, ``readout`` is not a
        ``torch.nn.Linear``, or the readout's dtype or device differs from the module's.
    ValueError
        For an unsupported setting (``bidirectional=True``, ``proj_size > 0``), naming
        it, or a readout whose ``in_features`` is not the module's ``hidden_size``.

    Notes
    -----
    ``model.run(params, x, h0)`` then reproduces ``module(x, h0)``: ``traj.states`` (B, T, H)
    equals the module's output sequence (for the LSTM, ``traj.states[..., :H]`` does; the
    kpflow state is [h; c], width 2H).  torch passes h0 with a leading layer axis,
    (1, B, H); kpflow takes ``h0[0]`` of shape (B, H), and for the LSTM the pair
    ``(h0[0], c0[0])`` or their concatenation (B, 2H).  With ``detach=True`` on CUDA, call
    ``module.flatten_parameters()`` first, since it may move the weights to new storage.

    Examples
    --------
    >>> import torch
    >>> import kpflow.ntk as ntk
    >>> from kpflow.backends.torch import from_module
    >>> _ = torch.manual_seed(0)
    >>> gru = torch.nn.GRU(2, 3, batch_first=True, dtype=torch.float64)
    >>> model, params = from_module(gru)
    >>> params["weight_hh"].data_ptr() == gru.weight_hh_l0.data_ptr()
    True
    >>> x = torch.randn(4, 5, 2, dtype=torch.float64)
    >>> with torch.no_grad():
    ...     traj = model.run(params, x)
    ...     bool(torch.allclose(traj.states, gru(x)[0], rtol=0, atol=1e-14))
    True
    >>> ntk.global_ntk(traj).shape_in
    (4, 5, 3)
    """
    where = "kpflow.backends.torch.from_module"
    if isinstance(module, torch.nn.Module):
        _check_parametrizations(module, "", where)
    # -- any feed-forward module: its states named by ``states`` (kpflow.backends._torch_graph)
    if isinstance(module, torch.nn.Module) and (
        states is not None or (isinstance(module, torch.nn.Sequential) and not recurrent)
    ):
        if readout is not None or causal:
            msg = (
                f"{where}: readout= and causal= apply to the built-in mappings only; with states= "
                "the module runs as it is (put a readout inside it, and its causal mask in its forward)"
            )
            raise ValueError(msg)
        from kpflow.backends._torch_graph import from_graph

        return from_graph(module, states, detach=detach, where=where)
    if isinstance(module, torch.nn.Module):
        if isinstance(readout, torch.nn.Linear):  # (any other readout is refused below)
            _check_parametrizations(readout, "readout.", where)
            both = list(module.named_parameters(remove_duplicate=False))
            both += [("readout." + n, p) for n, p in readout.named_parameters(remove_duplicate=False)]
            _check_tied(both, where)
        else:
            _check_tied(list(module.named_parameters(remove_duplicate=False)), where)
    if causal and not _is_attention_module(module):
        msg = f"{where}: causal=True applies to attention modules only, got {type(module).__name__}"
        raise ValueError(msg)
    # -- recurrent cells (nn.RNNCell/GRUCell/LSTMCell, a user cell with recurrent=True) and
    # multi-layer or batch_first=False nn.RNN/GRU/LSTM: kpflow.backends._torch_cells
    from kpflow.backends._torch_cells import from_recurrent_module, is_recurrent_target

    if is_recurrent_target(module, recurrent):
        return from_recurrent_module(module, readout, detach=detach, where=where)
    if _is_attention_module(module):
        if readout is not None:
            msg = (
                f"{where}: a readout is supported for the recurrent modules only, got {type(module).__name__}"
            )
            raise ValueError(msg)
        return _from_attention_module(module, causal=causal, detach=detach, where=where)
    kind = _check_recurrent_module(module, where)
    from kpflow.models.gru import GRU
    from kpflow.models.linear import Linear
    from kpflow.models.lstm import LSTM
    from kpflow.models.rnn import RNN

    n_in, n_hidden, bias = int(module.input_size), int(module.hidden_size), bool(module.bias)
    model: Any
    if kind == "RNN":
        nonlinearity = "tanh" if module.mode == "RNN_TANH" else "relu"
        model = RNN(n_in, n_hidden, nonlinearity=nonlinearity, bias=bias)
    elif kind == "GRU":
        model = GRU(n_in, n_hidden, bias=bias)
    else:
        model = LSTM(n_in, n_hidden, bias=bias)

    def share(t: Any) -> Any:
        return t.detach() if detach else t

    names = _RECURRENT_NAMES if bias else _RECURRENT_NAMES[:2]
    tensors = {name: getattr(module, f"{name}_l0") for name in names}
    params = {name: share(t) for name, t in tensors.items()}
    reference = params["weight_hh"]
    _same_meta(params, reference, "the weight", where)
    model = _with_frozen(model, list(tensors.items()), module, where)
    if readout is None:
        return model, params

    if not isinstance(readout, torch.nn.Linear):
        msg = f"{where}: expected readout to be a torch.nn.Linear or None, got {type(readout).__name__}"
        raise TypeError(msg)
    if readout.in_features != n_hidden:
        msg = (
            f"{where}: expected readout.in_features to equal the module's hidden_size={n_hidden}, "
            f"got {readout.in_features}"
        )
        raise ValueError(msg)
    has_bias = readout.bias is not None
    readout_model = Linear(n_hidden, int(readout.out_features), bias=has_bias)
    frozen_readout = _frozen(list(readout.named_parameters()))
    if frozen_readout:
        msg = (
            f"{where}: the readout's {frozen_readout} ha{'s' if len(frozen_readout) == 1 else 've'} "
            "requires_grad=False, but kpflow's output NTK (kpflow.output_ntk) trains the readout's weight "
            "and bias. Accepted: a readout trained whole; for a fixed readout C, map the module alone and "
            "read C NTK_S Cᵀ off the state NTK (kpflow.global_ntk)"
        )
        raise ValueError(msg)
    readout_params = {"weight": share(readout.weight)}
    if has_bias:
        readout_params["bias"] = share(readout.bias)
    _same_meta(readout_params, reference, "the readout's", where)
    return model, params, readout_model, readout_params


# -- attention modules: MultiheadAttention, TransformerEncoderLayer, TransformerEncoder ------------
def _is_attention_module(module: Any) -> bool:
    nn = torch.nn
    return isinstance(module, nn.MultiheadAttention | nn.TransformerEncoderLayer | nn.TransformerEncoder)


def _refuse(module: Any, unsupported: list[str], where: str) -> None:
    if unsupported:
        msg = f"{where}: unsupported {type(module).__name__} setting(s): " + "; ".join(unsupported)
        raise ValueError(msg)


def _mha_settings(mha: Any, what: str) -> list[str]:
    """What kpflow's SelfAttention cannot express in ``mha`` (empty when it maps one-to-one)."""
    out = []
    if not mha.batch_first:
        out.append(f"{what}batch_first=False (kpflow takes x as (B, N, d); use batch_first=True)")
    if float(mha.dropout) != 0.0:
        out.append(f"{what}dropout={mha.dropout} (kpflow's attention is deterministic; use dropout=0)")
    if not mha._qkv_same_embed_dim:
        out.append(
            f"{what}kdim={mha.kdim}, vdim={mha.vdim} (kpflow maps self-attention, kdim = vdim = "
            f"embed_dim={mha.embed_dim})"
        )
    if mha.bias_k is not None or mha.bias_v is not None:
        out.append(f"{what}add_bias_kv=True (kpflow has no extra key/value bias token)")
    if mha.add_zero_attn:
        out.append(f"{what}add_zero_attn=True (kpflow has no zero attention token)")
    return out


def _biases_all_or_none(biases: dict[str, Any], what: str) -> list[str]:
    present = sorted(name for name, b in biases.items() if b is not None)
    if present and len(present) != len(biases):
        absent = sorted(set(biases) - set(present))
        return [f"{what}biases {present} present but {absent} absent (kpflow's bias is all or none)"]
    return []


def _layer_settings(layer: Any, what: str) -> tuple[list[str], dict[str, Any]]:
    """Refusals and kpflow's settings for one ``TransformerEncoderLayer``."""
    nn, F = torch.nn, torch.nn.functional
    out = _mha_settings(layer.self_attn, what + "self_attn.")
    for name in ("dropout", "dropout1", "dropout2"):
        p = float(getattr(layer, name).p)
        if p != 0.0:
            out.append(f"{what}{name}.p={p} (kpflow's encoder is deterministic; use dropout=0)")
    act = layer.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        activation = "relu"
    elif act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        activation = "gelu"
    else:
        activation = "?"
        out.append(
            f"{what}activation={act!r} (kpflow maps relu and the exact gelu only, not a custom callable "
            "or the tanh-approximate GELU)"
        )
    for name in ("norm1", "norm2"):
        norm = getattr(layer, name)
        if not norm.elementwise_affine:
            out.append(f"{what}{name}.elementwise_affine=False (kpflow's LayerNorms have a scale)")
    if layer.norm1.eps != layer.norm2.eps:
        out.append(f"{what}norm1.eps={layer.norm1.eps} != norm2.eps={layer.norm2.eps} (kpflow has one eps)")
    sa = layer.self_attn
    biases = {
        "self_attn.in_proj_bias": sa.in_proj_bias,
        "self_attn.out_proj.bias": sa.out_proj.bias,
        "linear1.bias": layer.linear1.bias,
        "linear2.bias": layer.linear2.bias,
        "norm1.bias": layer.norm1.bias,
        "norm2.bias": layer.norm2.bias,
    }
    out += _biases_all_or_none(biases, what)
    settings = {
        "d_model": int(sa.embed_dim),
        "n_heads": int(sa.num_heads),
        "d_ff": int(layer.linear1.out_features),
        "norm_first": bool(layer.norm_first),
        "activation": activation,
        "bias": sa.in_proj_bias is not None,
        "layer_norm_eps": float(layer.norm1.eps),
    }
    return out, settings


def _encoder_settings(module: Any, where: str) -> dict[str, Any]:
    """kpflow's ``TransformerEncoder`` settings of a ``TransformerEncoderLayer`` or ``TransformerEncoder``."""
    if isinstance(module, torch.nn.TransformerEncoderLayer):
        unsupported, settings = _layer_settings(module, "")
        _refuse(module, unsupported, where)
        return {**settings, "n_layers": 1, "final_norm": False}
    layers = list(module.layers)
    unsupported, settings = _layer_settings(layers[0], "layers.0.")
    for l, layer in enumerate(layers[1:], start=1):
        more, other = _layer_settings(layer, f"layers.{l}.")
        unsupported += more
        if not more and other != settings:
            unsupported.append(
                f"layers.{l} differs from layers.0 ({other} vs {settings}; kpflow's layers share one setting)"
            )
    norm = module.norm
    if norm is not None:
        if not isinstance(norm, torch.nn.LayerNorm):
            unsupported.append(f"norm={type(norm).__name__} (kpflow maps a final torch.nn.LayerNorm or None)")
        else:
            d = settings["d_model"]
            if tuple(norm.normalized_shape) != (d,) or not norm.elementwise_affine:
                unsupported.append(
                    f"norm=LayerNorm({tuple(norm.normalized_shape)}, "
                    f"elementwise_affine={norm.elementwise_affine}) "
                    f"(kpflow maps LayerNorm(({d},)) with a scale)"
                )
            if float(norm.eps) != settings["layer_norm_eps"]:
                unsupported.append(
                    f"norm.eps={norm.eps} != the layers' eps={settings['layer_norm_eps']} (one eps)"
                )
            if (norm.bias is not None) != settings["bias"]:
                unsupported.append(
                    f"norm.bias={'present' if norm.bias is not None else 'absent'} but the layers' "
                    f"bias={settings['bias']} (kpflow's bias is all or none)"
                )
    _refuse(module, unsupported, where)
    return {**settings, "n_layers": len(layers), "final_norm": norm is not None}


def _from_attention_module(module: Any, *, causal: bool, detach: bool, where: str) -> tuple[Any, Any]:
    """``from_module`` for ``MultiheadAttention``, ``TransformerEncoderLayer`` and ``TransformerEncoder``."""
    from kpflow.models.attention import SelfAttention
    from kpflow.models.transformer import TransformerEncoder

    model: Any
    if isinstance(module, torch.nn.MultiheadAttention):
        unsupported = _mha_settings(module, "")
        biases = {"in_proj_bias": module.in_proj_bias, "out_proj.bias": module.out_proj.bias}
        unsupported += _biases_all_or_none(biases, "")
        _refuse(module, unsupported, where)
        model = SelfAttention(
            int(module.embed_dim),
            int(module.num_heads),
            causal=causal,
            bias=module.in_proj_bias is not None,
            residual=False,
        )
        prefix = ""
    else:
        model = TransformerEncoder(causal=causal, **_encoder_settings(module, where))
        prefix = "layers.0." if isinstance(module, torch.nn.TransformerEncoderLayer) else ""
    named = {prefix + name: p for name, p in module.named_parameters()}
    expected = model.param_shapes()
    if set(named) != set(expected):
        msg = (
            f"{where}: the {type(module).__name__}'s parameters {sorted(named)} do not match kpflow's "
            f"{sorted(expected)}; this is a kpflow bug if the module passed the checks above, "
            "please report it"
        )
        raise RuntimeError(msg)
    params = {name: (named[name].detach() if detach else named[name]) for name in expected}
    _same_meta(params, next(iter(params.values())), "the weight", where)
    model = _with_frozen(model, list(named.items()), module, where)
    return model, params
