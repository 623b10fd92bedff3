"""The app's logic without streamlit: inputs -> ``planner.estimate`` calls, verdicts, comparisons,
sweeps, exports and validation reports. Everything here is a plain function of its arguments, so
the numbers the page shows can be checked against ``planner.estimate`` directly.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable, Literal, Mapping

import planner
from planner.constants import DEFAULT_UTILIZATION
from planner.gpus import GPU, custom_gpu, gpu as catalog_gpu
from planner.methods import method_for_peft_type
from planner.spec import parse_config_text
from ui import methods
from ui.i18n import LocalizedError
from ui.state import CUSTOM_GPU, Inputs, tpick_key, widget_values

# ----- model -------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def spec_from_text(text: str) -> planner.ModelSpec:
    """An uploaded config.json (text) as a ModelSpec: size-limited, parsed as data only."""
    return planner.load_model(parse_config_text(text, origin="config.json"))


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:12]


@dataclass(frozen=True)
class ModelRef:
    """Which model: a catalog id, or an uploaded config (its text; ``key`` names it in caches)."""

    key: str
    config_text: str | None = None

    @property
    def uploaded(self) -> bool:
        return self.config_text is not None

    def spec(self) -> planner.ModelSpec:
        return spec_from_text(self.config_text) if self.config_text is not None else planner.load_model(self.key)

    def model_arg(self) -> str | planner.ModelSpec:
        """What to pass to ``planner.estimate``: the catalog id, or the parsed spec (never a path)."""
        return self.spec() if self.config_text is not None else self.key


def catalog_ref(model_id: str) -> ModelRef:
    if model_id not in planner.model_ids():
        raise planner.UnknownModelError(f"{model_id!r} is not in the catalog", field="model")
    return ModelRef(model_id)


def upload_ref(text: str) -> ModelRef:
    ref = ModelRef(f"upload:{config_digest(text)}", text)
    ref.spec()  # raises ConfigError / UnsupportedModelError for a bad file
    return ref


# ----- estimate arguments ------------------------------------------------------------------------------


def compute_dtype(inputs: Inputs) -> str:
    if inputs.dtype != "float32":
        return inputs.dtype
    return {"bf16": "bfloat16", "fp16": "float16"}.get(inputs.mixed_precision, "float32")


def quantization_kwargs(inputs: Inputs, category: str) -> dict[str, Any] | None:
    """``BitsAndBytesConfig`` keyword arguments for the chosen quantization (None: not quantized)."""
    if category in ("full", "selective"):
        return None
    q = inputs.quantization
    if inputs.method == "qlora" and q == "none":
        q = "nf4"
    if q == "none":
        return None
    if q == "int8":
        return {"load_in_8bit": True}
    return {"load_in_4bit": True, "bnb_4bit_quant_type": q, "bnb_4bit_use_double_quant": bool(inputs.double_quant),
            "bnb_4bit_compute_dtype": compute_dtype(inputs)}


def parallel_kwargs(inputs: Inputs) -> dict[str, Any]:
    """``num_gpus`` / ``sharding`` / ``offload`` for ``planner.estimate``: nothing for one GPU (the
    sidebar shows the strategy only for several), else the chosen strategy (offload None for "none")."""
    if int(inputs.gpu_count) <= 1:
        return {}
    return {"num_gpus": int(inputs.gpu_count), "sharding": inputs.sharding,
            "offload": None if inputs.offload == "none" else inputs.offload}


def settings_kwargs(inputs: Inputs, spec: planner.ModelSpec, category: str) -> dict[str, Any]:
    """Training settings as ``planner.estimate`` keyword arguments (with the multi-GPU strategy)."""
    kw: dict[str, Any] = {
        "batch_size": int(inputs.batch_size), "seq_len": int(inputs.seq_len), "dtype": inputs.dtype,
        "adapter_dtype": inputs.adapter_dtype,
        "mixed_precision": None if inputs.mixed_precision == "none" else inputs.mixed_precision,
        "gradient_checkpointing": bool(inputs.gradient_checkpointing),
        "attn_implementation": inputs.attn_implementation, "optimizer": inputs.optimizer,
        "gradient_accumulation_steps": int(inputs.gradient_accumulation_steps),
        "quantization": quantization_kwargs(inputs, category),
    }
    if spec.is_encoder_decoder and inputs.target_len:
        kw["target_len"] = int(inputs.target_len)
    kw.update(parallel_kwargs(inputs))
    return kw


def target_modules_arg(targets: str | list[str] | None) -> str | list[str] | None:
    if isinstance(targets, str) and targets.startswith("re:"):
        return targets[3:]
    return targets


def method_arg(inputs: Inputs) -> tuple[str | dict[str, Any], dict[str, Any]]:
    """(method, method options) for ``planner.estimate``: options equal to PEFT's default are left out."""
    if inputs.adapter_config is not None:
        return dict(inputs.adapter_config), {}
    fields = methods.field_map(inputs.method)
    options = {k: v for k, v in inputs.options.items() if k in fields and v != fields[k].default}
    if methods.is_targeting(inputs.method) and inputs.targets is not None:
        options["target_modules"] = target_modules_arg(inputs.targets)
    return inputs.method, options


def method_category(inputs: Inputs) -> str:
    if inputs.adapter_config is not None:
        try:
            return method_for_peft_type(inputs.adapter_config.get("peft_type")).category
        except planner.PlannerError:
            return "additive"
    return methods.category(inputs.method)


