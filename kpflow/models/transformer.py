"""A Transformer encoder, as ``torch.nn.TransformerEncoder`` computes it, seen as a depth recursion.

Per layer l (post-norm, torch's default, and pre-norm with ``norm_first``):

    post:  h = LN₁(x + SA(x)),      y = LN₂(h + FF(h))
    pre:   h = x + SA(LN₁(x)),      y = h + FF(LN₂(h))

with SA the self-attention of :class:`~kpflow.models.SelfAttention` (no residual) and
FF(a) = W₂ φ(W₁ a + b₁) + b₂.  The state is the residual stream after every block,
``(B, S, N, d)`` with S = 2·n_layers (+1 with ``final_norm``): z_{2l} = h, z_{2l+1} = y of
layer l.  Block j reads block j − 1 only (block 0 reads the input), so L is
block-subdiagonal and P is a forward recursion over the S blocks, as for the MLP.

Every weight is a :class:`~kpflow.models.sites.LinearSite` over the (batch, token) pairs of
its layer, whose D_w = ∂(its state block)/∂u_w includes everything downstream of u_w inside
the block (the residual's LayerNorm after a post-norm block); the actions are in
:mod:`kpflow.models.transformer_d`.  A LayerNorm's scale γ enters as u(s) = γ ⊙ x̂(s) + β:
a weight (d, 1) with site variable a(s) = 1 and D = (downstream) ∘ diag(x̂(s)), so that its
term of K is D (11ᵀ ⊗ I) Dᵀ; the shift β likewise with D = (downstream).
"""

from __future__ import annotations

import math
from typing import Any

from kpflow._array import array_namespace, device_of, host_rng
from kpflow.models.attention import SelfAttention
from kpflow.models.base import Model, Site, Trajectory, check_size, draw_uniform, flat_sites
from kpflow.models.layout import Layout
from kpflow.models.ops import linear
from kpflow.models.sites import LinearSite
from kpflow.models.sites_table import Dim, SiteDecl, declared_shapes, site_variables_of, with_site_table
from kpflow.models.transformer_d import adjoint_stage, apply_stage, site_adjoint, site_apply
from kpflow.models.transformer_sites import (
    BLOCK_INPUT,
    HEADS,
    HIDDEN,
    POSITION,
    block_site_table,
    transformer_site_table,
)

__all__ = ["TransformerEncoder", "TransformerTrajectory", "erf", "gelu"]

ACTIVATIONS = ("relu", "gelu")
POSITIONAL = (None, "sinusoidal", "learned")

#: terms of the erf series: 1.4e-15 absolute on the whole line (checked against math.erf)
_ERF_TERMS = 100


def erf(xp: Any, x: Any) -> Any:
    """The error function in pure array-API code, to about 2e-15 absolute in float64.

    erf x = (2/√π) x e^{−x²} Σ_n (2x²)ⁿ / (1·3·…·(2n+1)), a series of positive terms (no
    cancellation), summed by Horner's rule; |x| is clipped at 6, where erf is ±1 in float64.
    The array API has no erf, and torch's default GELU is the exact one.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.transformer import erf
    >>> y = erf(xp, xp.asarray([0.0, 0.5, -10.0]))
    >>> [round(float(v), 12) for v in y]
    [0.0, 0.520499877813, -1.0]
    """
    a = xp.clip(x, -6.0, 6.0)
    t = 2.0 * a * a
    s = xp.ones_like(a)
    for n in range(_ERF_TERMS, 0, -1):
        s = 1.0 + s * t / (2 * n + 1)
    return (2.0 / math.sqrt(math.pi)) * a * xp.exp(-a * a) * s


def gelu(xp: Any, u: Any) -> Any:
    """The exact GELU u Φ(u) = u (1 + erf(u/√2))/2 (torch's ``approximate="none"``).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.transformer import gelu
    >>> round(float(gelu(xp, xp.asarray([1.0]))[0]), 12)
    0.841344746069
    """
    return 0.5 * u * (1.0 + erf(xp, u * (1.0 / math.sqrt(2.0))))


def _gelu_derivative(xp: Any, u: Any) -> Any:
    return 0.5 * (1.0 + erf(xp, u * (1.0 / math.sqrt(2.0)))) + u * xp.exp(-0.5 * u * u) / math.sqrt(
        2.0 * math.pi
    )


