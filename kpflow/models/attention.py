"""One self-attention layer over tokens, as ``torch.nn.MultiheadAttention`` computes it.

x (B, N, d) ↦ y_n = W_O o_n + b_O (+ x_n with a residual), with per head h
q, k, v = x W_{Q,K,V}ᵀ + b_{Q,K,V}, A = softmax(q kᵀ/√d_k) (causal: A_nm = 0 for m > n)
and o_n = Σ_m A_nm v_m.  The layer is feed-forward: its state y does not depend on
itself, so L = 0 and P = I (one block, as a one-layer :class:`~kpflow.models.MLP`).

The sites are the (batch, token) pairs, m = B·N, and the four weight terms of K
(docs/attention.md) are

- K_Q = D_Q((G_x+1)⊗I)D_Qᵀ, D_Q block-diagonal over tokens,
  D_Q[n,n] = W_O Σ_m A_nm (v_m − o_n) k_mᵀ/√d_k;
- K_K = D_K(G_x⊗I)D_Kᵀ, D_K[n,m] = A_nm W_O (v_m − o_n) q_nᵀ/√d_k couples the tokens
  of one batch element; the key bias adds nothing (softmax is shift invariant);
- K_V = (Â(G_x+1)Âᵀ) ⊗ W_O W_Oᵀ, D_V = Â ⊗ W_O (Â block-diagonal over batch and heads);
- K_O = (G_o+1)⊗I.

D_Q, D_K and D_V are :class:`~kpflow.models.sites.LinearSite` actions: batched
matmuls over tokens per head, whose largest temporary is k·B·H·N² (the attention
matrix per probe), never B·N·N·d·d.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kpflow._array import array_namespace, device_of
from kpflow.models.base import Model, Site, Trajectory, check_size, draw_uniform, flat_sites
from kpflow.models.layout import Layout
from kpflow.models.ops import linear
from kpflow.models.sites import LinearSite
from kpflow.models.sites_table import (
    NO_SITE,
    Dim,
    SiteDecl,
    Term,
    declared_shapes,
    site_variables_of,
    with_site_table,
)

__all__ = ["AttentionTrajectory", "SelfAttention"]


class SelfAttention(Model):
    """One self-attention layer ``torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True)``.

    y_n = W_O o_n + b_O (+ x_n when ``residual``), o = softmax(q kᵀ/√d_k) v per head,
    d_k = d_model // n_heads, called as ``mha(x, x, x, need_weights=False)`` (with
    ``attn_mask`` the upper triangle when ``causal``).

    Parameters
    ----------
    d_model : int
        The token width d.
    n_heads : int
        Must divide ``d_model``.
    causal : bool
        Token n attends to tokens m ≤ n only.
    bias : bool
        ``in_proj_bias`` and ``out_proj.bias`` (torch's ``bias``).
    residual : bool
        Add the input: y_n = x_n + W_O o_n + b_O.

    Notes
    -----
    Parameters as torch's ``MultiheadAttention``: ``in_proj_weight`` (3d, d) stacking
    W_Q, W_K, W_V; ``in_proj_bias`` (3d,); ``out_proj.weight`` (d, d); ``out_proj.bias``
    (d,).  ``x`` has shape (B, N, d); the trajectory's state is the layer output y, of
    shape (B, N, d), and the sites are the (batch, token) pairs (``site_shape = (B, N)``).
    Four weight sites (:meth:`site_table`): ``in_proj.q``, ``in_proj.k`` (without the key
    bias, whose kernel is exactly zero), ``in_proj.v`` (general D,
    :class:`~kpflow.models.sites.LinearSite`) and ``out_proj`` (D = I); the key bias, which
    no site carries, is declared under ``NO_SITE``, so :meth:`with_frozen` and ``to_params``
    work in torch's names.  x is the layer's input and o the heads' outputs side by side:

    {site_table}

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.models import SelfAttention
    >>> model = SelfAttention(4, 2, causal=True)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((2, 3, 4)))
    >>> traj.state_shape, traj.site_shape, [s.name for s in traj.sites]
    ((2, 3, 4), (2, 3), ['in_proj.q', 'in_proj.k', 'in_proj.v', 'out_proj'])
    >>> kpflow.global_ntk(traj).matvec(traj.states).shape
    (2, 3, 4)
    """

    #: Batch rows never mix (tokens attend within their own row; ``Layout.independent_rows``).
    independent_rows = True

    def __init__(
        self, d_model: int, n_heads: int, *, causal: bool = False, bias: bool = True, residual: bool = True
    ) -> None:
        where = "SelfAttention"
        self.d_model = check_size(d_model, "d_model", where)
        self.n_heads = check_size(n_heads, "n_heads", where)
        if self.d_model % self.n_heads != 0:
            msg = (
                f"{where}: expected d_model divisible by n_heads, got d_model={self.d_model}, "
                f"n_heads={self.n_heads}"
            )
            raise ValueError(msg)
        self.d_k = self.d_model // self.n_heads
        self.causal = bool(causal)
        self.bias = bool(bias)
        self.residual = bool(residual)
        self.n_in = self.d_model
        self.state_size = self.d_model

    def site_table(self) -> tuple[SiteDecl, ...]:
        """The sites ``in_proj.q``, ``in_proj.k``, ``in_proj.v``, ``out_proj`` (see the class docstring)."""
        return attention_site_table(self.d_model, self.bias)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return declared_shapes(self.site_table())

    def init(
        self, rng: Any = None, *, like: Any = None, dtype: Any = None, device: Any = None
    ) -> dict[str, Any]:
        """Weights as torch draws them, biases U(−1/√d, 1/√d), on the host (SPEC 7).

        ``in_proj_weight`` is Xavier-uniform, U(±√(6/(4d))), and ``out_proj.weight``
        U(±1/√d), as in torch.  torch zeroes the biases; here they are drawn so that every
        term of K is exercised from the start.
        """
        if not (rng is None or isinstance(rng, int | np.integer | np.random.Generator)):
            msg = (
                "SelfAttention.init: expected rng to be an int, a numpy.random.Generator or None, "
                f"got {type(rng).__name__}"
            )
            raise TypeError(msg)
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        d, out = self.d_model, {}
        bounds = {"in_proj_weight": math.sqrt(6.0 / (4 * d))}
        for name, shape in self.param_shapes().items():
            bound = bounds.get(name, 1.0 / math.sqrt(d))
            out.update(
                draw_uniform(
                    {name: shape},
                    bound,
                    gen,
                    like=like,
                    dtype=dtype,
                    device=device,
                    where="SelfAttention.init",
                )
            )
        return out

    def _check_inputs(self, x: Any, h0: Any, meta: tuple, where: str) -> None:
        text = f"(B, N, d_model={self.d_model}) with B >= 1 and N >= 1"
        self._check_feedforward_inputs(x, h0, meta, where, ndim=3, feature=self.d_model, shape_text=text)

    def forward(self, params: dict[str, Any], x: Any) -> dict[str, Any]:
        """The layer and its intermediates (pure array-API code).

        Returns
        -------
        dict
            ``y`` (B, N, d); per head ``q``, ``k``, ``v``, ``o`` (B, H, N, d_k) and the
            attention ``A`` (B, H, N, N); ``o_cat`` (B, N, d), the heads side by side.
        """
        xp = array_namespace(x)
        B, N, d, H, dk = x.shape[0], x.shape[1], self.d_model, self.n_heads, self.d_k
        qkv = linear(xp, x, params["in_proj_weight"])
        if self.bias:
            qkv = qkv + params["in_proj_bias"]
        q, k, v = (_split_heads(xp, qkv[:, :, i * d : (i + 1) * d], H, dk) for i in range(3))
        scores = (q @ xp.matrix_transpose(k)) * (1.0 / math.sqrt(dk))
        if self.causal:
            rows = xp.arange(N, device=device_of(x))
            allowed = rows[:, None] >= rows[None, :]
            # -inf before the exponential: exp gives exact zeros with zero derivatives
            scores = xp.where(allowed, scores, xp.full_like(scores, -math.inf))
        e = xp.exp(scores - xp.max(scores, axis=-1, keepdims=True))
        A = e / xp.sum(e, axis=-1, keepdims=True)
        o = A @ v
        o_cat = _merge_heads(xp, o)
        y = linear(xp, o_cat, params["out_proj.weight"])
        if self.bias:
            y = y + params["out_proj.bias"]
        if self.residual:
            y = y + x
        return {"y": y, "q": q, "k": k, "v": v, "A": A, "o": o, "o_cat": o_cat, "shape": (B, N)}

    def unroll(self, params: dict[str, Any], x: Any, h0: Any = None) -> Any:
        return self.forward(params, x)["y"]

    def update_map(self, params: dict[str, Any], states: Any, x: Any, h0: Any = None) -> Any:
        # y does not read y: f(z; θ) is the layer itself
        return self.unroll(params, x, h0)

    def layout(self, state_shape: tuple[int, ...]) -> Layout:
        """``(batch, token, feature)``, one block (a single layer: L = 0, P = I)."""
        return Layout(
            state_shape,
            ("batch", "token", "feature"),
            "single",
            site_axes=2,
            parts=self.state_parts,
            features=self.feature_columns,
            independent_rows=self.independent_rows,
        )

    def _make_trajectory(self, params: dict[str, Any], x: Any, h0: Any, states: Any) -> AttentionTrajectory:
        return AttentionTrajectory(self, params, x, h0, states)

    def __repr__(self) -> str:
        return (
            f"SelfAttention(d_model={self.d_model}, n_heads={self.n_heads}, causal={self.causal}, "
            f"bias={self.bias}, residual={self.residual})"
        )


def _split_heads(xp: Any, a: Any, H: int, dk: int) -> Any:
    """(..., B, N, H·d_k) -> (..., B, H, N, d_k)."""
    lead = a.shape[:-1]
    a = xp.reshape(a, (*lead, H, dk))
    n = a.ndim
    return xp.permute_dims(a, (*range(n - 4), n - 4, n - 2, n - 3, n - 1))


def _merge_heads(xp: Any, a: Any) -> Any:
    """(..., B, H, N, d_k) -> (..., B, N, H·d_k)."""
    n = a.ndim
    a = xp.permute_dims(a, (*range(n - 4), n - 4, n - 2, n - 3, n - 1))
    return xp.reshape(a, (*a.shape[:-2], a.shape[-2] * a.shape[-1]))


# -- D_Q, D_K, D_V as pure functions of arrays (LinearSite actions) ------------------------------
def _qk_apply(xp: Any, B: int, N: int, H: int, dk: int, key: bool, operands: tuple, U: Any) -> Any:
    """D_Q U or D_K U: query/key tangents (k, m, d) to output tangents (k, B, N, d)."""
    q, k, v, A, o, W_O = operands
    dU = _split_heads(xp, xp.reshape(U, (U.shape[0], B, N, H * dk)), H, dk)
    ds = q @ xp.matrix_transpose(dU) if key else dU @ xp.matrix_transpose(k)  # (k, B, H, N, N)
    Pm = A * ds * (1.0 / math.sqrt(dk))
    # do_n = Σ_m A_nm ds_nm (v_m − o_n): the softmax Jacobian applied without forming it
    do = Pm @ v - xp.sum(Pm, axis=-1, keepdims=True) * o
    return _merge_heads(xp, do) @ xp.matrix_transpose(W_O)


def _qk_adjoint(xp: Any, B: int, N: int, H: int, dk: int, key: bool, operands: tuple, V: Any) -> Any:
    """D_Qᵀ V or D_Kᵀ V: output cotangents (k, B, N, d) to (k, m, d)."""
    q, k, v, A, o, W_O = operands
    go = _split_heads(xp, V @ W_O, H, dk)  # (k, B, H, N, d_k)
    gP = go @ xp.matrix_transpose(v) - xp.sum(go * o, axis=-1, keepdims=True)
    gs = A * gP * (1.0 / math.sqrt(dk))
    g = xp.matrix_transpose(gs) @ q if key else gs @ k
    return xp.reshape(_merge_heads(xp, g), (V.shape[0], B * N, H * dk))


def _v_apply(xp: Any, B: int, N: int, H: int, dk: int, operands: tuple, U: Any) -> Any:
    """D_V U = (Â ⊗ W_O) U: value tangents (k, m, d) to output tangents (k, B, N, d)."""
    A, W_O = operands
    dv = _split_heads(xp, xp.reshape(U, (U.shape[0], B, N, H * dk)), H, dk)
    return _merge_heads(xp, A @ dv) @ xp.matrix_transpose(W_O)


def _v_adjoint(xp: Any, B: int, N: int, H: int, dk: int, operands: tuple, V: Any) -> Any:
    """D_Vᵀ V = (Âᵀ ⊗ W_Oᵀ) V: output cotangents (k, B, N, d) to (k, m, d)."""
    A, W_O = operands
    go = _split_heads(xp, V @ W_O, H, dk)
    return xp.reshape(_merge_heads(xp, xp.matrix_transpose(A) @ go), (V.shape[0], B * N, H * dk))


class AttentionTrajectory(Trajectory):
    """A run of :class:`SelfAttention`: ``state_shape = (B, N, d)``, one block (P = I).

    Attributes
    ----------
    cache : dict
        The forward intermediates (see :meth:`SelfAttention.forward`): per head q, k, v, o
        (B, H, N, d_k) and the attention A (B, H, N, N).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import SelfAttention
    >>> model = SelfAttention(4, 2)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((2, 3, 4)))
    >>> traj.cache["A"].shape, traj.n_steps, traj.axis_names
    ((2, 2, 3, 3), 1, ('batch', 'token', 'feature'))
    """

    model: SelfAttention

    def __init__(self, model: SelfAttention, params: dict[str, Any], x: Any, h0: Any, states: Any) -> None:
        super().__init__(model, params, x, h0, states)
        self.cache = model.forward(params, x)

    def _make_sites(self) -> list[Site]:
        model, c = self.model, self.cache
        B, N = c["shape"]
        H, dk, d = model.n_heads, model.d_k, model.d_model
        shape = self.state_shape
        table = model.site_table()
        x = flat_sites(self.x)
        A = site_variables_of(table, {"x": x, "o": flat_sites(c["o_cat"])}, like=x)
        rows = {decl.name: decl.rows() for decl in table}
        W_O = self.params["out_proj.weight"]
        qk_operands = (c["q"], c["k"], c["v"], c["A"], c["o"], W_O)
        return [
            LinearSite(
                "in_proj.q",
                A["in_proj.q"],
                apply=_qk_apply,
                adjoint=_qk_adjoint,
                operands=qk_operands,
                static=(B, N, H, dk, False),
                state_shape=shape,
                width=d,
                rows=rows["in_proj.q"],
                batch_major=True,
            ),
            # The key bias shifts every score of a row equally: softmax ignores it, so its
            # column of ones (its term of K) is left out exactly.
            LinearSite(
                "in_proj.k",
                A["in_proj.k"],
                apply=_qk_apply,
                adjoint=_qk_adjoint,
                operands=qk_operands,
                static=(B, N, H, dk, True),
                state_shape=shape,
                width=d,
                rows=rows["in_proj.k"],
                batch_major=True,
            ),
            LinearSite(
                "in_proj.v",
                A["in_proj.v"],
                apply=_v_apply,
                adjoint=_v_adjoint,
                operands=(c["A"], W_O),
                static=(B, N, H, dk),
                state_shape=shape,
                width=d,
                rows=rows["in_proj.v"],
                batch_major=True,
            ),
            Site(
                "out_proj",
                A["out_proj"],
                state_shape=shape,
                scale=1.0,
                width=d,
                rows=rows["out_proj"],
                batch_major=True,
            ),
        ]


def attention_site_table(
    d: Any, bias: bool, prefix: str = "", x: str = "x", o: str = "o", *, downstream: bool = False
) -> tuple[SiteDecl, ...]:
    """Self-attention's site table for width ``d`` (an int, or :class:`Dim` for the docs).

    ``prefix`` goes in front of every site and parameter name (a transformer layer's
    ``layers.{l}.self_attn.``); ``x`` and ``o`` name the site variables (the layer's input
    and the heads' outputs side by side).  With ``downstream`` every D_w is followed by the
    rest of a block, "(…)" (a transformer's residual and LayerNorm), so ``out_proj``'s D is
    a general linear map too.

    Examples
    --------
    >>> from kpflow.models.attention import attention_site_table
    >>> [(decl.name, decl.p) for decl in attention_site_table(4, True)]
    [('in_proj.q', 5), ('in_proj.k', 4), ('in_proj.v', 5), ('out_proj', 5), ('', 1)]
    """
    W, b, pre = prefix + "in_proj_weight", prefix + "in_proj_bias", prefix
    O, O_bias = prefix + "out_proj.weight", prefix + "out_proj.bias"
    q, k, v = (0 * d, d), (d, 2 * d), (2 * d, 3 * d)

    def site(name: str, terms: list[Term], D: str, formula: str) -> SiteDecl:
        if downstream:
            D, formula = "linear", "(…)" if formula == "I" else f"(…) ∘ {formula}"
        return SiteDecl(pre + name, tuple(terms), D, formula)

    def biased(weight: Term, bias_name: str) -> list[Term]:
        return [weight, Term(bias_name, weight.rows, "1")] if bias else [weight]

    table = [
        site("in_proj.q", biased(Term(W, q, x, d), b), "linear", "W_O Σ_m A_nm (v_m − o_n) k_mᵀ/√d_k"),
        site("in_proj.k", [Term(W, k, x, d)], "linear", "A_nm W_O (v_m − o_n) q_nᵀ/√d_k"),
        site("in_proj.v", biased(Term(W, v, x, d), b), "linear", "Â ⊗ W_O"),
        site("out_proj", biased(Term(O, q, o, d), O_bias), "scaled", "I"),
    ]
    if bias:  # the key bias adds q_n·b_K to every score of row n, which softmax ignores
        table.append(SiteDecl(NO_SITE, (Term(b, k, "1"),)))
    return tuple(table)


SelfAttention.__doc__ = with_site_table(SelfAttention.__doc__, attention_site_table(Dim("d"), True))