# ----- running estimate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """Why a plan could not be made: the planner's error class, the offending input, its message
    (the planner's own words; ``key`` / ``values`` when the message is a catalog entry)."""

    kind: str  # PlannerError subclass name, or "internal"
    field: str | None
    message: str
    key: str | None = None
    values: tuple[tuple[str, Any], ...] = ()


def failure_from(exc: planner.PlannerError) -> Failure:
    msg = str(exc)
    if exc.field and msg.startswith(f"{exc.field}: "):
        msg = msg[len(exc.field) + 2:]
    if isinstance(exc, LocalizedError):
        return Failure(type(exc).__name__, exc.field, msg, exc.key, tuple(exc.values.items()))
    return Failure(type(exc).__name__, exc.field, msg)


@dataclass(frozen=True)
class Outcome:
    plan: planner.Plan | None = None
    error: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.plan is not None


def run_estimate(model: ModelRef, method: str | Mapping[str, Any], options: Mapping[str, Any],
                 settings: Mapping[str, Any]) -> Outcome:
    """``planner.estimate`` with errors as values: a PlannerError names its field; anything else
    is reported as an internal error (the page never shows a traceback)."""
    try:
        m = dict(method) if isinstance(method, Mapping) else method
        return Outcome(plan=planner.estimate(model.model_arg(), m, **dict(options), **dict(settings)))
    except planner.PlannerError as exc:
        return Outcome(error=failure_from(exc))
    except Exception as exc:  # noqa: BLE001 - a planner bug must not become a traceback on the page
        return Outcome(error=Failure("internal", None, f"{type(exc).__name__}: {exc}"))


#: Signature of a (possibly cached) estimate runner: (model, method json, options json, settings json).
Runner = Callable[[ModelRef, str, str, str], Outcome]


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def direct_runner(model: ModelRef, method_json: str, options_json: str, settings_json: str) -> Outcome:
    return run_estimate(model, json.loads(method_json), json.loads(options_json), json.loads(settings_json))


def estimate_for(inputs: Inputs, model: ModelRef, runner: Runner = direct_runner, **setting_overrides: Any) -> Outcome:
    spec = model.spec()
    method, options = method_arg(inputs)
    settings = settings_kwargs(inputs, spec, method_category(inputs)) | setting_overrides
    return runner(model, dumps(method), dumps(options), dumps(settings))


# ----- GPU and verdict ----------------------------------------------------------------------------------


def resolve_gpu(inputs: Inputs) -> GPU:
    if inputs.gpu == CUSTOM_GPU:
        return custom_gpu(memory_gib=float(inputs.gpu_memory_gib), name="custom")
    return catalog_gpu(inputs.gpu)


Status = Literal["fits", "tight", "no_fit", "unknown"]


@dataclass(frozen=True)
class Verdict:
    """Does one training step fit? ``used`` is the device memory (reserved + CUDA context, what
    nvidia-smi shows) and ``capacity`` the GPU's usable memory (what nvidia-smi reports as total)."""

    status: Status
    used_bytes: int | None
    capacity_bytes: int
    margin_bytes: int | None
    band_bytes: int | None = None

    @property
    def fits(self) -> bool:
        return self.status in ("fits", "tight")


def verdict(plan: planner.Plan | None, gpu: GPU) -> Verdict:
    cap = gpu.usable_memory_bytes
    mem = getattr(plan, "memory", None) if plan is not None else None
    if mem is None:
        return Verdict("unknown", None, cap, None)
    used = int(mem.device_bytes)
    margin = cap - used
    band = int(math.ceil(abs(float(mem.error_band or 0.0)) * mem.peak_bytes))
    status: Status = "no_fit" if margin < 0 else ("tight" if margin < band else "fits")
    return Verdict(status, used, cap, margin, band)


def memory_reason(plan: planner.Plan | None) -> str | None:
    """Why the plan has no memory estimate (the planner's note; ``estimate`` appends it last), or None."""
    if plan is None or plan.memory is not None or not plan.notes:
        return None
    return plan.notes[-1]


def host_bytes(plan: planner.Plan | None) -> int:
    """Host (CPU) memory per GPU for what is offloaded (0 without offload or without a memory estimate)."""
    mem = getattr(plan, "memory", None) if plan is not None else None
    return int(getattr(mem, "host_bytes", 0) or 0) if mem is not None else 0


#: Bars of the memory chart, bottom to top: the breakdown at the peak, then what the allocator
#: reserves beyond it, then the CUDA context (together: device memory).
BREAKDOWN_ORDER = ("weights", "quantization", "gradients", "optimizer", "activations", "logits", "temporaries")


def memory_segments(memory: Any) -> list[tuple[str, int]]:
    """(component, bytes) for the stacked bar: breakdown keys, then allocator reserve and CUDA context."""
    bd = dict(memory.breakdown)
    keys = [k for k in BREAKDOWN_ORDER if k in bd] + sorted(k for k in bd if k not in BREAKDOWN_ORDER)
    out = [(k, int(bd[k])) for k in keys]
    out.append(("reserve", max(0, int(memory.reserved_bytes) - int(memory.peak_bytes))))
    out.append(("context", max(0, int(memory.device_bytes) - int(memory.reserved_bytes))))
    return out


# ----- time and cost ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    """``planner.training_time``'s answer as a value (a ``TrainingTime``), or why there is none."""

    time: Any = None
    error: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.time is not None


def time_kwargs(num_examples: Any, epochs: Any, price_per_gpu_hour: Any, utilization: Any) -> dict[str, Any]:
    """``planner.training_time`` keyword arguments. The default utilisation goes as None, so the result
    names its source (the planner's reference for the default) rather than "given"."""
    if isinstance(utilization, (int, float)) and not isinstance(utilization, bool) \
            and math.isclose(float(utilization), DEFAULT_UTILIZATION, rel_tol=0.0, abs_tol=1e-12):
        utilization = None
    return {"num_examples": num_examples, "epochs": epochs, "price_per_gpu_hour": price_per_gpu_hour,
            "utilization": utilization}


def training_time_for(plan: planner.Plan, gpu: GPU, measured_step_s: float | None = None, **kwargs: Any) -> Timed:
    """``planner.training_time(plan, gpu, **time_kwargs(...))`` with errors as values (the planner's
    ``TrainingTimeError`` names the input: ``num_examples``, ``epochs``, ``price_per_gpu_hour``,
    ``utilization``, ``gpu``); the number of GPUs is the plan's own. ``measured_step_s`` (a validation
    report's step time for this case) adds the ``measured_*`` fields."""
    try:
        return Timed(planner.training_time(plan, gpu, **time_kwargs(**kwargs), measured_step_s=measured_step_s))
    except planner.PlannerError as exc:
        return Timed(error=failure_from(exc))
    except Exception as exc:  # noqa: BLE001 - a planner bug must not become a traceback on the page
        return Timed(error=Failure("internal", None, f"{type(exc).__name__}: {exc}"))


def time_for_inputs(inputs: Inputs, plan: planner.Plan, gpu: GPU) -> Timed:
    """The training time for the time-and-cost inputs kept in ``inputs`` (what the link and the export carry)."""
    return training_time_for(plan, gpu, num_examples=int(inputs.num_examples), epochs=float(inputs.epochs),
                             price_per_gpu_hour=inputs.price_per_gpu_hour, utilization=float(inputs.utilization))


def flops_reason(inputs: Inputs, model: ModelRef, plan: planner.Plan) -> str | None:
    """Why ``plan.flops`` is None (the planner's ``compute.unsupported_reason``), or None when unknown."""
    try:
        from planner.api import plan_method
        from planner.compute import unsupported_reason

        spec = model.spec()
        method, options = method_arg(inputs)
        mplan = plan_method(spec, method, **options)[0]
        return unsupported_reason(spec, mplan, plan.settings)
    except Exception:  # noqa: BLE001 - only an explanation; the page says FLOPs are not counted either way
        return None


#: Phases of a step's FLOPs, as the time section splits them.
FLOP_PHASES = ("forward", "backward", "recompute")


def flops_split(flops: Any) -> list[tuple[str, int]]:
    """(phase, FLOPs) of one step: forward, backward (input + weight gradients), recompute; they add up
    to ``total_flops``."""
    return [("forward", int(flops.forward_flops)), ("backward", int(flops.backward_flops)),
            ("recompute", int(flops.recompute_flops))]


def flops_parts(flops: Any) -> list[tuple[str, dict[str, int]]]:
    """(part, {phase: FLOPs, "total": FLOPs}) for each part of the step (linear, attention, adapter, lm_head)."""
    out = []
    for name, part in (getattr(flops, "parts", None) or {}).items():
        backward = int(part.backward_input_flops) + int(part.backward_weight_flops)
        row = {"forward": int(part.forward_flops), "backward": backward, "recompute": int(part.recompute_flops)}
        row["total"] = sum(row.values())
        out.append((name, row))
    return out


# ----- compare ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str  # method choice or seed-table row id
    method: str
    options: dict[str, Any]
    outcome: Outcome
    verdict: Verdict | None = None


def compare_inputs(inputs: Inputs, choice: str) -> Inputs:
    """The inputs a comparison row uses: the current ones for the chosen method, else the method's
    defaults (PEFT's targets, its standard quantization) with the same model, settings and GPU."""
    if choice == inputs.method and inputs.adapter_config is None:
        return inputs
    return inputs.with_(method=choice, options=dict(methods.UI_DEFAULTS.get(choice, {})), targets=None,
                        adapter_config=None, quantization="nf4" if choice == "qlora" else "none")


def compare(inputs: Inputs, model: ModelRef, gpu: GPU, runner: Runner = direct_runner,
            choices: Iterable[str] | None = None) -> list[Row]:
    rows = []
    for choice in choices or methods.choices():
        ci = compare_inputs(inputs, choice)
        out = estimate_for(ci, model, runner)
        rows.append(Row(choice, choice, method_arg(ci)[1], out, verdict(out.plan, gpu) if out.ok else None))
    return rows


#: The seed lesson's section 6.1 table ("파라미터 효율성", a 7B model): (row id, method, options).
SEED_TABLE: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("full", "full", {}),
    ("lora_r8", "lora", {"r": 8}),
    ("lora_r64", "lora", {"r": 64}),
    ("qlora_r64", "qlora", {"r": 64}),
    ("prefix", "prefix_tuning", {"num_virtual_tokens": 20}),
    ("prompt", "prompt_tuning", {"num_virtual_tokens": 20}),
    ("ia3", "ia3", {}),
)


