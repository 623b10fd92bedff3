"""Sliding-window attention in the llama-shaped program (Mistral, Qwen2 / Qwen3 with
``use_sliding_window``, Gemma2) and the rotary programs (Phi-3, Mixtral), against executors'
fake-mode measurement of the same step, run in the test (see ``_programs_measure``).

What is checked (transformers 5.24): under SDPA no mask exists below ``sliding_window``
(``is_causal``); from ``seq >= sliding_window`` on ``create_sliding_window_causal_mask`` builds a
(1, 1, L, L) bool mask, and each attention call then repeats keys / values for every query head
(``use_gqa_in_sdpa`` is False with a mask) and converts the mask to an additive (B, 1, L, L) one,
which the kernel keeps for backward. Eager builds one additive mask per mask type (Gemma2: both).
Tiny shapes (window 32, sequence 64 or 16), batch 2, two-step runs.
Tolerance: 0.3% of each phase peak, as the other program tests (measured residual: <= 1.5 KB,
0.02%, a few 512-byte bookkeeping tensors).
"""

from __future__ import annotations

import numpy as np
import pytest

import planner
from planner.memory import model as memory_model
from tests.planner.memory._programs_measure import check

TINY = dict(model_type="mistral", hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048, tie_word_embeddings=False,
            rms_norm_eps=1e-5, rope_theta=10000.0)
MISTRAL = dict(TINY, sliding_window=32)
QWEN2 = dict(TINY, model_type="qwen2", use_sliding_window=True, sliding_window=32, max_window_layers=2,
             num_hidden_layers=4)  # layers 0-1 full attention, 2-3 sliding
GEMMA2 = dict(TINY, model_type="gemma2", head_dim=64, hidden_activation="gelu_pytorch_tanh", sliding_window=32,
              num_hidden_layers=3, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
              query_pre_attn_scalar=64, tie_word_embeddings=True)
QV = dict(r=8, target_modules=["q_proj", "v_proj"])

CASES = [
    ("mistral-sdpa-window-active", MISTRAL, "lora", QV, dict(seq_len=64)),
    ("mistral-sdpa-below-window", MISTRAL, "lora", QV, dict(seq_len=16)),
    ("mistral-full-sdpa-window-active", MISTRAL, "full", {}, dict(seq_len=64)),
    ("mistral-eager-window", MISTRAL, "lora", QV, dict(seq_len=64, attn_implementation="eager")),
    ("mistral-gc-window-active", MISTRAL, "lora", QV, dict(seq_len=64, gradient_checkpointing=True)),
    ("qwen2-mixed-layers", QWEN2, "lora", QV, dict(seq_len=64)),
    ("gemma2-eager-softcap", GEMMA2, "lora", QV, dict(seq_len=64, attn_implementation="eager")),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,cfg,method,options,settings", CASES, ids=[c[0] for c in CASES])
def test_phase_peaks_match_fake_measurement(name, cfg, method, options, settings):
    check(cfg, method, options, dict(batch_size=2, **settings), tol=3e-3)


def test_window_mask_costs_memory_from_the_window_on():
    """Mistral-7B (window 4096): nothing changes below the window, the mask appears at it."""
    def peak(seq):
        return planner.estimate("mistralai/Mistral-7B-v0.1", "lora", **QV, batch_size=1, seq_len=seq).memory.peak_bytes

    below, at = peak(4095), peak(4096)
    per_token_below = peak(4095) - peak(4094)
    assert at - below > 100 * per_token_below  # (B, 1, L, L) masks and repeated keys / values per layer


def test_sweep_across_the_window_equals_pointwise_estimates():
    seq = np.array([1024, 4095, 4096, 8192])
    batch = np.array([2, 1, 1, 1])
    out = planner.sweep("mistralai/Mistral-7B-v0.1", "lora", batch_size=batch, seq_len=seq, **QV)
    for i in range(len(seq)):
        m = planner.estimate("mistralai/Mistral-7B-v0.1", "lora", **QV, batch_size=int(batch[i]),
                             seq_len=int(seq[i])).memory
        assert out["peak_bytes"][i] == m.peak_bytes


def test_mixed_layer_types_are_replayed_not_extrapolated(monkeypatch):
    """Qwen2 with sliding layers from max_window_layers on: blocks differ, so the replay must not
    extrapolate from the first ones; the estimate equals a replay of every block."""
    cfg = dict(QWEN2, num_hidden_layers=8, max_window_layers=5)
    fast = planner.estimate(cfg, "lora", **QV, batch_size=1, seq_len=64).memory
    monkeypatch.setattr(memory_model, "EXTRAPOLATE_FROM_LAYERS", 10**6)
    full = planner.estimate(cfg, "lora", **QV, batch_size=1, seq_len=64).memory
    assert fast.phase_peaks == full.phase_peaks
