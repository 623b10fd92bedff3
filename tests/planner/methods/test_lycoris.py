"""LoHa and LoKr: planner counts == peft 0.21.2 ``get_nb_trainable_parameters()`` on the real models
(meta device), and the adapter file size == the real ``adapter_model.safetensors`` (tiny CPU models).

Golden values are PEFT's own (``tests.reference``); nothing here is computed by the planner alone.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

import planner
from planner import catalog
from tests.planner.methods.test_against_peft import IDS, SMALL_IDS, check, check_defaults
from tests.reference import apply_peft, build_base

#: Tiny versions of catalog configs, for building real CPU models and saving their adapters.
TINY = {
    "HuggingFaceTB/SmolLM2-135M": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                       num_key_value_heads=2, head_dim=16, vocab_size=128),
    "openai-community/gpt2": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64),
    "google-t5/t5-base": dict(num_layers=2, num_decoder_layers=2, d_model=64, d_kv=16, d_ff=96, num_heads=4,
                              vocab_size=128),
}


def tiny_config(model_id: str) -> dict:
    cfg = copy.deepcopy(catalog.config(model_id))
    cfg.update(TINY[model_id])
    return cfg


def saved_file_size(config: dict, mapping: dict, tmp_path, dtype: torch.dtype = torch.float32) -> int:
    """Size of the adapter_model.safetensors PEFT writes for a real (tiny, CPU) model."""
    model = apply_peft(build_base(config, device="cpu", dtype=dtype), mapping)
    model.save_pretrained(str(tmp_path))
    return os.path.getsize(tmp_path / "adapter_model.safetensors")


def check_lycoris(model_id: str, method: str, peft_type: str, **options):
    """Like ``check_defaults``, but where the targets reach GPT-2's transformers ``Conv1D`` both refuse:
    PEFT's LyCORIS layers exist only for torch Linear / Conv1d / Conv2d (TypeError)."""
    if planner.load_model(model_id).model_type == "gpt2":
        with pytest.raises(planner.TargetModulesError, match="conv1d module") as err:
            planner.estimate(model_id, method=method, **options)
        assert err.value.field == "target_modules"
        with pytest.raises(TypeError):
            apply_peft(build_base(catalog.config(model_id)), {"peft_type": peft_type, **options})
        return None
    if options.get("target_modules") is None:
        return check_defaults(model_id, method, peft_type, **options)
    return check(model_id, method, **options)


@pytest.mark.parametrize("model_id", IDS)
def test_loha_default_targets(model_id):
    check_lycoris(model_id, "loha", "LOHA", r=8)


@pytest.mark.parametrize("model_id", SMALL_IDS)  # LoKr's defaults are LoHa's (peft_defaults.json); kept short
def test_lokr_default_targets(model_id):
    check_lycoris(model_id, "lokr", "LOKR", r=8)


#: Targets per family that are Linear everywhere in SMALL_IDS (GPT-2's are Conv1D: refused by both).
ATTN = ["q_proj", "v_proj", "query_key_value", "q", "query", "qkv_proj", "c_attn", "fc1", "wo"]


@pytest.mark.parametrize("model_id", SMALL_IDS)
@pytest.mark.parametrize("options", [
    dict(r=4, target_modules="all-linear", exclude_modules=["down_proj", "fc2", "wo", "dense_4h_to_h"]),
    dict(r=16, alpha=32, target_modules=r".*\.(q|q_proj|query|query_key_value|qkv_proj|c_attn|v_proj|v)$",
         rank_pattern={"v_proj": 2, "q": 3}, rank_dropout=0.1),
])
def test_loha_variants(model_id, options):
    check_lycoris(model_id, "loha", "LOHA", **options)


@pytest.mark.parametrize("model_id", SMALL_IDS)
@pytest.mark.parametrize("options", [
    dict(r=4, target_modules="all-linear", decompose_both=True),  # small r: w1 and w2 both factored
    dict(r=64, target_modules=ATTN, decompose_factor=8),  # large r: w2 kept whole; factor 8 when it divides
    dict(r=2, target_modules=ATTN, decompose_both=True, decompose_factor=16, layers_to_transform=[0, 1],
         rank_pattern={"q_proj": 128, "query": 128}),
])
def test_lokr_variants(model_id, options):
    check_lycoris(model_id, "lokr", "LOKR", **options)


