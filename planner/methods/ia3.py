"""IA3 (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning", arXiv:2205.05638): one learned scaling vector per adapted module.

PEFT 0.21 ``ia3/layer.py``: ``ia3_l`` is (1, in_features) for feedforward modules (scales the
input) and (out_features, 1) otherwise (scales the output). ``feedforward_modules`` must be a
subset of ``target_modules``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import model_validator

from planner.architectures.base import ModuleKind
from planner.methods import register
from planner.methods.base import (
    MethodPlan, NewTensor, TargetingConfig, is_target, modules_to_save_entries, peft_name, resolve_targets, select_modules,
)
from planner.methods.defaults import default_targets
from planner.errors import TargetModulesError

IA3_SUPPORTED = frozenset({ModuleKind.LINEAR, ModuleKind.CONV1D})


class IA3Config(TargetingConfig):
    """``peft.IA3Config`` fields that change what is counted."""

    peft_type = "IA3"

    feedforward_modules: list[str] | str | None = None
    """Modules whose input (not output) is scaled (regex full match, or names matched as a plain
    suffix of the module path, as PEFT does); None uses PEFT's default for the model type."""

    @model_validator(mode="after")
    def _no_layer_selection(self):
        if self.layers_to_transform is not None or self.layers_pattern is not None:
            raise ValueError("layers_to_transform is not an IA3 option: peft.IA3Config has no such field; select the "
                             "layers with a regex target_modules instead")
        return self


@register("ia3", category="additive", config=IA3Config,
          paper="Liu et al. 2022, Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning (arXiv:2205.05638)")
def build(cfg: IA3Config, spec, method: str) -> MethodPlan:
    inv = spec.inventory
    targets = resolve_targets(cfg, inv, default_targets("ia3"), spec.model_type, "ia3")
    ff = cfg.feedforward_modules
    if ff is None:
        ff = default_targets("ia3_feedforward").get(spec.model_type, [])
    adapted = select_modules(cfg, inv, targets, supported=IA3_SUPPORTED, method="ia3")
    tensors = []
    for m in adapted:
        # IA3Model._check_target_module_feedforward: regex fullmatch, or a plain key.endswith(name)
        if isinstance(ff, str):
            feedforward = re.fullmatch(ff, m.path) is not None
        else:
            feedforward = any(m.path.endswith(name) for name in (ff or []))
        shape = (1, m.in_features) if feedforward else (m.out_features, 1)
        tensors.append(NewTensor(m.path, "ia3_l.default", shape, saved_name=peft_name(m.path, "ia3_l")))
    if isinstance(targets, list) and isinstance(ff, list) and cfg.target_modules is not None \
            and not isinstance(cfg.target_modules, str) and not set(ff) <= set(targets):
        raise TargetModulesError("feedforward_modules must be a subset of target_modules (PEFT requires it)",
                                 field="feedforward_modules")
    peft_cfg: dict[str, Any] = cfg.model_dump(exclude_none=True) | {"peft_type": "IA3"}
    if cfg.target_modules is None:
        peft_cfg["target_modules"] = list(targets)
    if cfg.feedforward_modules is None:
        peft_cfg["feedforward_modules"] = list(ff)
    return MethodPlan(method="ia3", peft_type="IA3", category="additive", adapted=tuple(adapted), new_tensors=tuple(tensors),
                      trainable_base=(), copied_modules=tuple(modules_to_save_entries(cfg, inv)), peft_config=peft_cfg)
