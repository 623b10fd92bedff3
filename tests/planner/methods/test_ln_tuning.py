"""LN tuning: planner counts == PEFT 0.21.2 ``get_nb_trainable_parameters()`` on the real models
(meta device), and the adapter file size / keys == a real ``save_pretrained`` on small models.

Also holds the small-model helpers the trainable-tokens and adaption-prompt tests share.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open

import planner
from planner import catalog
from planner.api import plan_method
from tests.planner.methods.test_against_peft import IDS, SMALL_IDS, check, check_defaults
from tests.reference import apply_peft, build_base, counts

#: Config keys shrunk to build a real (CPU) model in milliseconds with the same structure.
_SHRINK = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 128,
           "n_embd": 64, "n_layer": 3, "n_head": 4, "n_positions": 128, "n_ctx": 128,
           "d_model": 64, "d_ff": 128, "d_kv": 16, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4}
FILE_IDS = ["HuggingFaceTB/SmolLM2-135M", "mistralai/Mistral-7B-v0.1", "openai-community/gpt2", "google-t5/t5-base",
            "google-bert/bert-base-uncased"]


def tiny_config(model_id: str) -> dict:
    """The catalog config with its sizes shrunk (same family, tying and layout)."""
    cfg = catalog.config(model_id)
    return {k: (_SHRINK[k] if k in _SHRINK and cfg[k] is not None else v) for k, v in cfg.items()}


def planner_saved_keys(config: dict, method: str, **options) -> dict[str, tuple[int, ...]]:
    """Every key (and shape) the planner expects in adapter_model.safetensors."""
    mplan, *_ = plan_method(planner.load_model(config), method, **options)
    keys = {t.saved_name: tuple(t.saved_shape or t.shape) for t in mplan.new_tensors if t.saved_name}
    keys |= {s.saved_name: tuple(s.shape) for s in mplan.saved_base}
    for m in mplan.copied_modules:
        keys |= {f"base_model.model.{m.path}.{p.name}": p.shape for p in m.params}
    return keys


def check_saved_file(model_id: str, method: str, tmp_path, **options) -> planner.Plan:
    """Planner == a real save_pretrained of a small bf16 model: file bytes, keys and shapes, counts."""
    config = tiny_config(model_id)
    plan = planner.estimate(config, method=method, dtype="bfloat16", **options)
    model = apply_peft(build_base(config, device="cpu", dtype=torch.bfloat16), plan.peft_config)
    assert (plan.trainable_params, plan.total_params) == counts(model)
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    with safe_open(str(path), "pt") as f:
        real = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert planner_saved_keys(config, method, **options) == real
    assert plan.adapter_file_bytes == os.path.getsize(path)
    return plan


def norm_names(model_id: str) -> list[str]:
    from planner.architectures.base import NORM_KINDS

    return list(dict.fromkeys(m.leaf_name for m in planner.load_model(model_id).inventory if m.kind in NORM_KINDS))


# --- counts against PEFT ---------------------------------------------------------------------


@pytest.mark.parametrize("model_id", IDS)
def test_ln_tuning_default_targets(model_id):
    """PEFT's default norm layers where it has them; where it has none (e.g. phi3), both refuse."""
    check_defaults(model_id, "ln_tuning", "LN_TUNING")


@pytest.mark.parametrize("model_id", SMALL_IDS)
def test_ln_tuning_every_norm_but_the_first(model_id):
    names = norm_names(model_id)
    check(model_id, "ln_tuning", target_modules=names, exclude_modules=names[:1] if len(names) > 1 else None)


@pytest.mark.parametrize("model_id", ["HuggingFaceTB/SmolLM2-135M", "google-t5/t5-base", "openai-community/gpt2"])
def test_ln_tuning_regex_and_non_norm_targets(model_id):
    """A regex target, and LN tuning of a Linear (PEFT deep-copies whatever it matches)."""
    check(model_id, "ln_tuning", target_modules=r".*\.(1|2)\..*(norm|ln_\d|layer_norm)[^.]*")
    check(model_id, "ln_tuning", target_modules="all-linear")


def test_ln_tuning_tied_lm_head_copy_is_a_full_copy():
    """A deepcopy of a tied LM head owns a new weight: vocab x hidden more trainable parameters."""
    plan = check("openai-community/gpt2", "ln_tuning", target_modules=["lm_head", "ln_f"])
    assert plan.trainable_params == 50257 * 768 + 2 * 768


def test_ln_tuning_modules_to_save():
    check("google-bert/bert-base-uncased", "ln_tuning", target_modules=["LayerNorm"], modules_to_save=["transform.dense"])


def test_ln_tuning_llama_7b_golden():
    """Llama-2-7B default targets: 32 layers x 2 RMSNorm(4096) + final norm = 65 x 4096 = 266,240
    (independent arithmetic; check() also compares with PEFT)."""
    assert check("meta-llama/Llama-2-7b-hf", "ln_tuning").trainable_params == 65 * 4096


# --- the adapter file ------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", FILE_IDS)
def test_ln_tuning_adapter_file_equals_real_save(model_id, tmp_path):
    names = norm_names(model_id)
    plan = check_saved_file(model_id, "ln_tuning", tmp_path, target_modules=names)
    assert plan.adapter_dtype == "float32"  # the copies are saved in bf16 anyway (no upcast)


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("options,field", [
    (dict(target_modules=["nope"]), "target_modules"),
    (dict(target_modules=["mlp"]), "target_modules"),  # a container: PEFT would copy the whole block
    (dict(target_modules="(unclosed"), "target_modules"),
    (dict(target_modules=[""]), "target_modules"),
    (dict(layers_to_transform=[0]), "layers_to_transform"),  # not an LNTuningConfig field
    (dict(modules_to_save=["nope"]), "modules_to_save"),
])
def test_ln_tuning_bad_options(options, field):
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate("meta-llama/Llama-2-7b-hf", method="ln_tuning", **options)
    assert err.value.field == field
