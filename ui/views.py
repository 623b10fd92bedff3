"""The main area: the plan, recommended plans, the comparison of all methods, the sweeps and the exports.

Only the open tab runs (``st.tabs(on_change="rerun")``); estimates are cached per input, so going
back and forth between tabs costs nothing twice.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

import planner
from planner.constants import DEFAULT_UTILIZATION, DEFAULT_UTILIZATION_SOURCE
from planner.recommend import PRIORITIES, sources as recommend_sources, tasks as recommend_tasks
from ui import charts, methods, planning, state
from ui.i18n import LANGS, Translator, fmt_bytes, fmt_flops, fmt_gib, fmt_int, fmt_pct, fmt_signed_gib
from ui.planning import ModelRef, Outcome
from ui.sidebar import (Sidebar, category_label, method_label, offload_label, section_for, sharding_label,
                        show_failure)

# ----- cached estimates ----------------------------------------------------------------------------------


@st.cache_data(max_entries=4096, show_spinner=False)
def _cached_estimate(model_key: str, config_text: str | None, method_json: str, options_json: str,
                     settings_json: str) -> Outcome:
    return planning.direct_runner(ModelRef(model_key, config_text), method_json, options_json, settings_json)


def runner(model: ModelRef, method_json: str, options_json: str, settings_json: str) -> Outcome:
    return _cached_estimate(model.key, model.config_text, method_json, options_json, settings_json)


@st.cache_data(max_entries=256, show_spinner=False)
def _cached_recommend(model_key: str, config_text: str | None, gpu_json: str, count: int,
                      kwargs_json: str) -> planning.Recommended:
    return planning.run_recommend(ModelRef(model_key, config_text), gpu_json, count, kwargs_json)


def recommend_runner(model: ModelRef, gpu_json: str, count: int, kwargs_json: str) -> planning.Recommended:
    return _cached_recommend(model.key, model.config_text, gpu_json, count, kwargs_json)


# ----- header and tabs -------------------------------------------------------------------------------------


def header(t: Translator) -> None:
    st.title(t("app.title"))
    st.caption(t("app.tagline"))
    ignored = st.session_state.get("_ignored_params") or []
    if ignored:
        st.warning(t("url.ignored", params=", ".join(ignored)))


def tabs(t: Translator) -> tuple[str, dict[str, Any]]:
    """The view tabs; returns the open view and each view's container."""
    labels = [t(f"view.{v}") for v in state.VIEWS]
    ss = st.session_state
    wanted = ss.pop("_view", None)
    if wanted in state.VIEWS:
        ss["view_tab"] = labels[state.VIEWS.index(wanted)]
    elif ss.get("view_tab") not in labels:  # language switched: same view, new label
        previous = ss.get("view_tab")
        idx = next((i for lang in LANGS for i, v in enumerate(state.VIEWS) if Translator(lang)(f"view.{v}") == previous), 0)
        ss["view_tab"] = labels[idx]
    containers = st.tabs(labels, key="view_tab", on_change="rerun")
    view = state.VIEWS[labels.index(ss.get("view_tab", labels[0]))] if ss.get("view_tab") in labels else state.VIEWS[0]
    return view, dict(zip(state.VIEWS, containers))


# ----- shared pieces -----------------------------------------------------------------------------------------


def method_explanation(t: Translator, choice: str) -> None:
    info = methods.info(choice)
    cat = category_label(t, info.category)
    st.markdown(t("method.heading", method=method_label(t, choice), category=cat))
    st.markdown(t.get(f"method.{choice}.explain", t("method.generic.explain", category=cat)))
    paper = t.get(f"method.{choice}.paper", info.paper)
    aid = methods.arxiv_id(paper)
    if aid:
        st.markdown(t("method.paper.link", paper=paper, url=f"https://arxiv.org/abs/{aid}"))
    else:
        st.markdown(t("method.paper.text", paper=paper))


def main_error(t: Translator, sb: Sidebar, outcome: Outcome) -> None:
    """The planner's error in the main area too, pointing at the sidebar section where it is shown."""
    failure = outcome.error
    show_failure(st, t, failure)
    st.info(t("error.see_sidebar", section=t(f"section.{section_for(failure.field)}")))


