"""The web app, driven through every section with streamlit's AppTest: the numbers shown are
planner.estimate's for the same inputs, errors appear next to their input, nothing raises."""

from __future__ import annotations

import json

import pytest

import planner
from planner.gpus import gpu as catalog_gpu
from tests.ui.conftest import metric, no_exception, open_view, texts
from ui import methods, planning, state
from ui.i18n import Translator, fmt_bytes, fmt_flops, fmt_gib, fmt_int, fmt_pct, fmt_signed_gib

MODEL = "meta-llama/Llama-3.1-8B"
SETTINGS = dict(batch_size=1, seq_len=512, gradient_checkpointing=True)
EN, KO = Translator("en"), Translator("ko")


def shows_plan(at, plan, t=EN, gpu="rtx-4090"):
    """The metrics on the Plan tab are exactly ``plan``'s."""
    assert metric(at, t("metric.trainable")) == fmt_int(plan.trainable_params)
    assert metric(at, t("metric.trainable_percent")) == fmt_pct(plan.trainable_percent)
    assert metric(at, t("metric.adapter_file")) == fmt_bytes(plan.adapter_file_bytes)
    assert metric(at, t("metric.adapted_modules")) == fmt_int(plan.num_adapted_modules)
    if plan.memory is not None:
        assert metric(at, t("metric.peak")) == fmt_gib(plan.memory.peak_bytes)
        assert metric(at, t("metric.reserved")) == fmt_gib(plan.memory.reserved_bytes)
        assert metric(at, t("metric.device")) == fmt_gib(plan.memory.device_bytes)
        margin = catalog_gpu(gpu).usable_memory_bytes - plan.memory.device_bytes
        assert metric(at, t("metric.margin")) == fmt_signed_gib(margin)


def frame_with(at, column: str):
    """The (first) table on the page that has ``column``."""
    for df in at.dataframe:
        if column in list(df.value.columns):
            return df.value
    raise AssertionError(f"no table with column {column!r}")


def sidebar_errors(at) -> str:
    return "\n".join(e.value for e in at.sidebar.error)


# ----- Plan ---------------------------------------------------------------------------------------------


def test_default_plan(app):
    no_exception(app)
    expected = planner.estimate(MODEL, "lora", r=16, **SETTINGS)
    shows_plan(app, expected)
    gpu = catalog_gpu("rtx-4090")
    page = texts(app)
    assert EN("verdict.fits", gpu=gpu.name, used=fmt_gib(expected.memory.device_bytes),
              capacity=fmt_gib(gpu.usable_memory_bytes),
              margin=fmt_gib(gpu.usable_memory_bytes - expected.memory.device_bytes), band="") in page
    assert MODEL in page and EN("verdict.basis") in page
    arch = app.dataframe[0].value
    assert fmt_int(planner.load_model(MODEL).total_params) in arch.iloc[:, 1].tolist()
    assert not app.error and dict(app.query_params) == {}


def test_korean_page(make_app):
    at = make_app(lang="ko").run()
    no_exception(at)
    page = texts(at)
    assert "들어갑니다" in page and "재파라미터화" in page and "저랭크 어댑터" in page
    assert at.radio(key="lang").value == "ko"
    expected = planner.estimate(MODEL, "lora", r=16, **SETTINGS)
    shows_plan(at, expected, t=KO)  # same numbers, same formatting
    assert at.selectbox(key="method").label == KO("method.label")
    for view in ("compare", "explore", "export"):
        open_view(at, view, "ko")
        no_exception(at)
    assert "시드 레슨" in texts(open_view(at, "compare", "ko"))


def test_language_switch_keeps_choices_and_view(app):
    app.number_input(key="opt.lora.r").set_value(32)
    open_view(app, "compare")
    app.radio(key="lang").set_value("ko").run()
    no_exception(app)
    assert app.session_state["view_tab"] == KO("view.compare")
    assert app.number_input(key="opt.lora.r").value == 32
    assert app.query_params["lang"] == "ko" and app.query_params["view"] == "compare"


