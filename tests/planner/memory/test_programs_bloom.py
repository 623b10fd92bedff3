"""Memory replay of BLOOM (``planner/memory/programs/bloom.py``) against executors'
fake-mode measurement of the same step, run in the test (see ``_programs_measure``). Tiny shapes,
batch 2 x 64; each case measures one two-step training run (a few seconds).
Tolerance: 0.3% of each phase peak (measured residual on these cases: <= 2 KB)."""

from __future__ import annotations

import pytest

from tests.planner.memory._programs_measure import check, shrink


def config(vocab: int = 512, layers: int = 2) -> dict:
    return shrink("bigscience/bloom-560m", hidden_size=64, n_layer=layers, n_head=4, vocab_size=vocab,
                  hidden_dropout=0.1, attention_dropout=0.1)


TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
IA3 = {}
CASES = [
    ("full-eager", config(), "full", {}, dict(attn_implementation="eager")),
    ("lora-dropout-eager-4layers", config(vocab=2048, layers=4), "lora", dict(r=8, target_modules=TARGETS, lora_dropout=0.1),
     dict(attn_implementation="eager")),
    ("ia3-eager", config(), "ia3", IA3, dict(attn_implementation="eager")),
    ("lora-gc-eager", config(vocab=4096), "lora", dict(r=8, target_modules=TARGETS[:1]),
     dict(attn_implementation="eager", gradient_checkpointing=True)),
    ("full-gc-eager", config(vocab=4096), "full", {}, dict(attn_implementation="eager", gradient_checkpointing=True)),
]


@pytest.mark.parametrize("name,cfg,method,options,settings", CASES, ids=[c[0] for c in CASES])
def test_phase_peaks_match_fake_measurement(name, cfg, method, options, settings):
    check(cfg, method, options, dict(batch_size=2, seq_len=64, **settings), tol=3e-3)


def test_explicit_sdpa_is_refused_naming_the_field():
    """transformers 5.24 refuses SDPA (and flash-attention 2) for BLOOM: asked for explicitly, the
    planner refuses too, naming ``attn_implementation``; left to the default it plans eager."""
    import planner
    from planner.errors import PlannerError

    with pytest.raises(PlannerError) as err:
        planner.estimate(config(), "lora", r=8, target_modules=["query_key_value"], attn_implementation="sdpa")
    assert err.value.field == "attn_implementation"
    assert planner.estimate(config(), "lora", r=8, target_modules=["query_key_value"]).memory is not None
