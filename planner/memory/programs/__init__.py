"""Forward programs per architecture family, behind one lookup.

A program mirrors a family's transformers forward code on symbolic tensors. ``program_for``
returns None where no program covers the model or the method yet; the plan then says so.
"""

from __future__ import annotations

from types import ModuleType

from planner.constants import DTYPE_BYTES
from planner.memory.sim import round_alloc
from planner.methods.base import MethodPlan

#: Methods whose effect on the forward pass the programs replay.
REPLAYED_METHODS = frozenset({"full", "lora", "qlora", "dora", "rslora", "ia3", "bitfit", "partial", "prompt_tuning",
                              "p_tuning", "prefix_tuning"})
#: Families whose programs replay ``attn_implementation="flash_attention_2"`` (transformers'
#: ``flash_attention_forward``: no mask, keys / values at their KV-head count, fp32 inputs cast to
#: the model dtype, the kernel's saved tensors).
FLASH_ATTENTION_2_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2"})
FLASH_ATTENTION_2_NOTE = (
    "flash_attention_2 is modelled, not measured (no flash-attn on the validation machines): transformers' FA2 "
    "path builds no mask and keeps keys / values at their KV-head count; the kernel saves q, k, v, its output and an "
    "fp32 log-sum-exp; flash-attn's backward workspaces are not replayed (error band +-5%)")
#: Families whose programs replay prompt tuning / P-tuning (virtual tokens prepended to the inputs).
PROMPT_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"})
#: Families whose programs replay prefix tuning's key/value prefixes (PEFT's ``DynamicCache``).
PREFIX_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2", "phi3", "mixtral"})