def test_method_and_options(app):
    app.selectbox(key="method").set_value("dora").run()
    app.number_input(key="opt.dora.r").set_value(8).run()
    no_exception(app)
    shows_plan(app, planner.estimate(MODEL, "dora", r=8, **SETTINGS))
    app.number_input(key="opt.dora.lora_dropout").set_value(0.1).run()
    shows_plan(app, planner.estimate(MODEL, "dora", r=8, lora_dropout=0.1, **SETTINGS))
    assert app.query_params["method"] == "dora" and app.query_params["r"] == "8"
    app.selectbox(key="method").set_value("prefix_tuning").run()
    app.number_input(key="opt.prefix_tuning.num_virtual_tokens").set_value(30).run()
    no_exception(app)
    shows_plan(app, planner.estimate(MODEL, "prefix_tuning", num_virtual_tokens=30, **SETTINGS))


def test_qlora_defaults_to_nf4(app):
    app.selectbox(key="method").set_value("qlora").run()
    no_exception(app)
    assert app.selectbox(key="quantization").value == "nf4"
    assert "none" not in app.selectbox(key="quantization").options
    shows_plan(app, planner.estimate(MODEL, "qlora", r=16, **SETTINGS))


def test_target_modules(app):
    radio = app.radio(key="tmode.lora")
    assert radio.value == "default"
    radio.set_value("all-linear").run()
    shows_plan(app, planner.estimate(MODEL, "lora", r=16, target_modules="all-linear", **SETTINGS))
    app.radio(key="tmode.lora").set_value("pick").run()
    names = {c.key.rsplit(".", 1)[-1]: c for c in app.checkbox if c.key and c.key.startswith("tpick.lora.")}
    assert set(names) == set(methods.linear_names(planner.load_model(MODEL)))  # the model's own module names
    assert names["q_proj"].value and names["v_proj"].value and not names["k_proj"].value  # PEFT's default ticked
    names["k_proj"].check()
    names["down_proj"].check()
    names["v_proj"].uncheck()
    app.run()
    no_exception(app)
    shows_plan(app, planner.estimate(MODEL, "lora", r=16, target_modules=["q_proj", "k_proj", "down_proj"], **SETTINGS))
    assert app.query_params["targets"] == "q_proj,k_proj,down_proj"
    app.radio(key="tmode.lora").set_value("regex").run()
    app.text_input(key="tregex.lora").input(r".*\.(q|o)_proj").run()
    shows_plan(app, planner.estimate(MODEL, "lora", r=16, target_modules=r".*\.(q|o)_proj", **SETTINGS))


def test_training_settings_and_gpu(app):
    app.number_input(key="batch_size").set_value(4)
    app.number_input(key="seq_len").set_value(1024)
    app.checkbox(key="gradient_checkpointing").uncheck()
    app.selectbox(key="optimizer").set_value("adamw_bnb_8bit")
    app.selectbox(key="attn_implementation").set_value("eager")
    app.number_input(key="gradient_accumulation_steps").set_value(8)
    app.selectbox(key="gpu").set_value("a100-80gb")
    app.run()
    no_exception(app)
    expected = planner.estimate(MODEL, "lora", r=16, batch_size=4, seq_len=1024, gradient_checkpointing=False,
                                optimizer="adamw_bnb_8bit", attn_implementation="eager", gradient_accumulation_steps=8)
    shows_plan(app, expected, gpu="a100-80gb")
    q = app.query_params
    assert q["batch"] == "4" and q["seq"] == "1024" and q["gc"] == "0" and q["gpu"] == "a100-80gb"
    app.selectbox(key="dtype").set_value("float32").run()
    app.selectbox(key="mixed_precision").set_value("bf16").run()
    no_exception(app)
    expected = planner.estimate(MODEL, "lora", r=16, batch_size=4, seq_len=1024, gradient_checkpointing=False,
                                optimizer="adamw_bnb_8bit", attn_implementation="eager", gradient_accumulation_steps=8,
                                dtype="float32", mixed_precision="bf16")
    shows_plan(app, expected, gpu="a100-80gb")


