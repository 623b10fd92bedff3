"""VB-LoRA (Li et al., 2024, "VB-LoRA: Extreme Parameter Efficient Fine-Tuning with Vector Banks",
arXiv:2405.15179), counted like ``peft.tuners.vblora`` of PEFT 0.21.

One vector bank ``vblora_vector_bank`` of ``(num_vectors, vector_length)`` is shared by every
adapted module (a single trainable parameter, counted and saved once as
``base_model.vblora_vector_bank``). Each adapted Linear / Conv1D (in -> out) gets logits
``vblora_logits_A`` (r, in / vector_length, num_vectors) and ``vblora_logits_B``
(out / vector_length, r, num_vectors); each sub-vector of A and B is the softmax-weighted sum of the
``topk`` bank vectors with the highest logits. ``vector_length`` must divide in and out of every
adapted module (PEFT raises ValueError otherwise).

``save_only_topk_weights=True`` makes ``save_pretrained`` write, instead of each logits tensor,
its top-k indices (uint8 / int16 / int32 / int64 by ``num_vectors``) and the first k-1 softmax
weights (:func:`topk_saved_tensors`); training counts are unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import field_validator, model_validator

from planner.architectures.base import ModuleEntry, ModuleKind
from planner.errors import MethodConfigError
from planner.methods import register
from planner.methods.base import (
    MethodPlan, NewTensor, SavedBaseTensor, TargetingConfig, check_dropout, field_check, is_positive, modules_to_save_entries,
    peft_name, resolve_targets, select_modules,
)
from planner.methods.defaults import default_targets
from planner.methods.lora import trainable_biases
from planner.methods.oft import saved_wrapped_embeddings

#: VB-LoRA wraps nn.Linear and transformers' Conv1D (peft/tuners/vblora/model.py).
VBLORA_SUPPORTED = frozenset({ModuleKind.LINEAR, ModuleKind.CONV1D})
#: Key of the shared bank in adapter_model.safetensors (``base_model.vblora_vector_bank.<adapter>``
#: with the adapter name removed).
VECTOR_BANK_KEY = "base_model.vblora_vector_bank"


class VBLoRAConfig(TargetingConfig):
    """``peft.VBLoRAConfig`` fields that change what is counted, stored or computed."""

    peft_type = "VBLORA"

    r: int = 4
    """Rank of the update (sub-vectors per row of A / column of B)."""
    num_vectors: int = 256
    """Vectors in the shared bank (logits per sub-vector)."""
    vector_length: int = 256
    """Length of each bank vector; must divide in_features and out_features of every adapted module."""
    topk: int = 2
    """Bank vectors mixed per sub-vector (1 <= topk <= num_vectors)."""
    save_only_topk_weights: bool = False
    """Save top-k indices and weights instead of the full logits (smaller file; inference only)."""
    vblora_dropout: float = 0.0
    """Dropout on the adapter input; > 0 saves a mask per adapted module during training."""
    bias: Literal["none", "all", "vblora_only"] = "none"
    """Which base biases train: none, every bias, or those of adapted modules."""
    fan_in_fan_out: bool = False
    """Informational: PEFT sets it for Conv1D (GPT-2) itself; it does not change counts."""

    _positive = field_validator("r", "num_vectors", "vector_length", "topk")(
        field_check(is_positive, "must be a positive integer"))
    _dropout_range = field_validator("vblora_dropout")(check_dropout)

    @model_validator(mode="after")
    def _topk_within_bank(self):
        if self.topk > self.num_vectors:
            raise ValueError(f"topk ({self.topk}) exceeds num_vectors ({self.num_vectors}): the top-k of each logits "
                             "row cannot be taken (PEFT fails at the first forward)")
        return self


def topk_index_dtype(num_vectors: int) -> str:
    """The dtype PEFT saves top-k indices in (``VBLoRAModel._get_adapter_state_dict``)."""
    if num_vectors < 2 ** 8:
        return "uint8"
    if num_vectors < 2 ** 15:
        return "int16"
    if num_vectors < 2 ** 31:
        return "int32"
    return "int64"


def logits_shapes(entry: ModuleEntry, cfg: VBLoRAConfig) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    n = cfg.vector_length
    return (cfg.r, entry.in_features // n, cfg.num_vectors), (entry.out_features // n, cfg.r, cfg.num_vectors)


def topk_saved_tensors(entry: ModuleEntry, cfg: VBLoRAConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) that ``save_only_topk_weights=True`` writes for one module, in place of
    its two logits tensors: ``<logits>_topk_indices`` (..., topk) and ``<logits>_topk_weights``
    (..., topk - 1) in the adapter dtype ("adapter")."""
    out = []
    for name, shape in zip(("vblora_logits_A", "vblora_logits_B"), logits_shapes(entry, cfg)):
        lead = shape[:-1]
        out.append((peft_name(entry.path, f"{name}_topk_indices"), (*lead, cfg.topk), topk_index_dtype(cfg.num_vectors)))
        out.append((peft_name(entry.path, f"{name}_topk_weights"), (*lead, cfg.topk - 1), "adapter"))
    return out


