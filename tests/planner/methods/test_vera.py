"""VeRA: planner counts == peft 0.21.2 ``get_nb_trainable_parameters()`` on the real models (meta
device; the shared vera_A / vera_B projections are buffers, in neither count), and the adapter file
size == the real ``adapter_model.safetensors`` (tiny CPU models, with and without ``save_projection``).

Golden values are PEFT's own (``tests.reference``); nothing here is computed by the planner alone.
"""

from __future__ import annotations

import pytest
import torch

import planner
from planner import catalog
from tests.planner.methods.test_against_peft import IDS, SMALL_IDS, check, check_defaults
from tests.planner.methods.test_lycoris import saved_file_size, tiny_config
from tests.reference import apply_peft, build_base


@pytest.mark.parametrize("model_id", IDS)
def test_vera_default_targets(model_id):
    check_defaults(model_id, "vera", "VERA", r=256)


@pytest.mark.parametrize("model_id", SMALL_IDS)
@pytest.mark.parametrize("options", [
    dict(r=64, target_modules="all-linear"),
    dict(r=32, bias="vera_only", target_modules=["q_proj", "v_proj", "c_attn", "query_key_value", "q", "query",
                                                   "qkv_proj", "fc1", "wo"], layers_to_transform=[0, 1]),
    dict(r=16, bias="all", save_projection=False,
         target_modules=r".*\.(q|q_proj|query|c_attn|query_key_value|qkv_proj|dense|down_proj)$"),
])
def test_vera_variants(model_id, options):
    check(model_id, "vera", **options)


def test_vera_counts_only_the_vectors():
    """LLaMA-7B q_proj + v_proj at r=256: 32 x 2 x (4096 lambda_b + 256 lambda_d) = 278,528 trainable (PEFT's
    count); the shared projections vera_A (256, 4096) and vera_B (4096, 256) are buffers, so the total grows by
    exactly the trainable vectors."""
    plan = check("huggyllama/llama-7b", "vera", r=256, target_modules=["q_proj", "v_proj"])
    assert plan.trainable_params == 278_528
    assert plan.total_params - plan.base_params == plan.trainable_params


def test_peft_mapping_input():
    mapping = {"peft_type": "VERA", "r": 128, "target_modules": ["q_proj", "down_proj"], "projection_prng_key": 7,
               "d_initial": 0.05, "vera_dropout": 0.1, "init_weights": True, "task_type": "CAUSAL_LM"}
    plan = check("HuggingFaceTB/SmolLM2-135M", mapping)
    assert plan.method == "vera"


def test_modules_to_save():
    check("google-bert/bert-base-uncased", "vera", r=32, target_modules=["query", "value"], modules_to_save=["transform.dense"])


@pytest.mark.parametrize("model_id,dtype,options", [
    ("HuggingFaceTB/SmolLM2-135M", "bfloat16", dict(r=16, target_modules=["q_proj", "v_proj", "down_proj"])),
    ("HuggingFaceTB/SmolLM2-135M", "float32", dict(r=8, target_modules="all-linear", save_projection=False)),
    ("openai-community/gpt2", "float32", dict(r=8, bias="vera_only")),
    ("openai-community/gpt2", "bfloat16", dict(r=8, target_modules=["c_attn", "c_proj"], modules_to_save=["ln_f"])),
    ("google-t5/t5-base", "bfloat16", dict(r=32, bias="all")),
])
def test_adapter_file_size(model_id, dtype, options, tmp_path):
    """vera_A / vera_B are saved as base_model.vera_A / base_model.vera_B, upcast to float32 with the adapters."""
    config = tiny_config(model_id)
    plan = planner.estimate(config, method="vera", dtype=dtype, **options)
    assert plan.adapter_file_bytes == saved_file_size(config, plan.peft_config, tmp_path, getattr(torch, dtype))


# --- bad input: the planner names the field; PEFT refuses too where it validates --------------------


@pytest.mark.parametrize("options,field,peft_refuses", [
    (dict(r=0), "r", True),
    (dict(r=-8), "r", True),
    (dict(vera_dropout=1.0), "vera_dropout", False),
    (dict(bias="lora_only"), "bias", False),
    (dict(exclude_modules=["k_proj"]), "exclude_modules", False),  # VeraConfig has no such field
    (dict(target_modules=["nonexistent_proj"]), "target_modules", True),
    (dict(target_modules=["embed_tokens"]), "target_modules", True),  # PEFT: only Linear / Conv1D
    (dict(target_modules=["q_proj"], layers_to_transform=[99]), "target_modules", True),
])
def test_bad_input(options, field, peft_refuses):
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate("HuggingFaceTB/SmolLM2-135M", method="vera", **options)
    assert err.value.field == field
    if peft_refuses:
        mapping = {"peft_type": "VERA", "target_modules": ["q_proj"], **options}
        # r = 0: PEFT's kaiming init divides by zero; r < 0: torch refuses the projection shape
        with pytest.raises((ValueError, TypeError, RuntimeError, ZeroDivisionError)):
            apply_peft(build_base(catalog.config("HuggingFaceTB/SmolLM2-135M")), mapping)
