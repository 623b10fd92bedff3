"""The sidebar: every input, each widget keyed so a shared link (``ui.state``) can restore it, and a
slot under each section where the planner's error about that input appears."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

import planner
from planner.gpus import gpus
from planner.memory.settings import ATTN_IMPLEMENTATIONS, OPTIMIZERS, SHARDINGS
from ui import methods, planning, state
from ui.i18n import LANGS, LocalizedError, Translator, fmt_gib
from ui.planning import Failure, ModelRef

#: Planner error fields -> the sidebar section whose slot shows the error.
TRAINING_FIELDS = frozenset({
    "batch_size", "seq_len", "target_len", "dtype", "adapter_dtype", "mixed_precision", "gradient_checkpointing",
    "attn_implementation", "optimizer", "quantization", "gradient_accumulation_steps", "settings",
})
MODEL_FIELDS = frozenset({"model", "config", "config.json"})
GPU_FIELDS = frozenset({"gpu", "memory_gib", "name", "usable_memory_fraction", "num_gpus", "sharding", "offload"})
#: Session keys that keep the sharding / offload choice while the GPU count is one (their widgets are not drawn).
KEEP_PARALLEL = {"sharding": "_keep.sharding", "offload": "_keep.offload"}
UPLOAD_LIMIT_MB = 1


@dataclass
class Sidebar:
    """What the sidebar produced: the inputs, the model, the GPU (or why not) and the error slots."""

    inputs: state.Inputs
    model: ModelRef
    gpu: Any
    slots: dict[str, Any] = field(default_factory=dict)
    errors: list[tuple[str, Failure]] = field(default_factory=list)

    def show_error(self, t: Translator, failure: Failure) -> str:
        """Show a planner error next to its input; returns the section it went to."""
        section = section_for(failure.field)
        show_failure(self.slots[section], t, failure)
        self.errors.append((section, failure))
        return section


def section_for(field_name: str | None) -> str:
    root = (field_name or "").split(".")[0]
    if field_name in MODEL_FIELDS or root in MODEL_FIELDS:
        return "model"
    if root in TRAINING_FIELDS:
        return "training"
    if root in GPU_FIELDS:
        return "gpu"
    return "method"


def field_label(t: Translator, name: str | None) -> str:
    if not name:
        return ""
    root = name.split(".")[0]
    return t.get(f"field.{root}", t.get(f"setting.{root}", root))


def show_failure(container: Any, t: Translator, failure: Failure) -> None:
    title = t.get(f"error.kind.{failure.kind}", t("error.kind.PlannerError"))
    where = t("error.field", field=field_label(t, failure.field)) if failure.field else ""
    message = t(failure.key, **dict(failure.values)) if failure.key else failure.message
    container.error(t("error.format", title=title, where=where, message=message))


# ----- widget helpers: seed session state once, never pass a value that fights it -------------------------


def _ensure(key: str, default: Any, valid: Any = None) -> None:
    ss = st.session_state
    if key not in ss or (valid is not None and ss[key] not in valid):
        ss[key] = default


def _ensure_number(key: str, default: Any, lo: Any = None, hi: Any = None, kind: type = int, optional: bool = False) -> None:
    ss = st.session_state
    v = ss.get(key, default)
    if v is None and optional:
        ss[key] = None
        return
    try:
        v = kind(v)
    except (TypeError, ValueError):
        v = default
    if v is None:
        ss[key] = None
        return
    if lo is not None and v < lo:
        v = kind(lo)
    if hi is not None and v > hi:
        v = kind(hi)
    ss[key] = v


def lang_name(code: str) -> str:
    return Translator(code)("lang.name")


# ----- sections ------------------------------------------------------------------------------------------


def model_section(sb: Any, t: Translator) -> tuple[str, ModelRef, Any]:
    sb.header(t("section.model"))
    ids = planner.model_ids()
    _ensure("model", state.DEFAULT_MODEL, ids)
    model_id = sb.selectbox(t("model.catalog.label"), ids, key="model", help=t("model.catalog.help"),
                            placeholder=t("model.catalog.placeholder"))
    slot = sb.container()
    ref = planning.catalog_ref(model_id)
    with sb.expander(t("model.upload.expander")):
        upload = st.file_uploader(t("model.upload.label"), type=["json"], key="config_upload",
                                  help=t("model.upload.help", limit=f"{UPLOAD_LIMIT_MB} MiB"),
                                  max_upload_size=UPLOAD_LIMIT_MB)
        if upload is not None:
            raw = upload.getvalue()
            try:
                if len(raw) > UPLOAD_LIMIT_MB * 2**20:
                    raise LocalizedError("error.too_large", field="config", limit=f"{UPLOAD_LIMIT_MB * 2**20:,}")
                ref = planning.upload_ref(raw.decode("utf-8", errors="replace"))
                st.success(t("model.upload.using", name=ref.spec().name))
            except planner.PlannerError as exc:
                show_failure(st, t, planning.failure_from(exc))
                st.caption(t("model.upload.fallback", model=model_id))
    return model_id, ref, slot


def method_label(t: Translator, choice: str) -> str:
    return t.get(f"method.{choice}.name", choice)


def category_label(t: Translator, category: str) -> str:
    return t.get(f"category.{category}", category)


def _default_text(f: methods.OptionField) -> str:
    try:
        return methods.to_text(f.default)
    except (TypeError, ValueError):
        return str(f.default)


def choice_label(t: Translator, value: Any) -> str:
    if value is None:
        return t("common.auto")
    if isinstance(value, bool):
        return t("common.yes") if value else t("common.no")
    return str(value)


def _option_widget(container: Any, t: Translator, choice: str, f: methods.OptionField, spec: planner.ModelSpec) -> Any:
    """One method option's widget; returns (value, error message or None)."""
    key = state.opt_key(choice, f.name)
    label = t.get(f"field.{f.name}", f.name)
    help_ = t.get(f"field.{f.name}.help", t("field.generic.help", name=f.name, type=f.annotation, default=_default_text(f)))
    if f.kind == "bool":
        _ensure(key, bool(f.ui_default), (True, False))
        return container.checkbox(label, key=key, help=help_), None
    if f.kind == "choice":
        _ensure(key, f.ui_default, f.choices)
        return container.selectbox(label, list(f.choices), key=key, help=help_,
                                   format_func=lambda v: choice_label(t, v)), None
    if f.kind == "int":
        lo = 0 if f.name not in ("decompose_factor",) else None
        if f.name == "r" and methods.info(choice).name == "lora":
            lo = 1
        _ensure_number(key, f.ui_default, lo=lo, kind=int, optional=f.optional)
        extra = {"value": None} if f.optional else {}
        return container.number_input(label, min_value=lo, step=1, key=key, help=help_, **extra), None
    if f.kind == "float":
        _ensure_number(key, None if f.ui_default is None else float(f.ui_default), kind=float, optional=f.optional)
        extra = {"value": None} if f.optional else {}
        return container.number_input(label, step=0.01 if "dropout" in f.name else 1.0, format="%g", key=key, help=help_,
                                      **extra), None
    _ensure(key, state.option_widget_value(f, f.ui_default))
    text = container.text_input(label, key=key, help=help_, placeholder=t("field.json.placeholder"))
    if not str(text).strip():
        return f.default, None
    try:
        return methods.from_text(text, f), None
    except ValueError:
        return f.default, t("field.json.invalid", name=f.name)


