"""The D_w and J_t actions of :class:`~kpflow.models.TransformerEncoder`, as pure functions.

Every weight site of the encoder is a :class:`~kpflow.models.sites.LinearSite` whose D_w is a
chain of *stages*, each a linear map on per-token tangents ``(k, B, N, w)``, followed by the
embedding into the site's state block (of the ``(k, B, S, N, d)`` state).  A stage is named
in ``static`` (hashable) and reads its arrays from ``operands``:

=================  =============================================  ===========================
stage              action on a tangent U                          operands
=================  =============================================  ===========================
``attn_q``,        self-attention's D_Q, D_K, D_V (W_O included)   attention caches, W_O
``attn_k``,
``attn_v``
``attn_in``        J_SA: the attention's Jacobian in its input     the same and W_in
                   (q, k and v all move): Σ_c D_c (U W_cᵀ)
``ff_in``          J_FF = W₂ diag(φ′) W₁                           W₁, φ′, W₂
``ff1``            W₂ diag(φ′) (linear1's pre-activation)          φ′, W₂
``scale``          diag(x̂) (a LayerNorm scale γ)                   x̂
``ln``             J_LN = diag(γ) N, N v = (v − v̄ − x̂·mean(x̂v))/σ  γ, x̂, 1/σ
``post``           J_LN (I + inner)  (post-norm residual block)    inner's, LayerNorm's
``pre``            I + inner ∘ J_LN  (pre-norm residual block)     inner's, LayerNorm's
=================  =============================================  ===========================

The propagator's step J_t of a block is its ``post`` or ``pre`` stage (``ln`` for the
encoder's final norm).  N is symmetric, so J_LNᵀ = N diag(γ).
"""

from __future__ import annotations

from typing import Any

from kpflow.models.attention import _qk_adjoint, _qk_apply, _v_adjoint, _v_apply

__all__ = ["adjoint_stage", "apply_stage", "site_adjoint", "site_apply"]


def _tokens(xp: Any, B: int, N: int, U: Any) -> Any:
    return xp.reshape(U, (U.shape[0], B, N, U.shape[-1]))


def _normalize(xp: Any, xhat: Any, inv: Any, V: Any) -> Any:
    """N V = (V − mean V − x̂ mean(x̂ V)) / σ on the last axis (N is symmetric)."""
    mean = xp.mean(V, axis=-1, keepdims=True)
    proj = xp.mean(xhat * V, axis=-1, keepdims=True)
    return inv * (V - mean - xhat * proj)


def _attn_in(xp: Any, static: tuple, ops: tuple, U: Any, adjoint: bool) -> Any:
    B, N, H, dk = static
    q, k, v, A, o, W_O, W_in = ops
    d = H * dk
    W_Q, W_K, W_V = W_in[:d, :], W_in[d : 2 * d, :], W_in[2 * d :, :]
    qk_ops = (q, k, v, A, o, W_O)
    if not adjoint:
        out = _qk_apply(xp, B, N, H, dk, False, qk_ops, U @ xp.matrix_transpose(W_Q))
        out = out + _qk_apply(xp, B, N, H, dk, True, qk_ops, U @ xp.matrix_transpose(W_K))
        return out + _v_apply(xp, B, N, H, dk, (A, W_O), U @ xp.matrix_transpose(W_V))
    gq = _tokens(xp, B, N, _qk_adjoint(xp, B, N, H, dk, False, qk_ops, U))
    gk = _tokens(xp, B, N, _qk_adjoint(xp, B, N, H, dk, True, qk_ops, U))
    gv = _tokens(xp, B, N, _v_adjoint(xp, B, N, H, dk, (A, W_O), U))
    return gq @ W_Q + gk @ W_K + gv @ W_V


