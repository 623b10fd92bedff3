"""Memory replay of OPT (``planner/memory/programs/opt.py``) against executors'
fake-mode measurement of the same step, run in the test (see ``_programs_measure``). Tiny shapes,
batch 2 x 64; each case measures one two-step training run (a few seconds).
Tolerance: 0.3% of each phase peak (measured residual on these cases: <= 2 KB)."""

from __future__ import annotations

import pytest

from tests.planner.memory._programs_measure import check, shrink


def config(vocab: int = 512, layers: int = 2) -> dict:
    return shrink("facebook/opt-1.3b", hidden_size=64, ffn_dim=256, num_hidden_layers=layers, num_attention_heads=4,
                  vocab_size=vocab, max_position_embeddings=256, word_embed_proj_dim=64, attention_dropout=0.1)


TARGETS = ["q_proj", "v_proj", "out_proj", "fc1", "fc2"]
IA3 = {}
CASES = [
    ("full-sdpa", config(), "full", {}, dict(attn_implementation="sdpa")),
    ("lora-dropout-eager-4layers", config(vocab=2048, layers=4), "lora", dict(r=8, target_modules=TARGETS, lora_dropout=0.1),
     dict(attn_implementation="eager")),
    ("ia3-sdpa", config(), "ia3", IA3, dict(attn_implementation="sdpa")),
    ("lora-gc-sdpa", config(vocab=4096), "lora", dict(r=8, target_modules=TARGETS[:1]),
     dict(attn_implementation="sdpa", gradient_checkpointing=True)),
    ("full-gc-eager", config(vocab=4096), "full", {}, dict(attn_implementation="eager", gradient_checkpointing=True)),
]


@pytest.mark.parametrize("name,cfg,method,options,settings", CASES, ids=[c[0] for c in CASES])
def test_phase_peaks_match_fake_measurement(name, cfg, method, options, settings):
    check(cfg, method, options, dict(batch_size=2, seq_len=64, **settings), tol=3e-3)
