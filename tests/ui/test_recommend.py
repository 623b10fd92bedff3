"""The Recommend tab, driven with AppTest: what it shows is planner.recommend's answer for the
sidebar's model, GPU and sequence length and the tab's own inputs, in English and Korean; a plan
can be applied to the sidebar; bad input and failures are messages, never a traceback."""

from __future__ import annotations

import pytest

import planner
from planner.gpus import gpu as catalog_gpu
from planner.recommend import sources
from tests.ui.conftest import no_exception, open_view, texts
from tests.ui.test_app import shows_plan
from ui import views
from ui.i18n import Translator, fmt_gib, fmt_int

MODEL = "meta-llama/Llama-3.1-8B"
EN, KO = Translator("en"), Translator("ko")
#: What the tab passes for the bundled defaults (sidebar: RTX 4090, 512 tokens, bf16, sdpa, adamw_torch).
DEFAULT_ARGS = dict(task="classification", num_examples=5000, priority="quality", seq_len=512, epochs=1.0,
                    effective_batch_size=16, price_per_gpu_hour=None, dtype="bfloat16", adapter_dtype="float32",
                    mixed_precision=None, attn_implementation="sdpa", optimizer="adamw_torch")


def expected(gpus=("rtx-4090",), model=MODEL, **changes):
    return planner.recommend(model, list(gpus), **(DEFAULT_ARGS | changes))


def frame(at, column: str):
    for df in at.dataframe:
        if column in list(df.value.columns):
            return df.value
    raise AssertionError(f"no table with column {column!r}; have {[list(d.value.columns) for d in at.dataframe]}")


def markdown(at) -> str:
    return "\n".join(str(m.value) for m in at.markdown)


def test_recommend_tab_shows_the_planners_plans(make_app):
    at = make_app(view="recommend").run()
    no_exception(at)
    assert at.session_state["view_tab"] == EN("view.recommend")
    recs = expected()
    gpu = catalog_gpu("rtx-4090")
    assert EN("rec.heading", model=MODEL, gpus=gpu.name) in texts(at)
    rows = frame(at, EN("rec.col.targets"))
    assert list(rows[EN("rec.col.rank")]) == [p.recommendation.rank for p in recs]
    assert list(rows[EN("col.method")]) == [views.rec_method_label(EN, p.method) for p in recs]
    assert list(rows[EN("rec.col.batch")]) == [
        f"{p.recommendation.micro_batch_size} × {p.recommendation.gradient_accumulation_steps}" for p in recs]
    assert list(rows[EN("rec.col.memory")]) == [
        f"{fmt_gib(p.recommendation.device_bytes)} / {fmt_gib(p.recommendation.usable_memory_bytes)}" for p in recs]
    assert list(rows[EN("rec.col.share")]) == pytest.approx(
        [p.recommendation.device_bytes / p.recommendation.usable_memory_bytes for p in recs])
    lora = next(p for p in recs if p.method == "lora")
    assert rows[EN("rec.col.targets")][recs.index(lora)] == EN(
        "rec.targets.lora", r=fmt_int(lora.peft_config["r"]), alpha=f"{lora.peft_config['lora_alpha']:g}",
        targets=", ".join(lora.peft_config["target_modules"]))
    # every plan's reasons, inference line and cited sources, in the page's language
    page = markdown(at)
    for p in recs:
        rec = p.recommendation
        for reason in [*rec.reasons, rec.inference_overhead]:
            assert views.md_text(reason.text("en")) in page, reason.code
        for key in {k for r in [*rec.reasons, rec.inference_overhead] for k in r.sources}:
            src = sources()[key]
            assert views.md_text(src["title"]) in page
            if src["url"]:
                assert f"]({src['url']})" in page
    assert [b.key for b in at.button if b.key and b.key.startswith("rec_apply_")] == [
        f"rec_apply_{p.recommendation.rank}" for p in recs]
    # the candidates that fit nowhere, with the planner's reason
    rejected = frame(at, EN("rec.col.reason"))
    want = [[views.rec_method_label(EN, m), catalog_gpu(g).name, r.text("en")] for m, g, r in recs.rejected]
    assert rejected.values.tolist() == want
    assert EN("method.full.name") in list(rejected[EN("col.method")])
    assert dict(at.query_params) == {"view": "recommend"}