def test_custom_gpu_and_does_not_fit(app):
    app.selectbox(key="gpu").set_value("custom").run()
    app.number_input(key="gpu_memory_gib").set_value(12.0).run()
    app.number_input(key="gpu_count").set_value(4).run()
    no_exception(app)
    expected = planner.estimate(MODEL, "lora", r=16, num_gpus=4, sharding="ddp", **SETTINGS)  # per GPU, DDP's buckets
    over = expected.memory.device_bytes - 12 * 2**30
    assert EN("verdict.no_fit", gpu="custom", used=fmt_gib(expected.memory.device_bytes), capacity=fmt_gib(12 * 2**30),
              margin=fmt_gib(over), band="") in [e.value for e in app.error]
    assert EN("gpu.multi", n="4", sharding=EN("sharding.ddp"), offload="") in texts(app)
    assert app.query_params["gpu"] == "custom" and app.query_params["gpu_mem"] == "12"
    assert EN("time.custom_gpu") in texts(app)  # a custom GPU has no peak throughput: no time, a message


def test_full_finetuning(app):
    app.selectbox(key="method").set_value("full").run()
    no_exception(app)
    assert not [w for w in app.selectbox if w.key == "quantization"]  # full FT cannot be quantized
    expected = planner.estimate(MODEL, "full", **SETTINGS)
    shows_plan(app, expected)
    gpu = catalog_gpu("rtx-4090")
    assert EN("verdict.no_fit", gpu=gpu.name, used=fmt_gib(expected.memory.device_bytes),
              capacity=fmt_gib(gpu.usable_memory_bytes),
              margin=fmt_gib(expected.memory.device_bytes - gpu.usable_memory_bytes), band="") in [e.value for e in app.error]


# ----- errors next to their input ----------------------------------------------------------------------------


def test_impossible_rank_is_shown_next_to_the_method(app):
    app.number_input(key="opt.lora.r").set_value(2048).run()
    no_exception(app)
    side = sidebar_errors(app)
    assert EN("error.kind.MethodConfigError") in side and EN("field.r") in side and "1024" in side
    assert any("1024" in e.value for e in app.main.error)
    assert not app.metric  # no numbers for an impossible plan


def test_bad_regex_and_empty_pick(app):
    app.radio(key="tmode.lora").set_value("regex").run()
    app.text_input(key="tregex.lora").input("(").run()
    no_exception(app)
    assert EN("field.target_modules") in sidebar_errors(app)
    app.radio(key="tmode.lora").set_value("pick").run()
    for c in app.checkbox:
        if c.key and c.key.startswith("tpick.lora."):
            c.uncheck()
    app.run()
    no_exception(app)
    assert EN("field.target_modules") in sidebar_errors(app)


def test_bad_json_option(app):
    app.text_input(key="opt.lora.rank_pattern").input("{oops").run()
    no_exception(app)
    assert EN("field.json.invalid", name="rank_pattern") in sidebar_errors(app)


def test_uploaded_config(app):
    cfg = planner.load_model("HuggingFaceTB/SmolLM2-135M").config
    app.file_uploader(key="config_upload").set_value(("config.json", json.dumps(cfg).encode(), "application/json")).run()
    no_exception(app)
    shows_plan(app, planner.estimate(dict(cfg), "lora", r=16, **SETTINGS))
    assert app.dataframe[0].value.iloc[:, 1].tolist()[0] == "llama"


@pytest.mark.parametrize("content, words", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2, 3]", "JSON object"),
    (json.dumps({"model_type": "nonsense_arch", "hidden_size": 8}).encode(), "nonsense_arch"),
])
def test_bad_upload_is_a_message(app, content, words):
    app.file_uploader(key="config_upload").set_value(("config.json", content, "application/json")).run()
    no_exception(app)
    assert words in sidebar_errors(app)
    shows_plan(app, planner.estimate(MODEL, "lora", r=16, **SETTINGS))  # still planning the catalog model


