"""VeRA (Kopiczko et al., 2024, "VeRA: Vector-based Random Matrix Adaptation", arXiv:2310.11454)
counted like PEFT 0.21 ``peft/tuners/vera``.

One pair of frozen random projections is shared by every adapted module
(``VeraModel._init_vera_A_vera_B``): ``vera_A`` (r, max_in) and ``vera_B`` (max_out, r), sized by
the largest in / out features over the adapted Linear / Conv1D modules (``_find_dim``), seeded
with ``projection_prng_key``. They are *buffers* (a ``BufferDict``), so PEFT's parameter counts do
not include them; with ``save_projection=True`` (the default) ``save_pretrained`` writes them as
``base_model.vera_A`` / ``base_model.vera_B`` (float32 under ``autocast_adapter_dtype``, like the
adapters). Each adapted module (in -> out) trains two vectors:

- ``vera_lambda_b`` (out,) - scales the output (initialised to 0)
- ``vera_lambda_d`` (r,) - scales the rank dimension (initialised to ``d_initial``)

``bias`` ("all" / "vera_only") trains base biases like LoRA's option. PEFT's VeraConfig has no
``exclude_modules`` and no per-module ranks. Embeddings cannot be adapted (PEFT raises).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from planner.architectures.base import ModuleEntry, ModuleKind
from planner.methods import register
from planner.methods.base import (
    MethodPlan, NewTensor, SavedBaseTensor, TargetingConfig, check_dropout, check_rank, modules_to_save_entries,
    peft_name, resolve_targets, saved_embedding_layers, select_modules,
)
from planner.methods.defaults import default_targets
from planner.methods.lora import trainable_biases

#: ``vera/model.py`` ``_get_tuner_layer_class``: torch Linear and transformers Conv1D (optionally quantized).
VERA_SUPPORTED = frozenset({ModuleKind.LINEAR, ModuleKind.CONV1D})
#: Keys of the shared projections in adapter_model.safetensors (``VeraModel._get_adapter_state_dict``,
#: adapter name removed): they live on the tuner (``base_model``), not under ``base_model.model``.
VERA_A_KEY = "base_model.vera_A"
VERA_B_KEY = "base_model.vera_B"


class VeraConfig(TargetingConfig):
    """``peft.VeraConfig`` fields that change what is counted, stored or computed."""

    peft_type = "VERA"

    r: int = 256
    """Rank of the shared random projections (PEFT default 256; VeRA uses far higher ranks than LoRA)."""
    projection_prng_key: int = 0
    """Seed of vera_A / vera_B; does not change counts."""
    save_projection: bool = True
    """Write vera_A and vera_B into adapter_model.safetensors (else they are re-created from the seed)."""
    vera_dropout: float = 0.0
    """Dropout on the adapter input; > 0 saves a mask per adapted module during training."""
    d_initial: float = 0.1
    """Initial value of every vera_lambda_d entry; does not change counts."""
    fan_in_fan_out: bool = False
    """Informational: PEFT sets it for Conv1D (GPT-2) automatically; it does not change counts."""
    bias: Literal["none", "all", "vera_only"] = "none"
    """Train biases too: every ``*.bias`` ("all") or those of adapted modules ("vera_only")."""
    init_weights: bool = True
    """PEFT's default init (lambda_b zero, lambda_d = d_initial); does not change counts."""

    _rank_positive = field_validator("r")(check_rank)
    _dropout_range = field_validator("vera_dropout")(check_dropout)

    @field_validator("exclude_modules")
    @classmethod
    def _no_exclude(cls, v):
        if v is not None:
            raise ValueError("PEFT's VeraConfig has no exclude_modules; list the modules to adapt in target_modules")
        return v


def projection_shapes(adapted: list[ModuleEntry], r: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of (vera_A, vera_B): PEFT's ``_find_dim`` takes the element-wise max of (out, in)."""
    max_out = max(m.out_features for m in adapted)
    max_in = max(m.in_features for m in adapted)
    return (r, max_in), (max_out, r)


@register("vera", category="reparameterization", config=VeraConfig,
          paper="Kopiczko et al. 2024, VeRA: Vector-based Random Matrix Adaptation (arXiv:2310.11454)")
def build(cfg: VeraConfig, spec, method: str) -> MethodPlan:
    inv = spec.inventory
    targets = resolve_targets(cfg, inv, default_targets("vera"), spec.model_type, "vera")
    adapted = select_modules(cfg, inv, targets, supported=VERA_SUPPORTED, method="vera")
    tensors: list[NewTensor] = []
    for m in adapted:
        tensors.append(NewTensor(m.path, "vera_lambda_b.default", (m.out_features,),
                                 saved_name=peft_name(m.path, "vera_lambda_b")))
        tensors.append(NewTensor(m.path, "vera_lambda_d.default", (cfg.r,),
                                 saved_name=peft_name(m.path, "vera_lambda_d")))
    a_shape, b_shape = projection_shapes(adapted, cfg.r)
    # The shared projections are buffers, not parameters: PEFT's counts exclude them, so they are
    # no NewTensor (every NewTensor is a parameter in the total); they reach the file via saved_base.
    projections = (SavedBaseTensor(VERA_A_KEY, a_shape, dtype="adapter"),
                   SavedBaseTensor(VERA_B_KEY, b_shape, dtype="adapter"))
    trainable_base, bias_saved = trainable_biases(cfg.bias, inv, adapted)
    saved = saved_embedding_layers(targets, cfg.target_modules, inv, adapted=adapted) + bias_saved
    if cfg.save_projection:
        saved = projections + saved
    peft_cfg: dict[str, Any] = cfg.model_dump(exclude_none=True) | {"peft_type": "VERA"}
    if cfg.target_modules is None:  # make PEFT's per-model default explicit
        peft_cfg["target_modules"] = list(targets)
    notes = [f"VeRA shares frozen projections vera_A {a_shape} and vera_B {b_shape} (buffers, not counted as "
             f"parameters){'; saved in the adapter file' if cfg.save_projection else '; not saved (save_projection=False)'}."]
    return MethodPlan(
        method="vera", peft_type="VERA", category="reparameterization", adapted=tuple(adapted),
        new_tensors=tuple(tensors), trainable_base=tuple(trainable_base),
        copied_modules=tuple(modules_to_save_entries(cfg, inv)), saved_base=saved, peft_config=peft_cfg,
        notes=tuple(notes),
        extra={"r": cfg.r, "vera_dropout": cfg.vera_dropout, "bias": cfg.bias,
               # frozen buffers held in memory (adapter dtype) whether saved or not
               "buffers": {"vera_A": a_shape, "vera_B": b_shape}},
    )
