"""Validate the planner against a real training step: ``python -m executors.validate``.

For one case (model + method + settings), or every case of a matrix file, this

1. asks the planner (``planner.estimate``) for the plan and its memory budget;
2. builds the real transformers model + PEFT adapter the plan describes and measures one
   training step (:func:`executors.measure.measure_step`, mode ``cuda`` / ``cpu`` / ``fake``);
3. compares them: peak and each comparable component, absolute and relative error; the
   trainable-parameter count PEFT reports (``get_nb_trainable_parameters``) against the plan's;
   and, for mergeable adapters on a real CPU model, that ``merge_and_unload`` gives the outputs of
   the unmerged adapter within the dtype's tolerance.

It prints a side-by-side table and, with ``--json PATH``, writes a report with environment
metadata. Exit status: 0 every case ran (a case that does not fit or that fake mode cannot run
is a result); 1 a case failed or a check did not hold (trainable count, merge identity);
2 bad input (nothing is written).

    python -m executors.validate --model meta-llama/Llama-2-7b-hf --method lora --r 8 \\
        --target-modules q_proj,v_proj --batch-size 1 --seq-len 512 --device fake --json out.json
    python -m executors.validate --matrix executors/matrices/default.json --device fake \\
        --json docs/validation/fake.json --markdown docs/validation/fake.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

REPORT_SCHEMA = "peft-planner/validation-report/1"
DEVICES = ("cuda", "cpu", "fake")
QUANTIZATION_NAMES = ("nf4", "fp4", "int8")

#: PEFT types whose adapters ``merge_and_unload`` folds into the base weights.
MERGEABLE_PEFT_TYPES = frozenset({"LORA", "IA3", "LOHA", "LOKR", "OFT", "BOFT", "VERA", "ADALORA", "FOURIERFT",
                                  "VBLORA", "HRA", "BONE", "C3A", "MISS", "SHIRA", "ROAD", "RANDLORA"})

#: Merge identity tolerance: max |merged - unmerged| / max |unmerged| over the logits. In float32
#: the two paths agree to rounding (the identity itself). In 16 bits the merged weight W + s*BA is
#: rounded once to the dtype while the unmerged path rounds W x and the adapter's output
#: separately; through a few layers that is up to a few percent of the largest logit in bfloat16
#: (8-bit mantissa, 2**-8 = 0.4 % per rounding), less in float16 (11 bits).
MERGE_TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-1, "float16": 2e-2}
#: The adapter must move the logits by at least this multiple of the merge gap, or the check
#: would pass whatever merging does.
MERGE_MIN_EFFECT_RATIO = 10.0
#: Adapter parameters are perturbed by N(0, std) before the merge check (LoRA's B starts at 0).
MERGE_PERTURB_STD = 0.2
#: Largest model (parameters) the merge check builds with real tensors on the CPU.
MERGE_CHECK_MAX_PARAMS = 300_000_000


class InputError(Exception):
    """Bad input: unknown method, model that cannot be built, missing dependency, no CUDA."""


# --------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    """One validation case: what to build and how to train it."""

    id: str
    model: str | dict[str, Any]  # catalog id, path to a config.json, or a config mapping
    method: str | None = "lora"
    options: dict[str, Any] = field(default_factory=dict)  # PEFT options (r, lora_alpha, target_modules, ...)
    peft_config: dict[str, Any] | None = None  # an adapter_config.json mapping (its peft_type selects the method)
    config_overrides: dict[str, Any] = field(default_factory=dict)  # applied to the model's config.json
    batch_size: int = 1
    seq_len: int = 512
    target_len: int | None = None
    dtype: str = "bfloat16"
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    optimizer: str = "adamw_torch"
    quantization: str | dict[str, Any] | None = None  # nf4 | fp4 | int8 | BitsAndBytesConfig kwargs
    notes: str = ""

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> "Case":
        data = {**dict(defaults or {}), **dict(raw)}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"case {data.get('id', '?')!r}: unknown keys {unknown}; allowed: {sorted(known)}")
        if "id" not in data or "model" not in data:
            raise InputError(f"every case needs an 'id' and a 'model' (got {sorted(data)})")
        return cls(**data)

    def label(self) -> str:
        model = self.model if isinstance(self.model, str) else self.model.get("model_type", "config")
        return f"{model} {self.method_name()}"

    def method_name(self) -> str:
        if self.peft_config is not None:
            return str(self.peft_config.get("peft_type", "?")).lower()
        return str(self.method or "lora")

    def inputs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def load_matrix(path: str | Path) -> tuple[dict[str, Any], list[Case]]:
    """A matrix file: ``{"name", "description", "defaults": {...}, "cases": [{...}, ...]}``."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"matrix file not found: {p}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"matrix file {p} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cases"), list):
        raise InputError(f"matrix file {p} needs a 'cases' list")
    cases = [Case.from_dict(c, raw.get("defaults")) for c in raw["cases"]]
    ids = [c.id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InputError(f"matrix file {p}: duplicate case ids {dupes}")
    meta = {k: v for k, v in raw.items() if k not in ("cases",)}
    meta["path"] = str(path)
    return meta, cases


# --------------------------------------------------------------------------------------------
# Inputs -> what the planner and the executor get


def read_json_file(path: str | Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} must hold a JSON object")
    return data


def model_config(case: Case) -> tuple[dict[str, Any], Any]:
    """(config.json mapping for the executor, model argument for the planner)."""
    from planner import catalog
    from planner.errors import UnknownModelError

    model = case.model
    if isinstance(model, dict):
        cfg = dict(model)
        planner_model: Any = None
    elif model.endswith(".json") or os.path.isfile(model):
        cfg = read_json_file(model, "model config")
        planner_model = None
    else:
        try:
            cfg = dict(catalog.config(model))
        except UnknownModelError as exc:
            raise InputError(str(exc)) from None
        planner_model = model
    if "model_type" not in cfg:
        raise InputError(f"model config for {case.id!r} has no 'model_type'")
    if case.config_overrides:
        cfg.update(case.config_overrides)
        planner_model = None
    return cfg, (planner_model if planner_model is not None else dict(cfg))


def resolve_quantization(quantization: str | Mapping[str, Any] | None, dtype: str) -> dict[str, Any] | None:
    """``nf4`` / ``fp4`` / ``int8`` (or BitsAndBytesConfig kwargs) -> BitsAndBytesConfig kwargs."""
    if quantization is None or quantization == "none":
        return None
    if isinstance(quantization, Mapping):
        return dict(quantization)
    q = str(quantization).lower()
    if q in ("nf4", "fp4"):
        return {"load_in_4bit": True, "bnb_4bit_quant_type": q, "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": _long_dtype(dtype)}
    if q == "int8":
        return {"load_in_8bit": True}
    raise InputError(f"unknown quantization {quantization!r}; expected one of {QUANTIZATION_NAMES}")


def _long_dtype(dtype: str) -> str:
    from executors.build import DTYPES

    try:
        return str(DTYPES[dtype]).removeprefix("torch.")
    except KeyError:
        raise InputError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}") from None


