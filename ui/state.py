"""The app's inputs as one value, and its two outside forms: URL query parameters and widget state.

``from_query(params) -> Inputs`` reads a shared link (bad or unknown parameters are dropped and
named, never raised); ``to_query(inputs)`` writes only what differs from the defaults, so the
bundled example is a bare URL. ``widget_values(inputs)`` gives the widget keys to seed a new
session with. No streamlit here: the app moves these values in and out of ``st.query_params``
and ``st.session_state``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, Mapping

import planner
from planner.constants import DEFAULT_UTILIZATION
from planner.gpus import gpu_ids
from planner.memory.settings import ATTN_IMPLEMENTATIONS, OFFLOADS, OPTIMIZERS, SHARDINGS, TrainingSettings
from planner.recommend import PRIORITIES, tasks
from ui import methods
from ui.i18n import DEFAULT_LANG, LANGS, LocalizedError

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B"
DEFAULT_GPU = "rtx-4090"
DEFAULT_METHOD = "lora"
CUSTOM_GPU = "custom"
VIEWS: tuple[str, ...] = ("plan", "recommend", "compare", "explore", "export")
DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")
MIXED_PRECISION: tuple[str, ...] = ("none", "bf16", "fp16")
QUANTIZATION: tuple[str, ...] = ("none", "nf4", "fp4", "int8")
TARGET_MODES: tuple[str, ...] = ("default", "all-linear", "pick", "regex")
MODEL_SOURCES: tuple[str, ...] = ("catalog", "upload")
#: Largest adapter_config.json accepted in the paste box or a URL (real ones are ~1 kB).
MAX_ADAPTER_CONFIG_CHARS = 64 * 1024
MAX_BATCH, MAX_SEQ_LEN, MAX_ACCUM, MAX_GPUS, MAX_GPU_GIB = 65536, 4 * 1024 * 1024, 65536, 1024, 65536.0
#: Limits of the Recommend tab's inputs (training examples, epochs, price per GPU-hour in USD).
MAX_EXAMPLES, MIN_EPOCHS, MAX_EPOCHS, MAX_PRICE = 10**12, 0.01, 10000.0, 1_000_000.0
DEFAULT_TASK = "classification"
#: Offload choices of the sidebar ("none" = nothing offloaded; planner.estimate's ``offload=None``).
OFFLOAD_CHOICES: tuple[str, ...] = ("none", *OFFLOADS)

#: URL parameter -> Inputs attribute for the training / GPU settings.
SETTING_PARAMS: dict[str, str] = {
    "dtype": "dtype", "mp": "mixed_precision", "adapter_dtype": "adapter_dtype", "batch": "batch_size",
    "seq": "seq_len", "tlen": "target_len", "gc": "gradient_checkpointing", "attn": "attn_implementation",
    "optim": "optimizer", "accum": "gradient_accumulation_steps", "quant": "quantization", "dq": "double_quant",
    "gpu": "gpu", "gpu_mem": "gpu_memory_gib", "gpus": "gpu_count", "shard": "sharding", "offload": "offload",
}
#: Settings that only mean something with several GPUs (the sidebar shows them when the count is above one).
MULTI_GPU_SETTINGS = ("sharding", "offload")
#: URL parameter -> Inputs attribute for the Recommend tab's inputs.
RECOMMEND_PARAMS: dict[str, str] = {
    "task": "task", "examples": "num_examples", "priority": "priority", "epochs": "epochs",
    "ebatch": "effective_batch_size", "price": "price_per_gpu_hour",
}
#: URL parameter -> Inputs attribute for the Plan tab's time-and-cost inputs of its own (training examples,
#: epochs and the price per GPU-hour are the Recommend tab's, shared).
TIME_PARAMS: dict[str, str] = {"util": "utilization"}
RESERVED_PARAMS = frozenset({"lang", "model", "method", "targets", "peft", "view", *SETTING_PARAMS, *RECOMMEND_PARAMS,
                             *TIME_PARAMS})
#: Prefix for a method option whose name is one of the reserved parameters.
OPTION_PREFIX = "o."


@dataclass(frozen=True)
class Inputs:
    """Everything the user chose. ``options`` are method options as ``planner.estimate`` takes them
    (target modules aside); ``targets``: None = PEFT's default, ``"all-linear"``, a list of module
    names, or ``"re:<regex>"``; ``adapter_config``: a pasted PEFT adapter_config.json, which then
    replaces method, options and targets."""

    lang: str = DEFAULT_LANG
    model: str = DEFAULT_MODEL
    method: str = DEFAULT_METHOD
    options: dict[str, Any] = field(default_factory=lambda: dict(methods.UI_DEFAULTS.get(DEFAULT_METHOD, {})))
    targets: str | list[str] | None = None
    adapter_config: dict[str, Any] | None = None
    dtype: str = "bfloat16"
    mixed_precision: str = "none"
    adapter_dtype: str = "float32"
    batch_size: int = 1
    seq_len: int = 512
    target_len: int | None = None
    gradient_checkpointing: bool = True
    attn_implementation: str = "sdpa"
    optimizer: str = "adamw_torch"
    gradient_accumulation_steps: int = 1
    quantization: str = "none"  # "none" | "nf4" | "fp4" | "int8"; qlora never "none"
    double_quant: bool = True
    gpu: str = DEFAULT_GPU  # catalog id or "custom"
    gpu_memory_gib: float = 24.0  # custom GPU only
    gpu_count: int = 1
    sharding: str = "ddp"  # with gpu_count > 1: ddp | zero1 | zero2 | zero3 | fsdp_full_shard | fsdp_shard_grad_op
    offload: str = "none"  # with gpu_count > 1: none | optimizer | optimizer+params (valid_offloads(sharding))
    view: str = "plan"
    # the Recommend tab (planner.recommend); model, GPU, sequence length and dtype / optimizer come from above
    task: str = DEFAULT_TASK
    num_examples: int = 5000
    priority: str = "quality"
    epochs: float = 1.0
    effective_batch_size: int = 16
    price_per_gpu_hour: float | None = None
    # the Plan tab's time and cost (planner.training_time; examples, epochs and price as above)
    utilization: float = DEFAULT_UTILIZATION  # fraction of the GPU's dense peak

    def with_(self, **changes: Any) -> "Inputs":
        return replace(self, **changes)


DEFAULTS = Inputs()


def default_quantization(method: str) -> str:
    return "nf4" if method == "qlora" else "none"


def _first(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return str(value[-1]) if value else ""
    return str(value)


def _int(text: str, lo: int, hi: int) -> int:
    v = int(text)
    if not lo <= v <= hi:
        raise ValueError(text)
    return v


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _one_of(options: tuple[str, ...]):
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(text)
        return text
    return parse


def _gib(text: str) -> float:
    v = float(text)
    if not 0 < v <= MAX_GPU_GIB:
        raise ValueError(text)
    return v


def _float(text: str, lo: float, hi: float, lo_open: bool = True) -> float:
    v = float(text)
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        raise ValueError(text)
    return v


def _task(text: str) -> str:
    if text not in tasks():
        raise ValueError(text)
    return text


def valid_offloads(sharding: str | None) -> tuple[str, ...]:
    """The offload choices the planner accepts with ``sharding`` (``"none"`` first), as its own
    settings validation decides (DDP: none; ZeRO-1/2: optimizer; ZeRO-3: both; FSDP full shard:
    optimizer+params)."""
    return _valid_offloads(sharding)


@lru_cache(maxsize=None)
def _valid_offloads(sharding: str | None) -> tuple[str, ...]:
    out = ["none"]
    if sharding is None:
        return tuple(out)
    for off in OFFLOADS:
        try:
            TrainingSettings.from_options({"num_gpus": 2, "sharding": sharding, "offload": off})
        except planner.PlannerError:
            continue
        out.append(off)
    return tuple(out)


def _gpu_id(text: str) -> str:
    if text != CUSTOM_GPU and text not in gpu_ids():
        raise ValueError(text)
    return text


_SETTING_PARSERS = {
    "dtype": _one_of(DTYPES), "mixed_precision": _one_of(MIXED_PRECISION), "adapter_dtype": _one_of(DTYPES),
    "batch_size": lambda s: _int(s, 1, MAX_BATCH), "seq_len": lambda s: _int(s, 1, MAX_SEQ_LEN),
    "target_len": lambda s: _int(s, 1, MAX_SEQ_LEN), "gradient_checkpointing": _bool,
    "attn_implementation": _one_of(tuple(ATTN_IMPLEMENTATIONS)), "optimizer": _one_of(tuple(OPTIMIZERS)),
    "gradient_accumulation_steps": lambda s: _int(s, 1, MAX_ACCUM), "quantization": _one_of(QUANTIZATION),
    "double_quant": _bool, "gpu": lambda s: _gpu_id(s),
    "gpu_memory_gib": _gib, "gpu_count": lambda s: _int(s, 1, MAX_GPUS), "sharding": _one_of(SHARDINGS),
    "offload": _one_of(OFFLOAD_CHOICES),
}
_RECOMMEND_PARSERS = {
    "task": _task, "num_examples": lambda s: _int(s, 1, MAX_EXAMPLES), "priority": _one_of(PRIORITIES),
    "epochs": lambda s: _float(s, MIN_EPOCHS, MAX_EPOCHS, lo_open=False), "effective_batch_size": lambda s: _int(s, 1, MAX_BATCH),
    "price_per_gpu_hour": lambda s: _float(s, 0.0, MAX_PRICE, lo_open=False),
}
_TIME_PARSERS = {"utilization": lambda s: _float(s, 0.0, 1.0)}


def parse_adapter_config(text: str) -> dict[str, Any]:
    """A pasted adapter_config.json as data: size-limited, must be a JSON object with ``peft_type``."""
    if len(text) > MAX_ADAPTER_CONFIG_CHARS:
        raise LocalizedError("error.too_large", field="adapter_config", limit=f"{MAX_ADAPTER_CONFIG_CHARS:,}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LocalizedError("error.json", field="adapter_config", msg=exc.msg, line=exc.lineno, col=exc.colno) from None
    if not isinstance(data, dict):
        raise LocalizedError("error.not_object", field="adapter_config", found=type(data).__name__)
    if "peft_type" not in data:
        raise LocalizedError("error.peft_type_missing", field="peft_type")
    return data


def parse_targets(text: str) -> str | list[str] | None:
    text = text.strip()
    if not text or text == "default":
        return None
    if text == "all-linear" or text.startswith("re:"):
        return text
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(text)
    return names


def from_query(params: Mapping[str, Any]) -> tuple[Inputs, list[str]]:
    """Inputs from URL query parameters; returns them with the names of parameters that were ignored.

    The model must be a catalog id (a link never names a file on the server)."""
    q = {k: _first(v) for k, v in params.items()}
    ignored: list[str] = []
    changes: dict[str, Any] = {}
    if "lang" in q:
        if q["lang"].strip().lower().split("-")[0] in LANGS:
            changes["lang"] = q["lang"].strip().lower().split("-")[0]
        else:
            ignored.append("lang")
    if "model" in q:
        if q["model"] in planner.model_ids():
            changes["model"] = q["model"]
        else:
            ignored.append("model")
    method = DEFAULT_METHOD
    if "method" in q:
        if q["method"] in methods.choices():
            method = changes["method"] = q["method"]
        else:
            ignored.append("method")
    if "view" in q:
        if q["view"] in VIEWS:
            changes["view"] = q["view"]
        else:
            ignored.append("view")
    for params, parsers in ((SETTING_PARAMS, _SETTING_PARSERS), (RECOMMEND_PARAMS, _RECOMMEND_PARSERS),
                            (TIME_PARAMS, _TIME_PARSERS)):
        for param, attr in params.items():
            if param in q:
                try:
                    changes[attr] = parsers[attr](q[param])
                except (ValueError, TypeError):
                    ignored.append(param)
    if "targets" in q:
        try:
            changes["targets"] = parse_targets(q["targets"])
        except ValueError:
            ignored.append("targets")
    if "peft" in q:
        try:
            changes["adapter_config"] = parse_adapter_config(q["peft"])
        except planner.PlannerError:
            ignored.append("peft")
    fields = methods.field_map(method)
    options = dict(methods.UI_DEFAULTS.get(method, {}))
    for key, text in q.items():
        if key in RESERVED_PARAMS:
            continue
        name = key[len(OPTION_PREFIX):] if key.startswith(OPTION_PREFIX) else key
        f = fields.get(name)
        if f is None or (name in RESERVED_PARAMS) != key.startswith(OPTION_PREFIX):
            ignored.append(key)
            continue
        try:
            options[name] = methods.from_text(text, f)
        except ValueError:
            ignored.append(key)
    changes["options"] = options
    _check_multi_gpu(q, changes, ignored)
    if "quantization" not in changes:
        changes["quantization"] = default_quantization(method)
    elif method == "qlora" and changes["quantization"] == "none":
        changes["quantization"] = "nf4"
        ignored.append("quant")
    return DEFAULTS.with_(**changes), ignored


def _check_multi_gpu(q: Mapping[str, str], changes: dict[str, Any], ignored: list[str]) -> None:
    """Sharding and offload only with several GPUs, and only an offload the sharding accepts; else
    they are dropped and named."""
    multi = changes.get("gpu_count", DEFAULTS.gpu_count) > 1
    for param, attr in (("shard", "sharding"), ("offload", "offload")):
        if attr in changes and not multi:
            del changes[attr]
            ignored.append(param)
    offload = changes.get("offload")
    if offload is not None and offload not in valid_offloads(changes.get("sharding", DEFAULTS.sharding)):
        del changes["offload"]
        ignored.append("offload")


def to_query(inputs: Inputs) -> dict[str, str]:
    """The URL parameters for ``inputs``: only what differs from the defaults (stable order)."""
    out: dict[str, str] = {}
    if inputs.lang != DEFAULTS.lang:
        out["lang"] = inputs.lang
    if inputs.model != DEFAULTS.model:
        out["model"] = inputs.model
    if inputs.method != DEFAULTS.method:
        out["method"] = inputs.method
    if inputs.view != DEFAULTS.view:
        out["view"] = inputs.view
    if inputs.adapter_config is not None:
        out["peft"] = json.dumps(inputs.adapter_config, separators=(",", ":"), sort_keys=True)
    else:
        if inputs.targets is not None:
            t = inputs.targets
            out["targets"] = t if isinstance(t, str) else ",".join(t)
        fields = methods.field_map(inputs.method)
        for name, value in inputs.options.items():
            f = fields.get(name)
            if f is None or value == f.ui_default:
                continue
            out[(OPTION_PREFIX + name) if name in RESERVED_PARAMS else name] = methods.to_text(value)
    for param, attr in (SETTING_PARAMS | RECOMMEND_PARAMS | TIME_PARAMS).items():
        value = getattr(inputs, attr)
        default = getattr(DEFAULTS, attr)
        if attr == "quantization":
            default = default_quantization(inputs.method)
        if attr == "gpu_memory_gib" and inputs.gpu != CUSTOM_GPU:
            continue
        if attr in MULTI_GPU_SETTINGS and inputs.gpu_count <= 1:
            continue
        if value != default and value is not None:
            out[param] = ("1" if value else "0") if isinstance(value, bool) else f"{value:.12g}" if isinstance(value, float) else str(value)
    return out


# ----- widget state --------------------------------------------------------------------------------


def opt_key(method: str, name: str) -> str:
    return f"opt.{method}.{name}"


def tmode_key(method: str) -> str:
    return f"tmode.{method}"


def tpick_key(method: str, name: str) -> str:
    return f"tpick.{method}.{name}"


def tregex_key(method: str) -> str:
    return f"tregex.{method}"


#: Inputs attribute -> widget key for the plain settings (same names).
SETTING_WIDGETS = tuple(SETTING_PARAMS.values())
#: Inputs attribute -> widget key of the Recommend tab's inputs. Those widgets exist only while the
#: tab is open (streamlit drops a widget's state when it is not drawn), so each value also lives
#: under ``stored_key(key)``, which the app reads on every run and the widgets are seeded from.
RECOMMEND_WIDGETS: dict[str, str] = {attr: f"rec_{attr}" for attr in RECOMMEND_PARAMS.values()}


#: Inputs attribute -> widget key of the Plan tab's time-and-cost inputs. Like the Recommend tab's they
#: exist only while the tab is open; training examples, epochs and price are kept under the Recommend
#: widgets' stored keys (one dataset, one price, whichever tab set them), the utilisation under its own.
TIME_WIDGETS: dict[str, str] = {"num_examples": "time_num_examples", "epochs": "time_epochs",
                                "price_per_gpu_hour": "time_price_per_gpu_hour", "utilization": "time_utilization"}


def stored_key(widget_key: str) -> str:
    return f"_{widget_key}"


def kept_key(attr: str) -> str:
    """The session key that keeps a tab input's value (Recommend and time inputs) while its widget is not drawn."""
    return stored_key(RECOMMEND_WIDGETS[attr] if attr in RECOMMEND_WIDGETS else TIME_WIDGETS[attr])


