"""``planner.compute`` (matmul FLOPs of one training step) against ``torch.utils.flop_counter.FlopCounterMode``
on the real step (``executors.flops.measure_flops``), run in the test.

Reference: transformers 5.24 / peft 0.21.2 / torch 2.13 (constraints/cpu.txt) / bitsandbytes 0.50,
tiny configs derived from catalog configs (hidden 64, 2 layers, vocab 256), batch 2 x 16 tokens, CPU,
float32. Forward and backward are counted by two separate FlopCounterMode contexts; the backward one
also sees the recomputation of checkpointed blocks, so ``measured backward == planned backward +
planned recompute``.

Tolerance: none -- the counts must be equal. Both sides apply the same integer formulas (``2 m n k`` per
matmul, FlopCounterMode's SDPA formulas) to the same shapes; nothing depends on values (MoE: the
experts always see tokens x top-k rows, however the random router routes them). CPU kernels without
a registry formula get their CUDA counterpart's (``executors.flops.CPU_FLOP_FORMULAS``), and T5's
grad-requiring position bias is planned with the CPU's SDPA math path (``cpu_kernels=True``).
"""

from __future__ import annotations

import pytest

import planner
from planner.api import plan_method
from planner.compute import step_flops

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from executors.flops import measure_flops  # noqa: E402

STEP = dict(batch_size=2, seq_len=16, dtype="float32")


def shrink(catalog_id: str, **fields) -> dict:
    config = planner.catalog.config(catalog_id)
    config.update(fields)
    return config


