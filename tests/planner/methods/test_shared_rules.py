"""Rules every PEFT tuner shares (planner/methods/base.py, ``trainable_biases`` in lora.py), checked against
PEFT 0.21.2 on tiny real CPU models: counts == ``get_nb_trainable_parameters()``, and the keys and size of
the ``adapter_model.safetensors`` that ``save_pretrained`` writes == what the planner plans.

- ``save_embedding_layers="auto"`` saves only the input / output embedding layers the tuner wrapped.
- ``modules_to_save`` wraps every module whose name *ends with* the given text (containers included);
  nested names follow ``_set_trainable``'s grandparent rule.
- ``bias="all"`` with ``modules_to_save``: a copied module's biases stay frozen in the original and are
  saved three times (``<m>.bias``, ``<m>.modules_to_save.bias``, ``<m>.original_module.bias``).

Golden values are PEFT's own; the expectations written out here only describe what PEFT was seen doing.
"""

from __future__ import annotations

import pytest
import torch
from peft.utils.other import ModulesToSaveWrapper
from safetensors import safe_open

import planner
from planner import catalog
from planner.api import plan_method
from planner.methods.base import modules_to_save_entries
from planner.methods.lora import LoraConfig
from tests.planner.methods.test_against_peft import check
from tests.planner.methods.test_oft import tiny_gpt2, tiny_llama
from tests.reference import apply_peft, build_base, counts

P = "base_model.model."


def tiny_llama_tied() -> dict:
    return {**tiny_llama(), "tie_word_embeddings": True}


def tiny_bert() -> dict:
    """BERT MLM head: ``cls.predictions.decoder`` has its weight tied to the word embeddings and its
    bias tied to ``cls.predictions.bias``."""
    c = catalog.config("google-bert/bert-base-uncased")
    c.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=512,
             max_position_embeddings=128)
    return c


def tiny_t5() -> dict:
    """T5: ``get_input_embeddings()`` is ``shared``; encoder / decoder ``embed_tokens`` are tied to it."""
    c = catalog.config("google-t5/t5-base")
    c.update(d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4, vocab_size=512)
    return c


def planned_keys(config: dict, method: str, **options) -> set[str]:
    """The keys of the planned adapter file (as ``planner.api.adapter_file_bytes`` lists them)."""
    mplan = plan_method(planner.load_model(config), method, **options)[0]
    keys = {t.saved_name for t in mplan.new_tensors if t.saved_name} | {s.saved_name for s in mplan.saved_base}
    return keys | {f"{P}{m.path}.{p.name}" for m in mplan.copied_modules for p in m.params}


def peft_wrapped(model) -> set[str]:
    return {n.removeprefix(P) for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)}


def matches_peft(config: dict, method: str, tmp_path, *, cpu_counts: bool = True, **options):
    """Plan, build the real model with the plan's PEFT config, save it; counts, file keys and file size
    must be PEFT's. Returns (real model, real keys)."""
    plan = planner.estimate(config, method=method, dtype="float32", **options)
    model = apply_peft(build_base(config, device="cpu"), plan.peft_config)
    if cpu_counts:
        assert (plan.trainable_params, plan.total_params) == counts(model)
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
    assert planned_keys(config, method, **options) == keys
    assert plan.adapter_file_bytes == path.stat().st_size
    return model, keys


def embedding_keys(keys: set[str]) -> set[str]:
    return {k.removeprefix(P) for k in keys if ".base_layer.weight" in k or ".base_layer.bias" in k}


# --- 1. save_embedding_layers="auto" -----------------------------------------------------------------


