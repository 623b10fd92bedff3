"""LoRA (Hu et al., 2021, arXiv:2106.09685) and its variants counted like ``peft.tuners.lora``.

Per adapted module (PEFT 0.21 ``lora/layer.py``):

- Linear / Conv1D (in -> out): ``lora_A`` (r, in), ``lora_B`` (out, r) [+ bias (out,) if ``lora_bias``]
- Embedding (num, dim): ``lora_embedding_A`` (r, num), ``lora_embedding_B`` (dim, r)
- MoE expert tensors via ``target_parameters`` (E experts, in -> out): ``lora_A`` (r*E, in), ``lora_B`` (out, r*E)
- DoRA (Liu et al., 2024, arXiv:2402.09353) adds ``lora_magnitude_vector`` (out,) per module
- rsLoRA (Kalajdzievski, 2023, arXiv:2312.03732) only changes the scale alpha/sqrt(r): same counts
- QLoRA (Dettmers et al., 2023, arXiv:2305.14314) is LoRA on a 4-bit base: same adapter counts

``bias``: "all" makes every base parameter named ``bias`` (``n.endswith(".bias")``) trainable, so not
T5's ``relative_attention_bias.weight``; "lora_only" the biases of adapted modules.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import field_validator, model_validator

from planner.architectures.base import ModuleEntry, ModuleKind
from planner.methods import register
from planner.methods.base import (
    PEFT_PREFIX, MethodConfigError, MethodPlan, NewTensor, SavedBaseTensor, TargetingConfig, check_dropout, check_rank,
    check_rank_pattern, is_target, modules_to_save_entries, peft_name, resolve_targets, saved_embedding_layers, select_modules,
)
from planner.methods.defaults import default_targets

LORA_SUPPORTED = frozenset({ModuleKind.LINEAR, ModuleKind.CONV1D, ModuleKind.EMBEDDING})


class LoraConfig(TargetingConfig):
    """``peft.LoraConfig`` fields that change what is counted, stored or computed."""

    peft_type = "LORA"

    r: int = 8
    """Rank of the update BA (PEFT default 8)."""
    lora_alpha: float = 8
    """Scale numerator: the update is scaled by lora_alpha / r (or / sqrt(r) with use_rslora)."""
    lora_dropout: float = 0.0
    """Dropout on the adapter input; > 0 saves a mask per adapted module during training."""
    bias: Literal["none", "all", "lora_only"] = "none"
    use_dora: bool = False
    use_rslora: bool = False
    lora_bias: bool = False
    """Give lora_B a bias (PEFT >= 0.14)."""
    rank_pattern: dict[str, int] = {}
    """Per-module rank overrides: key is a regex matched against the end of the module path."""
    alpha_pattern: dict[str, float] = {}
    target_parameters: list[str] | None = None
    """Parameter names (e.g. ``experts.gate_up_proj``) adapted directly, for fused MoE experts."""
    fan_in_fan_out: bool = False
    """Informational: PEFT sets it for Conv1D (GPT-2) automatically; it does not change counts."""

    _rank_positive = field_validator("r")(check_rank)
    _dropout_range = field_validator("lora_dropout")(check_dropout)
    _ranks_positive = field_validator("rank_pattern")(check_rank_pattern)

    @model_validator(mode="after")
    def _conflicts(self):
        if self.use_dora and self.lora_bias:
            raise ValueError("use_dora and lora_bias cannot both be set (PEFT refuses the combination)")
        return self


def pattern_value(patterns: dict[str, Any], key: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first pattern p with ``re.match(rf"(.*\\.)?({p})$", key)``."""
    for pattern in patterns:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return patterns[pattern]
    return default


def lora_tensors(entry: ModuleEntry, r: int, *, dora: bool, lora_bias: bool) -> list[NewTensor]:
    p = entry.path
    if entry.kind == ModuleKind.EMBEDDING:
        out = [NewTensor(p, "lora_embedding_A.default", (r, entry.in_features), saved_name=peft_name(p, "lora_embedding_A")),
               NewTensor(p, "lora_embedding_B.default", (entry.out_features, r), saved_name=peft_name(p, "lora_embedding_B"))]
        if dora:
            out.append(NewTensor(p, "lora_magnitude_vector.default.weight", (entry.out_features,),
                                 saved_name=peft_name(p, "lora_magnitude_vector")))
        return out
    out = [NewTensor(p, "lora_A.default.weight", (r, entry.in_features), saved_name=peft_name(p, "lora_A.weight")),
           NewTensor(p, "lora_B.default.weight", (entry.out_features, r), saved_name=peft_name(p, "lora_B.weight"))]
    if lora_bias:
        out.append(NewTensor(p, "lora_B.default.bias", (entry.out_features,), saved_name=peft_name(p, "lora_B.bias")))
    if dora:
        out.append(NewTensor(p, "lora_magnitude_vector.default.weight", (entry.out_features,),
                             saved_name=peft_name(p, "lora_magnitude_vector")))
    return out