def test_recommend_tab_in_korean(make_app):
    at = make_app(lang="ko", view="recommend").run()
    no_exception(at)
    assert at.session_state["view_tab"] == KO("view.recommend") == "추천"
    recs = expected()
    page = markdown(at)
    for p in recs:
        for reason in p.recommendation.reasons:
            assert views.md_text(reason.text("ko")) in page, reason.code
    rows = frame(at, KO("rec.col.targets"))
    assert list(rows[KO("col.method")]) == [views.rec_method_label(KO, p.method) for p in recs]
    rejected = frame(at, KO("rec.col.reason"))
    assert list(rejected[KO("rec.col.reason")]) == [r.text("ko") for _, _, r in recs.rejected]
    all_text = texts(at)
    assert "추천 계획" in all_text and "그래디언트 누적" in page
    assert at.selectbox(key="rec_task").label == KO("setting.task")
    assert at.radio(key="rec_priority").options == [KO(f"rec.priority.{p}") for p in ("quality", "memory", "speed")]


def test_inputs_reach_the_planner_and_the_url(make_app):
    at = make_app(view="recommend").run()
    at.selectbox(key="rec_task").set_value("generation")
    at.number_input(key="rec_num_examples").set_value(500)
    at.radio(key="rec_priority").set_value("memory")
    at.number_input(key="rec_epochs").set_value(3.0)
    at.number_input(key="rec_effective_batch_size").set_value(32)
    at.number_input(key="rec_price_per_gpu_hour").set_value(2.5)
    at.selectbox(key="gpu").set_value("a100-80gb")
    at.run()
    no_exception(at)
    recs = expected(gpus=("a100-80gb",), task="generation", num_examples=500, priority="memory", epochs=3.0,
                    effective_batch_size=32, price_per_gpu_hour=2.5)
    rows = frame(at, EN("rec.col.targets"))
    assert list(rows[EN("col.method")]) == [views.rec_method_label(EN, p.method) for p in recs]
    assert list(rows[EN("rec.col.batch")]) == [
        f"{p.recommendation.micro_batch_size} × {p.recommendation.gradient_accumulation_steps}" for p in recs]
    q = dict(at.query_params)
    assert {k: q[k] for k in ("task", "examples", "priority", "epochs", "ebatch", "price", "gpu")} == {
        "task": "generation", "examples": "500", "priority": "memory", "epochs": "3", "ebatch": "32", "price": "2.5",
        "gpu": "a100-80gb"}
    # the choices survive a visit to another tab (their widgets are not drawn there) and stay in the URL
    at = open_view(at, "plan")
    no_exception(at)
    assert at.query_params["task"] == "generation" and at.query_params["price"] == "2.5"
    at = open_view(at, "recommend")
    assert at.selectbox(key="rec_task").value == "generation" and at.number_input(key="rec_num_examples").value == 500
    assert at.number_input(key="rec_price_per_gpu_hour").value == 2.5 and at.radio(key="rec_priority").value == "memory"


def test_url_restores_the_inputs_and_names_bad_ones(make_app):
    at = make_app(view="recommend", task="code", examples="200", priority="speed", epochs="2.5", ebatch="8").run()
    no_exception(at)
    assert at.selectbox(key="rec_task").value == "code" and at.number_input(key="rec_num_examples").value == 200
    assert at.radio(key="rec_priority").value == "speed" and at.number_input(key="rec_epochs").value == 2.5
    assert at.number_input(key="rec_effective_batch_size").value == 8
    at = make_app(view="recommend", task="poetry", examples="-5", priority="cheap", epochs="0", price="free").run()
    no_exception(at)
    warning = "\n".join(w.value for w in at.warning)
    for name in ("task", "examples", "priority", "epochs", "price"):
        assert name in warning, name
    assert at.selectbox(key="rec_task").value == "classification" and at.number_input(key="rec_num_examples").value == 5000
    assert frame(at, EN("rec.col.targets")) is not None  # the defaults are planned