def apply_stage(xp: Any, stage: tuple, ops: tuple, U: Any) -> Any:
    """One stage's action on per-token tangents ``(k, B, N, w)`` (see the module docstring)."""
    name, static = stage
    if name in ("attn_q", "attn_k"):
        B, N, H, dk = static
        return _qk_apply(xp, B, N, H, dk, name == "attn_k", ops, U)
    if name == "attn_v":
        B, N, H, dk = static
        return _v_apply(xp, B, N, H, dk, ops, U)
    if name == "attn_in":
        return _attn_in(xp, static, ops, U, adjoint=False)
    if name == "ff_in":
        W1, dphi, W2 = ops
        return ((U @ xp.matrix_transpose(W1)) * dphi) @ xp.matrix_transpose(W2)
    if name == "ff1":
        dphi, W2 = ops
        return (U * dphi) @ xp.matrix_transpose(W2)
    if name == "scale":
        return U * ops[0]
    if name == "ln":
        gamma, xhat, inv = ops
        return gamma * _normalize(xp, xhat, inv, U)
    inner_ops, ln_ops = ops
    if name == "post":
        return apply_stage(xp, ("ln", ()), ln_ops, U + apply_stage(xp, static, inner_ops, U))
    if name == "pre":
        return U + apply_stage(xp, static, inner_ops, apply_stage(xp, ("ln", ()), ln_ops, U))
    msg = f"kpflow.models.transformer_d: unknown stage {name!r}; this is a kpflow bug, please report it"
    raise RuntimeError(msg)


def adjoint_stage(xp: Any, stage: tuple, ops: tuple, V: Any) -> Any:
    """The adjoint of :func:`apply_stage`: ``(k, B, N, w′) -> (k, B, N, w)``."""
    name, static = stage
    if name in ("attn_q", "attn_k"):
        B, N, H, dk = static
        return _tokens(xp, B, N, _qk_adjoint(xp, B, N, H, dk, name == "attn_k", ops, V))
    if name == "attn_v":
        B, N, H, dk = static
        return _tokens(xp, B, N, _v_adjoint(xp, B, N, H, dk, ops, V))
    if name == "attn_in":
        return _attn_in(xp, static, ops, V, adjoint=True)
    if name == "ff_in":
        W1, dphi, W2 = ops
        return ((V @ W2) * dphi) @ W1
    if name == "ff1":
        dphi, W2 = ops
        return (V @ W2) * dphi
    if name == "scale":
        return V * ops[0]
    if name == "ln":
        gamma, xhat, inv = ops
        return _normalize(xp, xhat, inv, gamma * V)
    inner_ops, ln_ops = ops
    if name == "post":
        W = adjoint_stage(xp, ("ln", ()), ln_ops, V)
        return W + adjoint_stage(xp, static, inner_ops, W)
    if name == "pre":
        return V + adjoint_stage(xp, ("ln", ()), ln_ops, adjoint_stage(xp, static, inner_ops, V))
    msg = f"kpflow.models.transformer_d: unknown stage {name!r}; this is a kpflow bug, please report it"
    raise RuntimeError(msg)


def site_apply(xp: Any, B: int, N: int, S: int, j: int, stages: tuple, operands: tuple, U: Any) -> Any:
    """D_w U: ``(k, B·N, k_w)`` through the stages into state block j of ``(k, B, S, N, d)``."""
    Y = _tokens(xp, B, N, U)
    for stage, ops in zip(stages, operands, strict=True):
        Y = apply_stage(xp, stage, ops, Y)
    zero = xp.zeros_like(Y)
    return xp.stack([Y if i == j else zero for i in range(S)], axis=2)


def site_adjoint(xp: Any, B: int, N: int, S: int, j: int, stages: tuple, operands: tuple, V: Any) -> Any:
    """D_wᵀ V: state cotangents ``(k, B, S, N, d)`` to ``(k, B·N, k_w)``."""
    W = V[:, :, j, ...]
    for stage, ops in zip(stages[::-1], operands[::-1], strict=True):
        W = adjoint_stage(xp, stage, ops, W)
    return xp.reshape(W, (W.shape[0], B * N, W.shape[-1]))
