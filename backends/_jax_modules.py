"""``from_module`` for Equinox and Flax NNX modules (re-exported by :mod:`kpflow.backends.jax`).

Maps recurrent cells and MLPs onto kpflow's models with torch's parameter names and gate
orders; any other module (or any module with ``states=`` / ``recurrent=True``) is traced
and its weight sites found from its computation (:mod:`kpflow.backends._jax_modules_graph`).
Neither equinox nor flax is imported here: modules are recognised through ``sys.modules``,
so importing kpflow's jax adapter never imports them.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["from_module"]


# -- Equinox and Flax NNX modules ------------------------------------------------------------------
_WHERE = "kpflow.backends.jax.from_module"
_SUPPORTED = (
    "equinox.nn.GRUCell, equinox.nn.LSTMCell, equinox.nn.MLP, flax.nnx.SimpleCell, flax.nnx.GRUCell, "
    "flax.nnx.LSTMCell, flax.nnx.OptimizedLSTMCell or a flax.nnx.Sequential of flax.nnx.Linear layers"
)


def _activation_name(fn: Any) -> str | None:
    """ "tanh", "relu", "sigmoid" for jax's own functions of those names (by identity), else None."""
    for name, owners in (("tanh", (jnp, jax.nn, jax.lax)), ("relu", (jax.nn,)), ("sigmoid", (jax.nn,))):
        if any(fn is getattr(owner, name, None) for owner in owners):
            return name
    return None


def _refuse_settings(module: Any, unsupported: list[str]) -> None:
    if unsupported:
        msg = f"{_WHERE}: unsupported {type(module).__name__} setting(s): " + "; ".join(unsupported)
        raise ValueError(msg)


def _refuse_parametrized(obj: Any, what: str) -> None:
    """Refuse an Equinox weight parametrization (``WeightNorm``, ``SpectralNorm``) by name."""
    eqx = sys.modules.get("equinox")
    if eqx is not None and isinstance(obj, eqx.nn.WeightNorm | eqx.nn.SpectralNorm):
        msg = (
            f"{_WHERE}: {what} is an equinox.nn.{type(obj).__name__} of its {type(obj.layer).__name__}'s "
            f"{obj.weight_name!r}: that weight is computed from the parametrization's own parameters, "
            "which gradient descent moves, so kpflow's NTK would be over the wrong parameters. "
            "Accepted: plain equinox.nn.Linear layers (and the modules of the table in from_module)"
        )
        raise ValueError(msg)


def _nnx_value(variable: Any) -> Any:
    return None if variable is None else variable[...]


