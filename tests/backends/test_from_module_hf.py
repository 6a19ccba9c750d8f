"""Hugging Face transformers through from_module(model, states=...): tiny random configs, no downloads.

The states are the residual stream after each block; NTK_S is compared with J Jᵀ from
``torch.func.jacrev`` of the model's own forward (float64).  The models use
``attn_implementation="eager"``: torch's fused CPU attention kernel has no second derivative,
which kpflow's jvp (a vjp of a vjp) needs.
"""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch", reason="from_module maps torch.nn modules")
tf = pytest.importorskip("transformers", reason="the Hugging Face tests need transformers (the test extra)")

from benchmarks._hf_configs import bert_config, gpt2_config, llama_config  # noqa: E402
from tests.backends.test_from_module_graph import assert_matches  # noqa: E402

V, B, N, D = 7, 1, 3, 4


def ids():
    return torch.randint(0, V, (B, N), generator=torch.Generator().manual_seed(0))


def test_gpt2_residual_stream_matches_jacrev():
    torch.manual_seed(0)
    config = gpt2_config(vocab=V, positions=8, d=D, layers=2, heads=2)
    model = tf.GPT2LMHeadModel(config).double().eval()
    traj = assert_matches(model, (ids(),), states=re.compile(r"transformer\.h\.\d+"))
    assert traj.state_shape == (B, 2 * N * D)
    names = {s.name for s in traj.sites}
    assert {"transformer.wpe", "transformer.wte.weight"} <= names  # wte is tied to lm_head
    assert "transformer.h.0.attn.c_attn" in names  # Hugging Face Conv1D: a Kronecker weight site


def test_bert_residual_stream_matches_jacrev():
    torch.manual_seed(1)
    config = bert_config(vocab=V, positions=8, d=D, layers=2, heads=2, d_ff=6)
    model = tf.BertModel(config, add_pooling_layer=False).double().eval()
    traj = assert_matches(model, (ids(),), states="encoder.layer.*")
    assert "encoder.layer.0.attention.self.query" in {s.name for s in traj.sites}


def test_llama_style_decoder_with_rmsnorm_and_rotary_matches_jacrev():
    torch.manual_seed(2)
    config = llama_config(vocab=V, positions=8, d=D, layers=2, heads=2, kv_heads=1, d_ff=6)
    model = tf.LlamaForCausalLM(config).double().eval()
    # LlamaRMSNorm normalises in float32 whatever the input dtype: both routes round there alike
    traj = assert_matches(model, (ids(),), states="model.layers.*", rtol=1e-6)
    assert "model.layers.0.input_layernorm.weight" in {s.name for s in traj.sites}
