"""The seed lesson's exercise 2 (연습 문제 2, QLoRA memory analysis for LLaMA-13B).

Golden values: the seed's own answer table (shared/seed: ~156 GB, ~26 GB, ~6.6 GB; 16 MB adapter,
64 MB adapter optimizer), reproduced from its stated assumptions by the explicit preset; and the
comparison table in docs/memory-model.md must be what the planner computes today.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.memory.seed import comparison_table, seed_exercise_2

GB = 1e9


def test_seed_preset_reproduces_the_seeds_answer():
    seed = seed_exercise_2()
    assert seed["full_fp16"].total / GB == pytest.approx(156, abs=0.5)
    assert seed["lora_bf16"].total / GB == pytest.approx(26, abs=0.1)
    assert seed["qlora_nf4"].total / GB == pytest.approx(6.6, abs=0.05)
    assert seed["lora_bf16"].adapter / 1e6 == 16 and seed["lora_bf16"].adapter_optimizer / 1e6 == 64


def test_docs_table_is_current():
    doc = (Path(__file__).parents[3] / "docs" / "memory-model.md").read_text(encoding="utf-8")
    assert comparison_table() in doc, "regenerate with `python -m planner.memory.seed` and paste into docs/memory-model.md"


def test_realistic_budget_exceeds_the_seeds_weights_only_view_for_adapters():
    import planner

    lora = planner.estimate("meta-llama/Llama-2-13b-hf", "lora", r=8, target_modules=["q_proj", "v_proj"]).memory
    qlora = planner.estimate("meta-llama/Llama-2-13b-hf", "qlora", r=8, target_modules=["q_proj", "v_proj"]).memory
    seed = seed_exercise_2()
    assert lora.peak_bytes > seed["lora_bf16"].total and qlora.peak_bytes > seed["qlora_nf4"].total
