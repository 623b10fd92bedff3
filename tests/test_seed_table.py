"""docs/seed-comparison.md is what ``python -m benchmarks.seed_table`` renders now, and the seed
lesson's exercise 1 answers hold.

Golden values: the seed lesson (``../shared/seed/000_767e6f28512c9469.txt``, 연습 문제 1, 정답):
LLaMA-7B, LoRA on q_proj + v_proj of 32 layers, d_model 4096: r=8 -> 4,194,304; r=64 -> 33,554,432;
the q + v weights themselves 1,073,741,824 (reductions 256x and 32x).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import planner
from benchmarks import seed_table

SEED = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / seed_table.SEED_FILE


def test_doc_is_up_to_date():
    current = seed_table.DOC.read_text(encoding="utf-8") if seed_table.DOC.exists() else ""
    assert current == seed_table.render(), "docs/seed-comparison.md is stale: run `python -m benchmarks.seed_table`"


@pytest.mark.parametrize("model", ["huggyllama/llama-7b", "meta-llama/Llama-2-7b-hf"])
def test_exercise_1_golden(model):
    r8 = planner.estimate(model, method="lora", r=8, target_modules=["q_proj", "v_proj"])
    r64 = planner.estimate(model, method="lora", r=64, target_modules=["q_proj", "v_proj"])
    assert r8.trainable_params == 4_194_304
    assert r64.trainable_params == 33_554_432
    assert seed_table.exercise_1_values(model) == {"full_qv": 1_073_741_824, "r8": 4_194_304, "r64": 33_554_432,
                                                    "ratio_r8": 256, "ratio_r64": 32}
    assert seed_table.exercise_1_values(model) == seed_table.EXERCISE_1


@pytest.mark.skipif(not SEED.exists(), reason="../shared/seed not present")
def test_seed_cells_are_quoted_verbatim():
    """Every seed cell the doc quotes is in the seed's section 6.1 table, on its method's row."""
    text = SEED.read_text(encoding="utf-8")
    section = text[text.index("### 6.1"):text.index("### 6.2")]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    for row in seed_table.SEED_ROWS:
        assert f"| {row.label} | {row.trainable} | {row.memory} |" in rows
    for value in ("4,194,304", "33,554,432", "1,073,741,824", "256x", "32x"):
        assert value in text
