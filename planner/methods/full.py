"""Full fine-tuning: every parameter trains; no adapter file (the whole model is saved)."""

from __future__ import annotations

from planner.methods import register
from planner.methods.base import MethodConfig, MethodPlan


class FullConfig(MethodConfig):
    """Full fine-tuning has no options."""


@register("full", aliases=("full_ft", "fft"), category="full", config=FullConfig, peft_type=None,
          paper="Howard & Ruder 2018 (ULMFiT) / standard practice: all weights updated")
def build(cfg: FullConfig, spec, method: str) -> MethodPlan:
    names = tuple(n for n, _ in spec.inventory.named_parameters())
    return MethodPlan(method="full", peft_type=None, category="full", adapted=(), new_tensors=(), trainable_base=names,
                      peft_config=None, notes=("Full fine-tuning saves the whole model, not an adapter; "
                                               "adapter_file_bytes is the size of the model's safetensors in its dtype.",))