def _frame(columns: list[str], rows: list[list[Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def _height(n_rows: int) -> int:
    """Pixels that show every row of a table without scrolling."""
    return 35 * (n_rows + 1) + 3


def arch_table(t: Translator, spec: planner.ModelSpec) -> pd.DataFrame:
    rows = [
        (t("arch.model_type"), spec.model_type), (t("arch.architecture"), spec.architecture),
        (t("arch.layers"), fmt_int(spec.num_layers)),
    ]
    if spec.is_encoder_decoder:
        rows.append((t("arch.encoder_layers"), fmt_int(spec.num_encoder_layers)))
    rows += [
        (t("arch.hidden_size"), fmt_int(spec.hidden_size)),
        (t("arch.heads"), t("arch.heads.value", heads=fmt_int(spec.num_attention_heads), kv=fmt_int(spec.num_key_value_heads))),
        (t("arch.head_dim"), fmt_int(spec.head_dim)), (t("arch.intermediate_size"), fmt_int(spec.intermediate_size)),
        (t("arch.vocab_size"), fmt_int(spec.vocab_size)),
    ]
    if spec.num_experts:
        rows.append((t("arch.experts"), t("arch.experts.value", n=fmt_int(spec.num_experts), k=fmt_int(spec.num_experts_per_tok))))
    if spec.max_position_embeddings:
        rows.append((t("arch.max_positions"), fmt_int(spec.max_position_embeddings)))
    rows += [
        (t("arch.tied"), t("common.yes") if spec.tie_word_embeddings else t("common.no")),
        (t("arch.total_params"), fmt_int(spec.total_params)),
        (t("arch.source"), spec.source or "—"),
    ]
    return _frame([t("arch.col.property"), t("arch.col.value")], [list(r) for r in rows])


def gpus_text(t: Translator, inputs: state.Inputs, gpu_name: str) -> str:
    """The GPU as headings name it: ``RTX 4090``, or ``4 × RTX 4090 · DeepSpeed ZeRO-3`` for several."""
    if inputs.gpu_count <= 1:
        return gpu_name
    return t("gpu.multi_name", n=fmt_int(inputs.gpu_count), gpu=gpu_name, sharding=sharding_label(t, inputs.sharding))


def multi_gpu_caption(t: Translator, inputs: state.Inputs) -> None:
    if inputs.gpu_count > 1:
        offload = "" if inputs.offload == "none" else t("gpu.multi.offload", offload=offload_label(t, inputs.offload))
        st.caption(t("gpu.multi", n=fmt_int(inputs.gpu_count), sharding=sharding_label(t, inputs.sharding), offload=offload))


def verdict_message(t: Translator, v: planning.Verdict, gpu_name: str, inputs: state.Inputs,
                    plan: planner.Plan | None = None) -> None:
    if v.status == "unknown":
        st.info(t("memory.unavailable"))
        reason = planning.memory_reason(plan)
        if reason:
            st.caption(t("memory.unavailable.reason", reason=md_text(reason)))
        multi_gpu_caption(t, inputs)
        return
    args = dict(gpu=gpu_name, used=fmt_gib(v.used_bytes), capacity=fmt_gib(v.capacity_bytes),
                margin=fmt_gib(abs(v.margin_bytes)), band=fmt_gib(v.band_bytes or 0))
    if v.status == "fits":
        st.success(t("verdict.fits", **args), icon=":material/check_circle:")
    elif v.status == "tight":
        st.warning(t("verdict.tight", **args), icon=":material/warning:")
    else:
        st.error(t("verdict.no_fit", **args), icon=":material/cancel:")
    st.caption(t("verdict.basis"))
    multi_gpu_caption(t, inputs)


# ----- Plan ----------------------------------------------------------------------------------------------


def plan_view(t: Translator, sb: Sidebar, outcome: Outcome) -> state.Inputs:
    """The plan for the sidebar's inputs; returns the inputs with the time section's choices (for the URL)."""
    inputs, spec = sb.inputs, sb.model.spec()
    applied = st.session_state.pop("_rec_applied", None)
    if applied:
        st.success(t("rec.applied", rank=applied["rank"], method=method_label(t, applied["method"])),
                   icon=":material/check:")
    left, right = st.columns([3, 2])
    with right:
        st.subheader(t("arch.heading", model=spec.name))
        arch = arch_table(t, spec)
        st.dataframe(arch, hide_index=True, width="stretch", height=_height(len(arch)))
    with left:
        choice = inputs.method
        if outcome.ok and inputs.adapter_config is not None:
            choice = outcome.plan.method if outcome.plan.method in methods.choices() else outcome.plan.method_family
        method_explanation(t, choice)
        if not outcome.ok:
            main_error(t, sb, outcome)
            return inputs
        plan = outcome.plan
        if sb.gpu is None:
            st.info(t("gpu.invalid"))
            v = None
        else:
            v = planning.verdict(plan, sb.gpu)
            verdict_message(t, v, sb.gpu.name, inputs, plan)
    c = st.columns(4)
    c[0].metric(t("metric.trainable"), fmt_int(plan.trainable_params), help=t("metric.trainable.help"))
    c[1].metric(t("metric.trainable_percent"), fmt_pct(plan.trainable_percent), help=t("metric.trainable_percent.help",
                                                                                       total=fmt_int(plan.total_params)))
    c[2].metric(t("metric.adapter_file"), fmt_bytes(plan.adapter_file_bytes), help=t("metric.adapter_file.help"))
    c[3].metric(t("metric.adapted_modules"), fmt_int(plan.num_adapted_modules), help=t("metric.adapted_modules.help"))
    mem = plan.memory
    shown_notes: list[str] = []
    if mem is not None:
        host = planning.host_bytes(plan)
        c = st.columns(5 if host else 4)
        c[0].metric(t("metric.peak"), fmt_gib(mem.peak_bytes), help=t("metric.peak.help", phase=t(f"phase.{mem.peak_phase}")))
        c[1].metric(t("metric.reserved"), fmt_gib(mem.reserved_bytes), help=t("metric.reserved.help"))
        c[2].metric(t("metric.device"), fmt_gib(mem.device_bytes), help=t("metric.device.help"))
        if v is not None and v.margin_bytes is not None:
            c[3].metric(t("metric.margin"), fmt_signed_gib(v.margin_bytes), help=t("metric.margin.help"))
        if host:
            c[4].metric(t("metric.host"), fmt_gib(host), help=t("metric.host.help"))
        if sb.gpu is not None:
            st.plotly_chart(charts.breakdown_bar(mem, sb.gpu.usable_memory_bytes, sb.gpu.name, t), key="chart_breakdown")
        st.caption(t("memory.band", band=f"{100 * float(mem.error_band or 0):.1f}%", phase=t(f"phase.{mem.peak_phase}")))
        if host:
            st.caption(t("memory.host", host=fmt_gib(host), offload=offload_label(t, inputs.offload),
                         n=fmt_int(inputs.gpu_count), total=fmt_gib(host * inputs.gpu_count)))
        if inputs.gpu_count > 1 and mem.notes:
            shown_notes = list(mem.notes)
            with st.expander(t("memory.parallel_notes", n=fmt_int(inputs.gpu_count),
                               sharding=sharding_label(t, inputs.sharding))):
                st.markdown("\n".join(f"- {md_text(note)}" for note in shown_notes))
        with st.expander(t("memory.table")):
            rows = [[charts.component_label(t, k), fmt_int(n), fmt_bytes(n),
                     fmt_pct(100 * n / mem.device_bytes if mem.device_bytes else 0, 1)]
                    for k, n in planning.memory_segments(mem)]
            st.dataframe(_frame([t("col.component"), t("col.bytes"), t("col.size"), t("col.share")], rows), hide_index=True,
                         width="stretch")
            phases = [[t(f"phase.{p}"), fmt_bytes(n)] for p, n in mem.phase_peaks.items()]
            st.dataframe(_frame([t("col.phase"), t("col.peak")], phases), hide_index=True, width="stretch")
    inputs = time_section(t, sb, plan)
    if plan.ignored_options:
        st.info(t("plan.ignored", keys=", ".join(plan.ignored_options)))
    notes = [n for n in plan.notes if n not in shown_notes]
    if notes:
        with st.expander(t("plan.notes", n=len(notes))):
            for note in notes:
                st.markdown(f"- {note}")
    with st.expander(t("plan.adapted", n=fmt_int(plan.num_adapted_modules))):
        st.code("\n".join(plan.adapted_modules) or t("plan.adapted.none"), language=None)
    if plan.peft_config:
        with st.expander(t("plan.peft_config")):
            st.json(plan.peft_config)
    return inputs


# ----- Plan: time and cost --------------------------------------------------------------------------------


def _seed_time_widgets(inputs: state.Inputs) -> None:
    """Seed the time inputs from the values kept while the Plan tab was closed (training examples,
    epochs and price are shared with the Recommend tab), as their widgets hold them."""
    ss = st.session_state
    for attr, key in state.TIME_WIDGETS.items():
        if key in ss:
            continue
        value = ss.get(state.kept_key(attr), getattr(inputs, attr))
        if attr == "num_examples":
            value = int(value) if isinstance(value, (int, float)) else inputs.num_examples
        elif attr == "price_per_gpu_hour":
            value = float(value) if isinstance(value, (int, float)) else None
        elif attr == "utilization":  # the widget is in percent
            value = round(100 * float(value), 9) if isinstance(value, (int, float)) else 100 * DEFAULT_UTILIZATION
        else:
            value = float(value) if isinstance(value, (int, float)) else inputs.epochs
        ss[key] = value


def seconds_text(t: Translator, seconds: float) -> str:
    if seconds < 1:
        return t("time.milliseconds", n=f"{seconds * 1000:,.0f}")
    return t("time.seconds", n=f"{seconds:,.2f}")


def gpu_hours_text(hours: float) -> str:
    return f"{hours:,.2f}" if hours < 10 else f"{hours:,.1f}"


def time_section(t: Translator, sb: Sidebar, plan: planner.Plan) -> state.Inputs:
    """Time and cost of the whole run from the plan's FLOPs (``planner.training_time``): inputs for the
    dataset, epochs, price and the assumed utilisation; outputs per step and for the run. Returns the
    inputs with the section's (valid) choices."""
    inputs, ss, keys = sb.inputs, st.session_state, state.TIME_WIDGETS
    st.subheader(t("time.heading"))
    _seed_time_widgets(inputs)
    c = st.columns(4)
    n = c[0].number_input(t("setting.num_examples"), min_value=0, max_value=state.MAX_EXAMPLES, step=100,
                          key=keys["num_examples"], help=t("time.num_examples.help", seq=fmt_int(inputs.seq_len)))
    epochs = c[1].number_input(t("setting.epochs"), min_value=0.0, max_value=state.MAX_EPOCHS, step=1.0, format="%g",
                               key=keys["epochs"], help=t("setting.epochs.help"))
    price = c[2].number_input(t("setting.price_per_gpu_hour"), min_value=0.0, max_value=state.MAX_PRICE, step=0.1,
                              format="%.2f", value=None, key=keys["price_per_gpu_hour"],
                              placeholder=t("rec.price.placeholder"), help=t("time.price.help"))
    util_pct = c[3].number_input(t("setting.utilization"), min_value=0.0, max_value=100.0, step=1.0, format="%g",
                                 key=keys["utilization"], help=t("setting.utilization.help"))
    utilization = None if util_pct is None else float(util_pct) / 100
    for attr, value in (("num_examples", n), ("epochs", epochs), ("price_per_gpu_hour", price),
                        ("utilization", utilization)):
        ss[state.kept_key(attr)] = value
    inputs = inputs.with_(**state.tab_values(ss))
    pct = fmt_pct(100 * (utilization or 0), 0 if utilization is not None and (100 * utilization).is_integer() else 1)
    if utilization is not None and planning.time_kwargs(n, epochs, price, utilization)["utilization"] is None:
        source = re.sub(r"^default\s+[0-9.]+\s*:\s*", "", DEFAULT_UTILIZATION_SOURCE)  # the value is already said
        st.caption(t("time.util.default", pct=pct, source=md_text(source)))
    else:
        st.caption(t("time.util.given", pct=pct, default=fmt_pct(100 * DEFAULT_UTILIZATION, 0)))
    if plan.flops is None:
        reason = planning.flops_reason(sb.inputs, sb.model, plan)
        st.info(t("time.no_flops", reason=md_text(reason) if reason else t("time.no_flops.unknown")))
        return inputs
    if sb.gpu is None:
        st.info(t("gpu.invalid"))
        return inputs
    timed = planning.training_time_for(plan, sb.gpu, num_examples=n, epochs=epochs, price_per_gpu_hour=price,
                                       utilization=utilization)
    if not timed.ok:
        if timed.error.field == "gpu" and sb.inputs.gpu == state.CUSTOM_GPU:
            st.info(t("time.custom_gpu"))
        else:
            show_failure(st, t, timed.error)
        return inputs
    tt = timed.time
    st.info(t("time.assumption", pct=pct, gpu=sb.gpu.name, fmt=tt.number_format, peak=f"{tt.peak_tflops:,.1f}"),
            icon=":material/info:")
    split = dict(planning.flops_split(plan.flops))
    c = st.columns(5)
    c[0].metric(t("time.metric.step_flops"), fmt_flops(tt.step_flops),
                help=t("time.metric.step_flops.help", forward=fmt_flops(split["forward"]),
                       backward=fmt_flops(split["backward"]), recompute=fmt_flops(split["recompute"])))
    c[1].metric(t("time.metric.step_time"), seconds_text(t, tt.step_s), help=t("time.metric.step_time.help"))
    c[2].metric(t("time.metric.hours"), _hours_text(t, tt.hours), help=t("time.metric.hours.help"))
    c[3].metric(t("time.metric.gpu_hours"), gpu_hours_text(tt.gpu_hours),
                help=t("time.metric.gpu_hours.help", n=fmt_int(tt.num_gpus)))
    c[4].metric(t("time.metric.cost"), _cost_text(tt.cost_usd),
                help=t("time.metric.cost.help") if tt.cost_usd is not None else t("time.metric.cost.none"))
    measured_time(t, sb, plan, n, epochs, price, utilization)
    st.plotly_chart(charts.flops_bar(planning.flops_split(plan.flops), t), key="chart_flops")
    st.caption(t("time.basis", examples=fmt_int(n), tokens_per_example=fmt_int(tt.tokens_per_example),
                 epochs=f"{float(epochs):g}", tokens=fmt_int(tt.tokens), sequences=fmt_int(tt.sequences),
                 seq=fmt_int(inputs.seq_len), micro_steps=fmt_int(tt.micro_steps), batch=fmt_int(inputs.batch_size),
                 n=fmt_int(tt.num_gpus), optimizer_steps=fmt_int(tt.optimizer_steps)))
    if tt.adapter_number_format and tt.adapter_peak_tflops:
        st.caption(t("time.adapter_peak", flops=fmt_flops(tt.adapter_step_flops), fmt=tt.adapter_number_format,
                     peak=f"{tt.adapter_peak_tflops:,.1f}"))
    with st.expander(t("time.details")):
        rows = [[t.get(f"time.part.{name}", name), fmt_flops(r["forward"]), fmt_flops(r["backward"]),
                 fmt_flops(r["recompute"]), fmt_flops(r["total"])] for name, r in planning.flops_parts(plan.flops)]
        rows.append([t("time.part.total"), fmt_flops(split["forward"]), fmt_flops(split["backward"]),
                     fmt_flops(split["recompute"]), fmt_flops(tt.step_flops)])
        cols = [t("time.col.part")] + [t(f"time.phase.{p}") for p in planning.FLOP_PHASES] + [t("time.col.total")]
        st.dataframe(_frame(cols, rows), hide_index=True, width="stretch", key="flops_table")
        st.markdown("\n".join(f"- {md_text(note)}" for note in tt.notes))
    return inputs


def measured_time(t: Translator, sb: Sidebar, plan: planner.Plan, n: Any, epochs: Any, price: Any,
                  utilization: Any) -> None:
    """Where a loaded validation report (Export tab) measured this plan's case on a GPU: the measured step
    time next to the planned one, and the hours, cost and utilisation it implies (``planner.training_time``'s
    ``measured_*``)."""
    rows = st.session_state.get(REPORT_ROWS)
    if not rows:
        return
    row = planning.report_match(rows, sb.inputs, sb.model, plan)
    if row is None:
        return
    if row.step_s is None:
        if row.bad_step_s is not None:
            st.warning(t("report.step_s.invalid", case=row.label, value=row.bad_step_s))
        return
    timed = planning.training_time_for(plan, sb.gpu, num_examples=n, epochs=epochs, price_per_gpu_hour=price,
                                       utilization=utilization, measured_step_s=row.step_s)
    if not timed.ok or timed.time.measured_step_s is None:
        return
    tt = timed.time
    c = st.columns(5)
    c[1].metric(t("time.metric.measured_step_time"), seconds_text(t, tt.measured_step_s),
                help=t("time.metric.measured_step_time.help"))
    c[2].metric(t("time.metric.measured_hours"), _hours_text(t, tt.measured_hours))
    c[3].metric(t("time.metric.measured_gpu_hours"), gpu_hours_text(tt.measured_gpu_hours))
    c[4].metric(t("time.metric.measured_cost"), _cost_text(tt.measured_cost_usd))
    c[0].metric(t("time.metric.measured_utilization"), fmt_pct(100 * tt.measured_utilization, 1),
                help=t("time.metric.measured_utilization.help", fmt=tt.number_format, peak=f"{tt.peak_tflops:,.1f}",
                       gpu=sb.gpu.name))
    st.caption(t("time.measured", case=md_text(row.label), device=md_text(row.device or t("time.measured.unknown")),
                 gpu=sb.gpu.name, ratio=f"{tt.measured_step_s / tt.step_s:.2f}" if tt.step_s else "—"))


# ----- Recommend -----------------------------------------------------------------------------------------


def task_label(t: Translator, task: str) -> str:
    guide = recommend_tasks().get(task)
    return t.get(f"rec.task.{task}", t("rec.task.generic", name=task, description=guide.description if guide else ""))


def rec_method_label(t: Translator, name: str) -> str:
    """A recommended method's label; an alias the picker does not list (``pfeiffer``) names its family too."""
    if t.has(f"method.{name}.name"):
        return t(f"method.{name}.name")
    try:
        family = methods.info(name).name
    except planner.PlannerError:
        return name
    return t("rec.method.alias", method=method_label(t, family), name=name) if family != name else method_label(t, name)


def _rec_widget(key: str, value: Any) -> None:
    """Seed a Recommend widget from the value kept while the tab was closed (see ``state.RECOMMEND_WIDGETS``)."""
    if key not in st.session_state:
        st.session_state[key] = value


def recommend_inputs(t: Translator, inputs: state.Inputs) -> state.Inputs:
    """The Recommend tab's own inputs (task, examples, priority, epochs, effective batch, price)."""
    keys, stored = state.RECOMMEND_WIDGETS, state.recommend_values(st.session_state)
    for attr, key in keys.items():
        _rec_widget(key, stored[attr])
    task_ids = list(recommend_tasks())
    if st.session_state[keys["task"]] not in task_ids:
        st.session_state[keys["task"]] = state.DEFAULT_TASK
    c = st.columns([3, 2, 3])
    values: dict[str, Any] = {}
    values["task"] = c[0].selectbox(t("setting.task"), task_ids, key=keys["task"], format_func=lambda v: task_label(t, v),
                                    help=t("setting.task.help"))
    values["num_examples"] = c[1].number_input(t("setting.num_examples"), min_value=1, max_value=state.MAX_EXAMPLES,
                                               step=100, key=keys["num_examples"], help=t("setting.num_examples.help"))
    values["priority"] = c[2].radio(t("setting.priority"), list(PRIORITIES), key=keys["priority"], horizontal=True,
                                    format_func=lambda v: t(f"rec.priority.{v}"), help=t("setting.priority.help"))
    c = st.columns([2, 2, 3, 1])
    values["epochs"] = c[0].number_input(t("setting.epochs"), min_value=state.MIN_EPOCHS, max_value=state.MAX_EPOCHS,
                                         step=1.0, format="%g", key=keys["epochs"], help=t("setting.epochs.help"))
    values["effective_batch_size"] = c[1].number_input(
        t("setting.effective_batch_size"), min_value=1, max_value=state.MAX_BATCH, step=1, key=keys["effective_batch_size"],
        help=t("setting.effective_batch_size.help"))
    values["price_per_gpu_hour"] = c[2].number_input(
        t("setting.price_per_gpu_hour"), min_value=0.0, max_value=state.MAX_PRICE, step=0.1, format="%.2f", value=None,
        key=keys["price_per_gpu_hour"], placeholder=t("rec.price.placeholder"), help=t("setting.price_per_gpu_hour.help"))
    for attr, key in keys.items():
        st.session_state[state.stored_key(key)] = values[attr]
    return inputs.with_(**state.recommend_values(st.session_state))


def _targets_text(t: Translator, plan: planner.Plan) -> str:
    """Rank and targets of a plan, as the summary table shows them."""
    cfg = plan.peft_config or {}
    if plan.category == "full":
        return t("rec.targets.full")
    tm = cfg.get("target_modules")
    if tm == "all-linear":
        targets = t("rec.targets.all_linear")
    else:
        targets = ", ".join(tm) if isinstance(tm, (list, tuple)) else (tm or "")
    if cfg.get("r") is not None:
        alpha = cfg.get("lora_alpha")
        return t("rec.targets.lora", r=fmt_int(cfg["r"]), alpha=f"{alpha:g}" if isinstance(alpha, (int, float)) else "—",
                 targets=targets)
    if cfg.get("num_virtual_tokens"):
        return t("rec.targets.tokens", n=fmt_int(cfg["num_virtual_tokens"]))
    return targets or "—"


def _hours_text(t: Translator, hours: float | None) -> str:
    if hours is None:
        return "—"
    return t("rec.minutes", n=f"{hours * 60:,.0f}") if hours < 1 else t("rec.hours", n=f"{hours:,.1f}")


def _cost_text(cost: float | None) -> str:
    return "—" if cost is None else f"${cost:,.2f}"


def _gpu_name(gid: str, sb: Sidebar) -> str:
    if sb.gpu is not None and gid == sb.gpu.id:
        return sb.gpu.name
    try:
        return planner.gpu(gid).name
    except planner.PlannerError:
        return gid


def _parallel_text(t: Translator, rec: Any, sb: Sidebar) -> str:
    """How a recommended plan uses its GPUs: ``2 × RTX 4090 · DDP (model replicated)``."""
    if rec.num_gpus <= 1:
        return _gpu_name(rec.gpu, sb)
    return t("gpu.multi_name", n=fmt_int(rec.num_gpus), gpu=_gpu_name(rec.gpu, sb),
             sharding=sharding_label(t, rec.sharding or "ddp"))


def _apply_plan(values: dict[str, Any], rank: int, method: str) -> None:
    """Button callback (runs before the next script run, so it may set the sidebar's widgets)."""
    ss = st.session_state
    for key, value in values.items():
        ss[key] = value
    ss["_view"] = "plan"
    ss["_rec_applied"] = {"rank": rank, "method": method}


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_~$[]<>"})


def md_text(text: str) -> str:
    """Planner text shown as markdown, literally (``$`` is not math, ``~`` / ``_`` / ``*`` are not emphasis)."""
    return str(text).translate(_MD_SPECIAL)


def reason_text(t: Translator, reason: Any) -> str:
    """``Reason.text`` in the page's language (the planner's own English / Korean texts); a reason the
    planner cannot word shows its code and values instead of failing the page."""
    try:
        return reason.text(t.lang)
    except (KeyError, IndexError, ValueError, planner.PlannerError):
        return f"{reason.code}: {reason.params}"


def _cites(t: Translator, reason: Any, numbers: dict[str, int]) -> str:
    return "".join(t("rec.cite", n=numbers[k]) for k in reason.sources if k in numbers)


def recommendation_card(t: Translator, sb: Sidebar, plan: planner.Plan) -> None:
    rec = plan.recommendation
    with st.container(border=True, key=f"rec_card_{rec.rank}"):
        head, button = st.columns([5, 2])
        head.markdown(t("rec.card.title", rank=rec.rank, method=rec_method_label(t, plan.method)))
        head.caption(t("rec.card.subtitle", category=category_label(t, plan.category), targets=md_text(_targets_text(t, plan))))
        values = None
        choice = planning.recommended_choice(plan)
        try:
            new = planning.applied_inputs(plan, sb.inputs, sb.model.spec()) if choice is not None else None
            values = planning.applied_widget_values(new, sb.model.spec()) if new is not None else None
        except planner.PlannerError:  # a plan the sidebar cannot express: no button
            values = None
        if values is not None:
            button.button(t("rec.apply"), key=f"rec_apply_{rec.rank}", help=t("rec.apply.help"), on_click=_apply_plan,
                          args=(values, rec.rank, choice), icon=":material/input:", width="stretch")
        if rec.num_gpus > 1:
            st.markdown(t("rec.card.gpus", text=_parallel_text(t, rec, sb)))
        c = st.columns([4, 3, 2, 2])
        c[0].markdown(t("rec.card.batch", micro=fmt_int(rec.micro_batch_size), accum=fmt_int(rec.gradient_accumulation_steps),
                        effective=fmt_int(rec.effective_batch_size)))
        c[1].markdown(t("rec.card.checkpointing", value=t("common.yes") if rec.gradient_checkpointing else t("common.no")))
        if rec.training_hours is not None:  # absent until the planner has a time model for this plan
            c[2].markdown(t("rec.card.time", hours=_hours_text(t, rec.training_hours)))
        if rec.cost_usd is not None:
            c[3].markdown(t("rec.card.cost", cost=md_text(_cost_text(rec.cost_usd))))
        share = planning.memory_share(rec)
        st.progress(share, text=t("rec.card.memory", device=fmt_gib(rec.device_bytes), usable=fmt_gib(rec.usable_memory_bytes),
                                  gpu=_gpu_name(rec.gpu, sb), pct=fmt_pct(100 * share, 0), margin=fmt_gib(rec.margin_bytes)))
        cited = planning.cited_sources(rec)
        numbers = {k: i for i, k in enumerate(cited, start=1)}
        st.markdown("\n".join(t("rec.reason", text=md_text(reason_text(t, r)), cites=_cites(t, r, numbers)) for r in rec.reasons))
        inference = rec.inference_overhead
        st.markdown(t("rec.inference", text=md_text(reason_text(t, inference)), cites=_cites(t, inference, numbers)))
        if cited:
            known = recommend_sources()
            lines = []
            for key in cited:
                src = known.get(key, {})
                title, url = src.get("title", key), src.get("url", "")
                lines.append(t("rec.source.link" if url else "rec.source.text", n=numbers[key], title=md_text(title), url=url))
            with st.expander(t("rec.sources", n=len(cited))):
                st.markdown("\n".join(lines))


def recommend_view(t: Translator, sb: Sidebar) -> state.Inputs:
    """Ranked plans from ``planner.recommend`` for the sidebar's model, GPU and sequence length;
    returns the inputs with the tab's own choices (for the URL)."""
    inputs = recommend_inputs(t, sb.inputs)
    gpu = sb.gpu
    if gpu is None:
        st.info(t("gpu.invalid"))
        return inputs
    gpus_text = gpu.name if inputs.gpu_count == 1 else t("rec.gpus", n=fmt_int(inputs.gpu_count), gpu=gpu.name)
    st.subheader(t("rec.heading", model=sb.model.spec().name, gpus=gpus_text))
    st.caption(t("rec.caption", seq=fmt_int(inputs.seq_len)))
    with st.spinner(t("rec.computing")):
        out = planning.recommend_for(inputs, sb.model, recommend_runner)
    if not out.ok:
        show_failure(st, t, out.error)
        field_name = out.error.field
        if field_name and field_name not in state.RECOMMEND_WIDGETS:  # a sidebar input (model, GPU, settings)
            section = "gpu" if field_name.startswith("gpu") else section_for(field_name)
            st.info(t("rec.error.sidebar", section=t(f"section.{section}")))
        return inputs
    if not out.plans:
        st.error(t("rec.none_fit", gpus=gpus_text, seq=fmt_int(inputs.seq_len)), icon=":material/cancel:")
    else:
        recs = [p.recommendation for p in out.plans]
        has_time = any(r.training_hours is not None for r in recs)
        has_cost = any(r.cost_usd is not None for r in recs)
        has_gpus = any(r.num_gpus > 1 for r in recs)
        rows = [[r.rank, rec_method_label(t, p.method), _targets_text(t, p)]
                + ([_parallel_text(t, r, sb)] if has_gpus else [])
                + [t("rec.batch", micro=fmt_int(r.micro_batch_size), accum=fmt_int(r.gradient_accumulation_steps)),
                   t("common.yes") if r.gradient_checkpointing else t("common.no"), planning.memory_share(r),
                   t("rec.memory", device=fmt_gib(r.device_bytes), usable=fmt_gib(r.usable_memory_bytes))]
                + ([_hours_text(t, r.training_hours)] if has_time else []) + ([_cost_text(r.cost_usd)] if has_cost else [])
                for p, r in zip(out.plans, recs)]
        cols = [t("rec.col.rank"), t("col.method"), t("rec.col.targets")] + ([t("rec.col.gpus")] if has_gpus else [])
        cols += [t("rec.col.batch"), t("rec.col.checkpointing"), t("rec.col.share"), t("rec.col.memory")]
        cols += ([t("rec.col.time")] if has_time else []) + ([t("rec.col.cost")] if has_cost else [])
        st.dataframe(_frame(cols, rows), hide_index=True, width="stretch", height=_height(len(rows)), key="rec_table",
                     column_config={t("rec.col.share"): st.column_config.ProgressColumn(
                         t("rec.col.share"), min_value=0.0, max_value=1.0, format="percent",
                         help=t("rec.col.share.help"))})
        if has_time:
            st.caption(t("rec.time.assumed", pct=fmt_pct(100 * DEFAULT_UTILIZATION, 0)))
        else:
            st.caption(t("rec.time.unavailable"))
        if has_gpus:
            st.caption(t("rec.multi_gpu", n=fmt_int(inputs.gpu_count), gpu=gpu.name))
        for plan in out.plans:
            recommendation_card(t, sb, plan)
    if out.rejected:
        st.subheader(t("rec.rejected.heading"))
        st.caption(t("rec.rejected.caption"))
        rows = [[rec_method_label(t, m), _gpu_name(g, sb), reason_text(t, reason)] for m, g, reason in out.rejected]
        st.dataframe(_frame([t("col.method"), t("rec.col.gpu"), t("rec.col.reason")], rows), hide_index=True,
                     width="stretch", key="rec_rejected")
    return inputs


# ----- Compare -------------------------------------------------------------------------------------------


def _verdict_cell(t: Translator, v: planning.Verdict | None) -> str:
    return t(f"verdict.short.{v.status}") if v is not None else "—"


def compare_view(t: Translator, sb: Sidebar) -> None:
    inputs, gpu = sb.inputs, sb.gpu
    if gpu is None:
        st.info(t("gpu.invalid"))
        return
    gpu_text = gpus_text(t, inputs, gpu.name)
    st.subheader(t("compare.heading", model=sb.model.spec().name, gpu=gpu_text))
    st.caption(t("compare.caption"))
    multi_gpu_caption(t, inputs)
    with st.spinner(t("common.computing")):
        rows = planning.compare(inputs, sb.model, gpu, runner)
    labels = {r.key: method_label(t, r.key) for r in rows}
    has_host = any(planning.host_bytes(r.outcome.plan) for r in rows)
    table = []
    for r in rows:
        p = r.outcome.plan
        mem = p.memory if p is not None else None
        note = r.outcome.error.message if not r.outcome.ok else (planning.memory_reason(p) or "")
        table.append([
            labels[r.key], category_label(t, methods.category(r.key)),
            fmt_int(p.trainable_params) if p else "—", fmt_pct(p.trainable_percent) if p else "—",
            fmt_bytes(p.adapter_file_bytes) if p else "—", fmt_gib(mem.peak_bytes) if mem else "—",
            fmt_gib(mem.device_bytes) if mem else "—"]
            + ([fmt_gib(planning.host_bytes(p)) if mem else "—"] if has_host else [])
            + [_verdict_cell(t, r.verdict), note])
    cols = [t("col.method"), t("col.category"), t("metric.trainable"), t("metric.trainable_percent"),
            t("metric.adapter_file"), t("metric.peak"), t("metric.device")]
    cols += ([t("metric.host")] if has_host else []) + [t("col.verdict"), t("col.note")]
    st.dataframe(_frame(cols, table), hide_index=True, width="stretch", height=_height(len(table)), key="compare_table")
    if any(r.outcome.ok and r.outcome.plan.memory is not None for r in rows):
        st.plotly_chart(charts.compare_bar(rows, gpu.usable_memory_bytes, labels, t), key="chart_compare")
    st.plotly_chart(charts.params_bar(rows, labels, t), key="chart_params")

    st.subheader(t("seed.heading"))
    st.caption(t("seed.caption", model=sb.model.spec().name, gpu=gpu_text))
    seed_rows = planning.seed_table(inputs, sb.model, gpu, runner)
    table = []
    for r in seed_rows:
        p = r.outcome.plan
        mem = p.memory if p is not None else None
        table.append([
            t(f"seed.row.{r.key}"), t(f"seed.claim.{r.key}.params"), t(f"seed.claim.{r.key}.memory"),
            t("seed.params_value", n=fmt_int(p.trainable_params), pct=fmt_pct(p.trainable_percent)) if p else r.outcome.error.message,
            fmt_gib(mem.device_bytes) if mem else "—", fmt_gib(planning.beyond_weights(mem)) if mem else "—",
            _verdict_cell(t, r.verdict),
        ])
    cols = [t("col.method"), t("seed.col.claim_params"), t("seed.col.claim_memory"), t("seed.col.params"),
            t("seed.col.memory"), t("seed.col.beyond"), t("col.verdict")]
    st.dataframe(_frame(cols, table), hide_index=True, width="stretch", key="seed_table")


# ----- Explore -------------------------------------------------------------------------------------------


def explore_view(t: Translator, sb: Sidebar) -> None:
    inputs, gpu = sb.inputs, sb.gpu
    if gpu is None:
        st.info(t("gpu.invalid"))
        return
    variables = ["seq_len", "batch_size"]
    if inputs.adapter_config is None and "r" in methods.field_map(inputs.method) and methods.info(inputs.method).name != "oft":
        variables.append("r")
    if st.session_state.get("explore_var") not in variables:
        st.session_state["explore_var"] = variables[0]
    variable = st.radio(t("explore.variable"), variables, key="explore_var", horizontal=True,
                        format_func=lambda v: t(f"variable.{v}"), help=t("explore.help"))
    with st.spinner(t("common.computing")):
        s = planning.sweep(inputs, sb.model, gpu, variable, runner)
    failures = [o.error for _, o in s.points if not o.ok]
    if all(not o.ok or o.plan.memory is None for _, o in s.points):
        if failures:
            show_failure(st, t, failures[0])
        else:
            st.info(t("memory.unavailable"))
            reason = planning.memory_reason(s.points[0][1].plan) if s.points else None
            if reason:
                st.caption(t("memory.unavailable.reason", reason=md_text(reason)))
        return
    gpu_text = gpus_text(t, inputs, gpu.name)
    if s.best is not None:
        st.success(t("explore.best", variable=t(f"variable.{variable}"), value=fmt_int(s.best), gpu=gpu_text,
                     used=fmt_gib(s.best_outcome.plan.memory.device_bytes)))
    else:
        st.error(t("explore.none_fit", variable=t(f"variable.{variable}"), gpu=gpu_text))
    multi_gpu_caption(t, inputs)
    st.plotly_chart(charts.sweep_line(s, t), key="chart_sweep")
    has_host = any(o.ok and planning.host_bytes(o.plan) for _, o in s.points)
    rows = []
    for x, o in s.points:
        mem = o.plan.memory if o.ok else None
        v = planning.verdict(o.plan, gpu) if o.ok else None
        rows.append([fmt_int(x), fmt_gib(mem.peak_bytes) if mem else "—", fmt_gib(mem.device_bytes) if mem else "—"]
                    + ([fmt_gib(planning.host_bytes(o.plan)) if mem else "—"] if has_host else [])
                    + [_verdict_cell(t, v) if o.ok else o.error.message])
    cols = [t(f"variable.{variable}"), t("metric.peak"), t("metric.device")] + ([t("metric.host")] if has_host else [])
    st.dataframe(_frame(cols + [t("col.verdict")], rows), hide_index=True, width="stretch", key="sweep_table")


# ----- Export --------------------------------------------------------------------------------------------


def export_view(t: Translator, sb: Sidebar, outcome: Outcome) -> None:
    inputs = sb.inputs
    st.subheader(t("export.share.heading"))
    query = urlencode(state.to_query(inputs))
    st.caption(t("export.share.caption"))
    st.code(f"?{query}" if query else "?", language=None)
    if sb.model.uploaded:
        st.caption(t("export.share.upload_note"))
    if outcome.ok:
        plan = outcome.plan
        v = planning.verdict(plan, sb.gpu) if sb.gpu is not None else None
        timed = planning.time_for_inputs(inputs, plan, sb.gpu) if sb.gpu is not None and plan.flops is not None else None
        doc = planning.plan_document(inputs, sb.model, plan, sb.gpu, v, timed) if sb.gpu is not None else {}
        st.subheader(t("export.json.heading"))
        st.download_button(t("export.json.button"), data=json.dumps(doc, indent=2), file_name="peft-plan.json",
                           mime="application/json", key="download_plan")
        with st.expander(t("export.json.preview")):
            st.json(doc, expanded=False)
        st.subheader(t("export.python.heading"))
        st.caption(t("export.python.caption"))
        try:
            st.code(planning.python_snippet(inputs, sb.model, plan), language="python")
        except planner.PlannerError as exc:
            show_failure(st, t, planning.failure_from(exc))
        st.subheader(t("export.validate.heading"))
        st.caption(t("export.validate.caption"))
        st.code(planning.validate_command(inputs, sb.model, plan), language="bash")
        if inputs.adapter_config is not None:
            st.caption(t("export.validate.peft_note"))
        if inputs.gpu_count > 1:
            st.caption(t("export.validate.multi_gpu_note"))
        if sb.model.uploaded:
            st.caption(t("export.validate.upload_note"))
    else:
        main_error(t, sb, outcome)
    report_section(t)


#: Session key of the last report read (``planning.ReportRow`` list): kept while the Export tab is closed, so
#: that the Plan tab can show a measured step time; not a widget's, so streamlit does not drop it.
REPORT_ROWS = "_report_rows"


def report_section(t: Translator) -> None:
    st.subheader(t("report.heading"))
    upload = st.file_uploader(t("report.upload"), type=["json"], key="report_upload", help=t("report.help"),
                              max_upload_size=8)
    if upload is None:
        kept = st.session_state.get(REPORT_ROWS)
        if kept:
            st.caption(t("report.kept", n=fmt_int(len(kept))))
            if st.button(t("report.forget"), key="report_forget"):
                st.session_state.pop(REPORT_ROWS, None)
                st.rerun()
        return
    try:
        rows = planning.parse_report(upload.getvalue())
    except planner.PlannerError as exc:
        st.session_state.pop(REPORT_ROWS, None)
        show_failure(st, t, planning.failure_from(exc))
        return
    st.session_state[REPORT_ROWS] = rows
    timed = any(r.step_s is not None for r in rows)
    table = [[r.label, fmt_gib(r.measured_peak), fmt_gib(r.estimated_peak),
              "—" if r.error is None else f"{100 * r.error:+.2f}%"]
             + ([("—" if r.step_s is None else seconds_text(t, r.step_s)), r.device or "—"] if timed else [])
             for r in rows]
    cols = [t("report.col.case"), t("report.measured"), t("report.estimated"), t("report.col.error")]
    if timed:
        cols += [t("report.col.step_time"), t("report.col.device")]
    st.dataframe(_frame(cols, table), hide_index=True, width="stretch", key="report_table")
    for r in rows:
        if r.bad_step_s is not None:
            st.warning(t("report.step_s.invalid", case=r.label, value=r.bad_step_s))
    if timed:
        st.caption(t("report.step_time.caption"))
    first = rows[0]
    c = st.columns(3)
    c[0].metric(t("report.measured"), fmt_gib(first.measured_peak))
    c[1].metric(t("report.estimated"), fmt_gib(first.estimated_peak))
    c[2].metric(t("report.col.error"), "—" if first.error is None else f"{100 * first.error:+.2f}%")
    if first.measured_breakdown or first.estimated_breakdown:
        st.plotly_chart(charts.report_bar(first.measured_breakdown, first.estimated_breakdown, t), key="chart_report")
