"""Memory replay of T5 / mT5 (``planner/memory/programs/t5.py``) against executors' fake-mode
measurement of the same step, run in the test (see ``_programs_measure``). Tiny shapes, batch 2,
source 64 tokens, target 64 or 32 tokens; each case measures one two-step training run.
Tolerance: 0.3% of each phase peak (measured residual on these cases: <= 9 KB).

SDPA with a grad-requiring position bias (full fine-tuning): a CPU run takes SDPA's math path
while CUDA's memory-efficient kernel accepts the bias; the program replays CUDA by default and the
CPU path with ``t5.CPU_MATH_FOR_GRAD_MASK`` (used here to compare with the CPU measurement)."""

from __future__ import annotations

import pytest

import planner
from planner.memory.programs import t5 as t5_program
from tests.planner.memory._programs_measure import check, measure, shrink


def t5(vocab: int = 512, layers: int = 2) -> dict:
    return shrink("google-t5/t5-base", d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=layers,
                  num_decoder_layers=layers, vocab_size=vocab)


def t5_v11(vocab: int = 512, layers: int = 2) -> dict:  # gated-gelu (gelu_new), untied LM head
    return shrink("google/flan-t5-xl", d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=layers,
                  num_decoder_layers=layers, vocab_size=vocab)


TARGETS = ["q", "v", "o", "wi", "wo"]
CASES = [
    ("full-eager", t5(), "full", {}, dict(attn_implementation="eager")),
    ("lora-dropout-sdpa-4layers", t5(vocab=2048, layers=4), "lora", dict(r=8, target_modules=TARGETS, lora_dropout=0.1),
     dict(attn_implementation="sdpa")),
    ("ia3-sdpa", t5(), "ia3", {}, dict(attn_implementation="sdpa")),
    ("v11-lora-sdpa-target32", t5_v11(), "lora", dict(r=8, target_modules=["q", "v", "wi_0", "wi_1", "wo"]),
     dict(attn_implementation="sdpa", target_len=32)),
    ("v11-full-eager", t5_v11(), "full", {}, dict(attn_implementation="eager")),
    ("lora-gc-eager", t5(vocab=4096), "lora", dict(r=8, target_modules=["q", "v"]),
     dict(attn_implementation="eager", gradient_checkpointing=True)),
]


@pytest.mark.parametrize("name,cfg,method,options,settings", CASES, ids=[c[0] for c in CASES])
def test_phase_peaks_match_fake_measurement(name, cfg, method, options, settings):
    check(cfg, method, options, dict(batch_size=2, seq_len=64, **settings), tol=3e-3)


def test_full_sdpa_cpu_math_path_matches_and_cuda_kernel_keeps_less(monkeypatch):
    """Full fine-tuning trains the relative position bias: the CPU measurement runs SDPA's math path
    (fp32 B x H x L x S probabilities saved); replaying that path matches it, and the CUDA replay
    (memory-efficient kernel, the default) predicts less."""
    settings = dict(batch_size=2, seq_len=64, attn_implementation="sdpa")
    monkeypatch.setattr(t5_program, "CPU_MATH_FOR_GRAD_MASK", True)
    plan, m, steps = measure(t5(vocab=4096), "full", {}, settings)
    for phase, measured in m.phase_peaks.items():
        assert abs(plan.memory.phase_peaks[phase] + steps - measured) <= 3e-3 * measured, phase
    monkeypatch.setattr(t5_program, "CPU_MATH_FOR_GRAD_MASK", False)
    cuda = planner.estimate(t5(vocab=4096), "full", **settings)
    assert cuda.memory.phase_peaks["forward"] < plan.memory.phase_peaks["forward"]