def _act(xp: Any, name: str, u: Any) -> tuple[Any, Any]:
    """φ(u) and φ′(u) (relu′(0) = 0, as torch's gradient)."""
    if name == "relu":
        pos = u > 0
        return xp.where(pos, u, xp.zeros_like(u)), xp.astype(pos, u.dtype)
    return gelu(xp, u), _gelu_derivative(xp, u)


def _layer_norm(xp: Any, u: Any, gamma: Any, beta: Any, eps: float) -> tuple[Any, Any, Any]:
    """LN(u) = γ x̂ + β with x̂ = (u − mean u)/σ, σ² = var u + eps (biased), and x̂, 1/σ."""
    c = u - xp.mean(u, axis=-1, keepdims=True)
    inv = 1.0 / xp.sqrt(xp.mean(c * c, axis=-1, keepdims=True) + eps)
    xhat = c * inv
    out = xhat * gamma
    return (out if beta is None else out + beta), xhat, inv


def sinusoidal_encoding(xp: Any, N: int, d: int, *, dtype: Any, device: Any) -> Any:
    """pe[n, 2i] = sin(n/10000^{2i/d}), pe[n, 2i+1] = cos(n/10000^{2i/d}), shape (N, d).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.transformer import sinusoidal_encoding
    >>> pe = sinusoidal_encoding(xp, 3, 4, dtype=xp.float64, device=None)
    >>> pe.shape, float(pe[0, 1])
    ((3, 4), 1.0)
    """
    pos = xp.arange(N, dtype=dtype, device=device)[:, None]
    cols = xp.arange(d, device=device)
    even = xp.astype(cols - cols % 2, dtype)
    angle = pos * xp.exp(even * (-math.log(10000.0) / d))[None, :]
    return xp.where((cols % 2 == 0)[None, :], xp.sin(angle), xp.cos(angle))


