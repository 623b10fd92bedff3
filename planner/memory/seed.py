"""The seed lesson's exercise 2 (QLoRA memory analysis, LLaMA-13B) as an explicit preset, next to
the realistic budget of the same model.

The seed's simplifying assumptions (shared/seed, "연습 문제 2"): 13e9 parameters; weights 2 B/param
(FP16 / BF16) or 0.5 B/param (NF4); Adam state 8 B per trained parameter (two fp32 moments);
gradients 2 B per trained parameter; LoRA r=8 on q and v of "32 layers" ~ 8e6 parameters, stored
in BF16 (2 B) with Adam (8 B); no activations, no logits, no quantization constants, no allocator,
decimal gigabytes. Our budget replays the real step instead (``planner.estimate``).

Run ``python -m planner.memory.seed`` to print the comparison table used in docs/memory-model.md.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The seed's numbers (its answer table).
SEED_PARAMS = 13_000_000_000
SEED_LORA_PARAMS = 8_000_000
SEED_BYTES_16BIT = 2.0
SEED_BYTES_NF4 = 0.5
SEED_ADAM_BYTES = 8.0
SEED_GRAD_BYTES = 2.0
SEED_GB = 1e9


@dataclass(frozen=True)
class SeedBudget:
    weights: float
    optimizer: float
    gradients: float
    adapter: float
    adapter_optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.optimizer + self.gradients + self.adapter + self.adapter_optimizer


def seed_exercise_2(params: int = SEED_PARAMS, lora_params: int = SEED_LORA_PARAMS) -> dict[str, SeedBudget]:
    """The seed's three columns, in bytes, under its own assumptions."""
    return {
        "full_fp16": SeedBudget(params * SEED_BYTES_16BIT, params * SEED_ADAM_BYTES, params * SEED_GRAD_BYTES, 0, 0),
        "lora_bf16": SeedBudget(params * SEED_BYTES_16BIT, 0, 0, lora_params * SEED_BYTES_16BIT,
                                lora_params * SEED_ADAM_BYTES),
        "qlora_nf4": SeedBudget(params * SEED_BYTES_NF4, 0, 0, lora_params * SEED_BYTES_16BIT,
                                lora_params * SEED_ADAM_BYTES),
    }


REALISTIC = {
    "full_fp16": ("full", {}, {"dtype": "float16"}),
    "lora_bf16": ("lora", {"r": 8, "target_modules": ["q_proj", "v_proj"]}, {}),
    "qlora_nf4": ("qlora", {"r": 8, "target_modules": ["q_proj", "v_proj"]}, {}),
}


def comparison_table(model: str = "meta-llama/Llama-2-13b-hf", batch_size: int = 1, seq_len: int = 512) -> str:
    import planner

    seed = seed_exercise_2()
    rows = ["| column | seed (its assumptions) | planner: weights + quant | optimizer | gradients | activations + logits "
            "| temporaries | peak allocated | reserved |", "|---|---|---|---|---|---|---|---|---|"]
    for key, (method, options, settings) in REALISTIC.items():
        plan = planner.estimate(model, method, **options, batch_size=batch_size, seq_len=seq_len, **settings)
        m = plan.memory
        b = m.breakdown
        gib = 2**30
        rows.append(
            f"| {key} | {seed[key].total / SEED_GB:,.1f} GB | {(b['weights'] + b['quantization']) / gib:,.2f} GiB "
            f"| {b['optimizer'] / gib:,.2f} GiB | {b['gradients'] / gib:,.2f} GiB "
            f"| {(b['activations'] + b['logits']) / gib:,.2f} GiB | {b['temporaries'] / gib:,.2f} GiB "
            f"| {m.peak_bytes / gib:,.2f} GiB ({m.peak_phase}) | {m.reserved_bytes / gib:,.2f} GiB |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(comparison_table())