def seed_table(inputs: Inputs, model: ModelRef, gpu: GPU, runner: Runner = direct_runner) -> list[Row]:
    rows = []
    for key, choice, options in SEED_TABLE:
        ci = inputs.with_(method=choice, options=dict(options), targets=None, adapter_config=None,
                          quantization="nf4" if choice == "qlora" else "none", double_quant=True)
        out = estimate_for(ci, model, runner)
        rows.append(Row(key, choice, options, out, verdict(out.plan, gpu) if out.ok else None))
    return rows


def beyond_weights(memory: Any) -> int:
    """Training memory beyond the model weights themselves (peak minus weights and 4-bit state)."""
    bd = memory.breakdown
    return int(memory.peak_bytes) - int(bd.get("weights", 0)) - int(bd.get("quantization", 0))


# ----- explore ------------------------------------------------------------------------------------------

Variable = Literal["seq_len", "batch_size", "r"]


def sweep_values(variable: Variable, spec: planner.ModelSpec, current: int) -> list[int]:
    """Powers of two over a useful range (sequence length up to the model's context), plus the current value."""
    if variable == "seq_len":
        hi = min(spec.max_position_embeddings or 32768, 131072)
        values = [2**k for k in range(7, 18) if 2**k <= hi]
    elif variable == "batch_size":
        values = [2**k for k in range(0, 9)]
    else:
        values = [2**k for k in range(0, 10)]
    return sorted(set(values) | {int(current)})


@dataclass(frozen=True)
class Sweep:
    variable: str
    points: list[tuple[int, Outcome]]
    best: int | None  # largest value that fits (refined between grid points)
    best_outcome: Outcome | None
    capacity_bytes: int


def _with_value(inputs: Inputs, variable: Variable, value: int) -> tuple[Inputs, dict[str, Any]]:
    if variable == "r":
        return inputs.with_(options={**inputs.options, "r": int(value)}), {}
    return inputs, {variable: int(value)}


def _point(inputs: Inputs, model: ModelRef, runner: Runner, variable: Variable, value: int) -> Outcome:
    ci, overrides = _with_value(inputs, variable, value)
    return estimate_for(ci, model, runner, **overrides)


def _fits(out: Outcome, gpu: GPU) -> bool | None:
    v = verdict(out.plan, gpu) if out.ok else None
    return None if v is None or v.status == "unknown" else v.fits


def sweep(inputs: Inputs, model: ModelRef, gpu: GPU, variable: Variable, runner: Runner = direct_runner,
          values: list[int] | None = None, refine_steps: int = 12) -> Sweep:
    """Memory at each value of one variable (others as chosen), and the largest value that fits:
    found on the grid, then narrowed by bisection to the exact integer."""
    current = inputs.options.get("r", 16) if variable == "r" else getattr(inputs, variable)
    values = values or sweep_values(variable, model.spec(), current)
    points = [(v, _point(inputs, model, runner, variable, v)) for v in values]
    fits = [(v, o) for v, o in points if _fits(o, gpu)]
    if not fits:
        return Sweep(variable, points, None, None, gpu.usable_memory_bytes)
    best, best_out = max(fits, key=lambda p: p[0])
    above = [v for v, o in points if v > best and _fits(o, gpu) is False]
    if above:
        lo, hi = best, min(above)
        for _ in range(refine_steps):
            if hi - lo <= 1:
                break
            mid = (lo + hi) // 2
            out = _point(inputs, model, runner, variable, mid)
            if _fits(out, gpu):
                lo, best_out = mid, out
            else:
                hi = mid
        best = lo
    return Sweep(variable, points, best, best_out, gpu.usable_memory_bytes)