def _qlora_default_quantization(dtype: str) -> dict[str, Any]:
    try:
        from planner.memory.settings import QLORA_DEFAULT_QUANTIZATION
    except ImportError:  # planner without the memory model
        QLORA_DEFAULT_QUANTIZATION = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                      "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16"}
    return dict(QLORA_DEFAULT_QUANTIZATION, bnb_4bit_compute_dtype=_long_dtype(dtype))


def check_environment(device: str, quantization: Mapping[str, Any] | None, optimizer: str) -> None:
    """Refuse what this machine cannot run, before building anything."""
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}; expected one of {DEVICES}")
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None \
            or importlib.util.find_spec("peft") is None:
        raise InputError("the executors need torch, transformers and peft: pip install -e '.[executors]'")
    needs_bnb = bool(quantization) or "bnb" in optimizer or optimizer.startswith("paged")
    if needs_bnb and importlib.util.find_spec("bitsandbytes") is None:
        what = "quantization" if quantization else f"optimizer {optimizer!r}"
        raise InputError(f"{what} needs bitsandbytes, which is not installed: pip install bitsandbytes")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError("--device cuda asked for, but torch sees no CUDA device on this machine "
                             f"(torch {torch.__version__}); use --device fake or --device cpu")


@dataclass
class Planned:
    """What the planner says about a case (or why it could not say it)."""

    peft_config: dict[str, Any] | None
    trainable_base: list[str] | None
    quantization: dict[str, Any] | None
    plan: Any | None = None  # planner.Plan with counts (and memory when the settings were accepted)
    estimate_error: str | None = None
    count_error: str | None = None
    category: str | None = None


def _method_options(case: Case) -> dict[str, Any]:
    return {k: v for k, v in case.options.items() if v is not None}


def _settings(case: Case, quantization: dict[str, Any] | None) -> dict[str, Any]:
    return dict(batch_size=case.batch_size, seq_len=case.seq_len, target_len=case.target_len,
                dtype=_long_dtype(case.dtype), gradient_checkpointing=case.gradient_checkpointing,
                attn_implementation=case.attn_implementation, optimizer=case.optimizer, quantization=quantization)


def plan_case(case: Case, planner_model: Any) -> Planned:
    """Ask the planner; fall back to a counts-only plan, then to the case's own PEFT mapping."""
    import planner
    from planner.errors import PlannerError

    method: Any = case.peft_config if case.peft_config is not None else (case.method or "lora")
    options = _method_options(case)
    explicit_q = resolve_quantization(case.quantization, case.dtype)
    is_qlora = isinstance(method, str) and method.strip().lower() == "qlora"
    quantization = explicit_q if explicit_q is not None else (
        _qlora_default_quantization(case.dtype) if is_qlora else None)

    plan = None
    estimate_error = count_error = None
    try:
        plan = planner.estimate(planner_model, method=method, **options, **_settings(case, quantization))
        if getattr(plan, "memory", None) is None:
            why = [n for n in plan.notes if "not modelled" in n or "not covered" in n]
            estimate_error = "memory not modelled: " + ("; ".join(why) if why else "the memory model does not cover "
                                                                                   "this case")
    except PlannerError as exc:
        estimate_error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # the planner is pure Python; anything else is a planner bug, reported
        estimate_error = f"{type(exc).__name__}: {exc}"
    if plan is None:  # counts only (method + dtype): the settings may be what the planner refused
        try:
            plan = planner.estimate(planner_model, method=method, **options, dtype=_long_dtype(case.dtype))
        except PlannerError as exc:
            count_error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            count_error = f"{type(exc).__name__}: {exc}"

    if plan is not None:
        settings = getattr(plan, "settings", None)
        if settings is not None and getattr(settings, "quantization", None) and explicit_q is None:
            quantization = dict(settings.quantization)
        trainable_base = None
        if plan.category not in ("full",) and plan.peft_config is None:
            from planner.api import plan_method

            spec = planner.load_model(planner_model)
            trainable_base = list(plan_method(spec, method, **options)[0].trainable_base)
        return Planned(peft_config=plan.peft_config, trainable_base=trainable_base, quantization=quantization,
                       plan=plan, estimate_error=estimate_error, category=plan.category)

    # The planner cannot plan it: measure what the case says, if it says enough.
    if case.peft_config is not None:
        return Planned(peft_config=dict(case.peft_config), trainable_base=None, quantization=quantization,
                       estimate_error=estimate_error or count_error, count_error=count_error)
    if isinstance(method, str) and method.strip().lower() in ("full", "fft", "full_ft", "full_finetuning"):
        return Planned(peft_config=None, trainable_base=None, quantization=quantization,
                       estimate_error=estimate_error or count_error, count_error=count_error, category="full")
    raise InputError(f"cannot plan method {method!r} on {case.label()}: {count_error}")