def test_pasted_adapter_config(app):
    app.toggle(key="use_adapter_json").set_value(True).run()
    no_exception(app)
    assert EN("adapter_json.empty") in texts(app)
    cfg = {"peft_type": "LORA", "r": 32, "lora_alpha": 64, "target_modules": ["q_proj", "k_proj"], "init_lora_weights": True}
    app.text_area(key="adapter_json").input(json.dumps(cfg)).run()
    no_exception(app)
    shows_plan(app, planner.estimate(MODEL, dict(cfg), **SETTINGS))
    assert "init_lora_weights" in texts(app)  # ignored options are listed
    assert json.loads(app.query_params["peft"])["r"] == 32
    app.text_area(key="adapter_json").input('{"r": 8}').run()
    no_exception(app)
    assert EN("error.peft_type_missing") in sidebar_errors(app)
    app.text_area(key="adapter_json").input('{"peft_type": "NOPE"}').run()
    no_exception(app)
    assert "NOPE" in "\n".join(e.value for e in app.error)


def test_url_restores_choices(make_app):
    at = make_app(method="qlora", r="64", targets="all-linear", batch="2", seq="1024", gpu="a100-80gb",
                  optim="paged_adamw_8bit").run()
    no_exception(at)
    assert at.selectbox(key="method").value == "qlora" and at.number_input(key="opt.qlora.r").value == 64
    assert at.radio(key="tmode.qlora").value == "all-linear" and at.selectbox(key="gpu").value == "a100-80gb"
    shows_plan(at, planner.estimate(MODEL, "qlora", r=64, target_modules="all-linear", batch_size=2, seq_len=1024,
                                    gradient_checkpointing=True, optimizer="paged_adamw_8bit"), gpu="a100-80gb")


def test_url_with_picked_targets_and_view(make_app):
    at = make_app(targets="q_proj,o_proj", view="export").run()
    no_exception(at)
    assert at.session_state["view_tab"] == EN("view.export")
    at = open_view(at, "plan")
    assert at.checkbox(key="tpick.lora.o_proj").value and not at.checkbox(key="tpick.lora.v_proj").value
    shows_plan(at, planner.estimate(MODEL, "lora", r=16, target_modules=["q_proj", "o_proj"], **SETTINGS))


def test_bad_url_parameters_are_named(make_app):
    at = make_app(batch="-1", model="/etc/passwd.json", lang="ko").run()
    no_exception(at)
    warning = "\n".join(w.value for w in at.warning)
    assert "batch" in warning and "model" in warning and "링크" in warning
    assert at.selectbox(key="model").value == MODEL


@pytest.mark.slow
def test_every_method_renders(app):
    """Each method (including those other agents register) shows a plan or a message, never a traceback."""
    for choice in methods.choices():
        app.selectbox(key="method").set_value(choice).run()
        no_exception(app)
        assert app.metric or app.error, choice
        if app.metric:
            assert metric(app, EN("metric.trainable"))


# ----- Compare, Explore, Export ------------------------------------------------------------------------------


def test_compare_view(app):
    at = open_view(app, "compare")
    no_exception(at)
    table = frame_with(at, EN("col.category"))
    by = dict(zip(table[EN("col.method")], table[EN("metric.trainable")]))
    assert by[EN("method.lora.name")] == fmt_int(planner.estimate(MODEL, "lora", r=16).trainable_params)
    assert by[EN("method.ia3.name")] == fmt_int(planner.estimate(MODEL, "ia3").trainable_params)
    assert by[EN("method.full.name")] == fmt_int(planner.load_model(MODEL).total_params)
    devices = dict(zip(table[EN("col.method")], table[EN("metric.device")]))
    assert devices[EN("method.lora.name")] == fmt_gib(planner.estimate(MODEL, "lora", r=16, **SETTINGS).memory.device_bytes)
    assert len(table) == len(methods.choices())
    seed = frame_with(at, EN("seed.col.params"))
    assert list(seed[EN("col.method")]) == [EN(f"seed.row.{k}") for k, _, _ in planning.SEED_TABLE]
    assert seed[EN("seed.col.params")][1].startswith(fmt_int(planner.estimate(MODEL, "lora", r=8).trainable_params))


