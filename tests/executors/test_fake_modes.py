"""Fake mode reproduces the CPU trace byte for byte where it used to fail or drift.

- QLoRA (4-bit base): fake packed weights + quant state from ``bitsandbytes.functional.quantize_4bit``.
- LoHa / LoKr (``torch.rand(1) > module_dropout``) and VB-LoRA (``isinf().any()`` check): data-dependent
  Python branches answered without reading fake values.
- DoRA: its detached ``lora_B @ lora_A`` branch used to live until Python's cyclic GC ran (ModTracker's
  multi-grad hooks formed a cycle), at different moments with real and fake tensors (32 KiB apart).
"""

from __future__ import annotations

import pytest

from executors.measure import measure_step

QV = ["q_proj", "v_proj"]
NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
       "bnb_4bit_compute_dtype": "bfloat16"}

CASES = {
    "qlora-nf4-double-quant": dict(quantization=NF4, peft_config={"peft_type": "LORA", "r": 8,
                                                                   "target_modules": "all-linear"}),
    "qlora-fp4-fp32": dict(quantization={"load_in_4bit": True, "bnb_4bit_compute_dtype": "float32"}, dtype="float32",
                           peft_config={"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}),
    "dora": dict(peft_config={"peft_type": "LORA", "r": 4, "target_modules": QV, "use_dora": True}),
    "loha": dict(peft_config={"peft_type": "LOHA", "r": 4, "target_modules": QV, "module_dropout": 0.1}),
    "lokr": dict(peft_config={"peft_type": "LOKR", "r": 4, "target_modules": QV}),
    "vblora": dict(peft_config={"peft_type": "VBLORA", "r": 4, "target_modules": QV, "vector_length": 16,
                                "num_vectors": 32}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fake_equals_cpu(llama_tiny, name) -> None:
    settings = CASES[name]
    if "quantization" in settings:
        pytest.importorskip("bitsandbytes")
    cpu = measure_step(llama_tiny, mode="cpu", batch_size=2, seq_len=32, **settings)
    fake = measure_step(llama_tiny, mode="fake", batch_size=2, seq_len=32, **settings)
    assert cpu.ok and fake.ok, (cpu.error, fake.error)
    assert fake.peak_bytes == cpu.peak_bytes
    assert fake.details == cpu.details  # every phase of every step, every category
    assert (fake.trainable_params, fake.total_params) == (cpu.trainable_params, cpu.total_params)


def test_fake_qlora_holds_packed_weights_and_quant_state(llama_tiny) -> None:
    pytest.importorskip("bitsandbytes")
    config = dict(llama_tiny, hidden_size=256, intermediate_size=512)  # linears dominate the weights
    lora = {"peft_type": "LORA", "r": 8, "target_modules": "all-linear"}
    plain = measure_step(config, mode="fake", batch_size=1, seq_len=16, peft_config=lora)
    q = measure_step(config, mode="fake", batch_size=1, seq_len=16, peft_config=lora, quantization=NF4)
    assert q.ok, q.error
    # PEFT counts each packed 4-bit weight as numel * 2 (Params4bit), as on a real quantized model
    assert q.total_params == plain.total_params and q.trainable_params == plain.trainable_params
    # 4-bit linears (a quarter of bf16, plus absmax / code tables), although prepare_model_for_kbit_training
    # upcasts embeddings, norms and lm_head to fp32
    assert q.breakdown["weights"] < 0.7 * plain.breakdown["weights"]


def test_fake_int8_optimizer_is_reported_not_raised(llama_tiny) -> None:
    m = measure_step(llama_tiny, mode="fake", batch_size=1, seq_len=16, optimizer="paged_adamw_8bit")
    assert not m.ok and "data-dependent" in (m.error or "")
