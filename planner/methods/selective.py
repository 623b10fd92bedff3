"""Selective methods (no PEFT tuner): a subset of the base parameters trains.

- BitFit (Ben Zaken et al., 2022, arXiv:2106.10199): only bias terms train (``*.bias``).
- Partial fine-tuning / freezing: only the last ``last_k_layers`` blocks train (optionally with
  the final norm and LM head), the rest is frozen.

The "adapter file" is the trained tensors saved in the model dtype (safetensors).
"""

from __future__ import annotations

from pydantic import field_validator

from planner.errors import MethodConfigError
from planner.methods import register
from planner.methods.base import MethodConfig, MethodPlan, SavedBaseTensor


class BitFitConfig(MethodConfig):
    """BitFit has no options."""


class PartialConfig(MethodConfig):
    last_k_layers: int = 1
    """Number of final transformer blocks that train."""
    train_lm_head: bool = False
    """Also train the output layer and the final norm."""

    @field_validator("last_k_layers")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("last_k_layers must be a positive integer")
        return v


def _plan(method: str, names: list[str], spec, notes: tuple[str, ...] = ()) -> MethodPlan:
    params = dict(spec.inventory.named_parameters())
    saved = tuple(SavedBaseTensor(n, params[n].shape) for n in names)
    return MethodPlan(method=method, peft_type=None, category="selective", adapted=(), new_tensors=(),
                      trainable_base=tuple(names), saved_base=saved, notes=notes)


@register("bitfit", category="selective", config=BitFitConfig, peft_type=None,
          paper="Ben Zaken et al. 2022, BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models (arXiv:2106.10199)")
def build_bitfit(cfg: BitFitConfig, spec, method: str) -> MethodPlan:
    names = [n for n, _ in spec.inventory.named_parameters() if n.endswith(".bias")]
    if not names:
        raise MethodConfigError(f"{spec.name} has no bias parameters, so BitFit would train nothing", field="method")
    return _plan("bitfit", names, spec)


@register("partial", aliases=("freeze", "partial_ft"), category="selective", config=PartialConfig, peft_type=None,
          paper="Lee et al. 2019, What Would Elsa Do? Freezing Layers During Transformer Fine-Tuning (arXiv:1911.03090)")
def build_partial(cfg: PartialConfig, spec, method: str) -> MethodPlan:
    n_layers = spec.num_layers
    if cfg.last_k_layers > n_layers:
        raise MethodConfigError(f"last_k_layers={cfg.last_k_layers} but the model has {n_layers} blocks", field="last_k_layers")
    first = n_layers - cfg.last_k_layers
    stack = "decoder" if spec.is_encoder_decoder or spec.task == "causal_lm" else "encoder"
    names = []
    for m in spec.inventory:
        in_block = m.layer is not None and m.layer >= first and m.stack == stack
        head = cfg.train_lm_head and m.role in ("lm_head", "final_norm") and (m.stack in ("", stack))
        if in_block or head:
            # a tied parameter trains the tensor it is tied to (BERT's decoder weight and bias are the
            # word embeddings and cls.predictions.bias)
            names += [p.tied_to or f"{m.path}.{p.name}" for p in m.params]
    notes = ()
    if cfg.train_lm_head and spec.tie_word_embeddings:
        notes = ("The LM head is tied to the input embeddings, so training it trains the embeddings too.",)
    return _plan("partial", list(dict.fromkeys(names)), spec, notes)