def test_explore_view(app):
    at = open_view(app, "explore")
    no_exception(at)
    assert at.radio(key="explore_var").options == [EN("variable.seq_len"), EN("variable.batch_size"), EN("variable.r")]
    best = [s.value for s in at.success]
    assert best and EN("variable.seq_len") in best[0]
    table = frame_with(at, EN("variable.seq_len"))
    row = table[table[EN("variable.seq_len")] == "1,024"]
    assert row[EN("metric.device")].iloc[0] == fmt_gib(
        planner.estimate(MODEL, "lora", r=16, batch_size=1, seq_len=1024, gradient_checkpointing=True).memory.device_bytes)
    at.radio(key="explore_var").set_value("batch_size").run()
    no_exception(at)
    table = frame_with(at, EN("variable.batch_size"))
    assert table[EN("variable.batch_size")].iloc[0] == "1"
    at.radio(key="explore_var").set_value("r").run()
    no_exception(at)
    table = frame_with(at, EN("variable.r"))
    assert list(table[EN("variable.r")])[:3] == ["1", "2", "4"]


def test_export_view(app):
    at = open_view(app, "export")
    no_exception(at)
    code = [c.value for c in at.code]
    assert any("LoraConfig(" in c and "get_peft_model" in c for c in code)
    assert any(c.startswith("python -m executors.validate --model meta-llama/Llama-3.1-8B --method lora --r 16") for c in code)
    assert at.download_button(key="download_plan").label == EN("export.json.button")
    report = {"measured": {"peak_bytes": 17_000_000_000, "breakdown": {"weights": 16_000_000_000}},
              "estimated": {"peak_bytes": 17_073_196_544, "breakdown": {"weights": 16_087_786_496}}}
    at.file_uploader(key="report_upload").set_value(("report.json", json.dumps(report).encode(), "application/json")).run()
    no_exception(at)
    assert metric(at, EN("report.measured")) == fmt_gib(17_000_000_000)
    assert metric(at, EN("report.estimated")) == fmt_gib(17_073_196_544)
    assert metric(at, EN("report.col.error")) == "+0.43%"
    at.file_uploader(key="report_upload").set_value(("report.json", b"[]", "application/json")).run()
    no_exception(at)
    assert EN("error.report_empty") in "\n".join(e.value for e in at.error)


def test_export_in_korean_with_error(make_app):
    at = make_app(lang="ko", view="export", r="5000").run()
    no_exception(at)
    assert KO("error.kind.MethodConfigError") in "\n".join(e.value for e in at.error)


# ----- several GPUs --------------------------------------------------------------------------------------------


def sidebar_select(at, key):
    found = [s for s in at.sidebar.selectbox if s.key == key]
    return found[0] if found else None


def test_sharding_select_appears_with_several_gpus(app):
    assert sidebar_select(app, "sharding") is None and sidebar_select(app, "offload") is None
    app.number_input(key="gpu_count").set_value(4).run()
    no_exception(app)
    select = sidebar_select(app, "sharding")
    assert select is not None and select.value == "ddp" and select.label == EN("setting.sharding")
    assert sidebar_select(app, "offload") is None  # DDP has no offload
    assert EN("setting.offload.none", sharding=EN("sharding.ddp")) in texts(app)
    shows_plan(app, planner.estimate(MODEL, "lora", r=16, num_gpus=4, sharding="ddp", **SETTINGS))
    assert EN("gpu.multi", n="4", sharding=EN("sharding.ddp"), offload="") in texts(app)
    assert app.query_params["gpus"] == "4" and "shard" not in app.query_params  # DDP is the default
    app.number_input(key="gpu_count").set_value(1).run()
    assert sidebar_select(app, "sharding") is None and "gpus" not in app.query_params


def test_offload_options_follow_the_sharding(app):
    app.number_input(key="gpu_count").set_value(2).run()
    expected = {"zero1": ["none", "optimizer"], "zero2": ["none", "optimizer"],
                "zero3": ["none", "optimizer", "optimizer+params"], "fsdp_full_shard": ["none", "optimizer+params"]}
    for sharding, options in expected.items():
        sidebar_select(app, "sharding").set_value(sharding).run()
        no_exception(app)
        offload = sidebar_select(app, "offload")
        assert offload is not None and offload.options == [EN(f"offload.{o}") for o in options], sharding
    for sharding in ("ddp", "fsdp_shard_grad_op"):
        sidebar_select(app, "sharding").set_value(sharding).run()
        assert sidebar_select(app, "offload") is None, sharding
    sidebar_select(app, "sharding").set_value("zero3").run()
    sidebar_select(app, "offload").set_value("optimizer+params").run()
    no_exception(app)
    assert app.query_params["shard"] == "zero3" and app.query_params["offload"] == "optimizer+params"
    sidebar_select(app, "sharding").set_value("zero2").run()  # ZeRO-2 cannot offload parameters: back to none
    no_exception(app)
    assert sidebar_select(app, "offload").value == "none" and "offload" not in app.query_params
    shows_plan(app, planner.estimate(MODEL, "lora", r=16, num_gpus=2, sharding="zero2", **SETTINGS))