def targets_section(container: Any, t: Translator, choice: str, spec: planner.ModelSpec) -> str | list[str] | None:
    mkey = state.tmode_key(choice)
    _ensure(mkey, "default", state.TARGET_MODES)
    defaults = methods.default_targets(choice, spec)
    names = methods.linear_names(spec)

    def fmt(mode: str) -> str:
        return t(f"targets.mode.{mode}", defaults=", ".join(defaults) or t("targets.none"))

    mode = container.radio(t("targets.label"), list(state.TARGET_MODES), key=mkey, format_func=fmt, help=t("targets.help"))
    if mode == "default":
        return None
    if mode == "all-linear":
        return "all-linear"
    if mode == "regex":
        rkey = state.tregex_key(choice)
        _ensure(rkey, "")
        text = container.text_input(t("targets.regex.label"), key=rkey, help=t("targets.regex.help"),
                                    placeholder=t("targets.regex.placeholder"))
        return f"re:{text}" if text.strip() else None
    seeded = st.session_state.get(f"_tpick_seed.{choice}")
    initial = set(seeded if seeded is not None else defaults)
    container.caption(t("targets.pick.caption"))
    cols = container.columns(2)
    picked = []
    for i, name in enumerate(names):
        key = state.tpick_key(choice, name)
        _ensure(key, name in initial, (True, False))
        if cols[i % 2].checkbox(name, key=key):  # the model's own module name, not prose
            picked.append(name)
    return picked