def _from_equinox(module: Any, eqx: Any) -> tuple[Any, dict[str, Any]] | None:
    """The kpflow model and params of an Equinox module, or None if it is none of the supported ones."""
    from kpflow.models import MLP
    from kpflow.models.gru import GRU
    from kpflow.models.lstm import LSTM

    nn = eqx.nn
    if isinstance(module, nn.GRUCell | nn.LSTMCell):
        n_in, H, bias = int(module.input_size), int(module.hidden_size), bool(module.use_bias)
        params = {"weight_ih": module.weight_ih, "weight_hh": module.weight_hh}
        if isinstance(module, nn.GRUCell):
            if bias:
                # Equinox adds `bias` (3H) on the input side and `bias_n` (H) to W_hn h inside
                # r ⊙ (·): torch's b_ih, and torch's b_hh with zero r and z blocks.
                zeros = jnp.zeros((2 * H,), dtype=module.bias_n.dtype, device=module.bias_n.device)
                params |= {"bias_ih": module.bias, "bias_hh": jnp.concatenate([zeros, module.bias_n])}
            return GRU(n_in, H, bias=bias), params
        if bias:  # Equinox's LSTM: one bias, gates i, f, g, o as torch's
            params |= {"bias_ih": module.bias, "bias_hh": jnp.zeros_like(module.bias)}
        return LSTM(n_in, H, bias=bias), params
    if not isinstance(module, nn.MLP):
        return None
    unsupported = []
    if module.in_size == "scalar" or module.out_size == "scalar":
        unsupported.append("in_size or out_size 'scalar' (kpflow's MLP takes x (B, n_in) to (B, n_out))")
    if module.use_bias != module.use_final_bias:
        unsupported.append(
            f"use_bias={module.use_bias} with use_final_bias={module.use_final_bias} "
            "(kpflow's MLP has biases on every layer or on none)"
        )
    act = _activation_name(module.activation)
    if act not in ("tanh", "relu"):
        unsupported.append(f"activation={module.activation!r} (kpflow's MLP: jax.nn.relu or jax.numpy.tanh)")
    identity = inspect.signature(nn.MLP.__init__).parameters["final_activation"].default
    if module.final_activation is not identity and not (
        module.depth == 0 or _activation_name(module.final_activation) == act
    ):
        unsupported.append(
            f"final_activation={module.final_activation!r} (kpflow's MLP: Equinox's default identity, "
            "or the hidden activation itself)"
        )
    _refuse_settings(module, unsupported)
    for l, layer in enumerate(module.layers):
        _refuse_parametrized(layer, f"the MLP's layers[{l}]")
    layers = list(module.layers)
    if module.scan and module.depth > 1:  # the hidden layers stacked on a leading axis
        stacked = layers[1]
        hidden = [
            jax.tree_util.tree_map(lambda a, k=k: a[k] if isinstance(a, jax.Array) else a, stacked)
            for k in range(module.depth - 1)
        ]
        layers = [layers[0], *hidden, layers[-1]]
    widths = [int(layers[0].in_features)] + [int(layer.out_features) for layer in layers]
    params = {}
    for l, layer in enumerate(layers):
        params[f"layers.{l}.weight"] = layer.weight
        if module.use_bias:
            params[f"layers.{l}.bias"] = layer.bias
    linear_output = module.final_activation is identity
    return MLP(widths, nonlinearity=act or "tanh", bias=module.use_bias, linear_output=linear_output), params


def _nnx_linear_params(layers: Sequence[Any], bias: bool) -> tuple[Any, Any]:
    """torch's (weight, bias) of Flax Linear layers stacked along the output axis (kernel is (in, out))."""
    weight = jnp.concatenate([_nnx_value(layer.kernel).T for layer in layers], axis=0)
    if not bias:
        return weight, None
    return weight, jnp.concatenate([_nnx_value(layer.bias) for layer in layers])


def _nnx_dtype_settings(module: Any, linears: Sequence[Any]) -> list[str]:
    unsupported = []
    for layer in linears:
        if layer.dtype is not None and jnp.dtype(layer.dtype) != _nnx_value(layer.kernel).dtype:
            unsupported.append(
                f"dtype={jnp.dtype(layer.dtype).name} with param_dtype="
                f"{_nnx_value(layer.kernel).dtype.name} (kpflow computes in the parameters' dtype; "
                "use dtype=None or the param_dtype)"
            )
            break
    return unsupported