def test_nothing_fits_lists_every_candidate(make_app):
    at = make_app(view="recommend", gpu="custom", gpu_mem="2").run()
    no_exception(at)
    errors = "\n".join(e.value for e in at.error)
    assert EN("rec.none_fit", gpus="custom", seq="512") in errors
    assert not [df for df in at.dataframe if EN("rec.col.targets") in df.value.columns]
    rejected = frame(at, EN("rec.col.reason"))
    recs = planner.recommend(MODEL, [planner.custom_gpu(memory_gib=2.0, name="custom")], **DEFAULT_ARGS)
    assert not recs and len(rejected) == len(recs.rejected)
    assert list(rejected[EN("rec.col.reason")]) == [r.text("en") for _, _, r in recs.rejected]


def test_planner_errors_are_messages(make_app, monkeypatch):
    views._cached_recommend.clear()

    def refuse(*args, **kwargs):
        raise planner.PlannerError("num_examples: must be an integer >= 1, got 0", field="num_examples")

    monkeypatch.setattr(planner, "recommend", refuse)
    try:
        at = make_app(view="recommend", examples="4321").run()
        no_exception(at)
        errors = "\n".join(e.value for e in at.error)
        assert EN("error.kind.PlannerError") in errors and EN("setting.num_examples") in errors
        assert "must be an integer >= 1, got 0" in errors

        def crash(*args, **kwargs):
            raise ZeroDivisionError("boom")

        monkeypatch.setattr(planner, "recommend", crash)
        at = make_app(view="recommend", examples="4322", lang="ko").run()
        no_exception(at)
        errors = "\n".join(e.value for e in at.error)
        assert KO("error.kind.internal") in errors and "ZeroDivisionError: boom" in errors
    finally:
        monkeypatch.undo()
        views._cached_recommend.clear()


def test_apply_a_plan_to_the_sidebar(make_app):
    at = make_app(view="recommend").run()
    recs = expected()
    plan = next(p for p in recs if p.method == "qlora")
    at.button(key=f"rec_apply_{plan.recommendation.rank}").click().run()
    no_exception(at)
    assert at.session_state["view_tab"] == EN("view.plan")
    assert EN("rec.applied", rank=plan.recommendation.rank, method=EN("method.qlora.name")) in [s.value for s in at.success]
    assert at.selectbox(key="method").value == "qlora" and at.selectbox(key="quantization").value == "nf4"
    assert at.number_input(key="opt.qlora.r").value == plan.peft_config["r"]
    assert at.number_input(key="batch_size").value == plan.recommendation.micro_batch_size
    assert at.number_input(key="gradient_accumulation_steps").value == plan.recommendation.gradient_accumulation_steps
    assert at.checkbox(key="gradient_checkpointing").value == plan.recommendation.gradient_checkpointing
    shows_plan(at, plan)  # the Plan tab now shows exactly the recommended plan
    assert at.query_params["method"] == "qlora" and "view" not in at.query_params