@pytest.mark.parametrize("config,targets,saved", [
    # the reviewer's case: planned at 289,776 bytes (both embeddings) vs PEFT's 158,600
    (tiny_llama, ["q_proj", "embed_tokens"], {"model.embed_tokens.base_layer.weight"}),
    (tiny_llama_tied, ["q_proj", "embed_tokens"], {"model.embed_tokens.base_layer.weight"}),
    (tiny_llama, ["q_proj", "lm_head"], {"lm_head.base_layer.weight"}),
    (tiny_llama_tied, ["q_proj", "lm_head"], {"lm_head.base_layer.weight"}),
    (tiny_llama, ["embed_tokens", "lm_head"], {"model.embed_tokens.base_layer.weight", "lm_head.base_layer.weight"}),
    (tiny_llama_tied, ["embed_tokens", "lm_head"], {"model.embed_tokens.base_layer.weight", "lm_head.base_layer.weight"}),
    (tiny_llama, r".*\.(q_proj|embed_tokens)", {"model.embed_tokens.base_layer.weight"}),
    (tiny_llama, r".*(q_proj|lm_head)", {"lm_head.base_layer.weight"}),
    # not an entry of EMBEDDING_LAYER_NAMES verbatim: nothing saved although embed_tokens is wrapped
    (tiny_llama, ["q_proj", "model.embed_tokens"], set()),
    (tiny_gpt2, ["c_attn", "lm_head"], {"lm_head.base_layer.weight"}),
    (tiny_gpt2, ["c_attn", "embed_tokens"], set()),  # named, but GPT-2's input embedding (wte) is not wrapped
    (tiny_gpt2, ["c_attn", "wte"], set()),  # wrapped, but not named embed_tokens / lm_head
    (tiny_gpt2, ["wte", "lm_head"], {"transformer.wte.base_layer.weight", "lm_head.base_layer.weight"}),
    # T5's input embedding is `shared`; wrapping encoder/decoder embed_tokens saves nothing
    (tiny_t5, ["q", "embed_tokens"], set()),
    (tiny_t5, ["q", "lm_head"], {"lm_head.base_layer.weight"}),
    # BERT's output embedding is cls.predictions.decoder: its weight and its (tied) bias
    (tiny_bert, ["query", "decoder", "lm_head"],
     {"cls.predictions.decoder.base_layer.weight", "cls.predictions.decoder.base_layer.bias"}),
])
def test_lora_saves_only_wrapped_embedding_layers(config, targets, saved, tmp_path):
    _, keys = matches_peft(config(), "lora", tmp_path, r=2, target_modules=targets)
    assert embedding_keys(keys) == saved


@pytest.mark.parametrize("method,options", [
    ("vera", dict(r=4, target_modules=["q_proj", "lm_head"])),
    ("adalora", dict(init_r=2, target_modules=["q_proj", "lm_head"], total_step=10)),
])
def test_other_tuners_save_only_wrapped_embedding_layers(method, options, tmp_path):
    # AdaLoRA's ranknum is trainable on a GPU (the planner's count) but frozen on a CPU model
    _, keys = matches_peft(tiny_llama(), method, tmp_path, cpu_counts=method != "adalora", **options)
    assert embedding_keys(keys) == {"lm_head.base_layer.weight"}


# --- 2. modules_to_save: PEFT's suffix rule ------------------------------------------------------------