def _check_lengths(adapted: list[ModuleEntry], vector_length: int) -> None:
    for m in adapted:
        for side, dim in (("in_features", m.in_features), ("out_features", m.out_features)):
            if dim % vector_length:
                common = math.gcd(*(d for a in adapted for d in (a.in_features, a.out_features)))
                ok = [d for d in range(1, common + 1) if common % d == 0]
                raise MethodConfigError(
                    f"vector_length={vector_length} does not divide {side} ({dim}) of {m.path!r} (PEFT raises "
                    f"ValueError); vector lengths that divide every adapted module: {', '.join(map(str, ok))}",
                    field="vector_length")


@register("vblora", aliases=("vb_lora",), category="reparameterization", config=VBLoRAConfig,
          paper="Li et al. 2024, VB-LoRA: Extreme Parameter Efficient Fine-Tuning with Vector Banks (arXiv:2405.15179)")
def build(cfg: VBLoRAConfig, spec, method: str) -> MethodPlan:
    inv = spec.inventory
    targets = resolve_targets(cfg, inv, default_targets("vblora"), spec.model_type, "vblora")
    adapted = select_modules(cfg, inv, targets, supported=VBLORA_SUPPORTED, method="vblora")
    _check_lengths(adapted, cfg.vector_length)
    tensors = [NewTensor("", "vblora_vector_bank.default", (cfg.num_vectors, cfg.vector_length),
                         saved_name=VECTOR_BANK_KEY)]
    topk_saved: list[SavedBaseTensor] = []
    topk = cfg.save_only_topk_weights
    for m in adapted:
        shape_a, shape_b = logits_shapes(m, cfg)
        tensors.append(NewTensor(m.path, "vblora_logits_A.default", shape_a,
                                 saved_name=None if topk else peft_name(m.path, "vblora_logits_A")))
        tensors.append(NewTensor(m.path, "vblora_logits_B.default", shape_b,
                                 saved_name=None if topk else peft_name(m.path, "vblora_logits_B")))
        if topk:  # derived at save time: in the file, not in the model
            topk_saved += [SavedBaseTensor(key, shape, dtype) for key, shape, dtype in topk_saved_tensors(m, cfg)]
    trainable_base, bias_saved = trainable_biases(cfg.bias, inv, adapted)
    peft_cfg: dict[str, Any] = cfg.model_dump(exclude_none=True) | {"peft_type": "VBLORA"}
    if cfg.target_modules is None:
        peft_cfg["target_modules"] = list(targets)
    return MethodPlan(
        method="vblora", peft_type="VBLORA", category="reparameterization", adapted=tuple(adapted),
        new_tensors=tuple(tensors), trainable_base=tuple(trainable_base),
        copied_modules=tuple(modules_to_save_entries(cfg, inv)),
        saved_base=saved_wrapped_embeddings(targets, cfg.target_modules, inv, adapted) + bias_saved + tuple(topk_saved),
        peft_config=peft_cfg,
        notes=("one vector bank is shared by every adapted module and counted once",
               *(("save_only_topk_weights: the adapter file holds each logits tensor's top-k indices "
                  f"({topk_index_dtype(cfg.num_vectors)}) and top-k-1 weights instead of the logits; PEFT can merge or "
                  "run inference from it, not resume training",) if topk else ())),
        extra={"vblora_dropout": cfg.vblora_dropout, "r": cfg.r, "topk": cfg.topk, "num_vectors": cfg.num_vectors,
               "vector_length": cfg.vector_length},
    )
