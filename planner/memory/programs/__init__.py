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
                              "p_tuning"})


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

    def notes(self, ctx) -> list[str]:
        return list(ctx.unsupported)

    def error_band(self, ctx) -> float:
        from planner.memory.model import REPLAYED_ERROR_BAND

        return REPLAYED_ERROR_BAND


def unsupported_reason(spec, plan: MethodPlan, settings) -> str | None:
    """Why no memory budget is given for this case (None: one is)."""
    if plan.method == "p_tuning" and (plan.peft_config or {}).get("encoder_reparameterization_type") == "LSTM":
        return "memory of P-tuning with an LSTM prompt encoder is not modelled yet (the MLP encoder is)"
    if plan.method not in REPLAYED_METHODS:
        return (f"memory is not modelled for {plan.method} yet (replayed methods: "
                f"{', '.join(sorted(REPLAYED_METHODS))}); parameter counts and the adapter file are exact")
    if settings.mixed_precision:
        return "memory under autocast mixed precision (fp32 weights) is not modelled yet; use dtype='bfloat16'"
    if settings.attn_implementation == "flash_attention_2":
        return "memory with flash_attention_2 is not modelled yet; sdpa takes the same flash kernel on CUDA"
    if (settings.quantization or {}).get("load_in_8bit"):
        return "memory with 8-bit (LLM.int8) base weights is not modelled yet; 4-bit (QLoRA) is"
    if spec.model_type not in _family_modules():
        return f"memory is not modelled for model_type {spec.model_type!r} yet"
    return None


def program_for(spec, plan: MethodPlan, settings) -> Program | None:
    if unsupported_reason(spec, plan, settings) is not None:
        return None
    if plan.method not in REPLAYED_METHODS or settings.mixed_precision or settings.attn_implementation == "flash_attention_2" \
            or (settings.quantization or {}).get("load_in_8bit"):
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