def test_strategy_is_kept_while_the_count_is_one(app):
    app.number_input(key="gpu_count").set_value(3).run()
    sidebar_select(app, "sharding").set_value("zero3").run()
    sidebar_select(app, "offload").set_value("optimizer").run()
    app.number_input(key="gpu_count").set_value(1).run()
    no_exception(app)
    assert sidebar_select(app, "sharding") is None and "shard" not in app.query_params
    shows_plan(app, planner.estimate(MODEL, "lora", r=16, **SETTINGS))  # one GPU: no strategy
    app.number_input(key="gpu_count").set_value(3).run()
    assert sidebar_select(app, "sharding").value == "zero3" and sidebar_select(app, "offload").value == "optimizer"
    shows_plan(app, planner.estimate(MODEL, "lora", r=16, num_gpus=3, sharding="zero3", offload="optimizer", **SETTINGS))


def test_plan_shows_host_memory_for_zero3_with_offload(make_app):
    at = make_app(gpus="4", shard="zero3", offload="optimizer+params").run()
    no_exception(at)
    assert sidebar_select(at, "sharding").value == "zero3" and sidebar_select(at, "offload").value == "optimizer+params"
    expected = planner.estimate(MODEL, "lora", r=16, num_gpus=4, sharding="zero3", offload="optimizer+params", **SETTINGS)
    assert expected.memory.host_bytes > 0
    shows_plan(at, expected)
    assert metric(at, EN("metric.host")) == fmt_gib(expected.memory.host_bytes)
    page = texts(at)
    assert EN("memory.host", host=fmt_gib(expected.memory.host_bytes), offload=EN("offload.optimizer+params"), n="4",
              total=fmt_gib(4 * expected.memory.host_bytes)) in page
    assert EN("gpu.multi", n="4", sharding=EN("sharding.zero3"),
              offload=EN("gpu.multi.offload", offload=EN("offload.optimizer+params"))) in page
    ko = make_app(gpus="4", shard="zero3", offload="optimizer+params", lang="ko").run()
    no_exception(ko)
    assert metric(ko, KO("metric.host")) == fmt_gib(expected.memory.host_bytes)
    none = make_app(gpus="4", shard="zero3").run()  # no offload: no host memory shown
    assert not [m for m in none.metric if m.label == EN("metric.host")]


def test_unmodelled_strategy_says_why(make_app):
    at = make_app(method="qlora", gpus="2", shard="zero3").run()
    no_exception(at)
    expected = planner.estimate(MODEL, "qlora", r=16, num_gpus=2, sharding="zero3", **SETTINGS)
    assert expected.memory is None
    page = texts(at)
    assert EN("memory.unavailable") in page and "not modelled" in page
    assert metric(at, EN("metric.trainable")) == fmt_int(expected.trainable_params)


def test_explore_sweeps_with_sharding(make_app):
    at = make_app(gpus="2", shard="fsdp_full_shard", view="explore").run()
    no_exception(at)
    table = frame_with(at, EN("variable.seq_len"))
    row = table[table[EN("variable.seq_len")] == "1,024"]
    expected = planner.estimate(MODEL, "lora", r=16, batch_size=1, seq_len=1024, gradient_checkpointing=True, num_gpus=2,
                                sharding="fsdp_full_shard")
    assert row[EN("metric.device")].iloc[0] == fmt_gib(expected.memory.device_bytes)
    gpu = catalog_gpu("rtx-4090")
    assert any(EN("gpu.multi_name", n="2", gpu=gpu.name, sharding=EN("sharding.fsdp_full_shard")) in s.value
               for s in at.success)


