"""Adaption prompt / LLaMA-Adapter (Zhang et al., 2023, "LLaMA-Adapter: Efficient Fine-tuning of
Language Models with Zero-init Attention", arXiv:2303.16199): learned prompt tokens in the top L
attention layers, mixed in through a zero-initialised gate.

Counted like PEFT 0.21.2 ``peft/tuners/adaption_prompt``:

- ``AdaptionPromptModel.add_adapter`` (model.py) collects every module whose name ends with
  ``.<target_modules>`` (the attention module: ``self_attn`` for llama / mistral, ``attn`` for
  gpt2) and wraps the last ``adapter_layers`` of them in ``AdaptedAttention``.
- Each wrapped attention gets ``adaption_prompt`` (1, adapter_len, hidden_size) and
  ``adaption_gate`` (1,) (layer.py ``_BaseAdaptedAttention``), created in the dtype of the
  attention's ``q_proj`` / ``c_proj`` weight, i.e. the model dtype (float32 for int8 weights):
  AdaptionPromptModel is not a BaseTuner, so there is no float32 autocast.
- Only model types in ``TRANSFORMERS_MODEL_CONFIG`` (config.py) are supported: llama, mistral,
  gpt2; ``prepare_config`` raises for any other. ``adapter_layers`` larger than the number of
  attention modules is an error.
- Saved keys (``_get_adapter_state_dict``): every state-dict entry whose last component starts
  with ``adaption_``: ``base_model.model.<attention path>.adaption_prompt`` / ``.adaption_gate``.

PEFT has no defaults for ``adapter_len`` / ``adapter_layers``; the planner uses the paper's 10
prompt tokens and, for ``adapter_layers``, every layer, and writes the resolved values into the
PEFT config it hands on.
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from planner.errors import MethodConfigError, TargetModulesError
from planner.methods import register
from planner.methods.base import MethodConfig, MethodPlan, NewTensor, peft_name

#: ``TRANSFORMERS_MODEL_CONFIG`` of peft/tuners/adaption_prompt/config.py: model type -> the
#: attention module name (``target_modules``) AdaptedAttention wraps.
ADAPTION_PROMPT_MODEL_TYPES: dict[str, str] = {"llama": "self_attn", "mistral": "self_attn", "gpt2": "attn"}
#: Prompt tokens per layer in the LLaMA-Adapter paper's instruction-following setup (K = 10, with
#: prompts in the top L = 30 of LLaMA-7B's 32 layers).
PAPER_ADAPTER_LEN = 10


class AdaptionPromptConfig(MethodConfig):
    """``peft.AdaptionPromptConfig`` fields (all of them change what is counted)."""

    peft_type = "ADAPTION_PROMPT"

    adapter_len: int = PAPER_ADAPTER_LEN
    """Prompt tokens inserted in each adapted attention layer (PEFT has no default; 10 as in the paper)."""
    adapter_layers: int | None = None
    """Number of top attention layers that get a prompt; None: every layer (PEFT needs a number:
    the planner passes the model's layer count)."""
    target_modules: str | None = None
    """Name of the attention sub-module to wrap; None: PEFT's choice for the model type (the only
    one AdaptedAttention can wrap)."""

    @field_validator("adapter_len", "adapter_layers")
    @classmethod
    def _positive(cls, v: int | None, info) -> int | None:
        if v is not None and v <= 0:
            # adapter_layers=0 would even select every layer in PEFT (parents[-0:])
            raise ValueError(f"{info.field_name} must be a positive integer")
        return v

    @classmethod
    def method_name(cls) -> str:
        return "adaption_prompt"


def attention_paths(spec, name: str) -> list[str]:
    """Module paths ending with ``.<name>`` in ``named_modules()`` order (PEFT's ``parents``)."""
    return [p for p in spec.inventory.all_paths if p.endswith(f".{name}")]


@register("adaption_prompt", aliases=("llama_adapter", "adaptionprompt"), category="additive", config=AdaptionPromptConfig,
          paper="Zhang et al. 2023, LLaMA-Adapter: Efficient Fine-tuning of Language Models with Zero-init Attention "
                "(arXiv:2303.16199)")
def build(cfg: AdaptionPromptConfig, spec, method: str) -> MethodPlan:
    mt = spec.model_type
    if mt not in ADAPTION_PROMPT_MODEL_TYPES:
        raise MethodConfigError(
            f"adaption prompt is not supported for model_type {mt!r}: PEFT implements it only for "
            f"{', '.join(sorted(ADAPTION_PROMPT_MODEL_TYPES))} (TRANSFORMERS_MODEL_CONFIG in "
            "peft/tuners/adaption_prompt/config.py)", field="method")
    target = ADAPTION_PROMPT_MODEL_TYPES[mt]
    if cfg.target_modules is not None and cfg.target_modules != target:
        raise TargetModulesError(
            f"adaption prompt wraps the attention module, named {target!r} in {mt} models; PEFT's AdaptedAttention "
            f"cannot wrap {cfg.target_modules!r}", field="target_modules")
    paths = attention_paths(spec, target)
    n_layers = cfg.adapter_layers if cfg.adapter_layers is not None else len(paths)
    if n_layers > len(paths):
        raise MethodConfigError(f"adapter_layers={n_layers} but the model has {len(paths)} attention layers",
                                field="adapter_layers")
    chosen = paths[-n_layers:]
    d, n = spec.hidden_size, cfg.adapter_len
    tensors: list[NewTensor] = []
    for path in chosen:
        tensors.append(NewTensor(path, "adaption_prompt", (1, n, d), dtype="base",
                                 saved_name=peft_name(path, "adaption_prompt")))
        tensors.append(NewTensor(path, "adaption_gate", (1,), dtype="base", saved_name=peft_name(path, "adaption_gate")))
    layers = [len(paths) - n_layers + i for i in range(n_layers)]
    peft_cfg: dict[str, Any] = {"peft_type": "ADAPTION_PROMPT", "task_type": "CAUSAL_LM", "adapter_len": n,
                                "adapter_layers": n_layers, "target_modules": target}
    note = (f"Adaption prompts ({n} tokens) in the top {n_layers} of {len(paths)} attention layers "
            f"(layers {layers[0]}-{layers[-1]}); they are created in the model dtype (no float32 upcast).")
    return MethodPlan(method="adaption_prompt", peft_type="ADAPTION_PROMPT", category="additive", adapted=(),
                      new_tensors=tuple(tensors), trainable_base=(), peft_config=peft_cfg, notes=(note,),
                      extra={"adaption_prompt": {"adapter_len": n, "layers": layers, "modules": chosen,
                                                 # per adapted layer: adapter_len extra key/value positions,
                                                 # projected from the prompt by the layer's k/v projections
                                                 "extra_kv_positions": n}})