# ----- recommend ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommended:
    """``planner.recommend``'s answer as a value: the ranked plans (each with ``plan.recommendation``),
    the candidates that fit nowhere as (method, GPU id, Reason), or why there is no answer."""

    plans: tuple[planner.Plan, ...] = ()
    rejected: tuple[tuple[str, str, Any], ...] = ()
    error: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


#: Sidebar settings that ``planner.recommend`` applies to every plan; it chooses the micro-batch,
#: gradient checkpointing, accumulation and quantization itself.
RECOMMEND_SETTINGS = ("dtype", "adapter_dtype", "mixed_precision", "attn_implementation", "optimizer", "target_len")


def recommend_kwargs(inputs: Inputs, spec: planner.ModelSpec) -> dict[str, Any]:
    """``planner.recommend`` keyword arguments for the Recommend tab's inputs and the sidebar's settings."""
    settings = settings_kwargs(inputs, spec, "full")
    kw = {k: settings[k] for k in RECOMMEND_SETTINGS if k in settings}
    kw.update(task=inputs.task, num_examples=int(inputs.num_examples), priority=inputs.priority,
              seq_len=int(inputs.seq_len), epochs=float(inputs.epochs),
              effective_batch_size=int(inputs.effective_batch_size),
              price_per_gpu_hour=None if inputs.price_per_gpu_hour is None else float(inputs.price_per_gpu_hour))
    return kw


def gpu_descriptor(inputs: Inputs) -> dict[str, Any]:
    """The sidebar's GPU as data (a cache key): a catalog id, or a custom GPU's memory."""
    if inputs.gpu == CUSTOM_GPU:
        return {"custom_gib": float(inputs.gpu_memory_gib)}
    return {"id": inputs.gpu}


def gpus_arg(descriptor: Mapping[str, Any], count: int) -> Any:
    """``gpus`` for ``planner.recommend``: ``[gpu]`` for one card, ``{gpu: count}`` for several."""
    g: Any = descriptor["id"] if "id" in descriptor else custom_gpu(memory_gib=float(descriptor["custom_gib"]),
                                                                    name=CUSTOM_GPU)
    return [g] if int(count) == 1 else {g: int(count)}


def run_recommend(model: ModelRef, gpu_json: str, count: int, kwargs_json: str) -> Recommended:
    """``planner.recommend`` with errors as values (a PlannerError names its field; anything else is
    an internal error), like :func:`run_estimate`."""
    try:
        recs = planner.recommend(model.model_arg(), gpus_arg(json.loads(gpu_json), count), **json.loads(kwargs_json))
        return Recommended(tuple(recs), tuple(getattr(recs, "rejected", ())))
    except planner.PlannerError as exc:
        return Recommended(error=failure_from(exc))
    except Exception as exc:  # noqa: BLE001 - a planner bug must not become a traceback on the page
        return Recommended(error=Failure("internal", None, f"{type(exc).__name__}: {exc}"))


#: Signature of a (possibly cached) recommend runner: (model, GPU descriptor json, GPU count, kwargs json).
RecommendRunner = Callable[[ModelRef, str, int, str], Recommended]


def recommend_for(inputs: Inputs, model: ModelRef, runner: RecommendRunner = run_recommend) -> Recommended:
    try:
        kwargs = recommend_kwargs(inputs, model.spec())
    except planner.PlannerError as exc:
        return Recommended(error=failure_from(exc))
    return runner(model, dumps(gpu_descriptor(inputs)), int(inputs.gpu_count), dumps(kwargs))


def cited_sources(rec: Any) -> list[str]:
    """Source keys a recommendation cites (its reasons, then the inference line), first citation first."""
    out: list[str] = []
    for reason in [*rec.reasons, rec.inference_overhead]:
        for key in reason.sources:
            if key not in out:
                out.append(key)
    return out


def memory_share(rec: Any) -> float:
    """Device memory as a share of the GPU's usable memory (0..1)."""
    return min(1.0, max(0.0, rec.device_bytes / rec.usable_memory_bytes)) if rec.usable_memory_bytes else 0.0


def recommended_choice(plan: planner.Plan) -> str | None:
    """The method picker's choice for a recommended plan (None: the picker does not offer it)."""
    choices = methods.choices()
    return next((c for c in (plan.method, plan.method_family) if c in choices), None)


def _quantization_choice(q: Mapping[str, Any] | None) -> tuple[str, bool]:
    if not q:
        return "none", True
    if q.get("load_in_8bit"):
        return "int8", True
    return str(q.get("bnb_4bit_quant_type", "nf4")), bool(q.get("bnb_4bit_use_double_quant", True))


def applied_inputs(plan: planner.Plan, inputs: Inputs, spec: planner.ModelSpec) -> Inputs | None:
    """``inputs`` with the sidebar's method, options, targets, batch, accumulation, checkpointing,
    quantization and (several GPUs) the multi-GPU strategy set to a recommended plan (None when the
    method picker cannot express it).

    Simple options (numbers, flags, choices) come from the plan's PEFT config; list / mapping
    options go back to PEFT's default, which is what the recommendation used."""
    choice = recommended_choice(plan)
    rec = plan.recommendation
    if choice is None or rec is None:
        return None
    cfg = dict(plan.peft_config or {})
    options: dict[str, Any] = {}
    for f in methods.fields(choice):
        value = cfg.get(f.name, f.default) if f.kind != "json" else f.default
        if f.kind == "int" and value is not None:
            value = int(value)
        elif f.kind == "float" and value is not None:
            value = float(value)
        options[f.name] = value
    targets: str | list[str] | None = None
    if methods.is_targeting(choice):
        tm = cfg.get("target_modules")
        if isinstance(tm, str):
            targets = tm if tm == "all-linear" else f"re:{tm}"
        elif isinstance(tm, (list, tuple)) and sorted(tm) != sorted(methods.default_targets(choice, spec)):
            targets = list(tm)
    settings = plan.settings
    quant, double_quant = _quantization_choice(getattr(settings, "quantization", None))
    if methods.category(choice) in ("full", "selective"):
        quant, double_quant = "none", True
    parallel: dict[str, Any] = {}
    if int(rec.num_gpus) > 1:  # recommend uses all the sidebar's GPUs: DDP, else FSDP full shard
        parallel = {"gpu_count": int(rec.num_gpus), "sharding": rec.sharding or "ddp",
                    "offload": getattr(settings, "offload", None) or "none"}
    return inputs.with_(method=choice, options=options, targets=targets, adapter_config=None,
                        batch_size=int(rec.micro_batch_size), gradient_accumulation_steps=int(rec.gradient_accumulation_steps),
                        gradient_checkpointing=bool(rec.gradient_checkpointing), quantization=quant, double_quant=double_quant,
                        seq_len=int(getattr(settings, "seq_len", inputs.seq_len)), view="plan", **parallel)


