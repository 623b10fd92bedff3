"""Training time and cost from a plan's FLOPs: ``planner.training_time``.

    hours = micro-steps x step FLOPs / (peak FLOP/s x utilisation) / 3600

- step FLOPs: :class:`planner.compute.StepFlops` of the plan (one micro-batch of ``batch_size`` x
  ``seq_len``; forward, backward, recomputation under gradient checkpointing);
- micro-steps: the dataset's tokens (``num_examples x tokens_per_example x epochs``) packed into
  sequences of the plan's ``seq_len``, split into micro-batches of ``batch_size`` over ``num_gpus``
  data-parallel GPUs (a partial last micro-batch counts as a full one);
- peak: the GPU catalog's dense peak for the number format the matmuls run in (the model dtype;
  the 4-bit compute dtype under QLoRA; the autocast dtype under mixed precision; fp32 without
  TF32 -- PyTorch's default -- or tf32 with ``tf32=True``). PEFT keeps adapters in float32
  (``autocast_adapter_dtype``), so the adapter matmuls of a 16-bit model are timed at the fp32 peak;
- utilisation: :data:`planner.constants.DEFAULT_UTILIZATION` unless given.

A measured step time (``measured_step_s``: seconds per micro-step on this GPU, e.g. from
``executors.flops.measure_step_time``) is shown next to the estimate, with the utilisation it implies.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

from planner.constants import (DEFAULT_UTILIZATION, DEFAULT_UTILIZATION_SOURCE, FLOPS_PER_TFLOPS, SECONDS_PER_HOUR,
                               normalise_dtype)
from planner.errors import PlannerError
from planner.gpus import GPU, gpu as lookup_gpu
from planner.plan import Plan


class TrainingTimeError(PlannerError):
    """An input of :func:`training_time` that cannot be used; ``field`` names it."""


class TrainingTime(BaseModel):
    """Estimated (and, where a step time was measured, measured) time and cost of a training run."""

    model_config = ConfigDict(frozen=True)

    model: str
    method: str
    gpu: str  # catalog id (or the custom GPU's id)
    num_gpus: int
    number_format: str  # bf16 / fp16 / fp32 / tf32: the format of the base model's matmuls
    peak_tflops: float  # dense peak per GPU for number_format (catalog)
    adapter_number_format: str | None  # fp32 / tf32 where float32 adapters run on a 16-bit model
    adapter_peak_tflops: float | None
    utilization: float
    utilization_source: str
    tokens_per_example: int
    tokens: int  # over all epochs
    sequences: int  # packed sequences of the plan's seq_len, over all epochs
    micro_steps: int  # forward / backward passes per GPU
    optimizer_steps: int
    step_flops: int  # one micro-step on one GPU
    adapter_step_flops: int  # the part of step_flops timed at the adapter peak
    flops: int  # the whole run, all GPUs
    step_s: float  # estimated seconds per micro-step
    seconds: float
    hours: float
    gpu_hours: float
    price_per_gpu_hour: float | None = None
    cost_usd: float | None = None
    measured_step_s: float | None = None
    measured_hours: float | None = None
    measured_gpu_hours: float | None = None
    measured_cost_usd: float | None = None
    measured_utilization: float | None = None  # step FLOPs / (measured step time x peak)
    notes: list[str] = []


# ----- checks ----------------------------------------------------------------------------------------


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TrainingTimeError(f"must be a positive integer, got {value!r}", field=field)
    return value


def _positive_number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise TrainingTimeError(f"must be a finite number > 0, got {value!r}", field=field)
    return float(value)


def _non_negative_number(value: Any, field: str) -> float:
    """A price may be 0 (own hardware); negative, NaN or infinite is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise TrainingTimeError(f"must be a finite number >= 0, got {value!r}", field=field)
    return float(value)


def _utilization(value: Any) -> tuple[float, str]:
    if value is None:
        return DEFAULT_UTILIZATION, DEFAULT_UTILIZATION_SOURCE
    u = _positive_number(value, "utilization")
    if u > 1:
        raise TrainingTimeError(f"is a fraction of the peak, in (0, 1]; got {value!r}", field="utilization")
    return u, "given"


# ----- number formats ------------------------------------------------------------------------------

_FORMATS = {"bfloat16": "bf16", "float16": "fp16"}


def number_format(plan: Plan, *, tf32: bool = False) -> str:
    """The number format the base model's matmuls run in (catalog key of the peak)."""
    s = plan.settings
    if s is None:
        raise TrainingTimeError("has no training settings", field="plan")
    if s.mixed_precision:
        return s.mixed_precision
    dtype = s.dtype
    if s.quantized_4bit:
        dtype = normalise_dtype(str((s.quantization or {}).get("bnb_4bit_compute_dtype") or "float32")
                                .removeprefix("torch."), field="quantization.bnb_4bit_compute_dtype")
    return _FORMATS.get(dtype, "tf32" if tf32 else "fp32")


def adapter_number_format(plan: Plan, *, tf32: bool = False) -> str | None:
    """fp32 / tf32 where PEFT's float32 adapters meet 16-bit base matmuls (else None: same format)."""
    s = plan.settings
    if s is None or s.mixed_precision or s.adapter_dtype != "float32":
        return None
    if number_format(plan, tf32=tf32) in ("fp32", "tf32"):
        return None
    return "tf32" if tf32 else "fp32"