def test_training_time_and_cost_when_the_planner_has_them(make_app, monkeypatch):
    """Time and cost columns show the planner's figures, with the utilisation they assume; where the
    planner has none (e.g. a GPU without a peak for the dtype) a caption says so."""
    from planner.recommend import Recommendations

    original = planner.recommend
    views._cached_recommend.clear()

    def with_time(*args, **kwargs):
        recs = original(*args, **kwargs)
        timed = [p.model_copy(update={"recommendation": p.recommendation.model_copy(
            update={"training_hours": 0.5 * i, "cost_usd": 1234.5 * i})}) for i, p in enumerate(recs, start=1)]
        return Recommendations(timed, recs.rejected)

    def without_time(*args, **kwargs):
        recs = original(*args, **kwargs)
        return Recommendations([p.model_copy(update={"recommendation": p.recommendation.model_copy(
            update={"training_hours": None, "cost_usd": None})}) for p in recs], recs.rejected)

    monkeypatch.setattr(planner, "recommend", with_time)
    try:
        at = make_app(view="recommend", examples="4323", price="2.5").run()
        no_exception(at)
        rows = frame(at, EN("rec.col.targets"))
        assert list(rows[EN("rec.col.time")])[:3] == ["30 min", "1.0 h", "1.5 h"]
        assert list(rows[EN("rec.col.cost")])[:2] == ["$1,234.50", "$2,469.00"]
        assert EN("rec.card.cost", cost="\\$1,234.50") in markdown(at)
        assert EN("rec.time.unavailable") not in texts(at) and EN("rec.time.assumed", pct="40%") in texts(at)
        views._cached_recommend.clear()
        monkeypatch.setattr(planner, "recommend", without_time)
        at = make_app(view="recommend").run()
        assert EN("rec.col.time") not in frame(at, EN("rec.col.targets")).columns
        assert EN("rec.time.unavailable") in texts(at)
    finally:
        monkeypatch.undo()
        views._cached_recommend.clear()
    at = make_app(view="recommend", price="2").run()  # the planner's own time model
    no_exception(at)
    recs = expected(price_per_gpu_hour=2.0)
    rows = frame(at, EN("rec.col.targets"))
    assert list(rows[EN("rec.col.time")]) == [views._hours_text(EN, p.recommendation.training_hours) for p in recs]
    assert list(rows[EN("rec.col.cost")]) == [views._cost_text(p.recommendation.cost_usd) for p in recs]
    assert EN("rec.time.assumed", pct="40%") in texts(at)


def test_several_gpus_are_passed_as_a_count(make_app):
    at = make_app(view="recommend", gpus="2").run()
    no_exception(at)
    gpu = catalog_gpu("rtx-4090")
    page = texts(at)
    assert EN("rec.heading", model=MODEL, gpus=EN("rec.gpus", n="2", gpu=gpu.name)) in page
    recs = planner.recommend(MODEL, {"rtx-4090": 2}, **DEFAULT_ARGS)
    assert all(p.recommendation.num_gpus == 2 for p in recs)  # recommend uses all the GPUs
    rows = frame(at, EN("rec.col.targets"))
    assert list(rows[EN("col.method")]) == [views.rec_method_label(EN, p.method) for p in recs]
    assert list(rows[EN("rec.col.gpus")]) == [
        EN("gpu.multi_name", n="2", gpu=gpu.name, sharding=EN(f"sharding.{p.recommendation.sharding}")) for p in recs]
    assert EN("rec.multi_gpu", n="2", gpu=gpu.name) in page
    assert EN("rec.card.gpus", text=rows[EN("rec.col.gpus")][0]) in markdown(at)
    one = make_app(view="recommend").run()  # one GPU: no GPUs column
    assert EN("rec.col.gpus") not in frame(one, EN("rec.col.targets")).columns


def test_apply_a_sharded_plan(make_app):
    """A plan fitted with FSDP on 4 GPUs goes into the sidebar with its strategy; the Plan tab shows it exactly."""
    at = make_app(view="recommend", gpus="4").run()
    recs = planner.recommend(MODEL, {"rtx-4090": 4}, **DEFAULT_ARGS)
    plan = next(p for p in recs if p.recommendation.sharding == "fsdp_full_shard")
    assert EN("sharding.fsdp_full_shard") in frame(at, EN("rec.col.targets"))[EN("rec.col.gpus")][recs.index(plan)]
    at.button(key=f"rec_apply_{plan.recommendation.rank}").click().run()
    no_exception(at)
    assert at.session_state["view_tab"] == EN("view.plan")
    assert [s.value for s in at.sidebar.selectbox if s.key == "sharding"] == ["fsdp_full_shard"]
    shows_plan(at, plan)
    assert at.query_params["shard"] == "fsdp_full_shard" and at.query_params["gpus"] == "4"