# ----- time and cost ------------------------------------------------------------------------------------------


def time_metrics_are(at, tt, t=EN):
    from ui.views import _cost_text, _hours_text, gpu_hours_text, seconds_text

    assert metric(at, t("time.metric.step_flops")) == fmt_flops(tt.step_flops)
    assert metric(at, t("time.metric.step_time")) == seconds_text(t, tt.step_s)
    assert metric(at, t("time.metric.hours")) == _hours_text(t, tt.hours)
    assert metric(at, t("time.metric.gpu_hours")) == gpu_hours_text(tt.gpu_hours)
    assert metric(at, t("time.metric.cost")) == _cost_text(tt.cost_usd)


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_time_section_renders(make_app, lang):
    t = Translator(lang)
    at = make_app(**({"lang": "ko"} if lang == "ko" else {})).run()
    no_exception(at)
    plan = planner.estimate(MODEL, "lora", r=16, **SETTINGS)
    tt = planner.training_time(plan, "rtx-4090", num_examples=5000, epochs=1)
    assert tt.utilization_source != "given"
    time_metrics_are(at, tt, t)
    page = texts(at)
    assert t("time.heading") in page
    pct = fmt_pct(100 * tt.utilization, 0)
    assert t("time.assumption", pct=pct, gpu=catalog_gpu("rtx-4090").name, fmt=tt.number_format,
             peak=f"{tt.peak_tflops:,.1f}") in page
    assert "arXiv:2204.02311" in page  # where the default utilisation comes from
    assert at.number_input(key="time_utilization").value == pytest.approx(100 * tt.utilization)
    if lang == "ko":
        assert "시간과 비용" in page and "측정값이 아닌 추정치" in page


def test_time_inputs_reach_the_planner_and_the_url(app):
    app.number_input(key="time_num_examples").set_value(20000)
    app.number_input(key="time_epochs").set_value(3.0)
    app.number_input(key="time_price_per_gpu_hour").set_value(2.5)
    app.number_input(key="time_utilization").set_value(30.0)
    app.run()
    no_exception(app)
    plan = planner.estimate(MODEL, "lora", r=16, **SETTINGS)
    tt = planner.training_time(plan, "rtx-4090", num_examples=20000, epochs=3.0, price_per_gpu_hour=2.5, utilization=0.3)
    time_metrics_are(app, tt)
    assert tt.cost_usd is not None and metric(app, EN("time.metric.cost")).startswith("$")
    assert EN("time.util.given", pct="30%", default="40%") in texts(app)
    q = app.query_params
    assert q["examples"] == "20000" and q["epochs"] == "3" and q["price"] == "2.5" and q["util"] == "0.3"
    rec = open_view(app, "recommend")  # one dataset: the Recommend tab has the same examples, epochs and price
    no_exception(rec)
    assert rec.number_input(key="rec_num_examples").value == 20000 and rec.number_input(key="rec_epochs").value == 3.0
    assert rec.number_input(key="rec_price_per_gpu_hour").value == 2.5
    back = open_view(rec, "plan")
    assert back.number_input(key="time_utilization").value == 30.0
    time_metrics_are(back, tt)


def test_time_with_several_gpus(make_app):
    at = make_app(gpus="4", shard="zero2", examples="8000", price="3").run()
    no_exception(at)
    plan = planner.estimate(MODEL, "lora", r=16, num_gpus=4, sharding="zero2", **SETTINGS)
    tt = planner.training_time(plan, "rtx-4090", num_examples=8000, price_per_gpu_hour=3.0)
    assert tt.num_gpus == 4
    time_metrics_are(at, tt)


@pytest.mark.parametrize("key, value, field", [
    ("time_num_examples", 0, "setting.num_examples"),
    ("time_epochs", 0.0, "setting.epochs"),
    ("time_utilization", 0.0, "setting.utilization"),
])
def test_bad_time_input_is_a_message(app, key, value, field):
    app.number_input(key=key).set_value(value).run()
    no_exception(app)
    errors = "\n".join(e.value for e in app.main.error)
    assert EN("error.kind.TrainingTimeError") in errors and EN(field) in errors
    assert not [m for m in app.metric if m.label == EN("time.metric.hours")]
    shows_plan(app, planner.estimate(MODEL, "lora", r=16, **SETTINGS))  # the plan itself still shows