def test_peft_mapping_input():
    """An adapter_config.json-like mapping (with fields that change nothing) counts the same."""
    mapping = {"peft_type": "LOKR", "r": 8, "alpha": 16, "target_modules": ["q_proj", "o_proj"], "init_weights": "lycoris",
               "rank_dropout_scale": True, "module_dropout": 0.1, "inference_mode": False, "task_type": "CAUSAL_LM"}
    plan = check("HuggingFaceTB/SmolLM2-135M", mapping)
    assert plan.method == "lokr" and plan.peft_type == "LOKR"


def test_loha_modules_to_save():
    check("google-bert/bert-base-uncased", "loha", r=4, target_modules=["query", "value"], modules_to_save=["transform.dense"])


def test_lokr_shapes_follow_peft():
    """LLaMA-7B q_proj (4096 -> 4096) at r=8: factorization(4096) = (64, 64), r < 64/2 so w2 is
    factored: lokr_w1 (64, 64) + lokr_w2_a (64, 8) + lokr_w2_b (8, 64) = 5120 per module (PEFT's count)."""
    plan = check("huggyllama/llama-7b", "lokr", r=8, target_modules=["q_proj"])
    assert plan.trainable_params == 32 * 5120


@pytest.mark.parametrize("method,peft_type,extra", [("loha", "LOHA", {}), ("lokr", "LOKR", {"decompose_both": True}),
                                                    ("lokr", "LOKR", {"r": 48})])
@pytest.mark.parametrize("model_id,dtype", [("HuggingFaceTB/SmolLM2-135M", "bfloat16"), ("google-t5/t5-base", "float32")])
def test_adapter_file_size(method, peft_type, extra, model_id, dtype, tmp_path):
    config = tiny_config(model_id)
    options = {"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj", "q", "wo"], **extra}
    plan = planner.estimate(config, method=method, dtype=dtype, **options)
    assert plan.adapter_file_bytes == saved_file_size(config, plan.peft_config, tmp_path, getattr(torch, dtype))


def test_adapter_file_size_modules_to_save(tmp_path):
    config = tiny_config("HuggingFaceTB/SmolLM2-135M")
    plan = planner.estimate(config, method="loha", dtype="float32", r=2, target_modules=["k_proj"], modules_to_save=["lm_head"])
    assert plan.adapter_file_bytes == saved_file_size(config, plan.peft_config, tmp_path)


# --- bad input: both the planner and PEFT refuse, the planner naming the field -------------------


@pytest.mark.parametrize("method", ["loha", "lokr"])
@pytest.mark.parametrize("options,field", [
    (dict(r=0), "r"),
    (dict(r=-2), "r"),
    (dict(rank_pattern={"q_proj": 0}), "rank_pattern"),
    (dict(rank_dropout=1.5), "rank_dropout"),
    (dict(target_modules=["nonexistent_proj"]), "target_modules"),
    (dict(target_modules=["embed_tokens"]), "target_modules"),  # an Embedding: PEFT raises TypeError
    (dict(target_modules=["q_proj"], layers_to_transform=[99]), "target_modules"),
])
def test_bad_input(method, options, field):
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate("HuggingFaceTB/SmolLM2-135M", method=method, **options)
    assert err.value.field == field
    if field == "target_modules" or field == "r":
        mapping = {"peft_type": method.upper(), "target_modules": ["q_proj"], **options}
        with pytest.raises((ValueError, TypeError)):
            apply_peft(build_base(catalog.config("HuggingFaceTB/SmolLM2-135M")), mapping)


def test_bad_decompose_factor():
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate("HuggingFaceTB/SmolLM2-135M", method="lokr", decompose_factor=0)
    assert err.value.field == "decompose_factor"


def test_unknown_option_named():
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate("HuggingFaceTB/SmolLM2-135M", method="loha", decompose_both=True)  # a LoKr-only field
    assert err.value.field == "decompose_both"
