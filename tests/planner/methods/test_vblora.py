"""VB-LoRA: planner counts == PEFT 0.21.2's ``get_nb_trainable_parameters()`` (one shared vector bank,
logits per module), adapter file size == the real ``adapter_model.safetensors``, and vector lengths
that do not divide a module refused like PEFT refuses them. Golden values come from PEFT itself.
"""

from __future__ import annotations

import pytest
from safetensors import safe_open

import planner
from planner import catalog
from planner.constants import SAFETENSORS_TAG
from planner.api import plan_method
from planner.methods.vblora import VBLoRAConfig, topk_index_dtype, topk_saved_tensors
from tests.planner.methods.test_against_peft import IDS, SMALL_IDS, check
from tests.planner.methods.test_oft import (
    ALL_LINEAR_NAMES, both_or_check, defaults_or_both_refuse, saved_file_matches, tiny_gpt2, tiny_llama,
)
from tests.reference import apply_peft, build_base, counts

#: Catalog models whose default targets have a dimension 256 does not divide (PEFT raises ValueError).
NOT_DIVISIBLE_BY_256 = {"Qwen/Qwen2.5-0.5B": 896, "openai-community/gpt2-xl": 1600, "HuggingFaceTB/SmolLM2-135M": 576}


@pytest.mark.parametrize("model_id", IDS)
def test_vblora_default_targets(model_id):
    err = defaults_or_both_refuse(model_id, "vblora", "VBLORA", ValueError)
    if model_id in NOT_DIVISIBLE_BY_256:
        assert err.field == "vector_length" and f"({NOT_DIVISIBLE_BY_256[model_id]})" in str(err)
    else:
        assert err is None


@pytest.mark.parametrize("model_id", SMALL_IDS)
@pytest.mark.parametrize("options", [
    dict(r=2, num_vectors=64, vector_length=64, topk=3, bias="vblora_only", target_modules="all-linear"),
    dict(num_vectors=300, vector_length=128, vblora_dropout=0.1, bias="all", target_modules=ALL_LINEAR_NAMES,
         layers_to_transform=[0, 1]),
])
def test_vblora_variants(model_id, options):
    err = both_or_check(model_id, "vblora", "VBLORA", ValueError, **options)
    # 128 does not divide SmolLM2's 576 or falcon's 4544
    refused = options["vector_length"] == 128 and model_id in ("HuggingFaceTB/SmolLM2-135M", "tiiuae/falcon-7b")
    assert (err is not None) == refused
    if refused:
        assert err.field == "vector_length"


def test_vblora_bank_shared_and_counted_once():
    plan = check("meta-llama/Llama-2-7b-hf", "vblora", r=4, num_vectors=256, vector_length=256,
                 target_modules=["q_proj", "v_proj"])
    per_module = 4 * (4096 // 256) * 256 + (4096 // 256) * 4 * 256
    assert plan.trainable_params == 256 * 256 + 64 * per_module


@pytest.mark.parametrize("config,options", [
    (tiny_llama, dict(vector_length=32, num_vectors=16)),
    (tiny_llama, dict(vector_length=32, num_vectors=300, r=2, target_modules="all-linear", bias="all", dtype="bfloat16")),
    (tiny_gpt2, dict(vector_length=32, num_vectors=16, bias="vblora_only")),
    (tiny_gpt2, dict(vector_length=64, num_vectors=8, topk=8, target_modules=["c_attn", "lm_head"])),
])
def test_vblora_adapter_file(config, options, tmp_path):
    saved_file_matches(config(), "vblora", tmp_path, **options)


@pytest.mark.parametrize("num_vectors,dtype,targets", [
    (16, "uint8", ["q_proj", "down_proj"]),
    (300, "int16", ["q_proj", "down_proj"]),
    (2 ** 15, "int32", ["q_proj"]),
])
def test_vblora_save_only_topk_weights(num_vectors, dtype, targets, tmp_path):
    """PEFT then saves top-k indices (smallest integer dtype for num_vectors) and k-1 weights per logits
    tensor instead of the logits; the counts do not change. Keys, dtypes and size == the real file."""
    options = dict(vector_length=32, num_vectors=num_vectors, topk=3, target_modules=targets)
    plan = planner.estimate(tiny_llama(), method="vblora", dtype="float32", save_only_topk_weights=True, **options)
    full = planner.estimate(tiny_llama(), method="vblora", dtype="float32", **options)
    assert (plan.trainable_params, plan.total_params) == (full.trainable_params, full.total_params)
    assert plan.adapter_file_bytes < full.adapter_file_bytes
    assert any(dtype in n for n in plan.notes)

    model = apply_peft(build_base(tiny_llama(), device="cpu"), plan.peft_config)
    assert (plan.trainable_params, plan.total_params) == counts(model)
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    with safe_open(path, "pt") as f:
        real = {k: (tuple(f.get_slice(k).get_shape()), str(f.get_slice(k).get_dtype())) for k in f.keys()}
    assert plan.adapter_file_bytes == path.stat().st_size

    mplan = plan_method(planner.load_model(tiny_llama()), "vblora", save_only_topk_weights=True, **options)[0]
    planned = {t.saved_name: (t.shape, t.dtype) for t in mplan.new_tensors if t.saved_name}
    planned |= {s.saved_name: (s.shape, s.dtype) for s in mplan.saved_base}
    tags = {k: SAFETENSORS_TAG["float32" if d == "adapter" else d] for k, (_, d) in planned.items()}
    assert {k: (s, tags[k]) for k, (s, _) in planned.items()} == real
    assert topk_index_dtype(num_vectors) == dtype
    cfg = VBLoRAConfig(save_only_topk_weights=True, **options)
    assert {k for m in mplan.adapted for k, _, _ in topk_saved_tensors(m, cfg)} <= set(real)


@pytest.mark.parametrize("options,field", [
    (dict(vector_length=48, target_modules=["q_proj"]), "vector_length"),  # 4096 % 48
    (dict(topk=300), "topk"),
    (dict(r=0), "r"),
    (dict(num_vectors=0), "num_vectors"),
    (dict(vector_length=-256), "vector_length"),
    (dict(vblora_dropout=1.0), "vblora_dropout"),
    (dict(bias="lora_only"), "bias"),
    (dict(target_modules=["embed_tokens"]), "target_modules"),  # VB-LoRA wraps Linear / Conv1D only
    (dict(bank_size=3), "bank_size"),
])
def test_vblora_bad_options(options, field):
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate("meta-llama/Llama-2-7b-hf", method="vblora", **options)
    assert err.value.field == field


def test_vblora_vector_length_refused_like_peft():
    with pytest.raises(planner.MethodConfigError, match=r"does not divide in_features \(4096\) of "
                       r"'model.layers.0.self_attn.q_proj'.*: 1, 2, 4, 8, 16, .*4096") as err:
        planner.estimate("meta-llama/Llama-2-7b-hf", method="vblora", vector_length=48, target_modules=["q_proj"])
    assert err.value.field == "vector_length"
    with pytest.raises(ValueError, match="must be divisible by `vector_length` 48"):
        apply_peft(build_base(catalog.config("meta-llama/Llama-2-7b-hf")),
                   {"peft_type": "VBLORA", "vector_length": 48, "target_modules": ["q_proj"]})


def test_vblora_alias():
    assert planner.estimate("openai-community/gpt2", method="vb-lora").method_family == "vblora"