#: Widget keys applying a plan leaves alone (the model, the language, the Recommend inputs).
_KEEP_ON_APPLY = frozenset({"lang", "model", "model_source"})


def applied_widget_values(new: Inputs, spec: planner.ModelSpec) -> dict[str, Any]:
    """Session-state values that make the sidebar show ``new`` (from :func:`applied_inputs`)."""
    out = {k: v for k, v in widget_values(new).items() if k not in _KEEP_ON_APPLY and not k.startswith("_")}
    out["use_adapter_json"] = False
    if isinstance(new.targets, list):
        for name in methods.linear_names(spec):
            out[tpick_key(new.method, name)] = name in new.targets
    return out


# ----- export -------------------------------------------------------------------------------------------

PEFT_CONFIG_CLASSES = {
    "LORA": "LoraConfig", "IA3": "IA3Config", "PROMPT_TUNING": "PromptTuningConfig", "P_TUNING": "PromptEncoderConfig",
    "PREFIX_TUNING": "PrefixTuningConfig", "OFT": "OFTConfig", "BOFT": "BOFTConfig", "FOURIERFT": "FourierFTConfig",
    "VBLORA": "VBLoRAConfig", "ADALORA": "AdaLoraConfig", "LOHA": "LoHaConfig", "LOKR": "LoKrConfig", "VERA": "VeraConfig",
}
AUTO_CLASSES = {"causal_lm": "AutoModelForCausalLM", "seq2seq_lm": "AutoModelForSeq2SeqLM", "masked_lm": "AutoModelForMaskedLM"}
TORCH_DTYPES = {"bfloat16": "torch.bfloat16", "float16": "torch.float16", "float32": "torch.float32"}


def plan_document(inputs: Inputs, model: ModelRef, plan: planner.Plan | None, gpu: GPU, v: Verdict | None,
                  timed: Timed | None = None) -> dict[str, Any]:
    """The plan as one JSON document: inputs, estimate arguments (with the multi-GPU strategy), the
    planner's Plan, GPU (count, sharding, offload) and verdict, and the training time for the time
    inputs (``planner.training_time``'s result, or why there is none)."""
    spec = model.spec()
    method, options = method_arg(inputs)
    parallel = parallel_kwargs(inputs)
    time_doc = None
    if timed is not None:
        time_doc = {"args": {"gpu": gpu.id, **time_kwargs(int(inputs.num_examples), float(inputs.epochs),
                                                          inputs.price_per_gpu_hour, float(inputs.utilization))},
                    "result": json.loads(timed.time.model_dump_json()) if timed.ok else None,
                    "error": None if timed.ok else {"field": timed.error.field, "message": timed.error.message}}
    return {
        "tool": "peft-planner",
        "version": getattr(planner, "__version__", ""),
        "model": inputs.model if not model.uploaded else spec.name,
        "model_source": "upload" if model.uploaded else "catalog",
        "estimate_args": {"method": method, **options, **settings_kwargs(inputs, spec, method_category(inputs))},
        "gpu": {"id": gpu.id, "name": gpu.name, "memory_bytes": gpu.memory_bytes,
                "usable_memory_bytes": gpu.usable_memory_bytes, "count": int(inputs.gpu_count),
                "sharding": parallel.get("sharding"), "offload": parallel.get("offload")},
        "verdict": None if v is None else {
            "status": v.status, "compared": "device_bytes (reserved + CUDA context) vs usable_memory_bytes, per GPU",
            "used_bytes": v.used_bytes, "capacity_bytes": v.capacity_bytes, "margin_bytes": v.margin_bytes,
            "host_bytes": host_bytes(plan)},
        "plan": None if plan is None else json.loads(plan.model_dump_json()),
        "training_time": time_doc,
    }


class _Name(str):
    """A Python name in generated code (written as is, not as a string literal)."""


def _py(value: Any) -> str:
    """A Python literal for a JSON-like value."""
    if isinstance(value, _Name):
        return str(value)
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_py(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_py(k)}: {_py(v)}" for k, v in value.items()) + "}"
    return repr(value)


#: Options the snippet always spells out, even at PEFT's default (they are what people look for).
ALWAYS_SHOWN = frozenset({"peft_type", "r", "lora_alpha", "target_modules", "task_type", "num_virtual_tokens"})
TASK_TYPES = {"causal_lm": "CAUSAL_LM", "seq2seq_lm": "SEQ_2_SEQ_LM"}


def _explicit_peft_options(plan: planner.Plan) -> dict[str, Any]:
    """The plan's PEFT config without options left at their default (shorter, same config)."""
    cfg = dict(plan.peft_config or {})
    try:
        fields = methods.field_map(plan.method_family)
    except planner.PlannerError:
        return cfg
    return {k: v for k, v in cfg.items() if k in ALWAYS_SHOWN or k not in fields or v != fields[k].default}


def _kwargs(mapping: Mapping[str, Any], indent: str = "    ") -> str:
    return "".join(f"{indent}{k}={_py(v)},\n" for k, v in mapping.items())