def recommend_values(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The Recommend inputs kept in session state (``stored_key``s); anything missing or invalid is the default."""
    out: dict[str, Any] = {}
    for attr, key in RECOMMEND_WIDGETS.items():
        value = stored.get(stored_key(key), getattr(DEFAULTS, attr))
        if value is None and attr == "price_per_gpu_hour":
            out[attr] = None
            continue
        try:
            text = f"{value:.12g}" if isinstance(value, float) else str(value)
            out[attr] = _RECOMMEND_PARSERS[attr](text)
        except (ValueError, TypeError):
            out[attr] = getattr(DEFAULTS, attr)
    return out


def tab_values(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The Recommend and time inputs kept in session state; anything missing or invalid is the default."""
    out = recommend_values(stored)
    for attr, parse in _TIME_PARSERS.items():
        value = stored.get(kept_key(attr), getattr(DEFAULTS, attr))
        try:
            out[attr] = parse(f"{value:.12g}" if isinstance(value, float) else str(value))
        except (ValueError, TypeError):
            out[attr] = getattr(DEFAULTS, attr)
    return out


def option_widget_value(f: methods.OptionField, value: Any) -> Any:
    """An option value as its widget holds it (JSON boxes hold text; blank = PEFT's default)."""
    if f.kind == "json":
        return "" if value == f.default else methods.to_text(value)
    if f.kind == "int" and value is not None:
        return int(value)
    if f.kind == "float" and value is not None:
        return float(value)
    return value


def target_mode(targets: str | list[str] | None) -> str:
    if targets is None:
        return "default"
    if targets == "all-linear":
        return "all-linear"
    if isinstance(targets, str):
        return "regex"
    return "pick"


def widget_values(inputs: Inputs) -> dict[str, Any]:
    """Session-state values that make the widgets show ``inputs`` (what a shared link restores)."""
    out: dict[str, Any] = {"lang": inputs.lang, "model_source": "catalog", "model": inputs.model, "method": inputs.method}
    for attr in SETTING_WIDGETS:
        out[attr] = getattr(inputs, attr)
    for attr, key in RECOMMEND_WIDGETS.items():
        out[stored_key(key)] = getattr(inputs, attr)
    for attr in _TIME_PARSERS:
        out[kept_key(attr)] = getattr(inputs, attr)
    fields = methods.field_map(inputs.method)
    for name, value in inputs.options.items():
        if name in fields:
            out[opt_key(inputs.method, name)] = option_widget_value(fields[name], value)
    if methods.is_targeting(inputs.method):
        out[tmode_key(inputs.method)] = target_mode(inputs.targets)
        if isinstance(inputs.targets, str) and inputs.targets.startswith("re:"):
            out[tregex_key(inputs.method)] = inputs.targets[3:]
    if inputs.adapter_config is not None:
        out["use_adapter_json"] = True
        out["adapter_json"] = json.dumps(inputs.adapter_config, indent=2)
    return out


def as_dict(inputs: Inputs) -> dict[str, Any]:
    return asdict(inputs)
