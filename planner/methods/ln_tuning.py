"""LN tuning (Zhao et al., 2023, "Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM
Finetuning", arXiv:2312.11420): a trainable copy of each targeted (normalisation) layer.

Counted like PEFT 0.21.2 ``peft/tuners/ln_tuning``:

- ``LNTuningLayer.update_layer`` stores ``deepcopy(base_layer)`` in ``ln_tuning_layers[adapter]``
  (layer.py), so every parameter of a targeted module appears once more, trainable, under
  ``<module>.ln_tuning_layers.default.<param>``; the original stays frozen. Any module can be
  targeted (PEFT does no type check); the planner accepts every module that owns parameters and
  refuses container modules (PEFT would copy the whole sub-tree).
- ``LNTuningModel._cast_adapter_dtype`` is a no-op (model.py): the copies keep the model dtype,
  so they are saved in the base dtype as ``<module>.ln_tuning_layers.<param>``.
- Default targets per model type: ``TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING``
  (``peft_defaults.json`` "ln_tuning"); other model types need ``target_modules``.
- ``LNTuningConfig`` has no ``layers_to_transform`` / ``layers_pattern`` / ``bias``.

Category "additive": although LN tuning is selective in spirit (it tunes the norm weights), PEFT
adds trainable copies and keeps the base frozen, so a quantized base works as with other adapters.
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from planner.architectures.base import ModuleKind
from planner.methods import register
from planner.methods.base import (
    MethodConfig, MethodPlan, NewTensor, TargetingConfig, modules_to_save_entries, peft_name, resolve_targets,
    select_modules,
)
from planner.methods.defaults import default_targets

#: Every module kind that owns parameters: ``deepcopy`` works on any of them.
LN_TUNING_SUPPORTED = frozenset(ModuleKind)


class LNTuningConfig(MethodConfig):
    """``peft.LNTuningConfig`` fields (all of them change what is counted)."""

    peft_type = "LN_TUNING"

    target_modules: list[str] | str | None = None
    """Modules to copy and train: names (exact path or suffix after a dot), or a regex (full match)
    when a string. None uses PEFT's default norm layers for the model type."""
    exclude_modules: list[str] | str | None = None
    """Modules never copied (same matching rules)."""
    modules_to_save: list[str] | None = None
    """Modules trained in full alongside the copies (PEFT keeps a trainable copy of each)."""

    @field_validator("target_modules", "exclude_modules")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and any(not isinstance(x, str) or not x for x in v):
            raise ValueError("must be non-empty strings")
        if isinstance(v, str) and not v:
            raise ValueError("must not be empty")
        return sorted(set(v), key=v.index) if isinstance(v, list) else v

    @classmethod
    def method_name(cls) -> str:
        return "ln_tuning"

    def targeting(self) -> TargetingConfig:
        """The shared targeting view (PEFT's ``check_target_module_exists`` rules)."""
        return TargetingConfig(target_modules=self.target_modules, exclude_modules=self.exclude_modules,
                               modules_to_save=self.modules_to_save)


@register("ln_tuning", aliases=("layernorm_tuning", "lntuning"), category="additive", config=LNTuningConfig,
          paper="Zhao et al. 2023, Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning "
                "(arXiv:2312.11420)")
def build(cfg: LNTuningConfig, spec, method: str) -> MethodPlan:
    inv = spec.inventory
    tcfg = cfg.targeting()
    targets = resolve_targets(tcfg, inv, default_targets("ln_tuning"), spec.model_type, "ln_tuning")
    adapted = select_modules(tcfg, inv, targets, supported=LN_TUNING_SUPPORTED, method="ln_tuning")
    tensors = []
    for m in adapted:
        # deepcopy gives every parameter its own storage, tied ones included
        for p in m.params:
            tensors.append(NewTensor(m.path, f"ln_tuning_layers.default.{p.name}", p.shape, dtype="base",
                                     saved_name=peft_name(m.path, f"ln_tuning_layers.{p.name}")))
    peft_cfg: dict[str, Any] = cfg.model_dump(exclude_none=True) | {"peft_type": "LN_TUNING"}
    if cfg.target_modules is None:
        peft_cfg["target_modules"] = list(targets)
    return MethodPlan(method="ln_tuning", peft_type="LN_TUNING", category="additive", adapted=tuple(adapted),
                      new_tensors=tuple(tensors), trainable_base=(),
                      copied_modules=tuple(modules_to_save_entries(tcfg, inv)), peft_config=peft_cfg,
                      notes=("LN tuning trains a copy of each targeted layer in the model dtype (PEFT does not "
                             "upcast it), so the adapter file stores those copies in the base dtype.",))
