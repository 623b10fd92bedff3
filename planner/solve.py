"""Inverse questions on the memory model: what fits a GPU, and the largest value that does.

"Fits" means the step's reserved memory fits next to the CUDA context:
``plan.memory.device_bytes <= gpu.usable_memory_bytes`` (reserved + paged optimizer state + context
against what the driver reports as total; see planner/gpus.py for ``usable_memory_bytes``).
Memory never decreases in batch size, sequence length or LoRA rank (property-tested), so the
largest fitting value is found exactly by doubling then bisection.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from planner.errors import PlannerError
from planner.gpus import GPU, gpu as lookup_gpu
from planner.plan import Plan

SOLVABLE = ("batch_size", "seq_len", "r")
#: Search ceilings (beyond any catalog GPU for the smallest catalog model).
MAX_BATCH_SIZE = 1 << 16
MAX_SEQ_LEN = 1 << 20


def fits(plan: Plan, gpu: str | GPU) -> bool:
    """Whether the plan's step fits one GPU (``device_bytes <= usable_memory_bytes``)."""
    g = lookup_gpu(gpu) if isinstance(gpu, str) else gpu
    if plan.memory is None:
        raise PlannerError(f"no memory budget for this plan ({'; '.join(plan.notes) or 'not modelled'})", field="method")
    return plan.memory.device_bytes <= g.usable_memory_bytes


def margin_bytes(plan: Plan, gpu: str | GPU) -> int:
    g = lookup_gpu(gpu) if isinstance(gpu, str) else gpu
    return g.usable_memory_bytes - plan.memory.device_bytes


def _largest(ok: Callable[[int], bool], lo: int, ceiling: int) -> int:
    """Largest v in [lo, ceiling] with ok(v), given ok monotone (True then False); lo - 1 if none."""
    if not ok(lo):
        return lo - 1
    hi = lo
    while hi < ceiling and ok(min(hi * 2, ceiling)):
        hi = min(hi * 2, ceiling)
    if hi == ceiling:
        return hi
    bad = min(hi * 2, ceiling)
    while bad - hi > 1:
        mid = (hi + bad) // 2
        if ok(mid):
            hi = mid
        else:
            bad = mid
    return hi


def solve_max(model: Any, method: str | Mapping[str, Any] = "lora", *, gpu: str | GPU, parameter: str = "batch_size",
              **options: Any) -> int:
    """The largest ``batch_size``, ``seq_len`` or LoRA ``r`` whose step fits ``gpu`` (0 when even
    the smallest value does not fit). Other options and settings as for :func:`planner.estimate`."""
    from planner.api import estimate

    if parameter not in SOLVABLE:
        raise PlannerError(f"cannot solve for {parameter!r}; solvable: {', '.join(SOLVABLE)}", field="parameter")
    g = lookup_gpu(gpu) if isinstance(gpu, str) else gpu
    options = dict(options)
    options.pop(parameter, None)
    probe = estimate(model, method, **{parameter: 1}, **options)
    if probe.memory is None:
        raise PlannerError(f"no memory budget for this plan: {'; '.join(probe.notes)}", field="method")
    if parameter == "r":
        if probe.method_family != "lora" and probe.method_family != "adalora":
            raise PlannerError("parameter='r' needs a LoRA-family method", field="parameter")
        from planner.models import load_model

        inv = load_model(model).inventory.by_path
        limits = [min(inv[p].in_features or 1, inv[p].out_features or 1) for p in probe.adapted_modules if p in inv]
        ceiling = min(limits) if limits else 1  # PEFT-planner refuses r > min(in, out) of any adapted module
    else:
        ceiling = MAX_BATCH_SIZE if parameter == "batch_size" else MAX_SEQ_LEN
        max_pos = None
        try:
            from planner.models import load_model

            max_pos = load_model(model).max_position_embeddings
        except PlannerError:
            max_pos = None
        if parameter == "seq_len" and max_pos:
            ceiling = min(ceiling, int(max_pos))

    def ok(v: int) -> bool:
        return fits(estimate(model, method, **{parameter: v}, **options), g)

    return max(_largest(ok, 1, ceiling), 0)


def sweep(model: Any, method: str | Mapping[str, Any] = "lora", *, batch_size: Any = 1, seq_len: Any = 512,
          **options: Any) -> dict[str, np.ndarray]:
    """Peak / reserved / device bytes over arrays of batch sizes and sequence lengths (broadcast
    together), in one vectorised replay. Each element equals ``estimate(...)`` at that point."""
    from planner.api import plan_method, SETTING_KEYS
    from planner.memory.model import sweep_memory
    from planner.memory.settings import QLORA_DEFAULT_QUANTIZATION, TrainingSettings
    from planner.models import load_model

    spec = load_model(model)
    raw = {k: options.pop(k) for k in list(options) if k in SETTING_KEYS}
    mplan, alias, _, _ = plan_method(spec, method, **options)
    if alias == "qlora" and raw.get("quantization") is None:
        raw["quantization"] = dict(QLORA_DEFAULT_QUANTIZATION, bnb_4bit_compute_dtype=raw.get("dtype") or "bfloat16")
    settings = TrainingSettings.from_options(raw)
    from planner.memory.programs import effective_settings

    settings, _ = effective_settings(spec, settings)
    out = sweep_memory(spec, mplan, settings, batch_size, seq_len)
    if out is None:
        from planner.memory.programs import unsupported_reason

        raise PlannerError(unsupported_reason(spec, mplan, settings) or "memory not modelled", field="method")
    return out


