"""The memory model against executors' measurement of the same step (the reference).

Reference: ``executors.measure.measure_step`` in ``fake`` mode (FakeTensorMode + MemTracker with
CUDA emulation), peft 0.21.2 / transformers 5.24 / torch 2.13, run in the test. One difference is
known and accounted for: torch's foreach AdamW keeps each parameter's ``step`` counter as a
*host* scalar on CUDA (torch/optim/adam.py ``_init_group``: ``torch.tensor(0.0)`` unless capturable
or fused), so the planner, which predicts CUDA, leaves it out, while the CPU measurement counts one
512-byte block per trainable tensor. Tolerance beyond that: 0.05% of the phase peak (a few KB of
small bookkeeping tensors on tiny models; 0 B difference at 7B scale after the step counters).
"""

from __future__ import annotations

import pytest

import planner
from planner.api import plan_method

TINY = dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000, max_position_embeddings=2048, tie_word_embeddings=False)
SMALL_VOCAB = dict(TINY, vocab_size=64)  # the loss no longer dominates: layer-internal peaks decide
QWEN3 = dict(TINY, model_type="qwen3", head_dim=48, num_hidden_layers=3)
GEMMA = dict(TINY, model_type="gemma", hidden_act="gelu_pytorch_tanh", head_dim=64, tie_word_embeddings=True)
BIAS = dict(TINY, attention_bias=True)

SETTINGS_KEYS = ("batch_size", "seq_len", "dtype", "gradient_checkpointing", "attn_implementation", "optimizer",
                 "gradient_accumulation_steps", "mixed_precision")

