"""Adaption prompt (LLaMA-Adapter): planner counts == PEFT 0.21.2 ``get_nb_trainable_parameters()``
on the real models (meta device); file bytes / keys == a real ``save_pretrained``; unsupported
model types are refused by both."""

from __future__ import annotations

import pytest

import planner
from planner import catalog
from planner.methods.adaption_prompt import ADAPTION_PROMPT_MODEL_TYPES
from tests.planner.methods.test_against_peft import IDS, check
from tests.planner.methods.test_ln_tuning import check_saved_file
from tests.reference import apply_peft, build_base


def test_supported_model_types_match_peft():
    from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG

    assert ADAPTION_PROMPT_MODEL_TYPES == {k: v.target_modules for k, v in TRANSFORMERS_MODEL_CONFIG.items()}


@pytest.mark.parametrize("model_id", IDS)
def test_adaption_prompt_catalog(model_id):
    spec = planner.load_model(model_id)
    if spec.model_type in ADAPTION_PROMPT_MODEL_TYPES:
        plan = check(model_id, "adaption_prompt", adapter_len=10, adapter_layers=2)
        assert plan.trainable_params == 2 * (10 * spec.hidden_size + 1)
    else:
        with pytest.raises(planner.MethodConfigError, match="not supported for model_type"):
            planner.estimate(model_id, method="adaption_prompt", adapter_len=10, adapter_layers=2)
        with pytest.raises(ValueError, match="Unsupported model type"):
            apply_peft(build_base(catalog.config(model_id)),
                       {"peft_type": "ADAPTION_PROMPT", "adapter_len": 10, "adapter_layers": 2, "task_type": "CAUSAL_LM"})


@pytest.mark.parametrize("model_id", ["huggyllama/llama-7b", "openai-community/gpt2", "mistralai/Mistral-7B-v0.1"])
def test_adaption_prompt_every_layer_by_default(model_id):
    spec = planner.load_model(model_id)
    plan = check(model_id, "adaption_prompt", adapter_len=4)
    assert plan.trainable_params == spec.num_layers * (4 * spec.hidden_size + 1)


def test_adaption_prompt_paper_llama_7b():
    """LLaMA-Adapter's setting: K=10 prompts in the top L=30 of LLaMA-7B's 32 layers:
    30 x (10 x 4096 + 1) = 1,228,830 (the paper's "1.2M parameters")."""
    plan = check("huggyllama/llama-7b", "adaption_prompt", adapter_len=10, adapter_layers=30)
    assert plan.trainable_params == 1_228_830
    assert plan.peft_config["target_modules"] == "self_attn"


@pytest.mark.parametrize("model_id", ["HuggingFaceTB/SmolLM2-135M", "mistralai/Mistral-7B-v0.1", "openai-community/gpt2"])
def test_adaption_prompt_adapter_file_equals_real_save(model_id, tmp_path):
    """bf16 model: prompts and gates are bf16 (no float32 autocast for this tuner)."""
    check_saved_file(model_id, "adaption_prompt", tmp_path, adapter_len=3, adapter_layers=2)


@pytest.mark.parametrize("model_id,options,field", [
    ("huggyllama/llama-7b", dict(adapter_layers=33), "adapter_layers"),
    ("huggyllama/llama-7b", dict(adapter_layers=0), "adapter_layers"),
    ("huggyllama/llama-7b", dict(adapter_len=0), "adapter_len"),
    ("huggyllama/llama-7b", dict(adapter_len=-3), "adapter_len"),
    ("huggyllama/llama-7b", dict(target_modules="mlp"), "target_modules"),
    ("huggyllama/llama-7b", dict(r=8), "r"),
    ("Qwen/Qwen2.5-0.5B", dict(), "method"),  # not in PEFT's TRANSFORMERS_MODEL_CONFIG
    ("google-t5/t5-base", dict(), "method"),
])
def test_adaption_prompt_bad_options(model_id, options, field):
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate(model_id, method="adaption_prompt", **options)
    assert err.value.field == field