# --------------------------------------------------------------------------------------------
# Comparison


#: (row, planner keys summed, executor keys summed, comparable) for the side-by-side table.
COMPONENT_ROWS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str], ...] = (
    ("weights (+4-bit state)", ("weights", "quantization"), ("weights",), "yes"),
    ("gradients", ("gradients",), ("gradients",), "yes"),
    ("optimizer states", ("optimizer",), ("optimizer",), "yes"),
    ("activations (+logits)", ("activations", "logits"), ("activations",), "yes"),
    ("temporaries", ("temporaries",), ("temporaries",), "partly"),
    ("inputs + buffers", (), ("inputs", "other"), "no"),
)

COMPARABILITY_NOTE = (
    "Each breakdown is taken at its own peak. weights, gradients and optimizer states are the same "
    "tensors on both sides (the planner's 4-bit quantization state is inside the measured weights), except "
    "that MemTracker labels every tensor allocated inside optimizer.step() as optimizer memory, so at an "
    "optimizer-step peak the measured optimizer row also holds the step's temporaries (foreach AdamW's "
    "full-size buffers), which the planner calls temporaries; the "
    "planner's activations + logits are what the measurement calls activations (tensors created in forward "
    "and alive at the peak); temporaries differ in definition (the measurement counts every tensor created "
    "during backward / the optimizer step that is alive at the peak, the planner only the peak op's "
    "buffers), so compare activations + temporaries together; inputs (token ids, labels) and buffers "
    "(rotary tables, masks) are measured but not a planner component.")


def _err(est: int | None, meas: int | None) -> tuple[int | None, float | None]:
    if est is None or meas is None:
        return None, None
    diff = est - meas
    return diff, (diff / meas if meas else (0.0 if diff == 0 else None))


def compare(memory: Any | None, measured: Any) -> dict[str, Any]:
    """Side-by-side rows: per component, per phase and total; errors are estimated - measured."""
    est_bd = dict(getattr(memory, "breakdown", {}) or {}) if memory is not None else None
    meas_bd = dict(measured.breakdown)
    rows = []
    for name, est_keys, meas_keys, comparable in COMPONENT_ROWS:
        est = sum(est_bd.get(k, 0) for k in est_keys) if est_bd is not None and est_keys else None
        meas = sum(meas_bd.get(k, 0) for k in meas_keys)
        diff, rel = _err(est, meas)
        rows.append({"component": name, "estimated": est, "measured": meas, "abs_error": diff, "rel_error": rel,
                     "comparable": comparable, "planner_keys": list(est_keys), "measured_keys": list(meas_keys)})
    est_peak = getattr(memory, "peak_bytes", None) if memory is not None else None
    diff, rel = _err(est_peak, measured.peak_bytes)
    rows.append({"component": "total (peak)", "estimated": est_peak, "measured": measured.peak_bytes,
                 "abs_error": diff, "rel_error": rel, "comparable": "yes"})
    phases = []
    for phase in ("forward", "backward", "optimizer"):
        est = (getattr(memory, "phase_peaks", {}) or {}).get(phase) if memory is not None else None
        meas = measured.phase_peaks.get(phase)
        diff, rel = _err(est, meas)
        phases.append({"phase": phase, "estimated": est, "measured": meas, "abs_error": diff, "rel_error": rel})
    band = getattr(memory, "error_band", None) if memory is not None else None
    total_rel = rows[-1]["rel_error"]
    return {
        "rows": rows,
        "phases": phases,
        "peak_phase": {"estimated": getattr(memory, "peak_phase", None) if memory is not None else None,
                       "measured": measured.peak_phase},
        "error_band": band,
        "within_error_band": (abs(total_rel) <= band) if (band is not None and total_rel is not None) else None,
        "note": COMPARABILITY_NOTE,
    }


# --------------------------------------------------------------------------------------------
# Merge identity (real tensors, CPU, small models)


def merge_check(config: Mapping[str, Any], peft_config: Mapping[str, Any] | None, *, dtype: str,
                quantization: Mapping[str, Any] | None, attn_implementation: str, device: str,
                total_params: int | None, seq_len: int, target_len: int | None, seed: int = 0) -> dict[str, Any]:
    """``merge_and_unload()`` gives the unmerged adapter's logits within the dtype's tolerance."""
    if peft_config is None:
        return {"status": "not applicable", "reason": "no adapter (the base weights train)"}
    peft_type = str(peft_config.get("peft_type", "")).upper()
    if peft_type not in MERGEABLE_PEFT_TYPES:
        return {"status": "not applicable", "reason": f"{peft_type} adapters are not merged into the weights"}
    if device == "fake":
        return {"status": "not checked", "reason": "fake mode holds no values; run --device cpu on a small config"}
    if device != "cpu":
        return {"status": "not checked", "reason": "the merge check runs in cpu mode"}
    if quantization:
        return {"status": "not checked", "reason": "quantized base: merging re-quantizes the weight (lossy by design)"}
    if total_params is not None and total_params > MERGE_CHECK_MAX_PARAMS:
        return {"status": "not checked", "reason": f"model too large for a real CPU build ({total_params:,} parameters)"}

    from executors.build import resolve_dtype

    t0 = time.perf_counter()
    long = str(resolve_dtype(dtype)).removeprefix("torch.")
    runs = {d: _merge_gap(config, peft_config, d, attn_implementation, seq_len, target_len, seed)
            for d in dict.fromkeys(("float32", long))}
    statuses = [r["status"] for r in runs.values()]
    status = "fail" if "fail" in statuses else ("inconclusive" if "inconclusive" in statuses else "pass")
    main = runs[long]
    return {"status": status, "rel_max_diff": main["rel_max_diff"], "tolerance": main["tolerance"],
            "adapter_effect": main["adapter_effect"], "dtype": long, "by_dtype": runs,
            "wall_s": round(time.perf_counter() - t0, 3),
            "method": "logits of merge_and_unload() vs the unmerged adapter, adapter weights perturbed by "
                      f"N(0, {MERGE_PERTURB_STD}); max abs difference / max abs logit; in float32 (the identity, "
                      "tolerance 1e-4) and in the case's dtype (its rounding: "
                      + ", ".join(f"{k} {v:g}" for k, v in MERGE_TOLERANCE.items()) + ")"}


