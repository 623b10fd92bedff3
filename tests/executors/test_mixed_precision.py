"""executors' autocast mixed precision (issue 4): ``measure_step(..., mixed_precision=...)``.

The CPU modes run CPU autocast. For the llama ops its casts agree with CUDA autocast's: checked
once (issue 4's report) by tracing the tiny-llama forward under CUDA autocast on fake CUDA tensors
(a no-op CUDA device guard loaded into the CPU build) against CPU autocast: every (op, input
dtypes -> output dtypes) seen on the CPU path is seen on the CUDA path; the paths differ only in
the attention kernel (the fake CUDA SDPA decomposes to the math path).
"""

from __future__ import annotations

import pytest
import torch

from executors.measure import measure_step

TINY = dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000, max_position_embeddings=2048, tie_word_embeddings=False)
LORA = dict(peft_type="LORA", r=8, target_modules=["q_proj", "v_proj"], lora_alpha=8, task_type="CAUSAL_LM")


def test_autocast_casts_and_weight_cache():
    """CPU autocast: linear runs in bf16, and the bf16 copy of a trainable fp32 leaf is cached for the
    autocast region (autocast_mode.cpp ``cached_cast``) while a frozen weight is cast per use."""
    w = torch.nn.Parameter(torch.randn(8, 4))
    frozen = torch.randn(8, 4)
    x = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y1, y2 = torch.nn.functional.linear(x, w), torch.nn.functional.linear(x, w)
        z1, z2 = torch.nn.functional.linear(x, frozen), torch.nn.functional.linear(x, frozen)
    assert y1.dtype == torch.bfloat16 and z1.dtype == torch.bfloat16
    cast1 = y1.grad_fn.next_functions[1][0].next_functions[0][0]  # MmBackward -> TBackward -> ToCopyBackward
    cast2 = y2.grad_fn.next_functions[1][0].next_functions[0][0]
    assert type(cast1).__name__ == "ToCopyBackward0" and cast1 is cast2  # one cached bf16 copy
    assert z1.grad_fn is None and z2.grad_fn is None  # frozen: casts not recorded, not cached


@pytest.mark.parametrize("peft", [None, LORA], ids=["full", "lora"])
def test_fake_bf16_equals_cpu_bf16(peft):
    kw = dict(peft_config=peft, batch_size=2, seq_len=64, dtype="float32", mixed_precision="bf16", steps=2)
    fake = measure_step(TINY, mode="fake", **kw)
    cpu = measure_step(TINY, mode="cpu", **kw)
    assert fake.ok and cpu.ok, (fake.error, cpu.error)
    assert fake.phase_peaks == cpu.phase_peaks
    plain = measure_step(TINY, mode="fake", **{**kw, "mixed_precision": None})
    # the bf16 copies of activations, weights (full) and logits make the forward larger than fp32
    assert fake.phase_peaks["forward"] > plain.phase_peaks["forward"]
    assert fake.settings["mixed_precision"] == "bf16"


def test_fp16_grad_scaler_cpu_and_fake_refusal():
    kw = dict(peft_config=LORA, batch_size=2, seq_len=32, dtype="float32", mixed_precision="fp16", steps=2)
    assert measure_step(TINY, mode="cpu", **kw).ok
    fake = measure_step(TINY, mode="fake", **kw)
    assert not fake.ok and "GradScaler" in fake.error


def test_mixed_precision_needs_fp32_weights():
    with pytest.raises(ValueError, match="fp32"):
        measure_step(TINY, mode="fake", dtype="bfloat16", mixed_precision="bf16")
