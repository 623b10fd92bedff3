"""URL query parameters <-> inputs <-> widget state (ui/state.py), without streamlit."""

from __future__ import annotations

import json

import pytest

from ui import methods, state
from ui.state import DEFAULTS, Inputs, from_query, to_query, widget_values


def test_bundled_default_is_a_bare_url():
    assert DEFAULTS.model == "meta-llama/Llama-3.1-8B" and DEFAULTS.method == "lora"
    assert DEFAULTS.options == {"r": 16} and DEFAULTS.gpu == "rtx-4090"
    assert to_query(DEFAULTS) == {}
    assert from_query({}) == (DEFAULTS, [])


@pytest.mark.parametrize("inputs", [
    DEFAULTS.with_(lang="ko"),
    DEFAULTS.with_(model="mistralai/Mistral-7B-v0.1", options={"r": 64, "lora_alpha": 128.0, "lora_dropout": 0.05},
                   targets=["q_proj", "k_proj", "v_proj", "o_proj"], batch_size=4, seq_len=2048),
    DEFAULTS.with_(method="qlora", options={"r": 64, "use_rslora": True}, targets="all-linear", quantization="nf4",
                   double_quant=False, optimizer="paged_adamw_8bit"),
    DEFAULTS.with_(method="prefix_tuning", options={"num_virtual_tokens": 30, "prefix_projection": True},
                   gradient_checkpointing=False, attn_implementation="eager", view="compare"),
    DEFAULTS.with_(method="ia3", options={"feedforward_modules": ["down_proj"]}, targets=["k_proj", "v_proj", "down_proj"]),
    DEFAULTS.with_(method="lora", targets="re:.*\\.(q|v)_proj", options={"r": 8, "rank_pattern": {"o_proj": 4},
                                                                          "layers_to_transform": [0, 1]}),
    DEFAULTS.with_(method="partial", options={"last_k_layers": 4, "train_lm_head": True}, dtype="float32",
                   mixed_precision="bf16", gradient_accumulation_steps=8),
    DEFAULTS.with_(gpu="custom", gpu_memory_gib=40.5, gpu_count=8, adapter_dtype="bfloat16", view="explore"),
    DEFAULTS.with_(adapter_config={"peft_type": "LORA", "r": 32, "target_modules": ["q_proj"]}, view="export"),
])
def test_round_trip(inputs):
    query = to_query(inputs)
    assert all(isinstance(v, str) for v in query.values())
    back, ignored = from_query(query)
    assert ignored == []
    assert back == inputs, (query, back)


def test_query_is_readable():
    q = to_query(DEFAULTS.with_(options={"r": 64}, targets=["q_proj", "v_proj"], batch_size=4, gradient_checkpointing=False))
    assert q == {"targets": "q_proj,v_proj", "r": "64", "batch": "4", "gc": "0"}


def test_bad_parameters_are_ignored_and_named():
    inputs, ignored = from_query({"model": "/etc/passwd.json", "method": "nope", "batch": "-3", "seq": "many",
                                  "gpu": "rtx-9999", "lang": "xx", "r": "sixteen", "zzz": "1", "quant": "int3",
                                  "peft": "{not json", "view": "bogus"})
    assert inputs == DEFAULTS
    assert sorted(ignored) == sorted(["model", "method", "batch", "seq", "gpu", "lang", "r", "zzz", "quant", "peft", "view"])


def test_model_in_url_must_be_a_catalog_id(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama"}))
    inputs, ignored = from_query({"model": str(cfg)})
    assert inputs.model == DEFAULTS.model and ignored == ["model"]


def test_options_are_parsed_by_their_field_type():
    inputs, ignored = from_query({"method": "lora", "r": "32", "lora_dropout": "0.1", "use_dora": "true",
                                  "bias": "all", "modules_to_save": "lm_head"})
    assert ignored == []
    assert inputs.options == {"r": 32, "lora_dropout": 0.1, "use_dora": True, "bias": "all", "modules_to_save": ["lm_head"]}


def test_option_of_another_method_is_ignored():
    inputs, ignored = from_query({"method": "ia3", "r": "8"})
    assert ignored == ["r"] and inputs.options == {}


def test_qlora_never_unquantized():
    inputs, ignored = from_query({"method": "qlora", "quant": "none"})
    assert inputs.quantization == "nf4" and ignored == ["quant"]
    assert from_query({"method": "qlora"})[0].quantization == "nf4"
    assert "quant" not in to_query(DEFAULTS.with_(method="qlora", quantization="nf4"))


def test_list_values_from_url():
    inputs, _ = from_query({"targets": "q_proj, v_proj"})
    assert inputs.targets == ["q_proj", "v_proj"]
    assert from_query({"targets": "all-linear"})[0].targets == "all-linear"
    assert from_query({"targets": "default"})[0].targets is None


def test_widget_values_restore_every_input():
    inputs = DEFAULTS.with_(method="dora", options={"r": 8, "lora_dropout": 0.05, "rank_pattern": {"o_proj": 4}},
                            targets="re:.*q_proj", batch_size=2, gpu="a100-80gb")
    w = widget_values(inputs)
    assert w["method"] == "dora" and w["batch_size"] == 2 and w["gpu"] == "a100-80gb" and w["model"] == inputs.model
    assert w[state.opt_key("dora", "r")] == 8
    assert w[state.opt_key("dora", "lora_dropout")] == 0.05
    assert json.loads(w[state.opt_key("dora", "rank_pattern")]) == {"o_proj": 4}
    assert w[state.tmode_key("dora")] == "regex" and w[state.tregex_key("dora")] == ".*q_proj"


def test_option_text_codec():
    f = methods.field_map("lora")
    for name, value in (("r", 12), ("lora_alpha", 16.0), ("use_dora", True), ("bias", "lora_only"),
                        ("rank_pattern", {"q": 2}), ("modules_to_save", ["lm_head", "embed_tokens"]),
                        ("layers_to_transform", [0, 31]), ("exclude_modules", ".*gate")):
        assert methods.from_text(methods.to_text(value), f[name]) == value, name
    with pytest.raises(ValueError):
        methods.from_text("maybe", f["use_dora"])
    with pytest.raises(ValueError):
        methods.from_text("2.5", f["r"])
    with pytest.raises(ValueError):
        methods.from_text("some", f["bias"])


def test_method_choices_cover_the_registry():
    import planner

    choices = methods.choices()
    assert {m.name for m in planner.methods()} <= set(choices)
    assert {"qlora", "dora", "rslora"} <= set(choices)
    assert choices.index("qlora") == choices.index("lora") + 1


def test_fields_come_from_the_config_class():
    names = [f.name for f in methods.fields("lora")]
    assert "target_modules" not in names  # its own widget
    assert {"r", "lora_alpha", "lora_dropout", "use_dora", "bias"} <= set(names)
    assert "use_dora" not in [f.name for f in methods.fields("dora")]  # implied by the choice
    r = methods.field_map("lora")["r"]
    assert r.kind == "int" and r.default == 8 and r.ui_default == 16 and not r.advanced
    assert methods.field_map("lora")["rank_pattern"].kind == "json"
    assert methods.field_map("p_tuning")["encoder_reparameterization_type"].choices == ("MLP", "LSTM")
    assert methods.field_map("p_tuning")["encoder_hidden_size"].optional


def test_inputs_are_frozen_values():
    a = Inputs()
    with pytest.raises(Exception):
        a.batch_size = 3  # type: ignore[misc]
    assert a.with_(batch_size=3).batch_size == 3 and a.batch_size == 1