def _expert_tensors(entry: ModuleEntry, param: str, shape: tuple[int, ...], r: int) -> list[NewTensor]:
    # 3-D (E, out, in) as transformers stores experts (PEFT swaps to in -> out); 2-D (out, in) as one "expert"
    experts, out_f, in_f = shape if len(shape) == 3 else (1, *shape)
    base = f"{entry.path}"
    return [NewTensor(base, f"lora_A.default.weight[{param}]", (r * experts, in_f), saved_name=peft_name(base, f"{param}.lora_A.weight")),
            NewTensor(base, f"lora_B.default.weight[{param}]", (out_f, r * experts), saved_name=peft_name(base, f"{param}.lora_B.weight"))]


#: PEFT's transformers-v4 -> v5 MoE conversion (peft/utils/transformers_weight_conversion.py
#: ``_MOE_TARGET_MODULE_MAPPING`` / ``_MOE_FUSED_TARGETS``): v4 module names in ``target_modules``
#: become v5 ``target_parameters``; the fused gate_up_proj gets rank and alpha x2 when both halves
#: are targeted.
MOE_V4_TO_V5 = {"mixtral": {"gate": "gate.weight", "w1": "gate_up_proj", "w3": "gate_up_proj", "w2": "down_proj"}}
MOE_FUSED = {"mixtral": {"gate_up_proj": ("w1", "w3")}}


def convert_moe_targets(cfg: LoraConfig, spec) -> LoraConfig:
    """Apply PEFT's v4 -> v5 MoE config conversion, so counts follow what PEFT really wraps."""
    mapping = MOE_V4_TO_V5.get(spec.model_type)
    if not mapping or cfg.target_modules is None:
        return cfg
    inv = spec.inventory
    targets = cfg.target_modules
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            resolved = {m.leaf_name for m in inv if m.kind in (ModuleKind.LINEAR, ModuleKind.CONV1D) and m.role != "lm_head"}
            resolved |= set(mapping)
        else:
            keys = [*inv.all_paths, *(f"{m.path}.{p.name}" for m in inv for p in m.params)]
            resolved = {k.rsplit(".", 1)[-1] for k in keys if is_target(cfg, k, targets)}
            experts = [m.path for m in inv if m.kind == ModuleKind.EXPERTS]
            resolved |= {old for old in mapping if any(is_target(cfg, f"{c}.{old}", targets) for c in experts)}
        if not resolved:
            return cfg
        targets = sorted(resolved)
    params = set(cfg.target_parameters or [])
    remaining: list[str] = []
    matched: dict[str, set[str]] = {}
    for t in targets:
        old = next((o for o in mapping if t == o or t.endswith(f".{o}")), None)
        if old is None:
            remaining.append(t)
            continue
        params.add(mapping[old])
        matched.setdefault(mapping[old], set()).add(old)
    ranks, alphas = dict(cfg.rank_pattern), dict(cfg.alpha_pattern)
    for new, olds in MOE_FUSED.get(spec.model_type, {}).items():
        present = matched.get(new, set())
        if 0 < len(present) < len(olds):
            raise MethodConfigError(f"cannot target {', '.join(sorted(present))} without also targeting "
                                    f"{', '.join(sorted(set(olds) - present))}: they are fused into {new} "
                                    "(PEFT refuses this too)", field="target_modules")
        if len(present) == len(olds):
            ranks[rf".*\.{re.escape(new)}"] = cfg.r * len(olds)
            alphas[rf".*\.{re.escape(new)}"] = cfg.lora_alpha * len(olds)
    return cfg.model_copy(update={"target_modules": remaining, "target_parameters": sorted(params) or None,
                                  "rank_pattern": ranks, "alpha_pattern": alphas})


