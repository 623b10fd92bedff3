"""AdaLoRA (Zhang et al., 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning",
arXiv:2303.10512) counted like PEFT 0.21 ``peft/tuners/adalora``.

Every adapted Linear / Conv1D (in -> out) gets an SVD-shaped update P diag(E) Q at the initial
rank ``init_r`` (``adalora/layer.py`` ``AdaLoraLayer.update_layer``, called with
``r=config.init_r``; LoRA's ``r`` is ignored):

- ``lora_A`` (init_r, in) - right singular vectors, trainable
- ``lora_E`` (init_r, 1) - singular values, trainable
- ``lora_B`` (out, init_r) - left singular vectors, trainable
- ``ranknum`` (1,) - an ``nn.Parameter`` holding float(init_r), never saved. PEFT creates it with
  ``requires_grad=False``, but re-stores it through its ``ParameterDict`` (which re-wraps a plain
  tensor as a trainable ``nn.Parameter``) whenever it moves it to the model's device (meta, GPU) or
  upcasts it (16-bit models): PEFT 0.21.2 then reports it trainable, and so does the planner. Only
  a float32 model on the CPU keeps it frozen (one parameter fewer per adapted module).

Counts are those of the start of training, as ``get_peft_model`` builds them: AdaLoRA's
``RankAllocator`` later masks singular values to zero (``update_and_allocate``) but never shrinks
the tensors. ``save_pretrained`` does shrink them when the config carries the allocator's
``rank_pattern`` (module -> boolean mask over the init_r singular values): each listed module is
saved at rank sum(mask) (``AdaLoraModel.resize_state_dict_by_rank_pattern``).

``total_step``: PEFT's ``AdaLoraConfig`` refuses None (it sizes the pruning schedule, not the
adapter). The planner does not need it to count; when it is not given, the ``peft_config`` handed
to PEFT uses ``max(DEFAULT_TOTAL_STEP, tinit + tfinal + 1)`` and the plan says so in its notes.

Embeddings cannot be adapted (PEFT raises), and AdaLoRA refuses DoRA; ``target_parameters``,
``layer_replication`` and ``trainable_token_indices`` (LoRA features AdaLoRA inherits but does not
implement for its SVD layers) are refused with a clear error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from planner.architectures.base import ModuleEntry, ModuleKind
from planner.errors import MethodConfigError
from planner.methods import register
from planner.methods.base import (
    MethodPlan, NewTensor, TargetingConfig, check_dropout, field_check, is_non_negative, is_positive, modules_to_save_entries,
    peft_name, resolve_targets, saved_embedding_layers, select_modules,
)
from planner.methods.defaults import default_targets
from planner.methods.lora import trainable_biases

#: ``AdaLoraModel._create_new_module``: Linear, transformers Conv1D (and Conv2d); not embeddings.
ADALORA_SUPPORTED = frozenset({ModuleKind.LINEAR, ModuleKind.CONV1D})
#: ``total_step`` the planner puts in ``peft_config`` when the user gives none (PEFT requires one;
#: it only shapes the rank-budget schedule, never a tensor shape).
DEFAULT_TOTAL_STEP = 1000


class AdaLoraConfig(TargetingConfig):
    """``peft.AdaLoraConfig`` fields that change what is counted, stored or computed."""

    peft_type = "ADALORA"

    init_r: int = 12
    """Initial rank of every adapted module (PEFT default 12): the tensors are built at this rank."""
    target_r: int = 8
    """Average rank the budget is pruned down to (PEFT default 8); masks values, shapes stay at init_r."""
    tinit: int = 0
    """Warm-up steps before pruning starts."""
    tfinal: int = 0
    """Final steps at the pruned budget."""
    deltaT: int = 1
    """Steps between two budget allocations."""
    beta1: float = 0.85
    """EMA coefficient of the sensitivity smoothing."""
    beta2: float = 0.85
    """EMA coefficient of the uncertainty quantification."""
    orth_reg_weight: float = 0.5
    """Weight of the orthogonality regularizer on lora_A / lora_B (PEFT requires >= 0)."""
    total_step: int | None = None
    """Total training steps (PEFT requires a value > 0 with tinit < total_step - tfinal). Not needed
    to count; None puts max(DEFAULT_TOTAL_STEP, tinit + tfinal + 1) into the PEFT config."""
    rank_pattern: dict[str, list[bool]] | None = None
    """The RankAllocator's result as stored in a trained adapter_config.json: lora_E parameter
    name -> mask over the init_r singular values. Counts stay at init_r; the saved file keeps
    sum(mask) per listed module."""
    lora_alpha: float = 8
    """Scale numerator (update scaled by lora_alpha / ranknum); does not change counts."""
    lora_dropout: float = 0.0
    """Dropout on the adapter input; > 0 saves a mask per adapted module during training."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Train biases too: every ``*.bias`` ("all") or those of adapted modules ("lora_only")."""
    fan_in_fan_out: bool = False
    """Informational: PEFT sets it for Conv1D (GPT-2) automatically; it does not change counts."""
    use_dora: bool = False
    """Refused: PEFT raises "ADALORA does not support DoRA"."""
    target_parameters: list[str] | None = None
    """Refused: AdaLoRA has no SVD layer for raw parameters (fused MoE experts)."""
    layer_replication: list[Any] | None = None
    """Refused: layer replication is not modelled for AdaLoRA."""
    trainable_token_indices: list[int] | dict[str, Any] | None = None
    """Refused: trainable tokens are not modelled for AdaLoRA."""

    _init_rank_positive = field_validator("init_r")(
        field_check(is_positive, "init_r must be a positive integer (a zero-rank AdaLoRA adapter trains nothing)"))
    _non_negative = field_validator("target_r", "tinit", "tfinal")(
        field_check(is_non_negative, "must be a non-negative integer"))
    _interval_positive = field_validator("deltaT")(field_check(is_positive, "deltaT must be a positive integer"))
    _ema_coefficient = field_validator("beta1", "beta2")(
        field_check(lambda v: 0.0 < v < 1.0, "must be in (0, 1) (PEFT's RankAllocator asserts it)"))
    _dropout_range = field_validator("lora_dropout")(check_dropout)
    _orth_non_negative = field_validator("orth_reg_weight")(
        field_check(is_non_negative, "orth_reg_weight must be >= 0 (PEFT refuses negative values)"))

    @field_validator("use_dora")
    @classmethod
    def _no_dora(cls, v: bool) -> bool:
        if v:
            raise ValueError("AdaLoRA does not support DoRA (PEFT refuses use_dora=True)")
        return v

    @field_validator("target_parameters", "layer_replication", "trainable_token_indices")
    @classmethod
    def _unsupported(cls, v, info):
        if v:
            raise ValueError(f"{info.field_name} is not supported for AdaLoRA by the planner; use method='lora'")
        return v

    @model_validator(mode="after")
    def _schedule(self):
        if self.total_step is not None:
            if self.total_step <= 0:
                raise ValueError("total_step must be > 0 (PEFT refuses None or <= 0)")
            if self.tinit >= self.total_step - self.tfinal:
                raise ValueError(f"total_step {self.total_step} leaves no budgeting phase: PEFT requires "
                                 f"tinit ({self.tinit}) < total_step - tfinal ({self.tfinal})")
        return self