def _merge_gap(config: Mapping[str, Any], peft_config: Mapping[str, Any], dtype: str, attn_implementation: str,
               seq_len: int, target_len: int | None, seed: int) -> dict[str, Any]:
    import torch

    from executors.build import build_model
    from executors.measure import make_batch

    built = build_model(config, peft_config=peft_config, dtype=dtype, device="cpu",
                        attn_implementation=attn_implementation, seed=seed)
    model = built.peft_model_or_model
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dtype.is_floating_point:
                p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * MERGE_PERTURB_STD)
    model.eval()
    batch = make_batch(built, 2, min(seq_len, 32), min(target_len or seq_len, 32), "cpu",
                       torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        with model.disable_adapter():
            base = model(**batch).logits.float()
        unmerged = model(**batch).logits.float()
        merged = model.merge_and_unload()(**batch).logits.float()
    scale = unmerged.abs().max().item() or 1.0
    gap = (merged - unmerged).abs().max().item() / scale
    effect = (unmerged - base).abs().max().item() / scale
    tol = MERGE_TOLERANCE.get(dtype, 1e-2)
    status = "pass" if gap <= tol else "fail"
    if status == "pass" and effect < MERGE_MIN_EFFECT_RATIO * max(gap, tol / 100):
        status = "inconclusive"
    return {"status": status, "rel_max_diff": gap, "tolerance": tol, "adapter_effect": effect}


# --------------------------------------------------------------------------------------------
# One case


def _fake_limitation(planned: Planned, optimizer: str) -> str | None:
    q = planned.quantization or {}
    if q.get("load_in_8bit"):
        return ("int8 (LLM.int8) weights: bitsandbytes picks outlier columns from the values "
                "(data-dependent under FakeTensorMode)")
    if optimizer in ("adamw_bnb_8bit", "paged_adamw_8bit"):
        return "bitsandbytes 8-bit optimizers read tensor values in step() (data-dependent under FakeTensorMode)"
    return None


def run_case(case: Case, device: str, *, merge: bool = True, steps: int = 2) -> dict[str, Any]:
    """Plan, measure and compare one case. Input errors raise :class:`InputError`."""
    from executors.measure import measure_step

    t0 = time.perf_counter()
    config, planner_model = model_config(case)
    planned = plan_case(case, planner_model)
    check_environment(device, planned.quantization, case.optimizer)
    plan = planned.plan
    memory = getattr(plan, "memory", None) if plan is not None else None
    result: dict[str, Any] = {
        "id": case.id,
        "inputs": case.inputs(),
        "resolved": {"model_type": config.get("model_type"), "peft_config": planned.peft_config,
                     "trainable_base_params": len(planned.trainable_base) if planned.trainable_base else None,
                     "quantization": planned.quantization, "device": device},
        "status": None,
        "message": None,
    }
    result["estimated"] = _estimated_dict(plan, memory, planned)

    limitation = _fake_limitation(planned, case.optimizer) if device == "fake" else None
    if limitation:
        result.update(status="not measurable", message=f"not measurable in fake mode: {limitation}",
                      measured=None, comparison=None,
                      trainable=_trainable(plan, None), merge_check={"status": "not checked",
                                                                     "reason": "not measured"})
        result["wall_s"] = round(time.perf_counter() - t0, 3)
        return result

    if device == "cuda":  # the previous case's model must be gone: measure_step wants an empty device
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
    try:
        m = measure_step(
            config, mode=device, peft_config=planned.peft_config, trainable_base_params=planned.trainable_base,
            quantization=planned.quantization, batch_size=case.batch_size, seq_len=case.seq_len,
            target_len=case.target_len, dtype=case.dtype, gradient_checkpointing=case.gradient_checkpointing,
            attn_implementation=case.attn_implementation, optimizer=case.optimizer, steps=steps)
    except (ValueError, KeyError, TypeError, NotImplementedError, ImportError, OSError) as exc:
        raise InputError(f"the executor cannot build {case.label()}: {type(exc).__name__}: {exc}") from exc
    except RuntimeError as exc:
        if device != "cuda" or "out of memory" not in str(exc).lower():
            raise
        import torch

        result.update(status="does not fit", measured=None, comparison=None, trainable=_trainable(plan, None),
                      message=f"does not fit: out of memory while building the model, after "
                              f"{torch.cuda.max_memory_allocated()} bytes allocated ({str(exc).splitlines()[0]})",
                      merge_check={"status": "not checked", "reason": "not measured"})
        result["checks"] = _checks(result)
        result["wall_s"] = round(time.perf_counter() - t0, 3)
        return result

    result["measured"] = _measured_dict(m)
    result["trainable"] = _trainable(plan, m)
    if m.oom:
        msg = m.error if (m.error or "").startswith("does not fit") else \
            f"does not fit: failed at {m.failed_phase} ({m.error})"
        result.update(status="does not fit", message=msg)
    elif m.error:
        if device == "fake" and _looks_fake_only(m.error):
            result.update(status="not measurable", message=f"not measurable in fake mode: {m.error}")
        else:
            result.update(status="error", message=f"step failed at {m.failed_phase}: {m.error}")
    else:
        result.update(status="ok", message=None)
    result["comparison"] = compare(memory, m) if m.ok else None

    if merge and m.ok:
        try:
            result["merge_check"] = merge_check(
                config, planned.peft_config, dtype=case.dtype, quantization=planned.quantization,
                attn_implementation=case.attn_implementation, device=device, total_params=m.total_params,
                seq_len=case.seq_len, target_len=case.target_len)
        except Exception as exc:
            result["merge_check"] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    else:
        result["merge_check"] = {"status": "not checked", "reason": "disabled" if not merge else "step did not run"}
    result["checks"] = _checks(result)
    result["wall_s"] = round(time.perf_counter() - t0, 3)
    return result


def _looks_fake_only(error: str) -> bool:
    return any(s in error for s in ("DataDependentOutputException", "DynamicOutputShapeException",
                                    "UnsupportedOperatorException", "data-dependent"))


def _estimated_dict(plan: Any, memory: Any, planned: Planned) -> dict[str, Any]:
    out: dict[str, Any] = {"available": memory is not None}
    if memory is not None:
        out.update(peak_bytes=memory.peak_bytes, reserved_bytes=memory.reserved_bytes,
                   device_bytes=memory.device_bytes, peak_phase=memory.peak_phase,
                   breakdown=dict(memory.breakdown), phase_peaks=dict(memory.phase_peaks),
                   error_band=memory.error_band, notes=list(memory.notes))
    else:
        out.update(peak_bytes=None, breakdown=None,
                   error=f"estimate unavailable: {planned.estimate_error or 'no memory model'}")
    if plan is not None:
        out.update(trainable_params=plan.trainable_params, total_params=plan.total_params, method=plan.method,
                   category=plan.category)
    return out


def _measured_dict(m: Any) -> dict[str, Any]:
    return {
        "mode": m.mode, "ok": m.ok, "peak_bytes": m.peak_bytes if m.ok else None, "peak_phase": m.peak_phase,
        "peak_step": m.peak_step, "breakdown": dict(m.breakdown), "phase_peaks": dict(m.phase_peaks),
        "step_peaks": list(m.step_peaks), "reserved_peak_bytes": m.reserved_peak_bytes,
        "trainable_params": m.trainable_params, "total_params": m.total_params, "wall_s": round(m.wall_s, 3),
        "oom": m.oom, "error": m.error, "failed_phase": m.failed_phase, "notes": list(m.notes),
        "partial_peak_bytes": m.peak_bytes if not m.ok else None,
        **_step_time(m),
    }


def _step_time(m: Any) -> dict[str, Any]:
    """cuda runs only: ``step_s`` (seconds per training step, the median after the warm-up step;
    None with fewer than 2 steps), ``step_seconds`` (every step) and ``device_name`` (the GPU's name).
    Other modes time nothing: the keys are absent, as in reports written before they existed."""
    if getattr(m, "mode", None) != "cuda":
        return {}
    step_s = getattr(m, "step_s", None)
    out: dict[str, Any] = {"step_s": None if step_s is None else round(step_s, 6),
                           "step_seconds": [round(x, 6) for x in getattr(m, "step_seconds", ())],
                           "device_name": None}
    try:
        import torch

        out["device_name"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - the name is a label; its absence is not an error
        pass
    return out


def step_time(result: Mapping[str, Any]) -> float | None:
    """A case result's measured seconds per step, or None (not a cuda run, or too few steps)."""
    v = (result.get("measured") or {}).get("step_s")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else None


def _trainable(plan: Any, m: Any) -> dict[str, Any]:
    planned = plan.trainable_params if plan is not None else None
    measured = m.trainable_params if m is not None else None
    out = {"planned": planned, "measured_peft": measured,
           "planned_total": plan.total_params if plan is not None else None,
           "measured_total": m.total_params if m is not None else None}
    if planned is None or measured is None:
        out["match"] = None
    else:
        out["match"] = planned == measured and (out["planned_total"] == out["measured_total"])
    return out


def _checks(result: dict[str, Any]) -> dict[str, Any]:
    """What failed (for the exit status and the summary)."""
    problems = []
    if result["status"] == "error":
        problems.append(result["message"])
    t = result.get("trainable") or {}
    if t.get("match") is False:
        problems.append(f"trainable count mismatch: planner {t['planned']:,} / {t['planned_total']:,} vs PEFT "
                        f"{t['measured_peft']:,} / {t['measured_total']:,}")
    mc = result.get("merge_check") or {}
    if mc.get("status") in ("fail", "error"):
        problems.append(f"merge identity {mc['status']}: {mc.get('rel_max_diff', mc.get('reason'))}")
    return {"passed": not problems, "problems": problems}


# --------------------------------------------------------------------------------------------
# Environment and reports


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str) -> dict[str, Any]:
    import torch

    import planner

    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        total = torch.cuda.get_device_properties(0).total_memory
        dev = {"kind": "cuda", "name": name, "total_memory_bytes": total, "cuda": torch.version.cuda}
    elif device == "cpu":
        dev = {"kind": "cpu", "name": _cpu_name(), "note": "real tensors on the CPU under MemTracker, emulating "
                                                            "CUDA's allocator rounding, dropout masks, fused SDPA "
                                                            "and foreach optimizers"}
    else:
        dev = {"kind": "fake", "name": f"FakeTensorMode on {_cpu_name()}",
               "note": "shapes only (no data); same emulation of CUDA as the cpu mode"}
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "device": dev,
        "torch": torch.__version__, "transformers": _version("transformers"), "peft": _version("peft"),
        "bitsandbytes": _version("bitsandbytes"), "accelerate": _version("accelerate"),
        "python": platform.python_version(), "platform": platform.platform(),
        "planner": getattr(planner, "__version__", None), "git_commit": _git_commit(),
    }