def _from_nnx(module: Any, nnx: Any) -> tuple[Any, dict[str, Any]] | None:
    """The kpflow model and params of a Flax NNX module, or None if it is none of the supported ones."""
    from kpflow.models import MLP, RNN
    from kpflow.models.gru import GRU
    from kpflow.models.lstm import LSTM

    if isinstance(module, nnx.Sequential):
        return _from_nnx_sequential(module, nnx, MLP)
    if isinstance(module, nnx.SimpleCell):
        linears = [module.dense_i, module.dense_h]
        gates: list[tuple[str, Any, str]] = []
    elif isinstance(module, nnx.GRUCell):
        linears = [module.dense_i, module.dense_h]
        gates = [("gate_fn", module.gate_fn, "sigmoid"), ("activation_fn", module.activation_fn, "tanh")]
    elif isinstance(module, nnx.OptimizedLSTMCell):
        linears = [module.dense_i, module.dense_h]
        gates = [("gate_fn", module.gate_fn, "sigmoid"), ("activation_fn", module.activation_fn, "tanh")]
    elif isinstance(module, nnx.LSTMCell):
        linears = [module.ii, module.if_, module.ig, module.io, module.hi, module.hf, module.hg, module.ho]
        gates = [("gate_fn", module.gate_fn, "sigmoid"), ("activation_fn", module.activation_fn, "tanh")]
    else:
        return None
    unsupported = _nnx_dtype_settings(module, linears)
    for name, fn, expected in gates:
        if _activation_name(fn) != expected:
            unsupported.append(f"{name}={fn!r} (kpflow's cell uses jax.nn.{expected})")
    nonlinearity = "tanh"
    if isinstance(module, nnx.SimpleCell):
        if module.residual:
            unsupported.append("residual=True (kpflow's RNN has no h_{t-1} skip; use residual=False)")
        nonlinearity = _activation_name(module.activation_fn) or "?"
        if nonlinearity not in ("tanh", "relu"):
            unsupported.append(
                f"activation_fn={module.activation_fn!r} (kpflow's RNN: jax.numpy.tanh or jax.nn.relu)"
            )
    _refuse_settings(module, unsupported)
    n_in, H = int(module.in_features), int(module.hidden_features)
    if isinstance(module, nnx.LSTMCell):
        weight_ih, _ = _nnx_linear_params(linears[:4], False)
        weight_hh, bias_hh = _nnx_linear_params(linears[4:], True)
    elif isinstance(module, nnx.OptimizedLSTMCell):
        weight_ih, _ = _nnx_linear_params(linears[:1], False)
        weight_hh, bias_hh = _nnx_linear_params(linears[1:], True)
    else:  # SimpleCell and GRUCell: the bias on the input side only
        weight_ih, bias_hh = _nnx_linear_params(linears[:1], True)
        weight_hh, _ = _nnx_linear_params(linears[1:], False)
    # Flax adds one bias (on one side); torch's other bias is zero.  For the GRU the bias
    # is on the input side, so b_hn = 0 and n = tanh(W_in x + b_in + r ⊙ W_hn h) as Flax's.
    params = {"weight_ih": weight_ih, "weight_hh": weight_hh}
    if isinstance(module, nnx.LSTMCell | nnx.OptimizedLSTMCell):
        params |= {"bias_ih": jnp.zeros_like(bias_hh), "bias_hh": bias_hh}
        return LSTM(n_in, H), params
    params |= {"bias_ih": bias_hh, "bias_hh": jnp.zeros_like(bias_hh)}
    if isinstance(module, nnx.GRUCell):
        return GRU(n_in, H), params
    return RNN(n_in, H, nonlinearity=nonlinearity), params


def _from_nnx_sequential(module: Any, nnx: Any, MLP: Any) -> tuple[Any, dict[str, Any]]:
    """An ``nnx.Sequential`` of Linear layers, one tanh or relu between each two and maybe after the last."""
    items = list(module.layers)
    linears = [item for item in items if isinstance(item, nnx.Linear)]
    acts = [item for item in items if not isinstance(item, nnx.Linear)]
    names = {_activation_name(a) for a in acts}
    L = len(linears)
    expected = [nnx.Linear, "act"] * (L - 1) + [nnx.Linear]
    kinds = [nnx.Linear if isinstance(item, nnx.Linear) else "act" for item in items]
    shape_ok = L >= 1 and kinds in (expected, [*expected, "act"])
    got = [type(item).__name__ if isinstance(item, nnx.Module) else repr(item) for item in items]
    if not shape_ok or len(names) > 1 or not names <= {"tanh", "relu"} or (not acts and L > 1):
        msg = (
            f"{_WHERE}: expected a flax.nnx.Sequential of flax.nnx.Linear layers with one activation "
            "(jax.numpy.tanh or jax.nn.relu, the same everywhere) between each two and optionally after "
            f"the last, got [{', '.join(got)}]"
        )
        raise ValueError(msg)
    unsupported = _nnx_dtype_settings(module, linears)
    bias = {bool(layer.use_bias) for layer in linears}
    if len(bias) > 1:
        unsupported.append("use_bias differing between layers (kpflow's MLP has biases on all or none)")
    _refuse_settings(module, unsupported)
    for l in range(L - 1):
        if int(linears[l].out_features) != int(linears[l + 1].in_features):
            msg = (
                f"{_WHERE}: Linear layer {l} has {linears[l].out_features} outputs but layer {l + 1} "
                f"takes {linears[l + 1].in_features}"
            )
            raise ValueError(msg)
    widths = [int(linears[0].in_features)] + [int(layer.out_features) for layer in linears]
    has_bias = bias.pop()
    params = {}
    for l, layer in enumerate(linears):
        params[f"layers.{l}.weight"] = _nnx_value(layer.kernel).T
        if has_bias:
            params[f"layers.{l}.bias"] = _nnx_value(layer.bias)
    act = names.pop() if names else "tanh"
    model = MLP(widths, nonlinearity=act, bias=has_bias, linear_output=kinds[-1] is nnx.Linear)
    return model, params