class Program:
    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.forward = module.forward  # (ctx, batch, seq) -> (loss, tensors alive until backward ends)

    def buffer_bytes(self, ctx) -> int:
        """Non-parameter tensors the model owns (default: rotary ``inv_freq`` and
        ``original_inv_freq``, fp32)."""
        if hasattr(self.module, "buffer_bytes"):
            return self.module.buffer_bytes(ctx)
        return 2 * round_alloc(ctx.spec.head_dim // 2 * DTYPE_BYTES["float32"])

    def extrapolates(self, ctx) -> bool:
        """Whether blocks 1.. replay identically (the module's ``extrapolates(ctx)`` or
        ``EXTRAPOLATES``, default True), so that two short replays give the slope."""
        fn = getattr(self.module, "extrapolates", None)
        if fn is not None:
            return bool(fn(ctx))
        return bool(getattr(self.module, "EXTRAPOLATES", True))

    def regime(self, ctx, batch, seq):
        """For a vectorised sweep: an int array labelling points that replay different code (e.g. a
        mask built only from some sequence length on), or None when one replay covers them all."""
        import numpy as np

        fn = getattr(self.module, "regime", None)
        own = None if fn is None else fn(ctx, batch, seq)
        # batch 1 runs different code in several programs (a reshape that is a view only when B == 1:
        # _ops_extra.bmm_operand / broadcast_operand), so batch-1 points always replay on their own
        single = (np.asarray(batch) == 1).astype(np.int64)
        if own is None:
            return single if single.any() else None
        return np.asarray(own, dtype=np.int64) * 2 + single

    def notes(self, ctx) -> list[str]:
        notes = list(ctx.unsupported)
        if ctx.settings.attn_implementation == "flash_attention_2":
            notes.append(FLASH_ATTENTION_2_NOTE)
        if ctx.settings.mixed_precision == "fp16":
            notes.append(GRAD_SCALER_NOTE)
        return notes

    def error_band(self, ctx) -> float:
        from planner.constants import FLASH_ATTENTION_2_ERROR_BAND
        from planner.memory.model import REPLAYED_ERROR_BAND

        if ctx.settings.attn_implementation == "flash_attention_2":
            return FLASH_ATTENTION_2_ERROR_BAND
        return REPLAYED_ERROR_BAND


#: Autocast mixed precision (``mixed_precision`` over fp32 weights) is replayed for these families
#: and methods, with SDPA on one GPU (validated against executors' autocast measurement).
AUTOCAST_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
AUTOCAST_METHODS = frozenset({"full", "lora"})
AUTOCAST_MODES = frozenset({"bf16", "fp16"})
#: fp16 autocast runs the same casts as bf16 (the same 2-byte copies); its GradScaler adds scalars.
GRAD_SCALER_NOTE = (
    "fp16 autocast: the GradScaler's scalar state (scale, growth tracker, scaled loss, found_inf: a few 512-byte "
    "blocks) is not replayed; measured on the CPU (real tensors): +512 B in backward, +1.5 KiB in the optimizer step")


def autocast_reason(spec, plan: MethodPlan, settings) -> str | None:
    """Why autocast mixed precision is not modelled for this case (None: it is)."""
    head = f"memory under autocast mixed precision ({settings.mixed_precision} over fp32 weights)"
    if settings.mixed_precision not in AUTOCAST_MODES:
        return f"{head} is not modelled (modelled: {', '.join(sorted(AUTOCAST_MODES))})"
    if spec.model_type not in AUTOCAST_FAMILIES:
        return (f"{head} is not modelled for model_type {spec.model_type!r} yet (modelled for "
                f"{', '.join(sorted(AUTOCAST_FAMILIES))}); use dtype='bfloat16'")
    if plan.method not in AUTOCAST_METHODS:
        return (f"{head} is not modelled for {plan.method} yet (modelled for {', '.join(sorted(AUTOCAST_METHODS))}); "
                "use dtype='bfloat16'")
    if settings.attn_implementation != "sdpa":
        return f"{head} is modelled with attn_implementation='sdpa' only (got {settings.attn_implementation!r})"
    if settings.quantization:
        return f"{head} with quantized base weights is not modelled; QLoRA uses its bnb compute dtype instead"
    if settings.sharding is not None:
        return f"{head} is modelled on one GPU only (no sharding strategy) yet"
    return None


def unsupported_reason(spec, plan: MethodPlan, settings) -> str | None:
    """Why no memory budget is given for this case (None: one is)."""
    if plan.method == "p_tuning" and (plan.peft_config or {}).get("encoder_reparameterization_type") == "LSTM":
        return "memory of P-tuning with an LSTM prompt encoder is not modelled yet (the MLP encoder is)"
    if plan.method not in REPLAYED_METHODS:
        return (f"memory is not modelled for {plan.method} yet (replayed methods: "
                f"{', '.join(sorted(REPLAYED_METHODS))}); parameter counts and the adapter file are exact")
    if plan.virtual_tokens and spec.model_type not in PROMPT_FAMILIES:
        return (f"memory of {plan.method} (virtual tokens prepended to the input) is not modelled for model_type "
                f"{spec.model_type!r} yet (replayed for {', '.join(sorted(PROMPT_FAMILIES))})")
    if plan.method == "prefix_tuning":
        if settings.gradient_checkpointing:
            return ("prefix tuning with gradient checkpointing does not run: PEFT raises 'PREFIX_TUNING does not work "
                    "with gradient checkpointing' (checkpointed layers drop the prefix cache)")
        if spec.model_type not in PREFIX_FAMILIES:
            return (f"memory of prefix tuning is not modelled for model_type {spec.model_type!r} yet (replayed for "
                    f"{', '.join(sorted(PREFIX_FAMILIES))})")
    if settings.mixed_precision:
        reason = autocast_reason(spec, plan, settings)
        if reason is not None:
            return reason
    if settings.attn_implementation == "flash_attention_2":
        if spec.model_type not in FLASH_ATTENTION_2_FAMILIES:
            return (f"memory with flash_attention_2 is not modelled for model_type {spec.model_type!r} yet (modelled for "
                    f"{', '.join(sorted(FLASH_ATTENTION_2_FAMILIES))}); sdpa takes the same flash kernel on CUDA")
        if settings.dtype == "float32" and not settings.quantized_4bit:
            return ("flash_attention_2 runs in float16 / bfloat16 only: with float32 weights (no autocast) flash-attn "
                    "raises; load the model in bfloat16 or use sdpa")
    if (settings.quantization or {}).get("load_in_8bit"):
        return "memory with 8-bit (LLM.int8) base weights is not modelled yet; 4-bit (QLoRA) is"
    if spec.model_type not in _family_modules():
        return f"memory is not modelled for model_type {spec.model_type!r} yet"
    if getattr(settings, "sharding", None) is not None:
        from planner.memory.parallel import unsupported_reason as parallel_reason

        return parallel_reason(spec, plan, settings)
    return None


def program_for(spec, plan: MethodPlan, settings) -> Program | None:
    if unsupported_reason(spec, plan, settings) is not None:
        return None
    if plan.method not in REPLAYED_METHODS or (settings.quantization or {}).get("load_in_8bit"):
        return None
    module = _family_modules().get(spec.model_type)
    return Program(module) if module is not None else None


def _family_modules() -> dict[str, ModuleType]:
    """model_type -> program module (each module lists the model types it covers in MODEL_TYPES)."""
    import importlib

    out: dict[str, ModuleType] = {}
    for name in FAMILY_MODULES:
        module = importlib.import_module(f"planner.memory.programs.{name}")
        for mt in module.MODEL_TYPES:
            out[mt] = module
    return out


#: Program modules, one per family (``planner/memory/programs/<name>.py``).
FAMILY_MODULES = ("llama", "gpt2", "phi3", "phi", "gpt_neox", "opt", "bloom", "falcon", "mixtral", "t5", "bert")


#: Attention implementations transformers 5.24 accepts per model type where not all are
#: (``_supports_sdpa = False`` on the model class): transformers then loads them with eager.
ATTN_SUPPORTED: dict[str, tuple[str, ...]] = {"bloom": ("eager",), "gemma2": ("eager", "flash_attention_2")}


def effective_settings(spec, settings):
    """The settings transformers would really run: a model without SDPA support runs eager when the
    user did not ask for an implementation (an explicit unsupported choice stays an error)."""
    supported = ATTN_SUPPORTED.get(spec.model_type)
    if supported is None or settings.attn_implementation in supported:
        return settings, None
    if "attn_implementation" in settings.model_fields_set:
        from planner.errors import PlannerError

        raise PlannerError(f"{spec.model_type} does not support attn_implementation={settings.attn_implementation!r} "
                           f"in transformers 5.24 (supported: {', '.join(supported)})", field="attn_implementation")
    return settings.model_copy(update={"attn_implementation": supported[0]}), (
        f"{spec.model_type} has no SDPA attention in transformers 5.24: planned with attn_implementation="
        f"{supported[0]!r}, as transformers loads it")