@pytest.mark.parametrize("config,names,wrapped", [
    # key.endswith(name): "norm" catches every *_layernorm as well as model.norm
    (tiny_llama, ["norm"], {"model.norm", *(f"model.layers.{i}.{n}" for i in (0, 1)
                                             for n in ("input_layernorm", "post_attention_layernorm"))}),
    (tiny_llama, ["layernorm"], {f"model.layers.{i}.{n}" for i in (0, 1)
                                 for n in ("input_layernorm", "post_attention_layernorm")}),
    (tiny_llama, ["model.norm"], {"model.norm"}),
    # containers are wrapped whole
    (tiny_llama, ["mlp"], {"model.layers.0.mlp", "model.layers.1.mlp"}),
    (tiny_llama, ["layers.0.mlp"], {"model.layers.0.mlp"}),
    # nested directly under a wrapped module: a second wrapper (total + down_proj, trainable unchanged)
    (tiny_llama, ["mlp", "down_proj"], {f"model.layers.{i}.{n}" for i in (0, 1) for n in ("mlp", "mlp.down_proj")}),
    (tiny_llama, ["layers.0", "mlp"], {"model.layers.0", "model.layers.0.mlp", "model.layers.1.mlp"}),
    # two levels under a wrapped module: the grandparent is the wrapper, PEFT only re-activates it
    (tiny_llama, ["layers.0", "down_proj"], {"model.layers.0", "model.layers.1.mlp.down_proj"}),
    # the copy of a tied module gets its own weight
    (tiny_llama_tied, ["lm_head"], {"lm_head"}),
    (tiny_llama_tied, ["embed_tokens"], {"model.embed_tokens"}),
    (tiny_gpt2, ["c_proj"], {f"transformer.h.{i}.{n}" for i in (0, 1) for n in ("attn.c_proj", "mlp.c_proj")}),
    # a container holding a tie inside (decoder.bias = predictions.bias) and one outside (decoder.weight)
    (tiny_bert, ["cls"], {"cls"}),
    # T5's encoder / decoder embed_tokens are tied to shared: each copy is its own tensor
    (tiny_t5, ["embed_tokens"], {"encoder.embed_tokens", "decoder.embed_tokens"}),
    (tiny_t5, ["DenseReluDense"], {f"{s}.block.{i}.layer.{j}.DenseReluDense"
                                   for s, j in (("encoder", 1), ("decoder", 2)) for i in (0, 1)}),
])
def test_modules_to_save_suffix_rule(config, names, wrapped, tmp_path):
    target = {"tiny_gpt2": ["c_attn"], "tiny_bert": ["query"], "tiny_t5": ["q"]}.get(config.__name__, ["q_proj"])
    model, _ = matches_peft(config(), "lora", tmp_path, r=2, target_modules=target, modules_to_save=names)
    assert peft_wrapped(model) == wrapped
    entries = modules_to_save_entries(LoraConfig(modules_to_save=names), planner.load_model(config()).inventory)
    assert {m.wrapper for m in entries} == wrapped


def test_modules_to_save_suffix_rule_other_tuner(tmp_path):
    """IA3 shares modules_to_save_entries."""
    model, _ = matches_peft(tiny_llama(), "ia3", tmp_path, target_modules=["k_proj", "down_proj"],
                            feedforward_modules=["down_proj"], modules_to_save=["norm"])
    assert len(peft_wrapped(model)) == 5


def test_modules_to_save_matching_an_adapted_module_refused_like_peft():
    """"_proj" ends q_proj, which LoRA wraps: PEFT raises TypeError (a tuner layer cannot be copied)."""
    options = dict(target_modules=["q_proj"], modules_to_save=["_proj"])
    with pytest.raises(planner.MethodConfigError, match="adapted module itself") as err:
        planner.estimate(tiny_llama(), method="lora", **options)
    assert err.value.field == "modules_to_save"
    with pytest.raises(TypeError, match="modules_to_save cannot be applied"):
        apply_peft(build_base(tiny_llama(), device="cpu"), {"peft_type": "LORA", **options})


def test_modules_to_save_container_of_an_adapted_module_refused():
    """"attn" ends self_attn but does not exclude q_proj from the targets (that exclusion needs a whole
    name component): PEFT deep-copies the LoRA layer into the trained copy and freezes the original adapter.
    The planner refuses such a plan."""
    options = dict(target_modules=["q_proj"], modules_to_save=["attn"])
    with pytest.raises(planner.MethodConfigError, match="contains the adapted module") as err:
        planner.estimate(tiny_llama(), method="lora", **options)
    assert err.value.field == "modules_to_save"
    model = apply_peft(build_base(tiny_llama(), device="cpu"), {"peft_type": "LORA", **options})
    assert peft_wrapped(model) == {"model.layers.0.self_attn", "model.layers.1.self_attn"}
    lora_a = dict(model.named_parameters())
    assert not lora_a[f"{P}model.layers.0.self_attn.original_module.q_proj.lora_A.default.weight"].requires_grad