def smallest_gpu(model: Any, method: str | Mapping[str, Any] = "lora", *, candidates: Any = None,
                 **options: Any) -> GPU | None:
    """The catalog GPU with the least usable memory on which the plan fits (None if none does).
    ``candidates``: GPU ids / GPUs to choose from (default: the whole catalog)."""
    from planner.api import estimate
    from planner.gpus import gpus as catalog_gpus

    pool = [lookup_gpu(g) if isinstance(g, str) else g for g in candidates] if candidates is not None else catalog_gpus()
    plan = estimate(model, method, **options)
    if plan.memory is None:
        raise PlannerError(f"no memory budget for this plan: {'; '.join(plan.notes)}", field="method")
    fitting = [g for g in pool if fits(plan, g)]
    return min(fitting, key=lambda g: (g.usable_memory_bytes, g.id)) if fitting else None


def solve_gpus(model: Any, method: str | Mapping[str, Any] = "lora", *, gpu: str | GPU, sharding: str | None = None,
               max_gpus: int | None = None, **options: Any) -> int:
    """The smallest ``num_gpus`` whose per-GPU plan fits ``gpu`` (:func:`fits`) under ``sharding``
    (``"ddp"``, ``"zero1"``, ``"zero2"``, ``"zero3"``, ``"fsdp_full_shard"``, ``"fsdp_shard_grad_op"``;
    None: one GPU, else DDP). Other options and settings (``offload``, ``batch_size`` per GPU, ...)
    as for :func:`planner.estimate`. Raises :class:`PlannerError` when nothing up to ``max_gpus``
    (default ``planner.constants.MAX_NUM_GPUS``) fits.

    Per-GPU memory never grows with the GPU count beyond the dim-0 padding of FSDP shards (a few
    rows per parameter), so the search doubles the count until it fits, then bisects."""
    from planner.api import estimate
    from planner.constants import MAX_NUM_GPUS

    if "num_gpus" in options:
        raise PlannerError("num_gpus is what solve_gpus finds; leave it out", field="num_gpus")
    ceiling = MAX_NUM_GPUS if max_gpus is None else int(max_gpus)
    if ceiling < 1:
        raise PlannerError(f"max_gpus must be at least 1 (got {max_gpus!r})", field="max_gpus")
    g = lookup_gpu(gpu) if isinstance(gpu, str) else gpu
    cache: dict[int, Plan] = {}

    def plan_at(n: int) -> Plan:
        if n not in cache:
            cache[n] = estimate(model, method, num_gpus=n, sharding=sharding, **options)
            if cache[n].memory is None:
                raise PlannerError(f"no memory budget for this plan: {'; '.join(cache[n].notes)}", field="method")
        return cache[n]

    def ok(n: int) -> bool:
        return fits(plan_at(n), g)

    if ok(1):
        return 1
    replicated = sharding in (None, "ddp")
    if replicated:  # every GPU holds the whole step: more GPUs never lower the per-GPU memory
        need = plan_at(1).memory.device_bytes
        raise PlannerError(
            f"does not fit one {g.name} ({need / 2**30:.1f} GiB needed per GPU, "
            f"{g.usable_memory_bytes / 2**30:.1f} GiB usable) and {sharding or 'DDP'} replicates the model on every "
            "GPU, so no GPU count fits; shard it (sharding='zero3' or 'fsdp_full_shard'), offload, or shrink the "
            "batch / sequence", field="sharding")
    last_short = _largest(lambda n: not ok(n), 1, ceiling)  # the same doubling + bisection, on "does not fit"
    if last_short >= ceiling:
        need = plan_at(ceiling).memory.device_bytes
        raise PlannerError(
            f"does not fit {g.name} under {sharding} with up to {ceiling} GPUs ({need / 2**30:.1f} GiB per GPU at "
            f"{ceiling}, {g.usable_memory_bytes / 2**30:.1f} GiB usable); allow more GPUs (max_gpus) if that is "
            "still falling, else what does not shrink with more GPUs (activations, the gathered layer, replicated "
            "parameters) is too large: use gradient checkpointing, a smaller batch / sequence, offload, or a larger "
            "GPU", field="num_gpus")
    return last_short + 1