def _default_example(module: Any, eqx: Any, nnx: Any) -> Any:
    """A vector input of the module's declared input size, in its parameters' dtype."""
    first = module
    if nnx is not None and isinstance(module, nnx.Sequential) and len(module.layers):
        first = module.layers[0]
    if eqx is not None and isinstance(module, eqx.nn.Sequential) and len(module.layers):
        first = module.layers[0]
    size = next(
        (getattr(first, a) for a in ("in_size", "in_features", "input_size") if hasattr(first, a)), None
    )
    tree = nnx.state(module, nnx.Param) if nnx is not None and isinstance(module, nnx.Module) else module
    arrays = [a for a in jax.tree_util.tree_leaves(tree) if isinstance(a, jax.Array)]
    floats = [a for a in arrays if jnp.issubdtype(a.dtype, jnp.floating)]
    if not isinstance(size, int) or isinstance(size, bool) or not floats:
        msg = (
            f"{_WHERE}: cannot tell the input of a {type(module).__name__} (no integer in_size, "
            "in_features or input_size); pass example=, one example's input (an array or "
            "jax.ShapeDtypeStruct, no batch axis)"
        )
        raise TypeError(msg)
    return jax.ShapeDtypeStruct((size,), floats[0].dtype)


def _readout(readout: Any, n_hidden: int, reference: Any) -> tuple[Any, dict[str, Any]]:
    from kpflow.models.linear import Linear

    eqx, nnx = sys.modules.get("equinox"), sys.modules.get("flax.nnx")
    _refuse_parametrized(readout, "the readout")
    if eqx is not None and isinstance(readout, eqx.nn.Linear):
        if readout.in_features == "scalar" or readout.out_features == "scalar":
            msg = f"{_WHERE}: a readout with in_features or out_features 'scalar' is not supported"
            raise ValueError(msg)
        weight, bias = readout.weight, readout.bias
    elif nnx is not None and isinstance(readout, nnx.Linear):
        _refuse_settings(readout, _nnx_dtype_settings(readout, [readout]))
        weight, bias = _nnx_value(readout.kernel).T, _nnx_value(readout.bias)
    else:
        msg = (
            f"{_WHERE}: expected readout to be an equinox.nn.Linear, a flax.nnx.Linear or None, "
            f"got {type(readout).__name__}"
        )
        raise TypeError(msg)
    if weight.shape[1] != n_hidden:
        msg = (
            f"{_WHERE}: expected the readout's in_features to equal the module's hidden size {n_hidden}, "
            f"got {weight.shape[1]}"
        )
        raise ValueError(msg)
    params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
    for name, a in params.items():
        if a.dtype != reference.dtype:
            msg = (
                f"{_WHERE}: the readout's {name!r} is {a.dtype}, but the module's weights are "
                f"{reference.dtype}; make both alike"
            )
            raise TypeError(msg)
    return Linear(n_hidden, int(weight.shape[0]), bias=bias is not None), params