def summarise(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for r in results:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    rels = [r["comparison"]["rows"][-1]["rel_error"] for r in results
            if r.get("comparison") and r["comparison"]["rows"][-1]["rel_error"] is not None]
    within = [r["comparison"]["within_error_band"] for r in results
              if r.get("comparison") and r["comparison"]["within_error_band"] is not None]
    trainable = [r["trainable"]["match"] for r in results if (r.get("trainable") or {}).get("match") is not None]
    merges: dict[str, int] = {}
    for r in results:
        s = (r.get("merge_check") or {}).get("status", "not checked")
        merges[s] = merges.get(s, 0) + 1
    return {
        "cases": len(results),
        "by_status": by_status,
        "estimate_available": sum(1 for r in results if (r.get("estimated") or {}).get("available")),
        "peak_rel_error": ({"mean_abs": sum(abs(x) for x in rels) / len(rels), "max_abs": max(abs(x) for x in rels),
                            "median": sorted(rels)[len(rels) // 2],
                            "median_abs": statistics.median(abs(x) for x in rels), "n": len(rels)} if rels else None),
        "within_error_band": {"yes": sum(within), "no": len(within) - sum(within)} if within else None,
        "trainable_match": {"yes": sum(trainable), "no": len(trainable) - sum(trainable)},
        "merge_check": merges,
        "failed": [r["id"] for r in results if not (r.get("checks") or {"passed": r["status"] != "error"})["passed"]],
        "wall_s": round(sum(r.get("wall_s", 0.0) for r in results), 1),
    }


def _finite(o: Any) -> Any:
    """JSON has no inf / nan: None in their place, recursively."""
    if isinstance(o, float) and (math.isinf(o) or math.isnan(o)):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def write_json(path: str | Path, data: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    text = json.dumps(_finite(json.loads(json.dumps(data, default=_json_default))), indent=1, allow_nan=False)
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(p)


# --------------------------------------------------------------------------------------------
# Text output


def human(n: int | None) -> str:
    if n is None:
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{sign}{n / size:.2f} {unit}"
    return f"{sign}{n} B"


def seconds(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.3f} s"


def pct(x: float | None) -> str:
    return "-" if x is None else ("inf" if math.isinf(x) else f"{x * 100:+.1f}%")


def format_case(result: dict[str, Any]) -> str:
    """The side-by-side table of one case."""
    inp = result["inputs"]
    lines = [f"case {result['id']}: {inp['model'] if isinstance(inp['model'], str) else 'config'} "
             f"{inp['method'] if inp.get('peft_config') is None else inp['peft_config'].get('peft_type')} "
             f"batch {inp['batch_size']} x {inp['seq_len']}, {inp['dtype']}, {inp['optimizer']}, "
             f"{inp['attn_implementation']}" + (", gradient checkpointing" if inp['gradient_checkpointing'] else "")
             + (f", {result['resolved']['quantization']}" if result['resolved'].get('quantization') else "")
             + f" [{result['resolved']['device']}]"]
    lines.append(f"status: {result['status']}" + (f" - {result['message']}" if result.get("message") else ""))
    est = result.get("estimated") or {}
    if not est.get("available"):
        lines.append(est.get("error", "estimate unavailable"))
    comp = result.get("comparison")
    if comp:
        w = 24
        lines.append(f"{'component':<{w}} {'estimated':>12} {'measured':>12} {'abs error':>12} {'rel error':>9}  comparable")
        for row in comp["rows"]:
            lines.append(f"{row['component']:<{w}} {human(row['estimated']):>12} {human(row['measured']):>12} "
                         f"{human(row['abs_error']):>12} {pct(row['rel_error']):>9}  {row['comparable']}")
        for row in comp["phases"]:
            lines.append(f"{'  peak in ' + row['phase']:<{w}} {human(row['estimated']):>12} {human(row['measured']):>12} "
                         f"{human(row['abs_error']):>12} {pct(row['rel_error']):>9}")
        pp = comp["peak_phase"]
        lines.append(f"peak phase: estimated {pp['estimated'] or '-'}, measured {pp['measured']} (step "
                     f"{result['measured']['peak_step']})"
                     + (f"; error band +-{comp['error_band']:.0%}: "
                        f"{'within' if comp['within_error_band'] else 'OUTSIDE'}" if comp['error_band'] is not None else ""))
    t = result.get("trainable") or {}
    if t.get("measured_peft") is not None or t.get("planned") is not None:
        mark = {True: "match", False: "MISMATCH", None: "not compared"}[t.get("match")]
        lines.append(f"trainable parameters: planner {_num(t.get('planned'))}, PEFT {_num(t.get('measured_peft'))} "
                     f"(total {_num(t.get('planned_total'))} vs {_num(t.get('measured_total'))}): {mark}")
    mc = result.get("merge_check") or {}
    if mc:
        detail = (f" (max diff {mc['rel_max_diff']:.2e} of max logit, tolerance {mc['tolerance']:.0e}, adapter "
                  f"effect {mc['adapter_effect']:.2e})" if "rel_max_diff" in mc else f": {mc.get('reason', '')}")
        lines.append(f"merge identity: {mc.get('status')}{detail}")
    meas = result.get("measured") or {}
    if step_time(result) is not None:
        lines.append(f"step time: {seconds(step_time(result))} per step (median after the warm-up step"
                     + (f", {meas['device_name']}" if meas.get("device_name") else "") + ")")
    for note in meas.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _num(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def markdown_summary(report: dict[str, Any]) -> str:
    env, s = report["environment"], report["summary"]
    out = [f"# Validation: {report.get('matrix', {}).get('name', 'cases')} ({env['device']['kind']} mode)", ""]
    desc = report.get("matrix", {}).get("description")
    if desc:
        out += [desc, ""]
    out += [f"Generated {env['date']} by `python -m executors.validate"
            + (f" --matrix {report['matrix']['path']}" if report.get("matrix") else "")
            + f" --device {env['device']['kind']}`; torch {env['torch']}, transformers {env['transformers']}, "
              f"peft {env['peft']}, bitsandbytes {env['bitsandbytes']}; device: {env['device']['name']}"
            + (f"; commit {env['git_commit']}" if env.get("git_commit") else "") + ".", ""]
    pr = s.get("peak_rel_error")
    out.append(f"**{s['cases']} cases**: " + ", ".join(f"{v} {k}" for k, v in sorted(s["by_status"].items()))
               + f"; estimate available for {s['estimate_available']}; trainable counts match in "
                 f"{s['trainable_match']['yes']} of {s['trainable_match']['yes'] + s['trainable_match']['no']}"
               + (f"; peak error median |{pr['median_abs'] * 100:.4f}%|, mean |{pr['mean_abs'] * 100:.2f}%|, "
                  f"max |{pr['max_abs'] * 100:.2f}%| over {pr['n']}" if pr else "")
               + (f"; within the planner's error band: {s['within_error_band']['yes']} of "
                  f"{s['within_error_band']['yes'] + s['within_error_band']['no']}" if s.get("within_error_band") else "")
               + f"; merge identity: " + ", ".join(f"{v} {k}" for k, v in sorted(s["merge_check"].items()))
               + f". Total wall time {s['wall_s']:.0f} s.")
    out.append("")
    timed = any(step_time(r) is not None for r in report["cases"])
    out.append("| case | model | method | batch x seq | dtype | gc | attn | estimated | measured | error | "
               + ("step time | " if timed else "") + "trainable (planner = PEFT) | status |")
    out.append("|---" * (13 if timed else 12) + "|")
    for r in report["cases"]:
        inp = r["inputs"]
        model = inp["model"] if isinstance(inp["model"], str) else inp["model"].get("model_type", "config")
        if inp.get("config_overrides"):
            model += " (shrunk)"
        method = inp["method"] if inp.get("peft_config") is None else str(inp["peft_config"].get("peft_type")).lower()
        if r["resolved"].get("quantization"):
            q = r["resolved"]["quantization"]
            method += " " + ("int8" if q.get("load_in_8bit") else q.get("bnb_4bit_quant_type", "fp4"))
        est = (r.get("estimated") or {}).get("peak_bytes")
        meas = (r.get("measured") or {}).get("peak_bytes")
        rel = r["comparison"]["rows"][-1]["rel_error"] if r.get("comparison") else None
        t = r.get("trainable") or {}
        tmark = {True: "yes", False: "**NO**", None: "-"}[t.get("match")]
        tnum = _num(t.get("measured_peft") if t.get("measured_peft") is not None else t.get("planned"))
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('message') or ''}"
        out.append(f"| {r['id']} | {model} | {method} | {inp['batch_size']} x {inp['seq_len']} | {inp['dtype']} | "
                   f"{'on' if inp['gradient_checkpointing'] else 'off'} | {inp['attn_implementation']} | {human(est)} | "
                   f"{human(meas)} | {pct(rel)} | " + (f"{seconds(step_time(r))} | " if timed else "")
                   + f"{tnum} ({tmark}) | {status.replace('|', '/')} |")
    out.append("")
    unavailable = [r for r in report["cases"] if not (r.get("estimated") or {}).get("available")]
    if unavailable:
        out += ["Estimates unavailable:", ""]
        out += [f"- {r['id']}: {(r.get('estimated') or {}).get('error')}" for r in unavailable]
        out.append("")
    out += ["Components: " + COMPARABILITY_NOTE, ""]
    if timed:
        out += ["Step time: wall seconds of one training step on the GPU (forward, backward, optimizer step; "
                "`torch.cuda.synchronize()` before each clock read), the median of the steps after the first "
                "(warm-up).", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Command line


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m executors.validate",
                                description="Measure a real training step and compare it with planner.estimate.")
    p.add_argument("--model", help="catalog id (python -m planner models) or path to a config.json")
    p.add_argument("--config-override", action="append", default=[], metavar="KEY=VALUE",
                   help="change a config.json field (e.g. num_hidden_layers=2), JSON values")
    p.add_argument("--method", default="lora", help="method name (python -m planner methods)")
    p.add_argument("--r", type=int, help="LoRA rank")
    p.add_argument("--lora-alpha", type=float)
    p.add_argument("--target-modules", help="comma-separated module names, or all-linear")
    p.add_argument("--num-virtual-tokens", type=int)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other PEFT option (JSON values), e.g. --option use_dora=true")
    p.add_argument("--peft-config", help="an adapter_config.json; its peft_type selects the method")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--target-len", type=int, help="encoder-decoder target length (default: --seq-len)")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 | float16 | float32 (bf16, fp16, fp32)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--attn-implementation", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"))
    p.add_argument("--optimizer", default="adamw_torch", help="TrainingArguments.optim name")
    p.add_argument("--quantization", choices=QUANTIZATION_NAMES + ("none",),
                   help="bitsandbytes base weights (qlora defaults to nf4)")
    p.add_argument("--device", default="fake", choices=DEVICES,
                   help="cuda: the real thing; cpu: real tensors, small models; fake: any size, shapes only")
    p.add_argument("--steps", type=int, default=2, help="training steps measured (the larger peak wins)")
    p.add_argument("--no-merge-check", action="store_true", help="skip the merge identity check (cpu mode)")
    p.add_argument("--matrix", help="a matrix file (executors/matrices/*.json): run every case, write one report")
    p.add_argument("--only", help="with --matrix: comma-separated case ids to run")
    p.add_argument("--json", help="write the report (JSON) here")
    p.add_argument("--markdown", help="with --matrix: also write a markdown summary here")
    p.add_argument("--quiet", action="store_true", help="matrix: one line per case instead of full tables")
    return p


def case_from_args(args: argparse.Namespace) -> Case:
    if not args.model:
        raise InputError("--model is required (a catalog id or a config.json path), or use --matrix")
    options: dict[str, Any] = {}
    if args.r is not None:
        options["r"] = args.r
    if args.lora_alpha is not None:
        options["lora_alpha"] = args.lora_alpha
    if args.num_virtual_tokens is not None:
        options["num_virtual_tokens"] = args.num_virtual_tokens
    if args.target_modules:
        t = args.target_modules.strip()
        options["target_modules"] = t if t == "all-linear" else [x.strip() for x in t.split(",") if x.strip()]
    for item in args.option:
        if "=" not in item:
            raise InputError(f"--option expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        options[k.strip()] = _value(v.strip())
    overrides = {}
    for item in args.config_override:
        if "=" not in item:
            raise InputError(f"--config-override expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = _value(v.strip())
    peft_config = read_json_file(args.peft_config, "PEFT config") if args.peft_config else None
    model_id = args.model
    return Case(id="cli", model=model_id, method=args.method, options=options, peft_config=peft_config,
                config_overrides=overrides, batch_size=args.batch_size, seq_len=args.seq_len,
                target_len=args.target_len, dtype=args.dtype, gradient_checkpointing=args.gradient_checkpointing,
                attn_implementation=args.attn_implementation, optimizer=args.optimizer,
                quantization=args.quantization)


def _validate_case_inputs(case: Case) -> None:
    from executors.build import DTYPES
    from executors.measure import OPTIMIZERS

    if case.dtype not in DTYPES:
        raise InputError(f"case {case.id!r}: unknown dtype {case.dtype!r}; expected one of {sorted(DTYPES)}")
    if case.optimizer not in OPTIMIZERS:
        raise InputError(f"case {case.id!r}: unknown optimizer {case.optimizer!r}; expected one of {OPTIMIZERS}")
    if case.batch_size <= 0 or case.seq_len <= 0 or (case.target_len is not None and case.target_len <= 0):
        raise InputError(f"case {case.id!r}: batch_size, seq_len and target_len must be positive")
    if isinstance(case.quantization, str):
        resolve_quantization(case.quantization, case.dtype)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = _parser().parse_args(argv)
    try:
        if args.matrix:
            meta, cases = load_matrix(args.matrix)
            if args.only:
                wanted = [x.strip() for x in args.only.split(",") if x.strip()]
                missing = sorted(set(wanted) - {c.id for c in cases})
                if missing:
                    raise InputError(f"--only: no such case ids {missing}")
                cases = [c for c in cases if c.id in wanted]
        else:
            meta, cases = None, [case_from_args(args)]
        for c in cases:
            _validate_case_inputs(c)
        check_environment(args.device, None, "adamw_torch")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    _quiet_libraries()
    env = environment(args.device)
    results: list[dict[str, Any]] = []
    for i, case in enumerate(cases, 1):
        try:
            result = run_case(case, args.device, merge=not args.no_merge_check, steps=args.steps)
        except InputError as exc:
            if meta is None:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            result = {"id": case.id, "inputs": case.inputs(), "resolved": {"device": args.device}, "status": "error",
                      "message": f"bad case: {exc}", "estimated": None, "measured": None, "comparison": None,
                      "trainable": None, "merge_check": None, "checks": {"passed": False, "problems": [str(exc)]}}
        except Exception as exc:  # a bug: report it, keep going through the matrix
            if meta is None:
                traceback.print_exc()
                print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            result = {"id": case.id, "inputs": case.inputs(), "resolved": {"device": args.device}, "status": "error",
                      "message": f"{type(exc).__name__}: {exc}", "estimated": None, "measured": None,
                      "comparison": None, "trainable": None, "merge_check": None,
                      "checks": {"passed": False, "problems": [f"{type(exc).__name__}: {exc}"]}}
        results.append(result)
        if meta is not None and args.quiet:
            rel = result["comparison"]["rows"][-1]["rel_error"] if result.get("comparison") else None
            meas = (result.get("measured") or {}).get("peak_bytes")
            est = (result.get("estimated") or {}).get("peak_bytes")
            print(f"[{i}/{len(cases)}] {case.id}: {result['status']}, estimated {human(est)}, measured {human(meas)}, "
                  f"error {pct(rel)}, {result.get('wall_s', 0):.1f} s"
                  + ("" if (result.get("checks") or {}).get("passed", True) else
                     f"  CHECK FAILED: {'; '.join(result['checks']['problems'])}"), flush=True)
        else:
            if meta is not None:
                print(f"[{i}/{len(cases)}]", end=" ")
            print(format_case(result), flush=True)
            print()

    if meta is None:
        report = {"schema": REPORT_SCHEMA, "environment": env, **results[0]}
        ok = results[0]["status"] in ("ok", "does not fit") and (results[0].get("checks") or {}).get("passed", False)
    else:
        summary = summarise(results)
        report = {"schema": REPORT_SCHEMA, "environment": env, "matrix": meta, "summary": summary, "cases": results}
        ok = not summary["failed"]
        print(f"{summary['cases']} cases: " + ", ".join(f"{v} {k}" for k, v in sorted(summary["by_status"].items()))
              + (f"; FAILED: {', '.join(summary['failed'])}" if summary["failed"] else "")
              + f"; {summary['wall_s']:.0f} s")
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")
    if args.markdown:
        if meta is None:
            report_md = {**report, "cases": [results[0]], "summary": summarise(results)}
        else:
            report_md = report
        p = Path(args.markdown)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(markdown_summary(report_md), encoding="utf-8")
        print(f"summary written to {args.markdown}")
    return 0 if ok else 1


def _quiet_libraries() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("transformers", "peft", "bitsandbytes", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


if __name__ == "__main__":
    sys.exit(main())