def test_no_flops_is_a_message(app):
    app.selectbox(key="method").set_value("vera").run()
    no_exception(app)
    assert planner.estimate(MODEL, "vera").flops is None
    assert any(EN("time.no_flops", reason="").split("(")[0] in i.value for i in app.info)


# ----- measured step time from a validation report ----------------------------------------------------------


def _cuda_report(step_s, inputs=None) -> bytes:
    inputs = inputs or state.DEFAULTS
    model = planning.catalog_ref(MODEL)
    plan = planning.estimate_for(inputs, model).plan
    measured = {"mode": "cuda", "peak_bytes": 17_000_000_000}
    if step_s is not None:
        measured["step_s"] = step_s
    return json.dumps({"environment": {"device": {"kind": "cuda", "name": "NVIDIA GeForce RTX 4090"}},
                       "inputs": dict(planning.validate_case(inputs, model), id="cli"), "measured": measured,
                       "estimated": {"peak_bytes": plan.memory.peak_bytes, "trainable_params": plan.trainable_params,
                                     "total_params": plan.total_params}}).encode()


def _load_report(at, raw: bytes):
    at = open_view(at, "export")
    at.file_uploader(key="report_upload").set_value(("report.json", raw, "application/json")).run()
    no_exception(at)
    return at


def test_measured_step_time_next_to_the_plan(app):
    at = _load_report(app, _cuda_report(1.25))
    table = frame_with(at, EN("report.col.step_time"))
    assert list(table[EN("report.col.step_time")]) == [EN("time.seconds", n="1.25")]
    assert list(table[EN("report.col.device")]) == ["NVIDIA GeForce RTX 4090"]
    at = open_view(at, "plan")
    no_exception(at)
    plan = planner.estimate(MODEL, "lora", r=16, **SETTINGS)
    tt = planner.training_time(plan, "rtx-4090", num_examples=5000, measured_step_s=1.25)
    assert metric(at, EN("time.metric.measured_step_time")) == EN("time.seconds", n="1.25")
    assert metric(at, EN("time.metric.measured_utilization")) == fmt_pct(100 * tt.measured_utilization, 1)
    assert metric(at, EN("time.metric.step_time"))  # the planned one is still there
    page = texts(at)
    assert "NVIDIA GeForce RTX 4090" in page and f"{tt.measured_step_s / tt.step_s:.2f}x" in page
    # back on Export the uploader is empty (streamlit drops a hidden widget's file); the report is kept until forgotten
    at = open_view(at, "export")
    no_exception(at)
    assert EN("report.kept", n="1") in texts(at)
    at.button(key="report_forget").click().run()
    no_exception(at)
    assert EN("report.kept", n="1") not in texts(at)
    at = open_view(at, "plan")
    assert EN("time.metric.measured_step_time") not in [m.label for m in at.metric]
    # a report of another case (a longer sequence) is not this plan's: nothing measured is shown
    other = open_view(_load_report(at, _cuda_report(1.25, state.DEFAULTS.with_(seq_len=1024))), "plan")
    no_exception(other)
    assert EN("time.metric.measured_step_time") not in [m.label for m in other.metric]


def test_report_without_step_time_shows_nothing_extra(app):
    at = _load_report(app, _cuda_report(None))
    assert EN("report.col.step_time") not in [c for df in at.dataframe for c in df.value.columns]
    at = open_view(at, "plan")
    no_exception(at)
    labels = [m.label for m in at.metric]
    assert EN("time.metric.step_time") in labels and EN("time.metric.measured_step_time") not in labels


def test_malformed_step_time_is_ignored_with_a_message(app):
    at = _load_report(app, _cuda_report("fast"))
    message = EN("report.step_s.invalid", case=f"{MODEL} · lora", value='"fast"')
    assert message in [w.value for w in at.warning]
    at = open_view(at, "plan")
    no_exception(at)
    assert EN("time.metric.measured_step_time") not in [m.label for m in at.metric]
    assert message in [w.value for w in at.warning]
