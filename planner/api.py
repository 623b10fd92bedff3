"""The public interface: ``estimate`` (and, later, ``recommend`` / ``solve_max``)."""

from __future__ import annotations

from typing import Any, Mapping

from planner.adapter_file import safetensors_file_bytes
from planner.compute import estimate_flops
from planner.constants import normalise_dtype
from planner.errors import MethodConfigError
from planner.memo import memoised, options_key
from planner.methods import get_method, method_for_peft_type
from planner.methods.base import MethodPlan
from planner.models import ModelLike, load_model
from planner.plan import Plan
from planner.spec import ModelSpec
from planner.memory.settings import QLORA_DEFAULT_QUANTIZATION, SETTING_KEYS as _SETTING_KEYS, TrainingSettings

#: Keyword options of ``estimate`` that are training settings, not method options.
SETTING_KEYS = _SETTING_KEYS


def plan_method(spec: ModelSpec, method: str | Mapping[str, Any] = "lora", **options: Any) -> tuple[MethodPlan, str, list[str], str]:
    """Validate the method config and apply it: (method plan, name asked for, ignored keys, registered method).
    Memoised per spec (:mod:`planner.memo`): the same method and options give the same plan."""
    key = method_key(method, options)
    mplan, alias, ignored, family = memoised(spec, "method_plan", key, lambda: _plan_method(spec, method, **options))
    return mplan, alias, list(ignored), family


def method_key(method: Any, options: Mapping[str, Any]) -> str | None:
    """The memo key of a (method, options) pair, or None where it cannot be keyed."""
    return options_key(dict(method) if isinstance(method, Mapping) else method, dict(options))


def _plan_method(spec: ModelSpec, method: str | Mapping[str, Any], **options: Any) -> tuple[MethodPlan, str, list[str], str]:
    if isinstance(method, Mapping):
        mapping = dict(method)
        if "peft_type" not in mapping:
            raise MethodConfigError("a PEFT config mapping needs 'peft_type' (e.g. 'LORA')", field="peft_type")
        info = method_for_peft_type(mapping["peft_type"])
        alias = info.name
        if mapping.get("use_dora") and info.name == "lora":
            alias = "dora"
        mapping.update(options)
        cfg, ignored = info.config.from_options(mapping, from_peft_mapping=True)
    else:
        if not isinstance(method, str):
            raise MethodConfigError(f"method must be a name or a PEFT config mapping, got {type(method).__name__}", field="method")
        info, alias = get_method(method)
        cfg, ignored = info.config.from_options(options, from_peft_mapping=False)
    return info.build(cfg, spec, alias), alias, ignored, info.name


def adapter_file_bytes(plan: MethodPlan, spec: ModelSpec, dtype: str, adapter_dtype: str) -> int:
    """Size of the file ``save_pretrained`` writes (full fine-tuning: the model's safetensors)."""
    if plan.category == "full":
        return safetensors_file_bytes(((n, p.shape, dtype) for n, p in spec.inventory.named_parameters()), metadata={"format": "pt"})
    dtypes = {"adapter": adapter_dtype, "base": dtype}  # any other TensorDtype names itself (float32, int16, uint8...)
    items = [(t.saved_name, t.saved_shape or t.shape, dtypes.get(t.dtype, t.dtype)) for t in plan.new_tensors if t.saved_name]
    items += [(s.saved_name, s.shape, dtypes.get(s.dtype, s.dtype)) for s in plan.saved_base]
    for m in plan.copied_modules:
        for p in m.params:
            items.append((f"base_model.model.{m.path}.{p.name}", p.shape, dtype))
    # the saved state dict is a dict: a key two rules produce (e.g. a bias of a copied module) is written once
    return safetensors_file_bytes({name: (name, shape, dt) for name, shape, dt in items}.values())


def count(plan: MethodPlan, spec: ModelSpec) -> tuple[int, int, int]:
    """(trainable, total as PEFT reports it, added) parameter counts."""
    params = {n: p for n, p in spec.inventory.named_parameters()}
    added = sum(t.numel for t in plan.new_tensors)
    copies = sum(m.own_numel for m in plan.copied_modules)
    trainable = sum(t.numel for t in plan.new_tensors if t.trainable)
    trainable += sum(params[n].numel for n in plan.trainable_base) + copies
    return trainable, spec.total_params + added + copies, added + copies