def plan_lora(cfg: LoraConfig, spec, *, method: str = "lora") -> MethodPlan:
    inv = spec.inventory
    use_dora = cfg.use_dora or method == "dora"
    original = cfg
    cfg = convert_moe_targets(cfg, spec)
    adapted: list[ModuleEntry] = []
    if cfg.target_modules or not cfg.target_parameters:
        targets = resolve_targets(cfg, inv, default_targets("lora"), spec.model_type, method)
        adapted = select_modules(cfg, inv, targets, supported=LORA_SUPPORTED, method=method)
    else:
        targets = []
    if use_dora and cfg.target_parameters:
        raise MethodConfigError("DoRA cannot adapt target_parameters (fused MoE expert tensors); PEFT's "
                                "ParamWrapper refuses use_dora", field="use_dora")
    if cfg.lora_bias and cfg.target_parameters:
        raise MethodConfigError("lora_bias cannot be used on target_parameters (fused MoE expert tensors); PEFT's "
                                "ParamWrapper refuses lora_bias=True", field="lora_bias")
    tensors: list[NewTensor] = []
    for entry in adapted:
        r = pattern_value(cfg.rank_pattern, entry.path, cfg.r)
        _check_rank(entry, r)
        tensors += lora_tensors(entry, r, dora=use_dora, lora_bias=cfg.lora_bias)
    for entry, pname, shape in _target_parameters(cfg, inv):
        tensors += _expert_tensors(entry, pname, shape, pattern_value(cfg.rank_pattern, f"{entry.path}.{pname}", cfg.r))
        if entry not in adapted:
            adapted.append(entry)

    trainable_base, bias_saved = trainable_biases(cfg.bias, inv, adapted)
    copies = modules_to_save_entries(cfg, inv)
    peft_cfg = _peft_mapping(original, use_dora, targets if original.target_modules is None else None)
    notes = []
    if cfg.use_rslora:
        notes.append("rsLoRA scales the update by lora_alpha/sqrt(r); parameter counts are those of LoRA.")
    return MethodPlan(
        method=method, peft_type="LORA", category="reparameterization", adapted=tuple(adapted),
        new_tensors=tuple(tensors), trainable_base=tuple(trainable_base), copied_modules=tuple(copies),
        saved_base=saved_embedding_layers(targets, cfg.target_modules, inv, adapted=adapted) + bias_saved,
        peft_config=peft_cfg, notes=tuple(notes),
        extra={"lora_dropout": cfg.lora_dropout, "bias": cfg.bias, "r": cfg.r, "lora_alpha": cfg.lora_alpha,
               "use_dora": use_dora},
    )


def trainable_biases(bias: str, inv, adapted: list[ModuleEntry]) -> tuple[list[str], tuple[SavedBaseTensor, ...]]:
    """PEFT's ``bias`` option (peft/tuners/tuners_utils.py ``_mark_only_adapters_as_trainable`` and
    ``_get_learnable_bias_state_dict``).

    Trainable (``named_parameters()``, tied tensors once): "all" every parameter named ``*.bias``;
    "<tuner>_only" the ``bias`` of each adapted module (a tied one trains under its canonical name).
    Saved (``state_dict()``, which lists a tied tensor under every name, e.g. BERT's
    ``cls.predictions.decoder.bias``): every such key, under ``<module>.base_layer.bias`` for
    wrapped modules. Biases inside ``modules_to_save`` copies are handled by :class:`MethodPlan`
    (they stay frozen in the original and are saved three times).
    """
    wrapped = {m.path for m in adapted}
    if bias == "all":
        chosen = [(m, p) for m in inv for p in m.params if p.name == "bias"]
        names = [f"{m.path}.{p.name}" for m, p in chosen if p.tied_to is None]
    elif bias.endswith("_only"):
        chosen = [(m, m.param("bias")) for m in adapted if m.has_bias]
        names = list(dict.fromkeys(p.tied_to or f"{m.path}.{p.name}" for m, p in chosen))
    else:
        return [], ()
    saved = tuple(SavedBaseTensor(f"{PEFT_PREFIX}{m.path}{'.base_layer' if m.path in wrapped else ''}.bias", p.shape)
                  for m, p in chosen)
    return names, saved


def _check_rank(entry: ModuleEntry, r: int) -> None:
    limit = min(entry.in_features or r, entry.out_features or r)
    if r > limit:
        raise MethodConfigError(
            f"rank {r} exceeds min(in_features, out_features) = {limit} of {entry.path!r} "
            f"({entry.in_features} -> {entry.out_features}); a LoRA update of that rank is no longer low-rank",
            field="r")


def _target_parameters(cfg: LoraConfig, inv) -> list[tuple[ModuleEntry, str, tuple[int, ...]]]:
    if not cfg.target_parameters:
        return []
    found = []
    for m in inv:
        for p in m.params:
            full = f"{m.path}.{p.name}"
            if any(full == t or full.endswith(f".{t}") for t in cfg.target_parameters):
                found.append((m, p.name, p.shape))
    if not found:
        raise MethodConfigError("matched no parameter; expert tensors in this model: "
                                + (", ".join(f"{m.path}.{p.name}" for m in inv if m.kind == ModuleKind.EXPERTS for p in m.params)[:300] or "none"),
                                field="target_parameters")
    return found


def _peft_mapping(cfg: LoraConfig, use_dora: bool, targets: list[str] | str) -> dict[str, Any]:
    data = cfg.model_dump(exclude_none=True)
    data.update(peft_type="LORA", use_dora=use_dora)
    if targets:  # make PEFT's per-model default explicit
        data["target_modules"] = list(targets)
    return data


@register("lora", aliases=("qlora", "dora", "rslora"), category="reparameterization", config=LoraConfig,
          paper="Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models (arXiv:2106.09685)")
def build(cfg: LoraConfig, spec, method: str) -> MethodPlan:
    if method == "rslora" and not cfg.use_rslora:
        cfg = cfg.model_copy(update={"use_rslora": True})
    return plan_lora(cfg, spec, method=method)