CASES = [
    ("lora-qv", TINY, "lora", dict(r=8, target_modules=["q_proj", "v_proj"]), dict(batch_size=2, seq_len=64)),
    ("lora-dropout", TINY, "lora", dict(r=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1), dict(batch_size=2, seq_len=64)),
    ("lora-all-smallvocab", SMALL_VOCAB, "lora", dict(r=8, target_modules="all-linear", lora_dropout=0.05),
     dict(batch_size=2, seq_len=256)),
    ("lora-fp32", TINY, "lora", dict(r=8, target_modules=["q_proj", "v_proj"]), dict(batch_size=2, seq_len=64, dtype="float32")),
    ("lora-eager", SMALL_VOCAB, "lora", dict(r=8, target_modules=["q_proj", "v_proj"]),
     dict(batch_size=2, seq_len=128, attn_implementation="eager")),
    ("lora-gc", TINY, "lora", dict(r=8, target_modules=["q_proj", "v_proj"]), dict(batch_size=2, seq_len=64, gradient_checkpointing=True)),
    ("dora", SMALL_VOCAB, "dora", dict(r=8, target_modules=["q_proj", "v_proj"]), dict(batch_size=2, seq_len=256)),
    ("dora-dropout", SMALL_VOCAB, "dora", dict(r=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1), dict(batch_size=2, seq_len=256)),
    ("ia3", TINY, "ia3", dict(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
     dict(batch_size=2, seq_len=64)),
    ("full", TINY, "full", {}, dict(batch_size=2, seq_len=64)),
    ("full-fused", TINY, "full", {}, dict(batch_size=2, seq_len=64, optimizer="adamw_torch_fused")),
    ("full-sgd", TINY, "full", {}, dict(batch_size=2, seq_len=64, optimizer="sgd")),
    ("full-gc", TINY, "full", {}, dict(batch_size=2, seq_len=64, gradient_checkpointing=True)),
    ("bitfit", BIAS, "bitfit", {}, dict(batch_size=2, seq_len=64)),
    ("partial", TINY, "partial", dict(last_k_layers=1), dict(batch_size=2, seq_len=64)),
    ("prompt-tuning", TINY, "prompt_tuning", dict(num_virtual_tokens=20), dict(batch_size=2, seq_len=64)),
    ("p-tuning-mlp", TINY, "p_tuning", dict(num_virtual_tokens=8, encoder_hidden_size=32), dict(batch_size=2, seq_len=64)),
    # checkpointing makes the embeddings' output require grad for every model (transformers'
    # enable_input_require_grads): the backward runs through frozen blocks down to the embeddings
    ("partial-gc", TINY, "partial", dict(last_k_layers=1), dict(batch_size=2, seq_len=64, gradient_checkpointing=True)),
    ("bitfit-gc", BIAS, "bitfit", {}, dict(batch_size=2, seq_len=64, gradient_checkpointing=True)),
    ("prompt-tuning-gc", TINY, "prompt_tuning", dict(num_virtual_tokens=20), dict(batch_size=2, seq_len=64,
                                                                                    gradient_checkpointing=True)),
    # gradient accumulation: micro-step 2 runs with every .grad of micro-step 1 resident
    ("full-accum2", TINY, "full", {}, dict(batch_size=2, seq_len=64, gradient_accumulation_steps=2)),
    ("full-gc-accum3", TINY, "full", {}, dict(batch_size=2, seq_len=64, gradient_checkpointing=True,
                                              gradient_accumulation_steps=3)),
    ("lora-accum2", TINY, "lora", dict(r=8, target_modules="all-linear"), dict(batch_size=2, seq_len=64,
                                                                                gradient_accumulation_steps=2)),
    ("qwen3-lora", QWEN3, "lora", dict(r=8, target_modules="all-linear"), dict(batch_size=2, seq_len=64)),
    ("gemma-lora", GEMMA, "lora", dict(r=8, target_modules="all-linear"), dict(batch_size=2, seq_len=64)),
    # autocast mixed precision: fp32 weights, forward + loss under torch.autocast(bfloat16)
    ("full-bf16", TINY, "full", {}, dict(batch_size=2, seq_len=64, dtype="float32", mixed_precision="bf16")),
    ("full-bf16-gc", TINY, "full", {}, dict(batch_size=2, seq_len=64, dtype="float32", mixed_precision="bf16",
                                            gradient_checkpointing=True)),
    ("lora-bf16", TINY, "lora", dict(r=8, target_modules=["q_proj", "v_proj"]),
     dict(batch_size=2, seq_len=64, dtype="float32", mixed_precision="bf16")),
    ("lora-bf16-gc", TINY, "lora", dict(r=8, target_modules=["q_proj", "v_proj"]),
     dict(batch_size=2, seq_len=64, dtype="float32", mixed_precision="bf16", gradient_checkpointing=True)),
    ("lora-all-smallvocab-bf16", SMALL_VOCAB, "lora", dict(r=8, target_modules="all-linear", lora_dropout=0.05),
     dict(batch_size=2, seq_len=256, dtype="float32", mixed_precision="bf16")),
    ("qwen3-lora-bf16", QWEN3, "lora", dict(r=8, target_modules="all-linear"),
     dict(batch_size=2, seq_len=64, dtype="float32", mixed_precision="bf16")),
    ("mistral-window-lora-bf16", dict(TINY, model_type="mistral", sliding_window=32), "lora",
     dict(r=8, target_modules=["q_proj", "v_proj"]), dict(batch_size=2, seq_len=64, dtype="float32", mixed_precision="bf16")),
    ("qwen2-bias-full-bf16", dict(TINY, model_type="qwen2"), "full", {},
     dict(batch_size=2, seq_len=64, dtype="float32", mixed_precision="bf16")),
]


def _measure(config, method, options, settings):
    from executors.measure import measure_step

    plan = planner.estimate(config, method, **options, **settings)
    kwargs = {k: v for k, v in settings.items() if k in SETTINGS_KEYS}
    if plan.peft_config is None and plan.category != "full":
        kwargs["trainable_base_params"] = list(plan_method(planner.load_model(config), method, **options)[0].trainable_base)
    m = measure_step(config, mode="fake", peft_config=plan.peft_config, quantization=plan.settings.quantization, **kwargs)
    assert m.error is None, m.error
    return plan, m


@pytest.mark.slow
@pytest.mark.parametrize("name,config,method,options,settings", CASES, ids=[c[0] for c in CASES])
def test_phase_peaks_match_fake_measurement(name, config, method, options, settings):
    plan, m = _measure(config, method, options, settings)
    steps = 512 * len(_trainable_tensor_keys(config, method, options)) if plan.settings.optimizer == "adamw_torch" else 0
    for phase, measured in m.phase_peaks.items():
        predicted = plan.memory.phase_peaks[phase]
        # step counters are resident from step 1's optimizer phase on: forward/backward of step 2 and the step itself
        err = abs(predicted + steps - measured) / measured
        # Known residuals (docs/memory-model.md, "What the replay does not see yet"): the real forward
        # sometimes holds one more transient than the replay at its peak (eager attention: one
        # (B, heads, L, L) 16-bit tensor; partial fine-tuning: one hidden-size tensor). Saved
        # activations and the backward agree to the byte, so the forward phase gets a wider band.
        tol = {"forward": 0.03 if settings.get("attn_implementation") == "eager" else 0.01}.get(phase, 2e-3)
        assert err <= tol, f"{phase}: predicted {predicted:,} + {steps:,} host step counters vs measured {measured:,}"
    overall = abs(plan.memory.peak_bytes + steps - m.peak_bytes) / m.peak_bytes
    assert overall <= 5e-3
    assert plan.memory.peak_phase == m.peak_phase


def _trainable_tensor_keys(config, method, options) -> list[str]:
    from planner.memory.model import _static
    from planner.memory.modules import Context, module_states, quantized_modules
    from planner.memory.settings import TrainingSettings
    from planner.memory.sim import Sim

    spec = planner.load_model(config)
    mplan = plan_method(spec, method, **options)[0]
    settings = TrainingSettings()
    trainable, adapters = module_states(spec, mplan, settings)
    ctx = Context(spec=spec, plan=mplan, settings=settings, sim=Sim(), trainable=trainable, adapters=adapters,
                  quantized=quantized_modules(spec, settings), compute_dtype="bfloat16", stream_dtype="bfloat16")
    from planner.memory.programs import program_for

    ctx.program = program_for(spec, mplan, settings)
    return [t.key for t in _static(ctx)[2]]


@pytest.mark.slow
@pytest.mark.parametrize("method,options", [("full", {}), ("lora", dict(r=8, target_modules=["q_proj", "v_proj"]))],
                         ids=["full", "lora"])
def test_fp16_autocast_matches_cpu_measurement(method, options):
    """fp16 autocast (GradScaler) is measurable only on real tensors (``cpu`` mode): the same casts as
    bf16; the scaler's scalars (scale, growth tracker, scaled loss, found_inf) are not replayed and
    measured at +512 B (backward) and +1.5 KiB (optimizer step)."""
    from executors.measure import measure_step

    settings = dict(batch_size=2, seq_len=64, dtype="float32", mixed_precision="fp16")
    plan = planner.estimate(TINY, method, **options, **settings)
    assert plan.memory is not None and any("GradScaler" in n for n in plan.notes)
    m = measure_step(TINY, mode="cpu", peft_config=plan.peft_config, **settings)
    assert m.error is None, m.error
    steps = 512 * len(_trainable_tensor_keys(TINY, method, options))
    for phase, measured in m.phase_peaks.items():
        predicted = plan.memory.phase_peaks[phase] + steps
        assert 0 <= measured - predicted <= 2048, f"{phase}: predicted {predicted:,} vs measured {measured:,}"


@pytest.mark.slow
def test_llama2_7b_lora_at_full_scale():
    """A 7B step measured without allocating it: Llama-2-7B, LoRA q,v r=8, batch 1 x 512, bf16."""
    config = planner.catalog.config("meta-llama/Llama-2-7b-hf")
    options = dict(r=8, target_modules=["q_proj", "v_proj"])
    plan, m = _measure(config, "lora", options, dict(batch_size=1, seq_len=512))
    steps = 512 * len(_trainable_tensor_keys(config, "lora", options))
    assert abs(plan.memory.peak_bytes + steps - m.peak_bytes) / m.peak_bytes < 1e-5