def estimate(model: ModelLike, method: str | Mapping[str, Any] = "lora", **options: Any) -> Plan:
    """Plan fine-tuning ``model`` with ``method``.

    ``model``: catalog id, path to a config.json, a config dict, or a ModelSpec.
    ``method``: a method name (``"full"``, ``"lora"``, ``"qlora"``, ``"dora"``, ``"ia3"``,
    ``"prefix_tuning"``, ...) with PEFT's field names as keyword options, or a PEFT config mapping
    (an adapter_config.json's content; its ``peft_type`` selects the method).
    Training settings (:class:`planner.memory.settings.TrainingSettings`): ``batch_size``,
    ``seq_len``, ``target_len``, ``dtype`` (default bfloat16), ``adapter_dtype`` (default float32:
    PEFT's ``autocast_adapter_dtype=True``), ``mixed_precision``, ``gradient_checkpointing``,
    ``attn_implementation``, ``optimizer``, ``quantization``, ``gradient_accumulation_steps``.
    Multi-GPU: ``num_gpus`` (default 1), ``sharding`` (``"ddp"``, ``"zero1"``, ``"zero2"``, ``"zero3"``,
    ``"fsdp_full_shard"``, ``"fsdp_shard_grad_op"``; None = one GPU, or DDP when ``num_gpus > 1``) and
    ``offload`` (None, ``"optimizer"``, ``"optimizer+params"``): ``plan.memory`` is then one GPU's
    (rank 0's) memory, ``plan.memory.host_bytes`` the offloaded host memory per GPU
    (docs/memory-model.md, "Multi-GPU").
    ``method="qlora"`` defaults ``quantization`` to NF4 with double quantization.
    """
    spec = load_model(model)
    raw = {k: options.pop(k) for k in list(options) if k in SETTING_KEYS}
    mplan, alias, ignored, family = plan_method(spec, method, **options)
    if alias == "qlora" and raw.get("quantization") is None:
        raw["quantization"] = dict(QLORA_DEFAULT_QUANTIZATION, bnb_4bit_compute_dtype=raw.get("dtype") or "bfloat16")
    settings = TrainingSettings.from_options(raw)
    if settings.quantization and mplan.category in ("full", "selective"):
        raise MethodConfigError(f"{alias} trains base weights, which cannot be stored quantized: quantization needs an "
                                "adapter method (e.g. qlora / lora)", field="quantization")
    from planner.memory.programs import effective_settings

    settings, attn_note = effective_settings(spec, settings)
    dtype, adapter_dtype = settings.dtype, settings.adapter_dtype
    mkey = method_key(method, options)
    trainable, total, added = memoised(spec, "counts", mkey, lambda: count(mplan, spec))
    from planner.memory import estimate_memory
    from planner.memory.programs import unsupported_reason

    memory = memoised(spec, "memory", None if mkey is None else (mkey, settings.model_dump_json()),
                      lambda: estimate_memory(spec, mplan, settings))
    memory_reason = None if memory is not None else (unsupported_reason(spec, mplan, settings) or "memory not modelled")
    flops = memoised(spec, "flops", None if mkey is None else (mkey, settings.model_dump_json()),
                     lambda: estimate_flops(spec, mplan, settings))
    from planner.compute import unsupported_reason as flops_unsupported

    flops_reason = None if flops is not None else (flops_unsupported(spec, mplan, settings) or "FLOPs not counted")
    return Plan(
        model=spec.name, model_type=spec.model_type, method=alias, method_family=family,
        peft_type=mplan.peft_type, category=mplan.category, trainable_params=trainable, total_params=total,
        base_params=spec.total_params, added_params=added, trainable_percent=100.0 * trainable / total,
        adapted_modules=list(mplan.adapted_paths), num_adapted_modules=len(mplan.adapted),
        adapter_file_bytes=memoised(spec, "file", None if mkey is None else (mkey, dtype, adapter_dtype),
                                    lambda: adapter_file_bytes(mplan, spec, dtype, adapter_dtype)), dtype=dtype, adapter_dtype=adapter_dtype,
        peft_config=mplan.peft_config, notes=list(mplan.notes) + ([attn_note] if attn_note else [])
        + list(memory.notes if memory else [memory_reason]) + ([flops_reason] if flops_reason else []),
        ignored_options=ignored, settings=settings, memory=memory, memory_unavailable_reason=memory_reason,
        flops=flops, flops_unavailable_reason=flops_reason,
    )