def from_module(
    module: Any,
    readout: Any = None,
    *,
    states: Any = None,
    recurrent: bool = False,
    example: Any = None,
    hidden: Any = None,
    frozen: Any = None,
) -> tuple[Any, ...]:
    """A kpflow model and jax parameters of an Equinox or Flax NNX module.

    **Any module** (``states=``, ``recurrent=True``, or a module not in the table below):
    the module's forward pass for one example is traced (:func:`jax.make_jaxpr`) and its
    weight sites are found from the computation: every ``dot_general`` one of whose
    operands is a parameter leaf (``eqx.nn.Linear``, ``nnx.Linear``, the projections of
    ``MultiheadAttention``, a user's ``W @ x`` or ``x @ W``), and the row lookup of an
    ``eqx.nn.Embedding`` or ``nnx.Embed``, is an exact Kronecker weight site (Gram A_wᵀ A_w ⊗ I, a use
    per token, cross terms between the uses of a shared weight included).  Every other
    trained leaf (biases, LayerNorm / RMSNorm scales, a leaf used in any other operation,
    in two layouts, or inside a ``lax.scan``) is taken whole by the autodiff rule (D_θ by
    jvp / vjp of the forward pass, exact too).  Feed-forward: the states are the outputs of
    the submodules named by ``states`` (a submodule returning a tuple gives its first
    array), and P comes from the forward pass cut at the states, so residual streams and
    skips are exact (:class:`~kpflow.backends._jax_modules_graph.ModuleStack`).
    Recurrent: the cell is the step (:class:`~kpflow.backends._jax_modules_graph.ModuleCell`).
    See docs/jax.md, "Any module".

    **Mapped modules** (without those keywords), with the same equations (states equal to
    rounding):

    ==============================================  ==========================================
    module                                          kpflow model
    ==============================================  ==========================================
    ``equinox.nn.GRUCell``                          :class:`kpflow.models.gru.GRU`
    ``equinox.nn.LSTMCell``                         :class:`kpflow.models.lstm.LSTM`
    ``equinox.nn.MLP`` (tanh or relu)               :class:`kpflow.models.MLP`
    ``flax.nnx.SimpleCell`` (tanh or relu)          :class:`kpflow.models.RNN`
    ``flax.nnx.GRUCell``                            :class:`kpflow.models.gru.GRU`
    ``flax.nnx.LSTMCell``, ``OptimizedLSTMCell``    :class:`kpflow.models.lstm.LSTM`
    ``flax.nnx.Sequential`` of ``nnx.Linear``       :class:`kpflow.models.MLP`
    ==============================================  ==========================================

    and optionally an ``equinox.nn.Linear`` or ``flax.nnx.Linear`` readout y = C z + c of a
    recurrent cell to :class:`kpflow.models.Linear`.  Any setting kpflow's models cannot
    express exactly raises a ``ValueError`` naming it (docs/jax.md).

    Parameters
    ----------
    module : an Equinox or Flax NNX module of the table above
        Its activations must be jax's own functions (``jax.numpy.tanh`` / ``jax.nn.tanh``,
        ``jax.nn.relu``, ``jax.nn.sigmoid``, found by identity); an MLP uses one
        nonlinearity, with a linear last layer or the same nonlinearity there too.
    readout : equinox.nn.Linear or flax.nnx.Linear, optional
        For a mapped recurrent cell only: reads the hidden state h (in_features = hidden size).
    states : str, list of str or callable, optional
        The submodules whose outputs are the states, by dotted attribute path
        (``"layers.0"``, ``"blocks.1.attn"``), ``fnmatch`` pattern (``"blocks.*"``), or a
        callable ``(path, submodule) -> bool``; in forward order whatever the order given.
        A submodule called k > 1 times gives k states (``"path#0"`` …).  Default: each of
        ``layers`` for ``eqx.nn.MLP`` / ``eqx.nn.Sequential`` / ``nnx.Sequential`` (their
        pre-activations), else every top-level submodule the forward pass calls, else the
        module's output.
    recurrent : bool
        The module is a cell: Equinox ``cell(x_t, h) -> h``, Flax ``RNNCellBase``
        ``cell(carry, x_t) -> (carry, y)``, or a user cell of either signature.
    example : array or jax.ShapeDtypeStruct, optional
        One example's input (no batch axis; for a cell, one step's x_t), to trace with.
        Default: a vector of the module's ``in_size`` / ``in_features`` / ``input_size``
        in the parameters' dtype.
    hidden : int or tuple of int, optional
        A cell's hidden size (a tuple for a tuple state); default its ``hidden_size`` /
        ``hidden_features`` (an LSTM cell: two of them).
    frozen : str, list of str or callable, optional
        Parameters held fixed (left out of K, J_S and NTK_S): names or ``fnmatch``
        patterns of the returned params, or a callable ``name -> bool``.  Flax variables
        other than ``nnx.Param`` (``BatchStat``, caches) are never trained and not params.

    Returns
    -------
    (model, params) without ``readout``, or (model, params, readout_model, readout_params)
        Any module: ``params`` is keyed by each leaf's dotted path (``"layers.0.weight"``,
        Flax's ``"linear.kernel"``), a weight site's leaf as its (out, in) matrix (a Flax
        kernel transposed), any other leaf flattened; ``model.to_leaves(params)`` gives
        the module's own arrays back.  ``model.run(params, x)`` takes x of shape (B,
        *example) (integer token ids included); a cell's ``run(params, x, h0)`` x of shape
        (B, T, *example) and h0 (B, Σ hidden).  Mapped modules:
        ``params`` has kpflow's (PyTorch's) names and gate orders: ``weight_ih`` (G·H, n_in),
        ``weight_hh`` (G·H, H), ``bias_ih`` and ``bias_hh`` (G·H,) for the cells (G = 1, 3,
        4; gates r, z, n and i, f, g, o), ``layers.{l}.weight`` (n_{l+1}, n_l) and
        ``layers.{l}.bias`` for the MLPs, ``weight`` (n_out, H) and ``bias`` for the readout.
        The arrays are jax arrays of the module's dtype: Equinox's weights themselves, Flax's
        kernels transposed; biases the module does not have are zeros (below).

    Raises
    ------
    TypeError
        If ``module`` is neither an ``equinox.Module`` nor a ``flax.nnx.Module``, the
        readout is not a Linear layer, or the readout's dtype differs from the module's;
        for ``states``, ``frozen`` or ``example`` of the wrong type (the message lists the
        submodules or parameters).
    ValueError
        For ``states`` or ``frozen`` matching nothing, or a state submodule never called.
    ValueError
        For a setting kpflow cannot express exactly, naming it: an activation other than
        jax's tanh / relu (sigmoid for gates), ``SimpleCell(residual=True)``, a Flax
        ``dtype`` differing from ``param_dtype``, an MLP with ``use_bias != use_final_bias``
        or a scalar input or output, a readout on an MLP or of the wrong width.

    Notes
    -----
    *Biases.* kpflow's cells have torch's two bias vectors, ``bias_ih`` and ``bias_hh``;
    the modules have one (Equinox's GRU: ``bias`` on the input side plus ``bias_n`` on
    W_hn h).  The missing one is zeros: Equinox's GRU gives ``bias_ih = bias`` and
    ``bias_hh = [0; 0; bias_n]``; Flax's SimpleCell and GRUCell ``bias_ih = dense_i.bias``,
    ``bias_hh = 0`` (so b_hn = 0, as Flax's n = tanh(W_in x + b_in + r ⊙ W_hn h)); the LSTMs
    one bias and zeros.  The states are exactly the module's, but kpflow's NTK_S = P K Pᵀ
    treats both bias vectors as trained: K carries the bias terms of torch's parametrization
    (the +2 of Ĝ = G_x + G_h + 2 in :class:`kpflow.models.gru.GRU`), one more than a
    module with a single bias per gate.  The weight terms, and P, are the module's own.

    *States.* The cells take one step of one example; kpflow runs (B, T, n_in) inputs.
    ``traj.states[:, t]`` is the module's h after step t (for the LSTMs, the kpflow state is
    [h; c] of width 2H).  kpflow's LSTM takes ``h0`` as (h0, c0): Equinox's carry order,
    while Flax's carry is (c, h): pass ``(h, c)`` swapped.  An Equinox MLP takes x (n_in,)
    and ``jax.vmap`` over a batch; kpflow takes x (B, n_in).

    *Sharing.* jax arrays are immutable: the params are a snapshot of the module.  After a
    training step, call ``from_module`` again on the updated module.

    *Frozen parameters, parametrizations.* Equinox and Flax freeze parameters outside the
    module (a filter for ``eqx.partition`` or ``nnx.Optimizer(wrt=...)``), which
    ``from_module`` cannot see: pass the names of the parameters you hold fixed to
    ``model.with_frozen(names)`` (kpflow's names, e.g. ``"weight_ih"``), so that the NTK is
    over the trained ones only.  An ``equinox.nn.WeightNorm`` or ``SpectralNorm`` (as the
    module, a layer of the MLP or the readout) raises a ``ValueError`` naming it.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import equinox as eqx                           # doctest: +SKIP
    >>> from kpflow.backends.jax import from_module
    >>> cell = eqx.nn.GRUCell(2, 3, key=jax.random.key(0))  # doctest: +SKIP
    >>> model, params = from_module(cell)               # doctest: +SKIP
    >>> sorted(params)                                  # doctest: +SKIP
    ['bias_hh', 'bias_ih', 'weight_hh', 'weight_ih']

    Any module, here a residual block, its states chosen by path:

    >>> class Block(eqx.Module):                          # doctest: +SKIP
    ...     norm: eqx.nn.LayerNorm
    ...     mlp: eqx.nn.MLP
    ...     def __call__(self, x):
    ...         return x + self.mlp(self.norm(x))
    >>> key = jax.random.key(0)
    >>> mlp = eqx.nn.MLP(4, 4, 8, 1, activation=jax.nn.gelu, key=key)  # doctest: +SKIP
    >>> block = Block(eqx.nn.LayerNorm(4), mlp)           # doctest: +SKIP
    >>> model, params = from_module(block, states=["norm", "mlp"])  # doctest: +SKIP
    >>> model.run(params, jnp.ones((3, 4))).states.shape  # doctest: +SKIP
    (3, 8)
    """
    eqx, nnx = sys.modules.get("equinox"), sys.modules.get("flax.nnx")
    _refuse_parametrized(module, "the module")
    graph = states is not None or recurrent or example is not None or hidden is not None or frozen is not None
    found = None
    if not graph:
        found = _from_equinox(module, eqx) if eqx is not None else None
        if found is None and nnx is not None:
            found = _from_nnx(module, nnx)
    if found is None:
        if readout is not None:
            msg = (
                f"{_WHERE}: a readout is supported for the mapped recurrent cells only ({_SUPPORTED}); "
                "for any other module, make the readout a submodule and a state"
            )
            raise ValueError(msg)
        from kpflow.backends._jax_modules_graph import module_model

        if not any(api is not None and isinstance(module, api.Module) for api in (eqx, nnx)):
            msg = (
                f"{_WHERE}: expected module to be an equinox.Module or a flax.nnx.Module (any module, its "
                f"sites found from its computation; mapped onto kpflow's models: {_SUPPORTED}), "
                f"got {type(module).__name__}"
            )
            raise TypeError(msg)
        if example is None:
            example = _default_example(module, eqx, nnx)
        return module_model(module, example, states=states, recurrent=recurrent, hidden=hidden, frozen=frozen)
    model, params = found
    reference = params["weight_hh"] if "weight_hh" in params else params["layers.0.weight"]
    for name, a in params.items():
        if a.dtype != reference.dtype:
            msg = f"{_WHERE}: the module's {name!r} is {a.dtype} but its other weights are {reference.dtype}"
            raise TypeError(msg)
    if readout is None:
        return model, params
    if "weight_hh" not in params:
        msg = f"{_WHERE}: a readout is supported for the recurrent cells only, got {type(module).__name__}"
        raise ValueError(msg)
    readout_model, readout_params = _readout(readout, model.n_hidden, reference)
    return model, params, readout_model, readout_params