def _peak(g: GPU, fmt: str, plan: Plan) -> float:
    peak = g.peak_tflops(fmt)
    if peak is None:
        raise TrainingTimeError(
            f"{g.name} has no dense {fmt} peak in the catalog, and the plan's matmuls run in {fmt} "
            f"(dtype={plan.settings.dtype if plan.settings else '?'}); pick another GPU or plan another dtype",
            field="gpu")
    return peak


# ----- the estimate --------------------------------------------------------------------------------


def training_time(plan: Plan, gpu: str | GPU, num_examples: int, tokens_per_example: int | None = None,
                  epochs: float = 1, price_per_gpu_hour: float | None = None, utilization: float | None = None,
                  num_gpus: int | None = None, measured_step_s: float | None = None, tf32: bool = False) -> TrainingTime:
    """Hours and cost of training ``plan`` on ``num_gpus`` x ``gpu`` (data parallel).

    ``num_examples`` x ``tokens_per_example`` (default: the plan's ``seq_len``) x ``epochs`` tokens,
    packed into the plan's sequences; ``price_per_gpu_hour`` in USD (None: no cost);
    ``utilization`` the sustained fraction of the dense peak (default
    :data:`planner.constants.DEFAULT_UTILIZATION`); ``num_gpus`` data-parallel replicas, each running
    the plan's micro-batch (default: the plan's ``num_gpus`` setting where it has one, else 1);
    ``measured_step_s`` seconds per micro-step
    measured on this GPU with the plan's settings; ``tf32``: float32 matmuls on TF32 tensor cores.
    Bad input raises :class:`TrainingTimeError` (or :class:`planner.gpus.UnknownGPUError`) naming the field.
    """
    if not isinstance(plan, Plan):
        raise TrainingTimeError(f"must be a Plan from planner.estimate, got {type(plan).__name__}", field="plan")
    if plan.flops is None:
        raise TrainingTimeError(
            f"has no FLOP count: FLOPs are not counted for {plan.method} on {plan.model_type} with these settings "
            "(planner.compute.unsupported_reason says why)", field="plan")
    g = lookup_gpu(gpu)
    n_examples = _positive_int(num_examples, "num_examples")
    s = plan.settings
    per_example = s.seq_len if tokens_per_example is None else _positive_int(tokens_per_example, "tokens_per_example")
    n_epochs = _positive_number(epochs, "epochs")
    price = None if price_per_gpu_hour is None else _non_negative_number(price_per_gpu_hour, "price_per_gpu_hour")
    u, u_source = _utilization(utilization)
    gpus_n = _positive_int(getattr(s, "num_gpus", 1) if num_gpus is None else num_gpus, "num_gpus")
    measured = None if measured_step_s is None else _positive_number(measured_step_s, "measured_step_s")

    fmt = number_format(plan, tf32=tf32)
    peak = _peak(g, fmt, plan)
    ad_fmt = adapter_number_format(plan, tf32=tf32)
    flops = plan.flops
    ad_flops = flops.parts["adapter"].total_flops if ad_fmt else 0
    ad_peak = _peak(g, ad_fmt, plan) if ad_fmt and ad_flops else None
    if ad_peak is None:
        ad_fmt, ad_flops = None, 0

    tokens = math.ceil(n_examples * per_example * n_epochs)
    sequences = math.ceil(tokens / s.seq_len)
    micro_steps = math.ceil(sequences / (s.batch_size * gpus_n))
    optimizer_steps = math.ceil(micro_steps / s.gradient_accumulation_steps)
    step_s = ((flops.total_flops - ad_flops) / (peak * FLOPS_PER_TFLOPS * u)
              + (ad_flops / (ad_peak * FLOPS_PER_TFLOPS * u) if ad_peak else 0.0))
    seconds = micro_steps * step_s
    hours = seconds / SECONDS_PER_HOUR
    notes = [f"{tokens:,} tokens packed into {sequences:,} sequences of {s.seq_len} (no padding); "
             f"{micro_steps:,} micro-batches of {s.batch_size} per GPU"]
    if ad_fmt:
        notes.append(f"adapter matmuls ({ad_flops:,} FLOPs a step) run in float32 (PEFT's autocast_adapter_dtype): "
                     f"timed at the {ad_fmt} peak, {ad_peak} TFLOPS")
    out: dict[str, Any] = {}
    if measured is not None:
        m_hours = micro_steps * measured / SECONDS_PER_HOUR
        out = dict(measured_step_s=measured, measured_hours=m_hours, measured_gpu_hours=m_hours * gpus_n,
                   measured_cost_usd=None if price is None else m_hours * gpus_n * price,
                   measured_utilization=flops.total_flops / (measured * peak * FLOPS_PER_TFLOPS))
    return TrainingTime(
        model=plan.model, method=plan.method, gpu=g.id, num_gpus=gpus_n, number_format=fmt, peak_tflops=peak,
        adapter_number_format=ad_fmt, adapter_peak_tflops=ad_peak, utilization=u, utilization_source=u_source,
        tokens_per_example=per_example, tokens=tokens, sequences=sequences, micro_steps=micro_steps,
        optimizer_steps=optimizer_steps, step_flops=flops.total_flops, adapter_step_flops=ad_flops,
        flops=micro_steps * gpus_n * flops.total_flops, step_s=step_s, seconds=seconds, hours=hours,
        gpu_hours=hours * gpus_n, price_per_gpu_hour=price,
        cost_usd=None if price is None else hours * gpus_n * price, notes=notes, **out)
