"""Tiny random Hugging Face configurations (no downloads) for the benchmarks and the tests.

One place builds the GPT-2, BERT and Llama-style configurations that
``bench_from_module_gpt2.py`` and ``tests/backends/test_from_module_hf.py`` map with
``from_module(model, states=...)``: dropout off, ``attn_implementation="eager"`` (torch's
fused CPU attention kernel has no second derivative, which the jvp of kpflow and of the
baselines needs).  The benchmarks import it as a sibling module (this folder is on
``sys.path`` when they run as scripts); the tests as ``benchmarks._hf_configs``.
"""

from __future__ import annotations

from typing import Any


def _transformers() -> Any:
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def gpt2_config(*, vocab: int, positions: int, d: int, layers: int, heads: int) -> Any:
    """A ``GPT2Config`` of width ``d``, ``layers`` blocks, ``heads`` heads, no dropout, eager attention."""
    return _transformers().GPT2Config(
        vocab_size=vocab,
        n_positions=positions,
        n_embd=d,
        n_layer=layers,
        n_head=heads,
        attn_pdrop=0.0,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )


def bert_config(*, vocab: int, positions: int, d: int, layers: int, heads: int, d_ff: int) -> Any:
    """A ``BertConfig``: width ``d``, feed-forward width ``d_ff``, no dropout, eager attention."""
    return _transformers().BertConfig(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=d_ff,
        max_position_embeddings=positions,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )


def llama_config(
    *, vocab: int, positions: int, d: int, layers: int, heads: int, kv_heads: int, d_ff: int
) -> Any:
    """A ``LlamaConfig`` (RMSNorm, rotary embeddings, grouped keys), tied embeddings, eager attention."""
    return _transformers().LlamaConfig(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=d_ff,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=positions,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
