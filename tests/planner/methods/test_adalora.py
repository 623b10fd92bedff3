"""AdaLoRA: planner counts == peft 0.21.2 ``get_nb_trainable_parameters()`` on the real models
(meta device, at the initial rank ``init_r`` as ``get_peft_model`` builds them), and the adapter
file size == the real ``adapter_model.safetensors`` (tiny CPU models, incl. a pruned ``rank_pattern``).

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

TOTAL = {"total_step": 100}  # PEFT requires it; the planner does not (see test_total_step_defaulted)


@pytest.mark.parametrize("model_id", IDS)
def test_adalora_default_targets(model_id):
    check_defaults(model_id, "adalora", "ADALORA", init_r=12, **TOTAL)


@pytest.mark.parametrize("model_id", SMALL_IDS)
@pytest.mark.parametrize("options", [
    dict(init_r=4, target_r=2, target_modules="all-linear"),
    dict(init_r=8, bias="lora_only", target_modules=["q_proj", "v_proj", "c_attn", "query_key_value", "q", "query",
                                                      "qkv_proj", "fc1", "wo"], layers_to_transform=[0, 1]),
    dict(init_r=6, bias="all", target_modules=r".*\.(q|q_proj|query|c_attn|query_key_value|qkv_proj|dense)$"),
])
def test_adalora_variants(model_id, options):
    check(model_id, "adalora", **options, **TOTAL)


def test_adalora_counts_init_r_not_r():
    """AdaLoRA builds every module at init_r (LoRA's r is ignored): LLaMA-7B q_proj + v_proj at init_r=12:
    32 x 2 x (12*4096 + 4096*12 + 12 + 1 ranknum) = 6,292,288 trainable, as PEFT reports."""
    plan = check("huggyllama/llama-7b", "adalora", init_r=12, target_modules=["q_proj", "v_proj"], **TOTAL)
    assert plan.trainable_params == 6_292_288


def test_total_step_defaulted():
    """Without total_step the planner still counts; its PEFT config carries a valid default (PEFT needs one)."""
    plan = check("HuggingFaceTB/SmolLM2-135M", "adalora", init_r=4, tinit=10, tfinal=20)
    assert plan.peft_config["total_step"] > 30
    assert any("total_step" in n for n in plan.notes)


def test_peft_mapping_input():
    """An adapter_config.json-like mapping: LoRA fields AdaLoRA ignores (r, lora_bias, use_rslora) change nothing."""
    mapping = {"peft_type": "ADALORA", "r": 64, "init_r": 8, "target_r": 4, "total_step": 50, "lora_alpha": 16,
               "use_rslora": True, "target_modules": ["q_proj", "k_proj"], "use_dora": False, "loftq_config": {},
               "task_type": "CAUSAL_LM", "inference_mode": False}
    plan = check("HuggingFaceTB/SmolLM2-135M", mapping)
    assert plan.method == "adalora"


def test_modules_to_save():
    check("google-bert/bert-base-uncased", "adalora", init_r=4, target_modules=["query", "value"],
          modules_to_save=["transform.dense"], **TOTAL)


@pytest.mark.parametrize("model_id,dtype,options", [
    ("HuggingFaceTB/SmolLM2-135M", "bfloat16", dict(init_r=6, target_modules=["q_proj", "v_proj", "down_proj"])),
    ("HuggingFaceTB/SmolLM2-135M", "float32", dict(init_r=4, target_modules="all-linear", bias="lora_only")),
    ("openai-community/gpt2", "float32", dict(init_r=4, bias="all")),
    ("openai-community/gpt2", "bfloat16", dict(init_r=3, target_modules=["c_attn", "c_fc"], modules_to_save=["ln_f"])),
    ("google-t5/t5-base", "bfloat16", dict(init_r=2)),
])
def test_adapter_file_size(model_id, dtype, options, tmp_path):
    config = tiny_config(model_id)
    plan = planner.estimate(config, method="adalora", dtype=dtype, **options, **TOTAL)
    assert plan.adapter_file_bytes == saved_file_size(config, plan.peft_config, tmp_path, getattr(torch, dtype))


def test_adapter_file_size_rank_pattern(tmp_path):
    """A trained AdaLoRA's rank_pattern: PEFT's save_pretrained keeps sum(mask) singular values of each listed
    module (one pruned to 0); the counts stay at init_r."""
    config = tiny_config("HuggingFaceTB/SmolLM2-135M")
    pattern = {"model.layers.0.self_attn.q_proj.lora_E": [True, False, True, False],
               "model.layers.1.self_attn.v_proj.lora_E.default": [False] * 4}
    options = dict(init_r=4, target_modules=["q_proj", "v_proj"], rank_pattern=pattern, **TOTAL)
    plan = planner.estimate(config, method="adalora", dtype="float32", **options)
    unpruned = planner.estimate(config, method="adalora", dtype="float32", **{**options, "rank_pattern": None})
    assert plan.trainable_params == unpruned.trainable_params
    assert plan.adapter_file_bytes < unpruned.adapter_file_bytes
    assert plan.adapter_file_bytes == saved_file_size(config, plan.peft_config, tmp_path)


# --- bad input: the planner names the field; PEFT refuses too where it validates --------------------


@pytest.mark.parametrize("options,field,peft_refuses", [
    (dict(init_r=0), "init_r", False),  # PEFT builds an empty adapter; the planner refuses it
    (dict(init_r=-1), "init_r", True),
    (dict(total_step=0), "total_step", True),
    (dict(total_step=10, tinit=5, tfinal=5), "total_step", True),
    (dict(orth_reg_weight=-0.1), "orth_reg_weight", True),
    (dict(use_dora=True), "use_dora", True),
    (dict(beta1=1.0), "beta1", True),
    (dict(target_modules=["nonexistent_proj"]), "target_modules", True),
    (dict(target_modules=["embed_tokens"]), "target_modules", True),  # PEFT: only Linear / Conv1D / Conv2d
    (dict(target_modules=["q_proj"], layers_to_transform=[99]), "target_modules", True),
    (dict(target_parameters=["mlp.experts.down_proj"]), "target_parameters", False),
    (dict(rank_pattern={"model.layers.0.self_attn.q_proj.lora_E": [True] * 3}), "rank_pattern", False),
    (dict(rank_pattern={"model.layers.0.mlp.up_proj.lora_E": [True] * 12}), "rank_pattern", False),
])
def test_bad_input(options, field, peft_refuses):
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate("HuggingFaceTB/SmolLM2-135M", method="adalora", **{**TOTAL, **options})
    assert err.value.field == field
    if peft_refuses:
        mapping = {"peft_type": "ADALORA", "target_modules": ["q_proj"], **TOTAL, **options}
        with pytest.raises((ValueError, TypeError, AssertionError)):
            apply_peft(build_base(catalog.config("HuggingFaceTB/SmolLM2-135M")), mapping)


def test_lora_r_is_not_an_option():
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate("HuggingFaceTB/SmolLM2-135M", method="adalora", r=8)
    assert err.value.field == "r" and "init_r" in str(err.value)
