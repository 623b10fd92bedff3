"""The main area: the plan, the comparison of all methods, the sweeps and the exports.

Only the open tab runs (``st.tabs(on_change="rerun")``); estimates are cached per input, so going
back and forth between tabs costs nothing twice.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

import planner
from ui import charts, methods, planning, state
from ui.i18n import LANGS, Translator, fmt_bytes, fmt_gib, fmt_int, fmt_pct, fmt_signed_gib
from ui.planning import ModelRef, Outcome
from ui.sidebar import Sidebar, category_label, method_label, section_for, show_failure

# ----- cached estimates ----------------------------------------------------------------------------------


@st.cache_data(max_entries=4096, show_spinner=False)
def _cached_estimate(model_key: str, config_text: str | None, method_json: str, options_json: str,
                     settings_json: str) -> Outcome:
    return planning.direct_runner(ModelRef(model_key, config_text), method_json, options_json, settings_json)


def runner(model: ModelRef, method_json: str, options_json: str, settings_json: str) -> Outcome:
    return _cached_estimate(model.key, model.config_text, method_json, options_json, settings_json)


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


def verdict_message(t: Translator, v: planning.Verdict, gpu_name: str, count: int) -> None:
    if v.status == "unknown":
        st.info(t("memory.unavailable"))
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
    if count > 1:
        st.caption(t("gpu.multi", n=fmt_int(count)))


# ----- Plan ----------------------------------------------------------------------------------------------


def plan_view(t: Translator, sb: Sidebar, outcome: Outcome) -> None:
    inputs, spec = sb.inputs, sb.model.spec()
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
            return
        plan = outcome.plan
        if sb.gpu is None:
            st.info(t("gpu.invalid"))
            v = None
        else:
            v = planning.verdict(plan, sb.gpu)
            verdict_message(t, v, sb.gpu.name, inputs.gpu_count)
    c = st.columns(4)
    c[0].metric(t("metric.trainable"), fmt_int(plan.trainable_params), help=t("metric.trainable.help"))
    c[1].metric(t("metric.trainable_percent"), fmt_pct(plan.trainable_percent), help=t("metric.trainable_percent.help",
                                                                                       total=fmt_int(plan.total_params)))
    c[2].metric(t("metric.adapter_file"), fmt_bytes(plan.adapter_file_bytes), help=t("metric.adapter_file.help"))
    c[3].metric(t("metric.adapted_modules"), fmt_int(plan.num_adapted_modules), help=t("metric.adapted_modules.help"))
    mem = plan.memory
    if mem is not None:
        c = st.columns(4)
        c[0].metric(t("metric.peak"), fmt_gib(mem.peak_bytes), help=t("metric.peak.help", phase=t(f"phase.{mem.peak_phase}")))
        c[1].metric(t("metric.reserved"), fmt_gib(mem.reserved_bytes), help=t("metric.reserved.help"))
        c[2].metric(t("metric.device"), fmt_gib(mem.device_bytes), help=t("metric.device.help"))
        if v is not None and v.margin_bytes is not None:
            c[3].metric(t("metric.margin"), fmt_signed_gib(v.margin_bytes), help=t("metric.margin.help"))
        if sb.gpu is not None:
            st.plotly_chart(charts.breakdown_bar(mem, sb.gpu.usable_memory_bytes, sb.gpu.name, t), key="chart_breakdown")
        st.caption(t("memory.band", band=f"{100 * float(mem.error_band or 0):.1f}%", phase=t(f"phase.{mem.peak_phase}")))
        with st.expander(t("memory.table")):
            rows = [[charts.component_label(t, k), fmt_int(n), fmt_bytes(n),
                     fmt_pct(100 * n / mem.device_bytes if mem.device_bytes else 0, 1)]
                    for k, n in planning.memory_segments(mem)]
            st.dataframe(_frame([t("col.component"), t("col.bytes"), t("col.size"), t("col.share")], rows), hide_index=True,
                         width="stretch")
            phases = [[t(f"phase.{p}"), fmt_bytes(n)] for p, n in mem.phase_peaks.items()]
            st.dataframe(_frame([t("col.phase"), t("col.peak")], phases), hide_index=True, width="stretch")
    if plan.ignored_options:
        st.info(t("plan.ignored", keys=", ".join(plan.ignored_options)))
    if plan.notes:
        with st.expander(t("plan.notes", n=len(plan.notes))):
            for note in plan.notes:
                st.markdown(f"- {note}")
    with st.expander(t("plan.adapted", n=fmt_int(plan.num_adapted_modules))):
        st.code("\n".join(plan.adapted_modules) or t("plan.adapted.none"), language=None)
    if plan.peft_config:
        with st.expander(t("plan.peft_config")):
            st.json(plan.peft_config)


# ----- Compare -------------------------------------------------------------------------------------------


def _verdict_cell(t: Translator, v: planning.Verdict | None) -> str:
    return t(f"verdict.short.{v.status}") if v is not None else "—"


def compare_view(t: Translator, sb: Sidebar) -> None:
    inputs, gpu = sb.inputs, sb.gpu
    if gpu is None:
        st.info(t("gpu.invalid"))
        return
    st.subheader(t("compare.heading", model=sb.model.spec().name, gpu=gpu.name))
    st.caption(t("compare.caption"))
    with st.spinner(t("common.computing")):
        rows = planning.compare(inputs, sb.model, gpu, runner)
    labels = {r.key: method_label(t, r.key) for r in rows}
    table = []
    for r in rows:
        p = r.outcome.plan
        mem = p.memory if p is not None else None
        table.append([
            labels[r.key], category_label(t, methods.category(r.key)),
            fmt_int(p.trainable_params) if p else "—", fmt_pct(p.trainable_percent) if p else "—",
            fmt_bytes(p.adapter_file_bytes) if p else "—", fmt_gib(mem.peak_bytes) if mem else "—",
            fmt_gib(mem.device_bytes) if mem else "—", _verdict_cell(t, r.verdict),
            "" if r.outcome.ok else r.outcome.error.message,
        ])
    cols = [t("col.method"), t("col.category"), t("metric.trainable"), t("metric.trainable_percent"),
            t("metric.adapter_file"), t("metric.peak"), t("metric.device"), t("col.verdict"), t("col.note")]
    st.dataframe(_frame(cols, table), hide_index=True, width="stretch", height=_height(len(table)), key="compare_table")
    if any(r.outcome.ok and r.outcome.plan.memory is not None for r in rows):
        st.plotly_chart(charts.compare_bar(rows, gpu.usable_memory_bytes, labels, t), key="chart_compare")
    st.plotly_chart(charts.params_bar(rows, labels, t), key="chart_params")

    st.subheader(t("seed.heading"))
    st.caption(t("seed.caption", model=sb.model.spec().name, gpu=gpu.name))
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
        return
    if s.best is not None:
        st.success(t("explore.best", variable=t(f"variable.{variable}"), value=fmt_int(s.best), gpu=gpu.name,
                     used=fmt_gib(s.best_outcome.plan.memory.device_bytes)))
    else:
        st.error(t("explore.none_fit", variable=t(f"variable.{variable}"), gpu=gpu.name))
    st.plotly_chart(charts.sweep_line(s, t), key="chart_sweep")
    rows = []
    for x, o in s.points:
        mem = o.plan.memory if o.ok else None
        v = planning.verdict(o.plan, gpu) if o.ok else None
        rows.append([fmt_int(x), fmt_gib(mem.peak_bytes) if mem else "—", fmt_gib(mem.device_bytes) if mem else "—",
                     _verdict_cell(t, v) if o.ok else o.error.message])
    st.dataframe(_frame([t(f"variable.{variable}"), t("metric.peak"), t("metric.device"), t("col.verdict")], rows),
                 hide_index=True, width="stretch", key="sweep_table")


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
        doc = planning.plan_document(inputs, sb.model, plan, sb.gpu, v) if sb.gpu is not None else {}
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
        if sb.model.uploaded:
            st.caption(t("export.validate.upload_note"))
    else:
        main_error(t, sb, outcome)
    report_section(t)


def report_section(t: Translator) -> None:
    st.subheader(t("report.heading"))
    upload = st.file_uploader(t("report.upload"), type=["json"], key="report_upload", help=t("report.help"),
                              max_upload_size=8)
    if upload is None:
        return
    try:
        rows = planning.parse_report(upload.getvalue())
    except planner.PlannerError as exc:
        show_failure(st, t, planning.failure_from(exc))
        return
    table = [[r.label, fmt_gib(r.measured_peak), fmt_gib(r.estimated_peak),
              "—" if r.error is None else f"{100 * r.error:+.2f}%"] for r in rows]
    st.dataframe(_frame([t("report.col.case"), t("report.measured"), t("report.estimated"), t("report.col.error")], table),
                 hide_index=True, width="stretch", key="report_table")
    first = rows[0]
    c = st.columns(3)
    c[0].metric(t("report.measured"), fmt_gib(first.measured_peak))
    c[1].metric(t("report.estimated"), fmt_gib(first.estimated_peak))
    c[2].metric(t("report.col.error"), "—" if first.error is None else f"{100 * first.error:+.2f}%")
    if first.measured_breakdown or first.estimated_breakdown:
        st.plotly_chart(charts.report_bar(first.measured_breakdown, first.estimated_breakdown, t), key="chart_report")