LLAMA = shrink("meta-llama/Llama-2-7b-hf", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)
GPT2 = shrink("openai-community/gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=128)
T5 = shrink("google-t5/t5-base", d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2,
            vocab_size=256)
MIXTRAL = shrink("mistralai/Mixtral-8x7B-v0.1", hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=256, num_local_experts=4,
                 num_experts_per_tok=2, max_position_embeddings=256)
FALCON = shrink("tiiuae/falcon-7b", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=256)
BERT = shrink("google-bert/bert-base-uncased", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, vocab_size=256, max_position_embeddings=256)
GC = dict(gradient_checkpointing=True)
LORA = dict(r=4, target_modules=["q_proj", "v_proj"])

CASES = [
    ("llama-full", LLAMA, "full", {}, {}),
    ("llama-full-gc", LLAMA, "full", {}, GC),
    ("llama-lora", LLAMA, "lora", LORA, {}),
    ("llama-lora-gc", LLAMA, "lora", LORA, GC),
    ("llama-lora-all-linear-eager", LLAMA, "lora", dict(r=4, target_modules="all-linear"), dict(attn_implementation="eager")),
    ("llama-qlora-gc", LLAMA, "qlora", dict(r=4, target_modules="all-linear"), GC),
    ("llama-dora-dropout-gc", LLAMA, "dora", dict(r=4, target_modules=["q_proj", "down_proj"], lora_dropout=0.1), GC),
    ("llama-ia3", LLAMA, "ia3", {}, {}),
    ("llama-ia3-gc", LLAMA, "ia3", {}, GC),
    ("llama-partial-gc", LLAMA, "partial", dict(last_k_layers=1), GC),
    ("llama-prompt-tuning", LLAMA, "prompt_tuning", dict(num_virtual_tokens=4), {}),
    ("llama-prefix-tuning", LLAMA, "prefix_tuning", dict(num_virtual_tokens=4), {}),
    ("gpt2-full", GPT2, "full", {}, {}),
    ("gpt2-lora-gc", GPT2, "lora", dict(r=4, target_modules=["c_attn"]), GC),
    ("gpt2-ia3-gc", GPT2, "ia3", {}, GC),
    ("gpt2-bitfit", GPT2, "bitfit", {}, {}),
    ("gpt2-prompt-tuning", GPT2, "prompt_tuning", dict(num_virtual_tokens=4), {}),
    ("gpt2-prefix-projection", GPT2, "prefix_tuning", dict(num_virtual_tokens=4, prefix_projection=True,
                                                            encoder_hidden_size=32), {}),
    ("t5-full-eager", T5, "full", {}, dict(attn_implementation="eager")),
    ("t5-full-sdpa", T5, "full", {}, {}),
    ("t5-lora-target8", T5, "lora", dict(r=4, target_modules=["q", "v"]), dict(target_len=8)),
    ("t5-lora-gc", T5, "lora", dict(r=4, target_modules=["q", "v"]), GC),
    ("t5-ia3", T5, "ia3", {}, {}),
    ("t5-prompt-tuning-gc", T5, "prompt_tuning", dict(num_virtual_tokens=4), GC),
    ("mixtral-lora-gc", MIXTRAL, "lora", LORA, GC),
    ("falcon-full-gc", FALCON, "full", {}, GC),
    ("bert-lora-gc", BERT, "lora", dict(r=4, target_modules=["query", "value"]), GC),
]


def planned_and_measured(config: dict, method: str, options: dict, settings: dict):
    plan = planner.estimate(config, method, **options, **STEP, **settings)
    spec = planner.load_model(config)
    mplan = plan_method(spec, method, **options)[0]
    st = plan.settings
    flops = step_flops(spec, mplan, st, cpu_kernels=True)
    kwargs = dict(batch_size=st.batch_size, seq_len=st.seq_len, target_len=st.target_len, dtype=st.dtype,
                  gradient_checkpointing=st.gradient_checkpointing, attn_implementation=st.attn_implementation,
                  quantization=st.quantization)
    if plan.peft_config is None and plan.category != "full":
        kwargs["trainable_base_params"] = list(mplan.trainable_base)
    return plan, flops, measure_flops(config, peft_config=plan.peft_config, **kwargs)


@pytest.mark.parametrize("name,config,method,options,settings", CASES, ids=[c[0] for c in CASES])
def test_step_flops_equal_flop_counter(name, config, method, options, settings):
    plan, f, m = planned_and_measured(config, method, options, settings)
    assert f.forward_flops == m.forward_flops, (m.forward_by_op, f.parts)
    assert f.backward_flops + f.recompute_flops == m.backward_flops, (m.backward_by_op, f.parts)
    assert (f.recompute_flops > 0) == bool(settings.get("gradient_checkpointing"))
    if f.attention_kernel == plan.flops.attention_kernel:  # estimate() plans CUDA's kernels
        assert plan.flops == f


def test_recomputation_is_the_measured_difference_of_checkpointing():
    """Full fine-tuning: every input already requires grad, so checkpointing changes the backward
    only by the recomputed forward -- measured directly as the difference of two measurements."""
    _, f_gc, m_gc = planned_and_measured(LLAMA, "full", {}, GC)
    _, f, m = planned_and_measured(LLAMA, "full", {}, {})
    assert f_gc.backward_flops == f.backward_flops
    assert m_gc.backward_flops - m.backward_flops == f_gc.recompute_flops
    # early stop: each block recomputes its forward up to, not including, its last matmul (down_proj)
    down = 2 * STEP["batch_size"] * STEP["seq_len"] * LLAMA["intermediate_size"] * LLAMA["hidden_size"]
    blocks_forward = f.parts["linear"].forward_flops + f.parts["attention"].forward_flops
    assert f_gc.recompute_flops == blocks_forward - LLAMA["num_hidden_layers"] * down


@pytest.mark.gpu
def test_measured_step_time_feeds_training_time():
    """On CUDA: a measured step time next to the estimate, and the utilisation it implies."""
    from executors.flops import measure_step_time

    plan = planner.estimate(LLAMA, "lora", **LORA, batch_size=2, seq_len=128)
    step_s = measure_step_time(LLAMA, peft_config=plan.peft_config, batch_size=2, seq_len=128, steps=3)
    t = planner.training_time(plan, "h100-sxm", num_examples=100, measured_step_s=step_s)
    assert step_s > 0 and t.measured_hours == pytest.approx(t.micro_steps * step_s / 3600)
    assert 0 < t.measured_utilization < 1
