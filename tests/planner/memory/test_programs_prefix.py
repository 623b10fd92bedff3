"""Prefix tuning in the memory replay (llama family, GPT-2, Phi-3, Mixtral) against executors'
fake-mode measurement of the same step, run in the test (see ``_programs_measure``).

What is replayed (peft 0.21.2 ``PeftModelForCausalLM.forward`` / ``get_prompt``, transformers
5.24): the prompt encoder's (B, P, layers x 2 x token_dim) output (with ``prefix_projection``:
embedding, Linear, Tanh, Linear) cast to the model dtype, split into per-layer key / value views
and copied into a ``DynamicCache``; every attention concatenates ``[prefix, keys]`` (P + L
positions); the queries' offset P makes ``create_causal_mask`` build a (1, 1, L, P + L) mask even
for SDPA, which then repeats keys / values for GQA and keeps an additive (B, 1, L, P + L) mask per
layer. In backward each layer's prefix gradient is a narrowed view of its whole (P + L) key / value
gradient, held until the prefix's nodes run last.

Tiny shapes, batch 2 x 64 tokens, 8 virtual tokens, two-step runs. Tolerance: 0.3% of each phase
peak, as the other program tests. Residual seen: 512 B in backward / optimizer, PEFT's
``prompt_tokens`` (int64 ids kept on the CPU by PEFT and copied to the GPU per forward on CUDA,
which the replay models; on the CPU the measurement sees the resident CPU tensor instead).
"""

from __future__ import annotations

import pytest

import planner
from planner.memory import model as memory_model
from tests.planner.memory._programs_measure import check, shrink

LLAMA = dict(model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048, tie_word_embeddings=False)
MISTRAL = dict(LLAMA, model_type="mistral", sliding_window=32)
GPT2 = shrink("openai-community/gpt2", n_embd=128, n_head=4, n_layer=2, vocab_size=512, n_positions=256)
PHI3 = shrink("microsoft/Phi-3-mini-4k-instruct", hidden_size=256, intermediate_size=512, num_attention_heads=4,
              num_key_value_heads=2, num_hidden_layers=2, vocab_size=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
MIXTRAL = shrink("mistralai/Mixtral-8x7B-v0.1", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=4096, max_position_embeddings=256,
                 num_local_experts=4, num_experts_per_tok=2)
P8 = dict(num_virtual_tokens=8)
PROJ = dict(num_virtual_tokens=8, prefix_projection=True, encoder_hidden_size=64)

CASES = [
    ("llama-gqa-sdpa", LLAMA, P8, {}),
    ("llama-projection", LLAMA, PROJ, {}),
    ("llama-eager", LLAMA, P8, dict(attn_implementation="eager")),
    ("llama-mha", dict(LLAMA, num_key_value_heads=4), P8, {}),
    ("mistral-sliding-window", MISTRAL, P8, {}),
    ("gpt2-sdpa", GPT2, P8, {}),
    ("gpt2-eager-projection", GPT2, dict(PROJ, encoder_hidden_size=32), dict(attn_implementation="eager")),
    ("phi3-sdpa", PHI3, P8, {}),
    ("phi3-eager", PHI3, P8, dict(attn_implementation="eager")),
    ("mixtral-sdpa", MIXTRAL, P8, {}),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,cfg,options,settings", CASES, ids=[c[0] for c in CASES])
def test_phase_peaks_match_fake_measurement(name, cfg, options, settings):
    check(cfg, "prefix_tuning", options, dict(batch_size=2, seq_len=64, **settings), tol=3e-3)


def test_prefix_with_checkpointing_has_no_memory_estimate():
    """PEFT refuses prefix tuning on a model with gradient checkpointing; the plan says why."""
    plan = planner.estimate("meta-llama/Llama-2-7b-hf", "prefix_tuning", num_virtual_tokens=20,
                            gradient_checkpointing=True)
    assert plan.memory is None
    assert any("gradient checkpointing" in n for n in plan.notes)


@pytest.mark.parametrize("model,options,kw", [
    ("meta-llama/Llama-2-7b-hf", P8, dict(batch_size=2, seq_len=512)),
    ("mistralai/Mistral-7B-v0.1", dict(num_virtual_tokens=30, prefix_projection=True), dict(batch_size=2, seq_len=512)),
    ("openai-community/gpt2", P8, dict(batch_size=4, seq_len=256, attn_implementation="eager")),
])
def test_extrapolating_blocks_equals_full_replay(model, options, kw, monkeypatch):
    fast = planner.estimate(model, "prefix_tuning", **options, **kw).memory
    monkeypatch.setattr(memory_model, "EXTRAPOLATE_FROM_LAYERS", 10**6)
    full = planner.estimate(model, "prefix_tuning", **options, **kw).memory
    assert fast.phase_peaks == full.phase_peaks and fast.breakdown == full.breakdown