class TransformerEncoder(Model):
    """A stack of ``torch.nn.TransformerEncoderLayer(batch_first=True, dropout=0)``.

    Parameters
    ----------
    d_model, n_heads, d_ff, n_layers : int
        Token width d, heads (dividing d), feed-forward width and number of layers.
    norm_first : bool
        Pre-norm (``x + SA(LN₁(x))``) instead of post-norm (``LN₁(x + SA(x))``).
    activation : {"relu", "gelu"}
        φ of the feed-forward block; ``"gelu"`` is the exact (erf) GELU.
    causal : bool
        Token n attends to tokens m ≤ n (torch: the upper triangle as ``mask``).
    bias : bool
        Every bias: attention, both linears and the LayerNorm shifts (torch's ``bias``).
    positional : {None, "sinusoidal", "learned"}
        Added to the input: fixed sine/cosine encodings, or a weight ``pos_embedding``
        (max_len, d) whose row n is added at position n.
    max_len : int, optional
        Longest sequence; needed with ``positional="learned"``.
    layer_norm_eps : float
        ε of every LayerNorm (torch's default 1e-5).
    final_norm : bool
        A LayerNorm ``norm`` after the last layer (``TransformerEncoder(norm=...)``): one
        more state block.

    Notes
    -----
    Parameters carry torch's ``TransformerEncoder`` names: per layer ``layers.{l}.``
    ``self_attn.in_proj_weight`` (3d, d), ``self_attn.in_proj_bias`` (3d,),
    ``self_attn.out_proj.weight`` (d, d), ``self_attn.out_proj.bias``, ``linear1.weight``
    (d_ff, d), ``linear1.bias``, ``linear2.weight`` (d, d_ff), ``linear2.bias``,
    ``norm1.weight`` (d,), ``norm1.bias``, ``norm2.weight``, ``norm2.bias``; then
    ``norm.weight``, ``norm.bias`` (``final_norm``) and ``pos_embedding`` (learned).
    ``x`` has shape (B, N, d).  The trajectory's state is ``(B, S, N, d)``: block 2l is
    the residual stream after layer l's attention block, 2l + 1 after its feed-forward
    block (and S − 1 after the final norm); ``states[:, -1]`` is the module's output.
    Its site table (:meth:`site_table`, :mod:`kpflow.models.transformer_sites`) names every
    site's rows, so :meth:`with_frozen` and ``to_params`` work in these names; for one layer
    with ``final_norm`` and a learned ``pos_embedding`` (max_len rows), "(…)" standing for the
    rest of the block downstream of the site:

    {site_table}

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.models import TransformerEncoder
    >>> model = TransformerEncoder(4, 2, 6, 2, norm_first=True, activation="gelu")
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((2, 3, 4)))
    >>> traj.state_shape, traj.n_steps, len(traj.sites)
    ((2, 4, 3, 4), 4, 20)
    >>> kpflow.global_ntk(traj).matvec(traj.states).shape
    (2, 4, 3, 4)
    """

    #: Batch rows never mix (tokens attend within their own row, positions add per row;
    #: ``Layout.independent_rows``).
    independent_rows = True

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        n_layers: int,
        *,
        norm_first: bool = False,
        activation: str = "relu",
        causal: bool = False,
        bias: bool = True,
        positional: str | None = None,
        max_len: int | None = None,
        layer_norm_eps: float = 1e-5,
        final_norm: bool = False,
    ) -> None:
        where = "TransformerEncoder"
        d_model, n_heads = check_size(d_model, "d_model", where), check_size(n_heads, "n_heads", where)
        if d_model % n_heads != 0:
            msg = f"{where}: expected d_model divisible by n_heads, got d_model={d_model}, n_heads={n_heads}"
            raise ValueError(msg)
        self.attention = SelfAttention(d_model, n_heads, causal=causal, bias=bias, residual=False)
        self.d_model, self.n_heads, self.d_k = (
            self.attention.d_model,
            self.attention.n_heads,
            self.attention.d_k,
        )
        self.d_ff = check_size(d_ff, "d_ff", where)
        self.n_layers = check_size(n_layers, "n_layers", where)
        if activation not in ACTIVATIONS:
            msg = f"{where}: expected activation to be one of {ACTIVATIONS}, got {activation!r}"
            raise ValueError(msg)
        if positional not in POSITIONAL:
            msg = f"{where}: expected positional to be one of {POSITIONAL}, got {positional!r}"
            raise ValueError(msg)
        if max_len is not None:
            max_len = check_size(max_len, "max_len", where)
        if positional == "learned" and max_len is None:
            msg = f'{where}: positional="learned" needs max_len (the rows of pos_embedding), got None'
            raise ValueError(msg)
        eps = float(layer_norm_eps)
        if not (math.isfinite(eps) and eps > 0):
            msg = f"{where}: expected layer_norm_eps to be a positive float, got {layer_norm_eps!r}"
            raise ValueError(msg)
        self.norm_first, self.activation, self.causal = bool(norm_first), str(activation), bool(causal)
        self.bias, self.positional, self.max_len = bool(bias), positional, max_len
        self.layer_norm_eps, self.final_norm = eps, bool(final_norm)
        self.n_in = self.d_model
        self.state_size = self.d_model
        self.n_states = 2 * self.n_layers + (1 if self.final_norm else 0)

    # parameters -------------------------------------------------------------------------------
    def site_table(self) -> tuple[SiteDecl, ...]:
        """Every weight site, in the order of ``traj.sites`` (see :mod:`kpflow.models.transformer_sites`)."""
        max_len = self.max_len if self.positional == "learned" else None
        sizes = (self.d_model, self.d_ff, self.n_layers)
        return transformer_site_table(*sizes, bias=self.bias, final_norm=self.final_norm, max_len=max_len)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The parameters, read off :meth:`site_table`, in the order of torch's ``state_dict``."""
        order = [f"layers.{l}.{name}" for l in range(self.n_layers) for name in _TORCH_LAYER_ORDER]
        return declared_shapes(self.site_table(), (*order, "norm.weight", "norm.bias", "pos_embedding"))

    def init(
        self, rng: Any = None, *, like: Any = None, dtype: Any = None, device: Any = None
    ) -> dict[str, Any]:
        """Weights as torch draws them, on the host (SPEC 7); biases and norms drawn too.

        ``in_proj_weight`` is Xavier-uniform U(±√(6/(4d))), every other weight U(±1/√fan_in)
        as ``nn.Linear``.  torch zeroes the attention biases and sets γ = 1, β = 0; here the
        biases are U(±1/√fan_in), γ = 1 + U(±½) and β, ``pos_embedding`` U(±1/√d), so that
        every term of K is exercised from the start.
        """
        gen = host_rng(rng, "TransformerEncoder.init")
        d, out = self.d_model, {}
        for name, shape in self.param_shapes().items():
            is_scale = name.endswith("weight") and (name == "norm.weight" or ".norm" in name)
            if name.endswith("in_proj_weight"):
                bound = math.sqrt(6.0 / (4 * d))
            elif ".linear2." in name:
                bound = 1.0 / math.sqrt(self.d_ff)
            else:
                bound = 0.5 if is_scale else 1.0 / math.sqrt(d)
            p = draw_uniform(
                {name: shape},
                bound,
                gen,
                like=like,
                dtype=dtype,
                device=device,
                where="TransformerEncoder.init",
            )[name]
            out[name] = p + 1.0 if is_scale else p
        return out

    def _check_inputs(self, x: Any, h0: Any, meta: tuple, where: str) -> None:
        text = f"(B, N, d_model={self.d_model}) with B >= 1 and N >= 1"
        self._check_feedforward_inputs(x, h0, meta, where, ndim=3, feature=self.d_model, shape_text=text)
        if self.max_len is not None and x.shape[1] > self.max_len:
            msg = f"{where}: expected at most max_len={self.max_len} tokens, got N={x.shape[1]}"
            raise ValueError(msg)

    # forward ----------------------------------------------------------------------------------
    def _p(self, params: dict[str, Any], name: str) -> Any:
        return params.get(name) if self.bias or not name.endswith("bias") else None

    def embed_input(self, params: dict[str, Any], x: Any) -> Any:
        """x plus the positional encoding (x itself without one), shape (B, N, d)."""
        xp = array_namespace(x)
        N = x.shape[1]
        if self.positional == "sinusoidal":
            return x + sinusoidal_encoding(xp, N, self.d_model, dtype=x.dtype, device=device_of(x))
        if self.positional == "learned":
            return x + params["pos_embedding"][:N, :]
        return x

    def attention_block(self, params: dict[str, Any], l: int, x: Any) -> tuple[Any, dict[str, Any]]:
        """Layer l's attention block on its input x (B, N, d): the next state and the caches."""
        xp = array_namespace(x)
        pre, eps = f"layers.{l}.", self.layer_norm_eps
        sub = {k: params[pre + "self_attn." + k] for k in self.attention.param_shapes()}
        g, b = params[pre + "norm1.weight"], self._p(params, pre + "norm1.bias")
        if self.norm_first:
            a, xhat, inv = _layer_norm(xp, x, g, b, eps)
            c = self.attention.forward(sub, a)
            z = x + c["y"]
        else:
            a = x
            c = self.attention.forward(sub, x)
            z, xhat, inv = _layer_norm(xp, x + c["y"], g, b, eps)
        return z, {"attn": c, "input": a, "xhat": xhat, "inv": inv}

    def feedforward_block(self, params: dict[str, Any], l: int, h: Any) -> tuple[Any, dict[str, Any]]:
        """Layer l's feed-forward block on h (B, N, d): the next state and the caches."""
        xp = array_namespace(h)
        pre, eps = f"layers.{l}.", self.layer_norm_eps
        g, b = params[pre + "norm2.weight"], self._p(params, pre + "norm2.bias")

        def ff(a: Any) -> tuple[Any, Any, Any]:
            u = linear(xp, a, params[pre + "linear1.weight"])
            b1 = self._p(params, pre + "linear1.bias")
            u = u if b1 is None else u + b1
            f, dphi = _act(xp, self.activation, u)
            y = linear(xp, f, params[pre + "linear2.weight"])
            b2 = self._p(params, pre + "linear2.bias")
            return (y if b2 is None else y + b2), f, dphi

        if self.norm_first:
            a, xhat, inv = _layer_norm(xp, h, g, b, eps)
            y, f, dphi = ff(a)
            z = h + y
        else:
            a = h
            y, f, dphi = ff(h)
            z, xhat, inv = _layer_norm(xp, h + y, g, b, eps)
        return z, {"input": a, "f": f, "dphi": dphi, "xhat": xhat, "inv": inv}

    def final_norm_block(self, params: dict[str, Any], z: Any) -> tuple[Any, dict[str, Any]]:
        """The final LayerNorm ``norm`` on the last layer's output."""
        xp = array_namespace(z)
        out, xhat, inv = _layer_norm(
            xp, z, params["norm.weight"], self._p(params, "norm.bias"), self.layer_norm_eps
        )
        return out, {"xhat": xhat, "inv": inv}

    def block(self, params: dict[str, Any], j: int, inp: Any) -> tuple[Any, dict[str, Any]]:
        """State block j from its input (block j − 1, or the embedded input for j = 0)."""
        if j == 2 * self.n_layers:
            return self.final_norm_block(params, inp)
        if j % 2 == 0:
            return self.attention_block(params, j // 2, inp)
        return self.feedforward_block(params, j // 2, inp)

    def forward(self, params: dict[str, Any], x: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        """The S state blocks (B, N, d) and their caches (pure array-API code)."""
        z = self.embed_input(params, x)
        states, caches = [], []
        for j in range(self.n_states):
            z, cache = self.block(params, j, z)
            states.append(z)
            caches.append(cache)
        return states, caches

    def unroll(self, params: dict[str, Any], x: Any, h0: Any = None) -> Any:
        return array_namespace(x).stack(self.forward(params, x)[0], axis=1)

    def update_map(self, params: dict[str, Any], states: Any, x: Any, h0: Any = None) -> Any:
        xp = array_namespace(states)
        inputs = [self.embed_input(params, x)] + [states[:, j, ...] for j in range(self.n_states - 1)]
        return xp.stack([self.block(params, j, inp)[0] for j, inp in enumerate(inputs)], axis=1)

    def layout(self, state_shape: tuple[int, ...]) -> Layout:
        """``(batch, state, token, feature)``, recurrent over the residual-stream states.

        Block j (one entry of the ``state`` axis) reads block j − 1 only, so L is
        block-subdiagonal and P is a recursion over the S = ``n_states`` blocks.
        """
        return Layout(
            state_shape,
            ("batch", "state", "token", "feature"),
            "recurrent",
            site_axes=3,
            parts=self.state_parts,
            features=self.feature_columns,
            independent_rows=self.independent_rows,
        )

    def _make_trajectory(self, params: dict[str, Any], x: Any, h0: Any, states: Any) -> TransformerTrajectory:
        return TransformerTrajectory(self, params, x, h0, states)

    def __repr__(self) -> str:
        return (
            f"TransformerEncoder(d_model={self.d_model}, n_heads={self.n_heads}, d_ff={self.d_ff}, "
            f"n_layers={self.n_layers}, norm_first={self.norm_first}, activation={self.activation!r}, "
            f"causal={self.causal}, bias={self.bias}, positional={self.positional!r}, "
            f"final_norm={self.final_norm})"
        )


class TransformerTrajectory(Trajectory):
    """A run of :class:`TransformerEncoder`: ``state_shape = (B, S, N, d)``, S blocks over depth.

    The state reads as ``(B·S·N, d)``: ``site_shape = (B, S, N)``, one d-vector per
    residual-stream state of each token (a readout reads every one of them).  Each weight
    site has its own sites, the B·N tokens of its layer.

    Attributes
    ----------
    caches : list of dict
        Per block, the forward intermediates (see :meth:`TransformerEncoder.block`).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import TransformerEncoder
    >>> model = TransformerEncoder(4, 1, 3, 1, final_norm=True)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((2, 3, 4)))
    >>> traj.state_shape, traj.site_shape, traj.axis_names
    ((2, 3, 3, 4), (2, 3, 3), ('batch', 'state', 'token', 'feature'))
    """

    model: TransformerEncoder

    def __init__(
        self, model: TransformerEncoder, params: dict[str, Any], x: Any, h0: Any, states: Any
    ) -> None:
        super().__init__(model, params, x, h0, states)
        self.caches = model.forward(params, x)[1]
        self._steps = [self._step_stage(j) for j in range(model.n_states)]
        self._rows: dict[str, Any] | None = None

    # stages -----------------------------------------------------------------------------------
    def _ln_ops(self, j: int, gamma_name: str) -> tuple:
        c = self.caches[j]
        return (self.params[gamma_name], c["xhat"], c["inv"])

    def _inner_stage(self, j: int) -> tuple[tuple, tuple]:
        """Block j's sublayer Jacobian in its input: J_SA or J_FF (stage, operands)."""
        model, c, l = self.model, self.caches[j], j // 2
        B, N = int(self.states.shape[0]), int(self.states.shape[2])
        pre = f"layers.{l}."
        if j % 2 == 0:
            a = c["attn"]
            ops = (a["q"], a["k"], a["v"], a["A"], a["o"], self.params[pre + "self_attn.out_proj.weight"])
            return ("attn_in", (B, N, model.n_heads, model.d_k)), (
                *ops,
                self.params[pre + "self_attn.in_proj_weight"],
            )
        W1, W2 = self.params[pre + "linear1.weight"], self.params[pre + "linear2.weight"]
        return ("ff_in", ()), (W1, c["dphi"], W2)

    def _norm_name(self, j: int) -> str:
        if j == 2 * self.model.n_layers:
            return "norm"
        return f"layers.{j // 2}.norm{1 + j % 2}"

    def _step_stage(self, j: int) -> tuple[tuple, tuple]:
        """∂(block j)/∂(its input) as one stage: ``post``, ``pre`` or ``ln`` (final norm)."""
        ln_ops = self._ln_ops(j, self._norm_name(j) + ".weight")
        if j == 2 * self.model.n_layers:
            return ("ln", ()), ln_ops
        inner, inner_ops = self._inner_stage(j)
        return ("pre" if self.model.norm_first else "post", inner), (inner_ops, ln_ops)

    def step_jvp(self, t: int, v: Any) -> Any:
        stage, ops = self._steps[t]
        return apply_stage(self.xp, stage, ops, v)

    def step_vjp(self, t: int, w: Any) -> Any:
        stage, ops = self._steps[t]
        return adjoint_stage(self.xp, stage, ops, w)

    # sites ------------------------------------------------------------------------------------
    def _site(self, name: str, variables: Any, j: int, width: int, chain: list[tuple[tuple, tuple]]) -> Site:
        B, S, N = self.site_shape
        if self._rows is None:
            self._rows = self.model.site_rows() or {}
        return LinearSite(
            name,
            variables,
            rows=self._rows[name],
            state_shape=self.state_shape,
            width=width,
            apply=site_apply,
            adjoint=site_adjoint,
            operands=tuple(ops for _, ops in chain),
            static=(B, N, S, j, tuple(stage for stage, _ in chain)),
            # one row per token (b, n), batch-major, also for the learned positions' onehot(n)
            batch_major=True,
        )

    def _variables(self, j: int) -> dict[str, Any]:
        """A_w of block j's sites, glued as its site table says (:func:`block_site_table`)."""
        model, c = self.model, self.caches[j]
        table = block_site_table(j, model.d_model, model.d_ff, model.n_layers, model.bias)
        tokens = self.site_shape[0] * self.site_shape[2]
        ones = self.xp.ones((tokens, 1), dtype=self.dtype, device=self.device)
        arrays = {}
        if "input" in c:
            arrays[BLOCK_INPUT] = flat_sites(c["input"])
        if "attn" in c:
            arrays[HEADS] = flat_sites(c["attn"]["o_cat"])
        if "f" in c:
            arrays[HIDDEN] = flat_sites(c["f"])
        return site_variables_of(table, arrays, like=arrays.get(BLOCK_INPUT, ones))

    def _norm_sites(self, j: int, downstream: list[tuple[tuple, tuple]], A: dict[str, Any]) -> list[Site]:
        """γ (site variable 1, D = downstream ∘ diag(x̂)) and β (D = downstream) of block j's norm."""
        name = self._norm_name(j)
        xhat = self.caches[j]["xhat"]
        d = self.model.d_model
        gamma = [(("scale", ()), (xhat,)), *downstream]
        sites = [self._site(name + ".weight", A[name + ".weight"], j, d, gamma)]
        if self.model.bias:
            sites.append(self._site(name + ".bias", A[name + ".bias"], j, d, list(downstream)))
        return sites

    def _attention_sites(self, j: int) -> list[Site]:
        model, c, l = self.model, self.caches[j], j // 2
        a, pre = c["attn"], f"layers.{l}.self_attn."
        B, _, N = self.site_shape
        H, dk = model.n_heads, model.d_k
        post = [] if model.norm_first else [(("ln", ()), self._ln_ops(j, f"layers.{l}.norm1.weight"))]
        W_O = self.params[pre + "out_proj.weight"]
        qk_ops = (a["q"], a["k"], a["v"], a["A"], a["o"], W_O)
        A = self._variables(j)
        st = (B, N, H, dk)
        q, k, v, o = (pre + name for name in ("in_proj.q", "in_proj.k", "in_proj.v", "out_proj"))
        sites = [
            self._site(q, A[q], j, model.d_model, [(("attn_q", st), qk_ops), *post]),
            # the key bias shifts a whole row of scores, which softmax ignores: no ones column
            self._site(k, A[k], j, model.d_model, [(("attn_k", st), qk_ops), *post]),
            self._site(v, A[v], j, model.d_model, [(("attn_v", st), (a["A"], W_O)), *post]),
            self._site(o, A[o], j, model.d_model, list(post)),
        ]
        downstream = [self._inner_stage(j)] if model.norm_first else []
        return sites + self._norm_sites(j, downstream, A)

    def _feedforward_sites(self, j: int) -> list[Site]:
        model, c, l = self.model, self.caches[j], j // 2
        pre = f"layers.{l}."
        post = [] if model.norm_first else [(("ln", ()), self._ln_ops(j, pre + "norm2.weight"))]
        W2 = self.params[pre + "linear2.weight"]
        A = self._variables(j)
        sites = [
            self._site(
                pre + "linear1", A[pre + "linear1"], j, model.d_ff, [(("ff1", ()), (c["dphi"], W2)), *post]
            ),
            self._site(pre + "linear2", A[pre + "linear2"], j, model.d_model, list(post)),
        ]
        downstream = [self._inner_stage(j)] if model.norm_first else []
        return sites + self._norm_sites(j, downstream, A)

    def _make_sites(self) -> list[Site]:
        model = self.model
        sites: list[Site] = []
        for j in range(model.n_states):
            if j == 2 * model.n_layers:
                sites += self._norm_sites(j, [], self._variables(j))
            elif j % 2 == 0:
                sites += self._attention_sites(j)
            else:
                sites += self._feedforward_sites(j)
        if model.positional == "learned":
            # x_eff[b, n] = x[b, n] + E[n]: the weight Eᵀ with site variable onehot(n), and D
            # the first block's Jacobian in its input
            xp, (B, _, N) = self.xp, self.site_shape
            rows = xp.arange(int(model.max_len), device=self.device)  # type: ignore[arg-type]
            onehot = xp.astype(xp.arange(N, device=self.device)[:, None] == rows[None, :], self.dtype)
            variables = xp.reshape(xp.broadcast_to(onehot[None, ...], (B, N, onehot.shape[1])), (B * N, -1))
            (pos,) = (decl for decl in model.site_table() if decl.name == "pos_embedding")
            A = site_variables_of((pos,), {POSITION: variables}, like=variables)
            sites.append(self._site(pos.name, A[pos.name], 0, model.d_model, [self._steps[0]]))
        return sites


#: The parameters of a torch ``TransformerEncoderLayer``, in the order of its ``state_dict``.
_TORCH_LAYER_ORDER = (
    "self_attn.in_proj_weight",
    "self_attn.in_proj_bias",
    "self_attn.out_proj.weight",
    "self_attn.out_proj.bias",
    "linear1.weight",
    "linear1.bias",
    "linear2.weight",
    "linear2.bias",
    "norm1.weight",
    "norm1.bias",
    "norm2.weight",
    "norm2.bias",
)

TransformerEncoder.__doc__ = with_site_table(
    TransformerEncoder.__doc__,
    transformer_site_table(Dim("d"), Dim("d_ff"), 1, bias=True, final_norm=True, max_len=Dim("max_len")),
)