def test_modules_to_save_module_list_refused_like_peft():
    options = dict(target_modules=["lm_head"], modules_to_save=["layers"])
    with pytest.raises(planner.MethodConfigError, match="ModuleList") as err:
        planner.estimate(tiny_llama(), method="lora", **options)
    assert err.value.field == "modules_to_save"
    with pytest.raises(TypeError, match="ModuleList"):
        apply_peft(build_base(tiny_llama(), device="cpu"), {"peft_type": "LORA", **options})


def test_modules_to_save_nested_deeper_refused():
    """Three or more levels under a wrapped module, PEFT wraps inside the trained copy (keys like
    ``model.modules_to_save.default.layers.0.mlp.down_proj.weight``); the planner refuses."""
    options = dict(target_modules=["lm_head"], modules_to_save=["model", "down_proj"])
    with pytest.raises(planner.MethodConfigError, match="deep inside 'model'") as err:
        planner.estimate(tiny_llama(), method="lora", **options)
    assert err.value.field == "modules_to_save"
    model = apply_peft(build_base(tiny_llama(), device="cpu"), {"peft_type": "LORA", **options})
    assert "model.modules_to_save.default.layers.0.mlp.down_proj" in peft_wrapped(model)


# --- 3. bias="all" / "<tuner>_only" with modules_to_save and tied biases -------------------------------


GPT2_TARGETS = {"lora": ["c_attn"], "adalora": ["c_attn"], "vera": ["c_attn"]}
EXTRA = {"adalora": dict(init_r=2, total_step=10), "vera": dict(r=4), "lora": dict(r=2)}


@pytest.mark.parametrize("method", ["lora", "adalora", "vera"])
@pytest.mark.parametrize("names", [["ln_f"], ["c_proj"], ["mlp"], ["mlp", "c_fc"], ["h.0", "c_fc"]])
def test_bias_all_with_modules_to_save(method, names, tmp_path):
    config = tiny_gpt2()
    options = dict(target_modules=GPT2_TARGETS[method], bias="all", modules_to_save=names, **EXTRA[method])
    _, keys = matches_peft(config, method, tmp_path, cpu_counts=method != "adalora", **options)
    if method == "adalora":  # counts on the meta device, where PEFT's ranknum trains as on a GPU
        check("openai-community/gpt2", method, **options)
    if names == ["ln_f"]:
        assert {f"{P}transformer.ln_f.{k}" for k in ("bias", "modules_to_save.bias", "original_module.bias")} <= keys


@pytest.mark.parametrize("config,options", [
    (tiny_bert, dict(target_modules=["query"], bias="all")),  # decoder.bias is saved under both names
    (tiny_bert, dict(target_modules=["query", "decoder"], bias="lora_only")),  # the tied bias trains once
    (tiny_bert, dict(target_modules=["query"], bias="all", modules_to_save=["cls"])),
    # copying decoder freezes its original bias, and with it the tensor it is tied to (cls.predictions.bias)
    (tiny_bert, dict(target_modules=["query"], bias="all", modules_to_save=["decoder"])),
    (tiny_bert, dict(target_modules=["query"], bias="all", modules_to_save=["predictions", "decoder"])),
    (tiny_gpt2, dict(target_modules=["c_attn"], bias="all", modules_to_save=["lm_head"])),
    (tiny_llama, dict(target_modules=["q_proj"], bias="all", modules_to_save=["norm"])),  # Llama: no biases
])
def test_bias_modes_tied_and_copied(config, options, tmp_path):
    matches_peft(config(), "lora", tmp_path, r=2, **options)
