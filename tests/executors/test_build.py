"""executors.build: real models on meta / CPU, PEFT counts, adapter file size."""

from __future__ import annotations

import os

import pytest

from executors.build import adapter_file_bytes, build_model, count, peft_config_from_dict
from planner import catalog

LLAMA2_7B = "meta-llama/Llama-2-7b-hf"


def test_meta_build_llama2_7b_matches_catalog_count() -> None:
    built = build_model(catalog.config(LLAMA2_7B), device="meta")
    trainable, total = count(built)
    assert total == catalog.entry(LLAMA2_7B).params_from_config == 6_738_415_616
    assert trainable == total  # full fine-tuning: everything trains


def test_t5_v11_is_built_untied_like_the_checkpoint() -> None:
    # catalog: params_from_config is transformers 5's forced-tied count; the checkpoint is untied.
    entry = catalog.entry("google/flan-t5-xl")
    built = build_model(catalog.config(entry.id), device="meta")
    assert built.model.lm_head.weight is not built.model.shared.weight
    assert count(built)[1] == entry.published_params == 2_849_757_184
    tied = build_model(catalog.config("google-t5/t5-base"), device="meta")
    assert count(tied)[1] == catalog.entry("google-t5/t5-base").params_from_config


def test_lora_qv_r8_on_llama2_7b_counts_4194304() -> None:
    # 32 layers x 2 modules x r * (4096 + 4096) = 4,194,304 (PEFT's print_trainable_parameters).
    lora = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
    built = build_model(catalog.config(LLAMA2_7B), peft_config=lora, device="meta")
    assert count(built) == (4_194_304, 6_738_415_616 + 4_194_304)
    # 4,194,304 fp32 values + the safetensors header
    assert 4_194_304 * 4 < adapter_file_bytes(built) < 4_194_304 * 4 + 64 * 1024


def test_qlora_meta_counts_like_peft() -> None:
    q4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
          "bnb_4bit_compute_dtype": "bfloat16"}
    lora = {"peft_type": "LORA", "r": 64, "target_modules": "all-linear"}
    built = build_model(catalog.config(LLAMA2_7B), peft_config=lora, quantization=q4, device="meta")
    trainable, total = count(built)
    assert trainable == 159_907_840  # r=64 on all 7 linears of 32 layers
    assert total == 6_738_415_616 + trainable  # Params4bit counted numel * 2


def test_peft_config_mapping_drops_unknown_keys_and_keeps_task_type_optional() -> None:
    cfg = peft_config_from_dict({"peft_type": "LORA", "r": 4, "target_modules": {"q_proj"}, "from_the_future": 1})
    assert cfg.r == 4 and cfg.task_type is None
    ada = peft_config_from_dict({"peft_type": "ADALORA", "target_modules": ["q_proj"]})
    assert ada.total_step  # filled in: AdaLoRA refuses to build without it


def test_trainable_base_params_freeze_the_rest(llama_tiny) -> None:
    built = build_model(llama_tiny, trainable_base_params=["model.norm.weight", "lm_head.weight"], device="meta")
    assert count(built)[0] == 64 + 512 * 64
    assert [n for n, _ in built.trainable_named_parameters()] == ["model.norm.weight", "lm_head.weight"]
    with pytest.raises(ValueError, match="unknown base parameters"):
        build_model(llama_tiny, trainable_base_params=["nope.weight"], device="meta")


PEFT_CASES = {
    "LORA": {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"]},
    "IA3": {"peft_type": "IA3", "target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    "DORA": {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "use_dora": True, "use_rslora": True},
    "ADALORA": {"peft_type": "ADALORA", "r": 4, "target_modules": ["q_proj"], "total_step": 10},
    "PREFIX_TUNING": {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 8, "task_type": "CAUSAL_LM"},
    "P_TUNING": {"peft_type": "P_TUNING", "num_virtual_tokens": 8, "encoder_hidden_size": 32, "task_type": "CAUSAL_LM"},
    "BOFT": {"peft_type": "BOFT", "boft_block_size": 4, "target_modules": ["q_proj"]},
    "VERA": {"peft_type": "VERA", "r": 16, "target_modules": ["q_proj", "v_proj"]},
    "TRAINABLE_TOKENS": {"peft_type": "TRAINABLE_TOKENS", "token_indices": [1, 2], "target_modules": ["embed_tokens"]},
}


@pytest.mark.parametrize("name", list(PEFT_CASES))
def test_adapter_file_bytes_equals_a_real_save(name: str, llama_tiny, tmp_path) -> None:
    real = build_model(llama_tiny, peft_config=PEFT_CASES[name], device="cpu")
    real.peft_model_or_model.save_pretrained(tmp_path)
    on_disk = os.path.getsize(tmp_path / "adapter_model.safetensors")
    assert adapter_file_bytes(real) == on_disk
    meta = build_model(llama_tiny, peft_config=PEFT_CASES[name], device="meta")
    assert adapter_file_bytes(meta) == on_disk
    assert count(meta) == count(real)