def method_section(sb: Any, t: Translator, spec: planner.ModelSpec) -> tuple[str, dict[str, Any], Any, dict | None, Any]:
    sb.header(t("section.method"))
    choices = methods.choices()
    _ensure("method", state.DEFAULT_METHOD, choices)
    choice = sb.selectbox(t("method.label"), choices, key="method", format_func=lambda c: method_label(t, c),
                          help=t("method.help"))
    sb.caption(t("method.caption", category=category_label(t, methods.category(choice))))
    slot = sb.container()
    _ensure("use_adapter_json", False, (True, False))
    use_json = sb.toggle(t("adapter_json.toggle"), key="use_adapter_json", help=t("adapter_json.help"))
    adapter_config = None
    options: dict[str, Any] = {}
    targets = None
    if use_json:
        _ensure("adapter_json", "")
        text = sb.text_area(t("adapter_json.label"), key="adapter_json", height=200,
                            placeholder=t("adapter_json.placeholder"))
        if text.strip():
            try:
                adapter_config = state.parse_adapter_config(text)
            except planner.PlannerError as exc:
                show_failure(sb, t, planning.failure_from(exc))
        else:
            sb.info(t("adapter_json.empty"))
        return choice, options, targets, adapter_config, slot
    if methods.is_targeting(choice):
        targets = targets_section(sb, t, choice, spec)
    fields = methods.fields(choice)
    primary = [f for f in fields if not f.advanced]
    advanced = [f for f in fields if f.advanced]
    for f in primary:
        value, err = _option_widget(sb, t, choice, f, spec)
        options[f.name] = value
        if err:
            sb.error(err)
    if advanced:
        with sb.expander(t("method.advanced")):
            for f in advanced:
                value, err = _option_widget(st, t, choice, f, spec)
                options[f.name] = value
                if err:
                    st.error(err)
    return choice, options, targets, adapter_config, slot


