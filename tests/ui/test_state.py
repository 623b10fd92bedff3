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
    DEFAULTS.with_(gpu_count=4, sharding="zero3", offload="optimizer+params", gpu="a100-80gb"),
    DEFAULTS.with_(method="full", options={}, gpu_count=8, sharding="fsdp_full_shard", offload="optimizer+params"),
    DEFAULTS.with_(gpu_count=2, sharding="zero2", offload="optimizer", utilization=0.25, num_examples=120000,
                   epochs=3.0, price_per_gpu_hour=1.75),
    DEFAULTS.with_(gpu_count=2, sharding="fsdp_shard_grad_op", utilization=0.335),
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


def test_recommend_inputs_round_trip():
    inputs = DEFAULTS.with_(task="code", num_examples=200, priority="speed", epochs=2.5, effective_batch_size=32,
                            price_per_gpu_hour=1.99, view="recommend")
    query = to_query(inputs)
    assert query == {"view": "recommend", "task": "code", "examples": "200", "priority": "speed", "epochs": "2.5",
                     "ebatch": "32", "price": "1.99"}
    assert from_query(query) == (inputs, [])
    assert "price" not in to_query(DEFAULTS.with_(price_per_gpu_hour=None))
    assert from_query({"price": "0"})[0].price_per_gpu_hour == 0.0


def test_bad_recommend_parameters_are_ignored_and_named():
    inputs, ignored = from_query({"task": "poetry", "examples": "0", "priority": "cheap", "epochs": "nan",
                                  "ebatch": "-2", "price": "-1"})
    assert inputs == DEFAULTS
    assert sorted(ignored) == ["ebatch", "epochs", "examples", "price", "priority", "task"]


def test_recommend_values_kept_in_session_state():
    keys = state.RECOMMEND_WIDGETS
    stored = {state.stored_key(keys["task"]): "qa", state.stored_key(keys["num_examples"]): 750,
              state.stored_key(keys["epochs"]): 0.0, state.stored_key(keys["price_per_gpu_hour"]): None}
    values = state.recommend_values(stored)
    assert values["task"] == "qa" and values["num_examples"] == 750
    assert values["epochs"] == DEFAULTS.epochs  # invalid: back to the default
    assert values["price_per_gpu_hour"] is None and values["priority"] == "quality"
    w = widget_values(DEFAULTS.with_(task="qa"))
    assert w[state.stored_key(keys["task"])] == "qa"


# ----- several GPUs, time and cost --------------------------------------------------------------------------


def test_sharding_and_offload_in_the_url():
    inputs = DEFAULTS.with_(gpu_count=4, sharding="zero3", offload="optimizer")
    assert to_query(inputs) == {"gpus": "4", "shard": "zero3", "offload": "optimizer"}
    assert to_query(DEFAULTS.with_(gpu_count=4)) == {"gpus": "4"}  # DDP, nothing offloaded: the defaults
    # one GPU: no strategy (the sidebar does not show it), so the link does not carry one
    assert to_query(DEFAULTS.with_(sharding="zero3", offload="optimizer")) == {}


@pytest.mark.parametrize("query, ignored", [
    ({"shard": "zero3"}, ["shard"]),  # needs several GPUs
    ({"gpus": "1", "shard": "zero2", "offload": "optimizer"}, ["shard", "offload"]),
    ({"gpus": "2", "offload": "optimizer"}, ["offload"]),  # DDP has no offload
    ({"gpus": "2", "shard": "zero2", "offload": "optimizer+params"}, ["offload"]),  # parameters: ZeRO-3 / FSDP only
    ({"gpus": "2", "shard": "fsdp_full_shard", "offload": "optimizer"}, ["offload"]),  # FSDP offloads both or nothing
    ({"gpus": "2", "shard": "zero4"}, ["shard"]),
    ({"gpus": "2", "shard": "zero3", "offload": "gpu"}, ["offload"]),
    ({"util": "0"}, ["util"]), ({"util": "1.5"}, ["util"]), ({"util": "nan"}, ["util"]), ({"util": "40%"}, ["util"]),
])
def test_bad_multi_gpu_and_time_parameters_are_named(query, ignored):
    inputs, got = from_query(query)
    assert sorted(got) == sorted(ignored)
    assert inputs.sharding in ("ddp", query.get("shard")) and inputs.offload == "none"
    assert inputs.utilization == DEFAULTS.utilization


def test_valid_offloads_are_the_planners():
    import planner

    assert state.valid_offloads("ddp") == ("none",) and state.valid_offloads("fsdp_shard_grad_op") == ("none",)
    assert state.valid_offloads("zero1") == state.valid_offloads("zero2") == ("none", "optimizer")
    assert state.valid_offloads("zero3") == ("none", "optimizer", "optimizer+params")
    assert state.valid_offloads("fsdp_full_shard") == ("none", "optimizer+params")
    for sharding in state.SHARDINGS:
        for offload in ("optimizer", "optimizer+params"):
            ok = offload in state.valid_offloads(sharding)
            try:
                planner.estimate("HuggingFaceTB/SmolLM2-135M", "lora", num_gpus=2, sharding=sharding, offload=offload)
            except planner.PlannerError as exc:
                assert not ok and exc.field == "offload", (sharding, offload)
            else:
                assert ok, (sharding, offload)


def test_time_values_kept_in_session_state():
    stored = {state.kept_key("utilization"): 0.3, state.kept_key("num_examples"): 0, state.kept_key("epochs"): 2.0}
    values = state.tab_values(stored)
    assert values["utilization"] == 0.3 and values["epochs"] == 2.0
    assert values["num_examples"] == DEFAULTS.num_examples  # invalid (0): the default goes to the link
    assert state.tab_values({state.kept_key("utilization"): 0.0})["utilization"] == DEFAULTS.utilization
    assert state.kept_key("num_examples") == state.stored_key(state.RECOMMEND_WIDGETS["num_examples"])  # shared
    w = widget_values(DEFAULTS.with_(utilization=0.25, gpu_count=2, sharding="zero1", offload="optimizer"))
    assert w[state.kept_key("utilization")] == 0.25 and w["sharding"] == "zero1" and w["offload"] == "optimizer"