def _block_prefixes(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        m = re.match(r"^(.*?\.\d+\.)", n)
        p = m.group(1) if m else n
        if p not in out:
            out.append(p)
    return out


#: How the snippet names each multi-GPU strategy (a code comment).
SHARDING_NAMES = {
    "ddp": "DistributedDataParallel (model replicated)", "zero1": "DeepSpeed ZeRO-1", "zero2": "DeepSpeed ZeRO-2",
    "zero3": "DeepSpeed ZeRO-3", "fsdp_full_shard": "FSDP2 full shard", "fsdp_shard_grad_op": "FSDP2 shard grad op",
}
#: Optimizers DeepSpeed runs as its own CPU Adam when the optimizer is offloaded.
_ADAMW = ("adamw_torch", "adamw_torch_fused")


def deepspeed_config(sharding: str, offload: str | None, optimizer: str) -> dict[str, Any]:
    """The DeepSpeed config the memory model assumes: the ZeRO stage, ``"auto"`` values that
    transformers' Trainer fills in (``reduce_bucket_size = hidden^2``, ZeRO-3's prefetch and
    persistence thresholds), CPU offload of the optimizer (and the parameters)."""
    stage = int(sharding[-1])
    zero: dict[str, Any] = {"stage": stage}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    if offload == "optimizer+params":
        zero["offload_param"] = {"device": "cpu"}
    zero["reduce_bucket_size"] = "auto"
    if stage == 3:
        zero["stage3_prefetch_bucket_size"] = "auto"
        zero["stage3_param_persistence_threshold"] = "auto"
    cfg: dict[str, Any] = {"zero_optimization": zero, "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}
    if offload and optimizer in _ADAMW:  # DeepSpeed's CPU Adam steps the offloaded optimizer
        cfg["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                        "weight_decay": "auto"}}
    elif offload:
        cfg["zero_force_ds_cpu_optimizer"] = False
    cfg.update({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                "train_batch_size": "auto", "gradient_clipping": "auto"})
    return cfg


def python_snippet(inputs: Inputs, model: ModelRef, plan: planner.Plan) -> str:
    """Ready-to-paste transformers + peft (+ bitsandbytes) code that builds what was planned; with
    several GPUs also the strategy (DeepSpeed config or FSDP2 arguments) and how to launch it."""
    spec = model.spec()
    category = plan.category
    q = quantization_kwargs(inputs, category)
    parallel = parallel_kwargs(inputs)
    sharding, offload, n_gpus = parallel.get("sharding"), parallel.get("offload"), parallel.get("num_gpus", 1)
    name = spec.name if model.uploaded else inputs.model
    auto = AUTO_CLASSES.get(spec.task, "AutoModelForCausalLM")
    peft_cfg = _explicit_peft_options(plan)
    peft_type = str(peft_cfg.pop("peft_type", "") or "")
    if peft_type and "task_type" not in peft_cfg and spec.task in TASK_TYPES:
        peft_cfg["task_type"] = TASK_TYPES[spec.task]
    cls = PEFT_CONFIG_CLASSES.get(peft_type)
    imports = ["import torch", f"from transformers import {auto}, TrainingArguments" + (", BitsAndBytesConfig" if q else "")]
    device_map = bool(q) and sharding in ("ddp", "zero1", "zero2")  # each process loads its quantized copy on its GPU
    if device_map:
        imports.insert(0, "import os")
    peft_imports = []
    if peft_type:
        peft_imports.append(cls or "get_peft_config")
        peft_imports.append("get_peft_model")
    if q:
        peft_imports.append("prepare_model_for_kbit_training")
    if peft_imports:
        imports.append(f"from peft import {', '.join(peft_imports)}")
    head = []
    if sharding:
        head = [f"# {n_gpus} GPUs, {SHARDING_NAMES[sharding]}" + (f", {offload} offloaded to the CPU" if offload else "")
                + f": launch with `torchrun --nproc_per_node {n_gpus} train.py` (batch size is per GPU)"]
    lines = [*head, *imports, "", f"model_id = {name!r}"]
    ta: dict[str, Any] = {"output_dir": "out", "per_device_train_batch_size": int(inputs.batch_size),
                          "gradient_accumulation_steps": int(inputs.gradient_accumulation_steps), "optim": inputs.optimizer}
    if inputs.gradient_checkpointing:
        ta["gradient_checkpointing"] = True
        ta["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if inputs.dtype == "float32" and inputs.mixed_precision != "none":
        ta[inputs.mixed_precision] = True
    ds_lines: list[str] = []
    if sharding in ("zero1", "zero2", "zero3"):
        ds = deepspeed_config(sharding, offload, inputs.optimizer)
        ds_lines = ["ds_config = {", *(f"    {_py(k)}: {_py(v)}," for k, v in ds.items()), "}"]
        ta["deepspeed"] = _Name("ds_config")
        if inputs.dtype in ("bfloat16", "float16"):  # DeepSpeed's 16-bit engine: fp32 master weights and optimizer state
            ta["bf16" if inputs.dtype == "bfloat16" else "fp16"] = True
    elif sharding in ("fsdp_full_shard", "fsdp_shard_grad_op"):
        ta["fsdp"] = True
        ta["fsdp_config"] = {"version": 2, "reshard_after_forward": sharding == "fsdp_full_shard",
                             **({"cpu_offload": True} if offload else {})}
    args_lines = [f"# train on sequences of {int(inputs.seq_len)} tokens", "args = TrainingArguments(",
                  _kwargs(ta).rstrip("\n"), ")"]
    if sharding == "zero3":  # ZeRO-3 partitions the weights as they load: TrainingArguments first
        lines += [*ds_lines, *args_lines]
        ds_lines = args_lines = []
    load_kw = {"dtype": None, "attn_implementation": inputs.attn_implementation}
    if q:
        bnb = dict(q)
        if "bnb_4bit_compute_dtype" in bnb:
            bnb["bnb_4bit_compute_dtype"] = None
        args = "".join(f"    {k}={TORCH_DTYPES[q[k]] if k == 'bnb_4bit_compute_dtype' else _py(v)},\n" for k, v in bnb.items())
        lines += ["bnb_config = BitsAndBytesConfig(", args.rstrip("\n"), ")"]
    lines += [f"model = {auto}.from_pretrained(", "    model_id,", f"    dtype={TORCH_DTYPES[inputs.dtype]},",
              f"    attn_implementation={inputs.attn_implementation!r},"]
    if q:
        lines.append("    quantization_config=bnb_config,")
    if device_map:
        lines.append('    device_map={"": int(os.environ.get("LOCAL_RANK", 0))},')
    lines.append(")")
    if q:
        lines.append("model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)")
    if inputs.gradient_checkpointing:
        lines += ['model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})',
                  "model.config.use_cache = False"]
    if peft_type:
        if cls:
            lines += [f"peft_config = {cls}(", _kwargs(peft_cfg).rstrip("\n"), ")"]
        else:
            lines += [f"peft_config = get_peft_config({_py({'peft_type': peft_type, **peft_cfg})})"]
        lines += ["model = get_peft_model(model, peft_config)", "model.print_trainable_parameters()"]
    elif category == "selective":
        from planner.api import plan_method

        mplan = plan_method(spec, inputs.method, **method_arg(inputs)[1])[0]
        names = list(mplan.trainable_base)
        if plan.method_family == "bitfit":
            lines += ["for name, param in model.named_parameters():", '    param.requires_grad = name.endswith(".bias")']
        else:
            lines += [f"TRAINABLE = {_py(tuple(_block_prefixes(names)))}",
                      "for name, param in model.named_parameters():", "    param.requires_grad = name.startswith(TRAINABLE)"]
    lines += [*ds_lines, *args_lines]
    return "\n".join(lines) + "\n"


#: Method options with a flag of their own in ``executors.validate``; others go through ``--option KEY=JSON``.
VALIDATE_OPTION_FLAGS = {"r": "--r", "lora_alpha": "--lora-alpha", "num_virtual_tokens": "--num-virtual-tokens"}


def validate_command(inputs: Inputs, model: ModelRef, plan: planner.Plan | None = None) -> str:
    """The executors' reality check for exactly these choices on a CUDA machine
    (``python -m executors.validate ... --device cuda --json report.json``)."""
    return " ".join(_shell_quote(p) for p in _validate_parts(inputs, model)[0])


def validate_case(inputs: Inputs, model: ModelRef) -> dict[str, Any]:
    """The case ``inputs`` the report of :func:`validate_command` records (``executors.validate.Case.inputs()``
    of its arguments; ``model`` is ``config.json`` and ``peft_config`` the pasted adapter_config.json where those
    were uploaded). Built by the same code as the command, so the two cannot disagree."""
    return _validate_parts(inputs, model)[1]


def _validate_parts(inputs: Inputs, model: ModelRef) -> tuple[list[str], dict[str, Any]]:
    parts = ["python", "-m", "executors.validate", "--model", "config.json" if model.uploaded else inputs.model]
    case: dict[str, Any] = {"model": parts[-1], "method": "lora", "options": {}, "peft_config": None,
                            "config_overrides": {}}
    if inputs.adapter_config is not None:
        parts += ["--peft-config", "adapter_config.json"]
        case["peft_config"] = json.loads(json.dumps(inputs.adapter_config))
    else:
        parts += ["--method", inputs.method]
        case["method"] = inputs.method
        _, options = method_arg(inputs)
        if "r" in inputs.options and "r" in methods.field_map(inputs.method):
            options = {"r": inputs.options["r"], **options}  # the rank always spelled out, even at PEFT's default
        for name, value in options.items():
            if name in VALIDATE_OPTION_FLAGS:
                text = f"{value:g}" if isinstance(value, float) else str(value)
                parts += [VALIDATE_OPTION_FLAGS[name], text]
                case["options"][name] = float(text) if name == "lora_alpha" else int(text)
            elif name == "target_modules" and (value == "all-linear" or isinstance(value, list)):
                parts += ["--target-modules", value if isinstance(value, str) else ",".join(value)]
                case["options"][name] = value if isinstance(value, str) else [str(v) for v in value]
            else:
                text = json.dumps(value, separators=(',', ':'))
                parts += ["--option", f"{name}={text}"]
                case["options"][name] = json.loads(text)
    parts += ["--batch-size", str(int(inputs.batch_size)), "--seq-len", str(int(inputs.seq_len))]
    case.update(batch_size=int(inputs.batch_size), seq_len=int(inputs.seq_len), target_len=None, dtype="bfloat16",
                gradient_checkpointing=bool(inputs.gradient_checkpointing), attn_implementation="sdpa",
                optimizer="adamw_torch", quantization=None)
    if inputs.target_len and model.spec().is_encoder_decoder:
        parts += ["--target-len", str(int(inputs.target_len))]
        case["target_len"] = int(inputs.target_len)
    if inputs.dtype != "bfloat16":
        parts += ["--dtype", inputs.dtype]
        case["dtype"] = inputs.dtype
    if inputs.gradient_checkpointing:
        parts.append("--gradient-checkpointing")
    if inputs.attn_implementation != "sdpa":
        parts += ["--attn-implementation", inputs.attn_implementation]
        case["attn_implementation"] = inputs.attn_implementation
    if inputs.optimizer != "adamw_torch":
        parts += ["--optimizer", inputs.optimizer]
        case["optimizer"] = inputs.optimizer
    q = quantization_kwargs(inputs, method_category(inputs))
    qname = None if q is None else ("int8" if q.get("load_in_8bit") else q["bnb_4bit_quant_type"])
    if qname != ("nf4" if inputs.method == "qlora" and inputs.adapter_config is None else None):
        parts += ["--quantization", qname or "none"]
        case["quantization"] = qname or "none"
    parts += ["--device", "cuda", "--json", "report.json"]
    return parts, case


def _shell_quote(s: str) -> str:
    return s if re.fullmatch(r"[A-Za-z0-9_./:=,@+-]+", s) else "'" + s.replace("'", "'\"'\"'") + "'"


# ----- validation reports --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportRow:
    label: str
    measured_peak: int
    estimated_peak: int
    measured_breakdown: dict[str, int] = field(default_factory=dict)
    estimated_breakdown: dict[str, int] = field(default_factory=dict)
    measured_reserved: int | None = None
    estimated_reserved: int | None = None
    #: measured seconds per training step (``measured.step_s``: cuda runs of executors.validate), else None
    step_s: float | None = None
    device: str | None = None  # the GPU it ran on (``measured.device_name``, else the report's cuda device)
    inputs: dict[str, Any] | None = None  # the case as executors.validate records it (``inputs``), if given
    trainable_params: int | None = None  # the planner's counts in the report (``estimated``), if given
    total_params: int | None = None
    #: ``measured.step_s`` present but not a number of seconds > 0 (ignored); shown as a message
    bad_step_s: str | None = None

    @property
    def error(self) -> float | None:
        """(estimated - measured) / measured."""
        return None if not self.measured_peak else (self.estimated_peak - self.measured_peak) / self.measured_peak


MAX_REPORT_BYTES = 8 << 20


class ReportError(LocalizedError):
    """A validation report that cannot be read."""


def _records(data: Any) -> list[Mapping[str, Any]]:
    if isinstance(data, Mapping):
        if "measured" in data and "estimated" in data:
            return [data]
        for key in ("results", "runs", "cases", "reports", "rows"):
            if isinstance(data.get(key), list):
                return _records(data[key])
        return []
    if isinstance(data, list):
        out: list[Mapping[str, Any]] = []
        for item in data:
            out += _records(item)
        return out
    return []


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _breakdown(v: Any) -> dict[str, int]:
    if not isinstance(v, Mapping):
        return {}
    return {str(k): int(x) for k, x in v.items() if isinstance(x, (int, float)) and not isinstance(x, bool)}


def _seconds(v: Any) -> tuple[float | None, str | None]:
    """(seconds, None) for a finite number > 0; (None, None) when absent; (None, the value's text) otherwise."""
    if v is None:
        return None, None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
        return float(v), None
    return None, json.dumps(v)[:40]


def _cuda_device_name(data: Any) -> str | None:
    """``environment.device.name`` where the report ran on CUDA (``environment.device.kind == "cuda"``)."""
    env = data.get("environment") if isinstance(data, Mapping) else None
    dev = env.get("device") if isinstance(env, Mapping) else None
    if isinstance(dev, Mapping) and dev.get("kind") == "cuda" and isinstance(dev.get("name"), str) and dev["name"]:
        return dev["name"]
    return None


#: Settings an executors.validate case cannot express: a report row never matches a plan that changes them.
_UNVALIDATED_DEFAULTS = {"mixed_precision": "none", "adapter_dtype": "float32", "gradient_accumulation_steps": 1,
                         "gpu_count": 1}
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def _case_key(case: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of an executors.validate case that decide what is measured, normalised."""
    out = {k: case.get(k) for k in ("batch_size", "seq_len", "target_len", "gradient_checkpointing",
                                    "attn_implementation", "optimizer")}
    out["dtype"] = _DTYPE_ALIASES.get(str(case.get("dtype", "bfloat16")), str(case.get("dtype", "bfloat16")))
    q = case.get("quantization")
    out["quantization"] = None if q in (None, "none") else (q.lower() if isinstance(q, str) else q)
    out["gradient_checkpointing"] = bool(out["gradient_checkpointing"])
    if case.get("peft_config") is not None:
        out["peft_config"] = json.loads(json.dumps(case["peft_config"], sort_keys=True, default=str))
    else:
        out["method"] = str(case.get("method") or "lora").lower()
        out["options"] = json.loads(json.dumps(case.get("options") or {}, sort_keys=True, default=str))
    return out


def report_match(rows: Iterable[ReportRow], inputs: Inputs, model: ModelRef, plan: planner.Plan) -> ReportRow | None:
    """The first report row that measured exactly the case :func:`validate_command` gives for these inputs
    (same model, method and options or adapter config, batch, lengths, dtype, checkpointing, attention,
    optimizer and quantization; no config overrides; the planner's parameter counts equal where the report
    has them). None where no row does, or where the plan changes a setting the executors cannot run
    (mixed precision, a 16-bit adapter dtype, gradient accumulation, several GPUs): a measured step of
    another case is never shown as this plan's."""
    if any(getattr(inputs, k) != v for k, v in _UNVALIDATED_DEFAULTS.items()):
        return None
    try:
        want = validate_case(inputs, model)
    except Exception:  # noqa: BLE001 - no command, no match (the Export tab shows why)
        return None
    key = _case_key(want)
    for row in rows:
        got = row.inputs
        if not got or got.get("config_overrides"):
            continue
        if model.uploaded:  # any path to the config; the counts below must then say it is the same model
            if row.total_params is None or row.trainable_params is None:
                continue
        elif got.get("model") != want["model"]:
            continue
        if (row.total_params is not None and row.total_params != plan.total_params) or \
                (row.trainable_params is not None and row.trainable_params != plan.trainable_params):
            continue
        try:
            if _case_key(got) == key:
                return row
        except (TypeError, ValueError):
            continue
    return None


def parse_report(raw: bytes | str) -> list[ReportRow]:
    """Rows of an ``executors.validate --json`` report (one case or a list / ``results`` of cases)."""
    if len(raw) > MAX_REPORT_BYTES:
        raise ReportError("error.too_large", field="report", limit=f"{MAX_REPORT_BYTES:,}")
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError("error.json", field="report", msg=exc.msg, line=exc.lineno, col=exc.colno) from None
    rows = []
    report_device = _cuda_device_name(data)
    for i, rec in enumerate(_records(data)):
        m, e = rec.get("measured"), rec.get("estimated")
        if not isinstance(m, Mapping) or not isinstance(e, Mapping):
            continue
        mp, ep = _int_or_none(m.get("peak_bytes")), _int_or_none(e.get("peak_bytes"))
        if mp is None or ep is None:
            continue
        inp = rec.get("inputs") if isinstance(rec.get("inputs"), Mapping) else rec
        label = " · ".join(str(inp[k]) for k in ("model", "method") if isinstance(inp.get(k), (str, int)))
        if isinstance(rec.get("id"), (str, int)) and str(rec["id"]) not in ("cli", ""):
            label = f"{rec['id']}: {label}" if label else str(rec["id"])
        step_s, bad = _seconds(m.get("step_s"))
        device = m.get("device_name") if isinstance(m.get("device_name"), str) and m.get("device_name") else None
        rows.append(ReportRow(label or f"#{i + 1}", mp, ep, _breakdown(m.get("breakdown")), _breakdown(e.get("breakdown")),
                              _int_or_none(m.get("reserved_peak_bytes", m.get("reserved_bytes"))),
                              _int_or_none(e.get("reserved_bytes")), step_s=step_s,
                              device=(device or _cuda_device_name(rec) or report_device) if step_s else None,
                              inputs=dict(rec["inputs"]) if isinstance(rec.get("inputs"), Mapping) else None,
                              trainable_params=_int_or_none(e.get("trainable_params")),
                              total_params=_int_or_none(e.get("total_params")), bad_step_s=bad))
    if not rows:
        raise ReportError("error.report_empty", field="report")
    return rows