def training_section(sb: Any, t: Translator, spec: planner.ModelSpec, choice: str, category: str) -> tuple[dict[str, Any], Any]:
    sb.header(t("section.training"))
    d = state.DEFAULTS
    out: dict[str, Any] = {}
    _ensure("dtype", d.dtype, state.DTYPES)
    out["dtype"] = sb.selectbox(t("setting.dtype"), list(state.DTYPES), key="dtype", help=t("setting.dtype.help"),
                                format_func=lambda v: t(f"dtype.{v}"))
    if out["dtype"] == "float32":
        _ensure("mixed_precision", d.mixed_precision, state.MIXED_PRECISION)
        out["mixed_precision"] = sb.selectbox(t("setting.mixed_precision"), list(state.MIXED_PRECISION), key="mixed_precision",
                                              help=t("setting.mixed_precision.help"),
                                              format_func=lambda v: t(f"mixed_precision.{v}"))
    else:
        out["mixed_precision"] = "none"
    c1, c2 = sb.columns(2)
    _ensure_number("batch_size", d.batch_size, 1, state.MAX_BATCH)
    out["batch_size"] = c1.number_input(t("setting.batch_size"), min_value=1, max_value=state.MAX_BATCH, step=1,
                                        key="batch_size", help=t("setting.batch_size.help"))
    _ensure_number("seq_len", d.seq_len, 1, state.MAX_SEQ_LEN)
    out["seq_len"] = c2.number_input(t("setting.seq_len"), min_value=1, max_value=state.MAX_SEQ_LEN, step=128,
                                     key="seq_len", help=t("setting.seq_len.help"))
    out["target_len"] = None
    if spec.is_encoder_decoder:
        _ensure_number("target_len", d.target_len, 1, state.MAX_SEQ_LEN, optional=True)
        out["target_len"] = sb.number_input(t("setting.target_len"), min_value=1, max_value=state.MAX_SEQ_LEN, step=64,
                                            value=None, key="target_len", help=t("setting.target_len.help"),
                                            placeholder=t("setting.target_len.placeholder"))
    _ensure_number("gradient_accumulation_steps", d.gradient_accumulation_steps, 1, state.MAX_ACCUM)
    out["gradient_accumulation_steps"] = sb.number_input(
        t("setting.gradient_accumulation_steps"), min_value=1, max_value=state.MAX_ACCUM, step=1,
        key="gradient_accumulation_steps", help=t("setting.gradient_accumulation_steps.help"))
    _ensure("gradient_checkpointing", d.gradient_checkpointing, (True, False))
    out["gradient_checkpointing"] = sb.checkbox(t("setting.gradient_checkpointing"), key="gradient_checkpointing",
                                                help=t("setting.gradient_checkpointing.help"))
    attn = list(ATTN_IMPLEMENTATIONS)
    _ensure("attn_implementation", d.attn_implementation, attn)
    out["attn_implementation"] = sb.selectbox(t("setting.attn_implementation"), attn, key="attn_implementation",
                                              help=t("setting.attn_implementation.help"),
                                              format_func=lambda v: t.get(f"attn.{v}", v))
    optims = list(OPTIMIZERS)
    _ensure("optimizer", d.optimizer, optims)
    out["optimizer"] = sb.selectbox(t("setting.optimizer"), optims, key="optimizer", help=t("setting.optimizer.help"),
                                    format_func=lambda v: t.get(f"optimizer.{v}", v))
    out["quantization"], out["double_quant"] = "none", True
    if category not in ("full", "selective"):
        quants = [q for q in state.QUANTIZATION if not (choice == "qlora" and q == "none")]
        _ensure("quantization", state.default_quantization(choice), quants)
        out["quantization"] = sb.selectbox(t("setting.quantization"), quants, key="quantization",
                                           help=t("setting.quantization.help"), format_func=lambda v: t(f"quant.{v}"))
        if out["quantization"] in ("nf4", "fp4"):
            _ensure("double_quant", d.double_quant, (True, False))
            out["double_quant"] = sb.checkbox(t("setting.double_quant"), key="double_quant",
                                              help=t("setting.double_quant.help"))
    else:
        st.session_state.pop("quantization", None)
    with sb.expander(t("setting.more")):
        _ensure("adapter_dtype", d.adapter_dtype, state.DTYPES)
        out["adapter_dtype"] = st.selectbox(t("setting.adapter_dtype"), list(state.DTYPES), key="adapter_dtype",
                                            help=t("setting.adapter_dtype.help"), format_func=lambda v: t(f"dtype.{v}"))
    slot = sb.container()
    return out, slot


def gpu_label(t: Translator, gid: str) -> str:
    if gid == state.CUSTOM_GPU:
        return t("gpu.custom")
    g = next(g for g in gpus() if g.id == gid)
    return t("gpu.option", name=g.name, size=fmt_gib(g.memory_bytes, 0))


def gpu_section(sb: Any, t: Translator) -> tuple[dict[str, Any], Any]:
    sb.header(t("section.gpu"))
    d = state.DEFAULTS
    ids = [g.id for g in gpus()] + [state.CUSTOM_GPU]
    _ensure("gpu", d.gpu, ids)
    out: dict[str, Any] = {"gpu": sb.selectbox(t("gpu.label"), ids, key="gpu", format_func=lambda g: gpu_label(t, g),
                                               help=t("gpu.help"))}
    out["gpu_memory_gib"] = d.gpu_memory_gib
    if out["gpu"] == state.CUSTOM_GPU:
        _ensure_number("gpu_memory_gib", d.gpu_memory_gib, 0.5, state.MAX_GPU_GIB, kind=float)
        out["gpu_memory_gib"] = sb.number_input(t("gpu.memory"), min_value=0.5, max_value=state.MAX_GPU_GIB, step=1.0,
                                                format="%g", key="gpu_memory_gib", help=t("gpu.memory.help"))
    _ensure_number("gpu_count", d.gpu_count, 1, state.MAX_GPUS)
    out["gpu_count"] = sb.number_input(t("gpu.count"), min_value=1, max_value=state.MAX_GPUS, step=1, key="gpu_count",
                                       help=t("gpu.count.help"))
    out["sharding"], out["offload"] = d.sharding, d.offload
    if out["gpu_count"] > 1:
        out["sharding"], out["offload"] = parallel_section(sb, t)
    else:  # not drawn: drop what the widgets held, so they come back with the kept choice
        for key in KEEP_PARALLEL:
            st.session_state.pop(key, None)
    slot = sb.container()
    return out, slot