def adalora_tensors(entry: ModuleEntry, r: int, saved_r: int | None = None) -> list[NewTensor]:
    p, s = entry.path, r if saved_r is None else saved_r
    return [
        NewTensor(p, "lora_A.default", (r, entry.in_features), saved_name=peft_name(p, "lora_A"),
                  saved_shape=(s, entry.in_features)),
        NewTensor(p, "lora_B.default", (entry.out_features, r), saved_name=peft_name(p, "lora_B"),
                  saved_shape=(entry.out_features, s)),
        NewTensor(p, "lora_E.default", (r, 1), saved_name=peft_name(p, "lora_E"), saved_shape=(s, 1)),
        NewTensor(p, "ranknum.default", (1,)),  # trainable in PEFT 0.21.2 on meta / GPU / 16-bit models
    ]


def saved_ranks(cfg: AdaLoraConfig, adapted: list[ModuleEntry]) -> dict[str, int]:
    """Module path -> rank saved by ``save_pretrained`` under ``rank_pattern`` (PEFT's key rule:
    drop ".default", then the last component, e.g. ``model.layers.0.self_attn.q_proj.lora_E``)."""
    if not cfg.rank_pattern:
        return {}
    paths = {m.path for m in adapted}
    out: dict[str, int] = {}
    for key, mask in cfg.rank_pattern.items():
        module = ".".join(key.replace(".default", "").split(".")[:-1])
        if module not in paths:
            raise MethodConfigError(f"key {key!r} names no adapted module (expected '<module path>.lora_E', e.g. "
                                    f"{sorted(paths)[0] + '.lora_E'!r})", field="rank_pattern")
        if len(mask) != cfg.init_r:
            raise MethodConfigError(f"mask for {key!r} has {len(mask)} entries; it needs init_r = {cfg.init_r}",
                                    field="rank_pattern")
        out[module] = sum(bool(x) for x in mask)
    return out


