"""``attn_implementation="flash_attention_2"``: modelled, not measured.

No golden values exist: fake / CPU mode has no flash-attn kernel and no GPU run is committed, so
these tests check what the model claims structurally (transformers 5.24
``integrations/flash_attention.py`` + flash-attn 2 ``FlashAttnFunc``) and that the plan says it is
unmeasured, with the wider band (``planner.constants.FLASH_ATTENTION_2_ERROR_BAND``):

- without a mask the FA2 step is SDPA's flash-backend step (same saved q, k, v, out, fp32
  log-sum-exp) plus flash-attn's int64 RNG state per layer (one 512-byte block);
- where SDPA needs a mask (Mistral from ``sliding_window`` tokens on, prefix tuning), FA2 does not
  (no bool / additive masks, no repeated keys / values), so it needs less;
- fp32 weights without autocast cannot run FA2: no estimate, and the reason.
"""

from __future__ import annotations

import planner
from planner.constants import CUDA_ALLOCATION_ROUNDING_BYTES, FLASH_ATTENTION_2_ERROR_BAND

QV = dict(r=8, target_modules=["q_proj", "v_proj"])


def mem(model, method, attn, **kw):
    return planner.estimate(model, method, attn_implementation=attn, **kw)


def test_without_a_mask_fa2_is_sdpa_plus_the_rng_state_per_layer():
    spec = planner.load_model("meta-llama/Llama-3.1-8B")
    kw = dict(r=16, target_modules="all-linear", batch_size=2, seq_len=2048)
    fa2 = mem("meta-llama/Llama-3.1-8B", "lora", "flash_attention_2", **kw).memory
    sdpa = mem("meta-llama/Llama-3.1-8B", "lora", "sdpa", **kw).memory
    for phase in ("forward", "backward"):
        extra = fa2.phase_peaks[phase] - sdpa.phase_peaks[phase]
        assert 0 <= extra <= CUDA_ALLOCATION_ROUNDING_BYTES * spec.num_layers, phase
    assert fa2.phase_peaks["optimizer"] == sdpa.phase_peaks["optimizer"]


def test_plan_says_modelled_not_measured_with_the_wider_band():
    plan = mem("meta-llama/Llama-3.1-8B", "lora", "flash_attention_2", **QV)
    assert plan.memory is not None
    assert plan.memory.error_band == FLASH_ATTENTION_2_ERROR_BAND > 0.02
    assert any("modelled, not measured" in n for n in plan.notes)


def test_fa2_builds_no_sliding_window_mask():
    kw = dict(**QV, batch_size=2, seq_len=8192)
    fa2 = mem("mistralai/Mistral-7B-v0.1", "lora", "flash_attention_2", **kw).memory
    sdpa = mem("mistralai/Mistral-7B-v0.1", "lora", "sdpa", **kw).memory
    below = dict(**QV, batch_size=2, seq_len=2048)
    assert fa2.peak_bytes < sdpa.peak_bytes  # SDPA: masks and repeated keys / values per layer
    assert abs(mem("mistralai/Mistral-7B-v0.1", "lora", "flash_attention_2", **below).memory.peak_bytes
               - mem("mistralai/Mistral-7B-v0.1", "lora", "sdpa", **below).memory.peak_bytes) <= 512 * 32


def test_fa2_prefix_tuning_needs_no_mask():
    kw = dict(num_virtual_tokens=20, batch_size=4, seq_len=1024)
    for model in ("meta-llama/Llama-2-7b-hf", "openai-community/gpt2"):
        fa2 = mem(model, "prefix_tuning", "flash_attention_2", **kw).memory
        sdpa = mem(model, "prefix_tuning", "sdpa", **kw).memory
        assert fa2.peak_bytes < sdpa.peak_bytes, model


def test_fa2_casts_the_fp32_stream_of_4bit_loading():
    """QLoRA: the residual stream is fp32, so transformers casts q, k, v to bf16 for the kernel,
    which then saves bf16 (SDPA would run and save them in fp32)."""
    kw = dict(r=16, target_modules="all-linear", batch_size=2, seq_len=2048)
    fa2 = mem("meta-llama/Llama-3.1-8B", "qlora", "flash_attention_2", **kw).memory
    sdpa = mem("meta-llama/Llama-3.1-8B", "qlora", "sdpa", **kw).memory
    assert fa2.peak_bytes < sdpa.peak_bytes


def test_fp32_weights_and_unmodelled_families_have_no_estimate():
    plan = mem("meta-llama/Llama-2-7b-hf", "lora", "flash_attention_2", dtype="float32", **QV)
    assert plan.memory is None and any("float16 / bfloat16 only" in n for n in plan.notes)
    plan = mem("microsoft/phi-2", "lora", "flash_attention_2")
    assert plan.memory is None and any("flash_attention_2 is not modelled for model_type 'phi'" in n for n in plan.notes)