def sharding_label(t: Translator, sharding: str) -> str:
    return t.get(f"sharding.{sharding}", sharding)


def offload_label(t: Translator, offload: str) -> str:
    return t.get(f"offload.{offload}", offload)


def parallel_section(sb: Any, t: Translator) -> tuple[str, str]:
    """With several GPUs: how they share the model (DDP by default) and, where the strategy allows it,
    what is offloaded to the CPU (only the choices valid for the chosen strategy are offered)."""
    ss = st.session_state
    d = state.DEFAULTS
    shardings = list(SHARDINGS)
    _ensure("sharding", ss.get(KEEP_PARALLEL["sharding"], d.sharding), shardings)
    sharding = sb.selectbox(t("setting.sharding"), shardings, key="sharding", format_func=lambda v: sharding_label(t, v),
                            help=t("setting.sharding.help"))
    ss[KEEP_PARALLEL["sharding"]] = sharding
    offloads = list(state.valid_offloads(sharding))
    offload = d.offload
    if len(offloads) > 1:
        kept = ss.get(KEEP_PARALLEL["offload"], d.offload)
        _ensure("offload", kept if kept in offloads else d.offload, offloads)
        offload = sb.selectbox(t("setting.offload"), offloads, key="offload", format_func=lambda v: offload_label(t, v),
                               help=t("setting.offload.help"))
        ss[KEEP_PARALLEL["offload"]] = offload
    else:
        ss.pop("offload", None)
        sb.caption(t("setting.offload.none", sharding=sharding_label(t, sharding)))
    return sharding, offload


def render(t: Translator, view: str) -> Sidebar:
    sb = st.sidebar
    model_id, ref, model_slot = model_section(sb, t)
    spec = ref.spec()
    choice, options, targets, adapter_config, method_slot = method_section(sb, t, spec)
    category = methods.category(choice)
    if adapter_config is not None:
        category = planning.method_category(state.DEFAULTS.with_(adapter_config=adapter_config))
    settings, training_slot = training_section(sb, t, spec, choice, category)
    gpu_inputs, gpu_slot = gpu_section(sb, t)
    inputs = state.Inputs(lang=t.lang, model=model_id, method=choice, options=options, targets=targets,
                          adapter_config=adapter_config, view=view, **settings, **gpu_inputs,
                          **state.tab_values(st.session_state))  # the Recommend / time inputs (kept while their tab is closed)
    slots = {"model": model_slot, "method": method_slot, "training": training_slot, "gpu": gpu_slot}
    try:
        gpu = planning.resolve_gpu(inputs)
    except planner.PlannerError as exc:
        gpu = None
        show_failure(gpu_slot, t, planning.failure_from(exc))
    return Sidebar(inputs=inputs, model=ref, gpu=gpu, slots=slots)


def seed_from_url() -> None:
    """First run of a session: restore the widgets from the URL's query parameters."""
    if st.session_state.get("_seeded"):
        return
    inputs, ignored = state.from_query(st.query_params.to_dict())
    for key, value in state.widget_values(inputs).items():
        st.session_state[key] = value
    if isinstance(inputs.targets, list):
        st.session_state[f"_tpick_seed.{inputs.method}"] = list(inputs.targets)
    st.session_state["_view"] = inputs.view
    st.session_state["_ignored_params"] = ignored
    st.session_state["_seeded"] = True


def language_switch() -> Translator:
    _ensure("lang", state.DEFAULTS.lang, LANGS)
    lang = st.sidebar.radio(Translator(st.session_state["lang"])("lang.label"), list(LANGS), key="lang",
                            format_func=lang_name, horizontal=True)
    return Translator(lang)


def write_url(inputs: state.Inputs) -> None:
    wanted = state.to_query(inputs)
    current = st.query_params.to_dict()
    if current != wanted:
        st.query_params.from_dict(wanted)