@register("adalora", category="reparameterization", config=AdaLoraConfig,
          paper="Zhang et al. 2023, Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning (arXiv:2303.10512)")
def build(cfg: AdaLoraConfig, spec, method: str) -> MethodPlan:
    inv = spec.inventory
    targets = resolve_targets(cfg, inv, default_targets("adalora"), spec.model_type, "adalora")
    adapted = select_modules(cfg, inv, targets, supported=ADALORA_SUPPORTED, method="adalora")
    ranks = saved_ranks(cfg, adapted)
    tensors: list[NewTensor] = []
    for entry in adapted:
        tensors += adalora_tensors(entry, cfg.init_r, ranks.get(entry.path))
    trainable_base, bias_saved = trainable_biases(cfg.bias, inv, adapted)
    notes = [
        f"AdaLoRA is counted at its initial rank init_r={cfg.init_r}, as PEFT builds it; pruning towards "
        f"target_r={cfg.target_r} masks singular values without shrinking tensors.",
        f"Counted like PEFT 0.21.2 on a GPU: each module's 1-element 'ranknum' ({len(adapted)} in all) is trainable "
        "(PEFT re-wraps it as a trainable Parameter when moving it to the device); on a float32 CPU model it stays "
        "frozen.",
    ]
    peft_cfg: dict[str, Any] = cfg.model_dump(exclude_none=True) | {"peft_type": "ADALORA"}
    if cfg.target_modules is None:  # make PEFT's per-model default explicit
        peft_cfg["target_modules"] = list(targets)
    if cfg.total_step is None:
        peft_cfg["total_step"] = max(DEFAULT_TOTAL_STEP, cfg.tinit + cfg.tfinal + 1)
        notes.append(f"total_step not given: the PEFT config uses total_step={peft_cfg['total_step']} (PEFT requires "
                     "one; it sets the pruning schedule only, not what is counted).")
    if ranks:
        notes.append(f"rank_pattern given: {len(ranks)} module(s) are saved at their pruned ranks; training counts "
                     f"stay at init_r={cfg.init_r}.")
    return MethodPlan(
        method="adalora", peft_type="ADALORA", category="reparameterization", adapted=tuple(adapted),
        new_tensors=tuple(tensors), trainable_base=tuple(trainable_base),
        copied_modules=tuple(modules_to_save_entries(cfg, inv)),
        saved_base=saved_embedding_layers(targets, cfg.target_modules, inv, adapted=adapted) + bias_saved, peft_config=peft_cfg,
        notes=tuple(notes),
        extra={"lora_dropout": cfg.lora_dropout, "bias": cfg.bias, "init_r": cfg.init_r, "target_r": cfg.target_r,
               "lora_alpha": cfg.lora_alpha,
               # RankAllocator keeps ipt, exp_avg_ipt and exp_avg_unc (fp32) per lora_A/lora_B/lora_E tensor
               "rank_allocator_state_copies": 3},
    )
