"""``nn.MultiheadAttention`` inside a mapped module: its two projections as Kronecker sites.

torch's attention forward (``F.multi_head_attention_forward``) applies the packed input
projection and the output projection inside one function, where no module hook reaches.
While a :class:`~kpflow.backends._torch_graph_tap._Tap` is active, a self-attention call
(``query is key is value``) runs as

    qkv = x W_inᵀ + b_in (+ eps_in),  attn = F.multi_head_attention_forward(q, k, v, …, I, I),
    out = attn W_oᵀ + b_o (+ eps_out)

with identity projections handed to torch's own function, which applies the masks, the
scaling, the softmax, ``bias_k`` / ``bias_v`` and ``add_zero_attn`` exactly as the
module does (always on its ``need_weights=True`` path, whose explicit softmax has the
second derivative that a product's double backward needs; torch's fused CPU attention
kernel has none).  The sites are ``<name>.in_proj`` (A = the rows of x, width 3d) and
``<name>.out_proj`` (A = the rows of the heads' concatenated output, width d), each with
a ones column for a trained bias.  A call that is not self-attention runs the module's
own forward, and the module's parameters then take the autodiff rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["attention_params", "is_mapped_attention"]

#: the sites of an attention module: part -> the perturbation key of a call
ATTENTION_PARTS = {"mha_in": "in_proj", "mha_out": "out_proj"}


def is_mapped_attention(module: Any) -> bool:
    """An ``nn.MultiheadAttention`` whose query, key and value share one packed projection."""
    return (
        isinstance(module, torch.nn.MultiheadAttention)
        and bool(module._qkv_same_embed_dim)
        and module.in_proj_weight is not None
    )


def attention_params(module: Any) -> dict[str, list[tuple[str, Any]]]:
    """Each site's parameters (relative name, tensor): the packed input and the output projection."""
    out = {"mha_in": [("in_proj_weight", module.in_proj_weight)], "mha_out": []}
    if module.in_proj_bias is not None:
        out["mha_in"].append(("in_proj_bias", module.in_proj_bias))
    out["mha_out"].append(("out_proj.weight", module.out_proj.weight))
    if module.out_proj.bias is not None:
        out["mha_out"].append(("out_proj.bias", module.out_proj.bias))
    return out


def attention_forward(mha: Any, record: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable:
    """The module's forward with both projections applied outside torch's attention function.

    ``record(inputs)`` is called with ``{"in_proj": x}`` and then ``{"out_proj": attn}`` (the
    site variables' rows), and returns the call's perturbations (``{}`` when none).
    """
    original = type(mha).forward
    F = torch.nn.functional

    def forward(
        query: Any,
        key: Any,
        value: Any,
        key_padding_mask: Any = None,
        need_weights: bool = True,
        attn_mask: Any = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Any:
        if not (query is key and key is value):
            record({})  # not self-attention: the module's own forward, the autodiff rule
            return original(
                mha,
                query,
                key,
                value,
                key_padding_mask,
                need_weights,
                attn_mask,
                average_attn_weights,
                is_causal,
            )
        d = int(mha.embed_dim)
        eps = record({"in_proj": query})
        qkv = F.linear(query, mha.in_proj_weight, mha.in_proj_bias)
        if "in_proj" in eps:
            qkv = qkv + torch.reshape(eps["in_proj"], qkv.shape)
        q, k, v = torch.split(qkv, d, dim=-1)
        batched = query.dim() == 3
        if mha.batch_first and batched:
            q, k, v = (torch.transpose(t, 0, 1) for t in (q, k, v))
        eye = torch.eye(d, dtype=query.dtype, device=query.device)
        attn, weights = F.multi_head_attention_forward(
            q, k, v, d, int(mha.num_heads), None, None, mha.bias_k, mha.bias_v, mha.add_zero_attn,
            mha.dropout, eye, None, training=mha.training, key_padding_mask=key_padding_mask,
            need_weights=True, attn_mask=attn_mask, use_separate_proj_weight=True,
            q_proj_weight=eye, k_proj_weight=eye, v_proj_weight=eye,
            average_attn_weights=average_attn_weights, is_causal=is_causal,
        )  # fmt: skip
        if mha.batch_first and batched:
            attn = torch.transpose(attn, 0, 1)
        eps = record({"out_proj": attn})
        out = F.linear(attn, mha.out_proj.weight, mha.out_proj.bias)
        if "out_proj" in eps:
            out = out + torch.reshape(eps["out_proj"], out.shape)
        return out, (weights if need_weights else None)

    return forward
