"""Prompt-learning methods, counted like PEFT 0.21 (``peft_model.py`` ``_setup_prompt_encoder``,
``utils/other.py`` ``_prepare_prompt_learning_config``):

- Prompt tuning (Lester et al., 2021, arXiv:2104.08691): an embedding of
  (num_virtual_tokens x submodules, token_dim) prepended to the input.
- P-tuning (Liu et al., 2021, "GPT Understands, Too", arXiv:2103.10385): the same embedding fed
  through an MLP (3 Linear layers) or a bidirectional LSTM + 2-layer MLP.
- Prefix tuning (Li & Liang, 2021, arXiv:2101.00190): learned key/value prefixes for every layer:
  an embedding (num_virtual_tokens, num_layers x 2 x token_dim), or with ``prefix_projection`` an
  embedding (num_virtual_tokens, token_dim) + Linear(token_dim, h) + Tanh + Linear(h, L x 2 x token_dim).
  For models whose config has ``num_key_value_heads`` (GQA), token_dim = head_dim x KV heads.

``submodules`` is 2 for encoder-decoder models (encoder and decoder prompts), else 1. The base
model stays frozen; PEFT saves the prompt embeddings the encoder produces ("prompt_embeddings").
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from planner.methods import register
from planner.methods.base import MethodConfig, MethodPlan, NewTensor

#: PEFT task types per model head; prompt learning needs one (masked-LM encoders use FEATURE_EXTRACTION).
TASK_TYPE = {"causal_lm": "CAUSAL_LM", "seq2seq_lm": "SEQ_2_SEQ_LM", "masked_lm": "FEATURE_EXTRACTION"}
#: Config families whose ``config.to_dict()`` carries ``num_key_value_heads`` (transformers 5.24
#: config classes), which makes PEFT size prefixes by KV heads (peft PR #1901).
KV_HEAD_CONFIG_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "mixtral", "phi", "phi3"})


class _PromptConfig(MethodConfig):
    num_virtual_tokens: int = 20
    """Virtual tokens (PEFT has no default; 20 as in the seed's examples)."""
    task_type: str | None = None
    """PEFT task type; None picks CAUSAL_LM / SEQ_2_SEQ_LM from the model."""
    num_transformer_submodules: int | None = None

    @field_validator("num_virtual_tokens")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("num_virtual_tokens must be a positive integer")
        return v


class PromptTuningConfig(_PromptConfig):
    peft_type = "PROMPT_TUNING"


class PromptEncoderConfig(_PromptConfig):
    peft_type = "P_TUNING"
    encoder_reparameterization_type: Literal["MLP", "LSTM"] = "MLP"
    encoder_hidden_size: int | None = None
    encoder_num_layers: int = 2


class PrefixTuningConfig(_PromptConfig):
    peft_type = "PREFIX_TUNING"
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None


def _task(cfg: _PromptConfig, spec) -> tuple[str | None, int]:
    task = cfg.task_type if cfg.task_type is not None else TASK_TYPE[spec.task]
    subs = cfg.num_transformer_submodules or (2 if task == "SEQ_2_SEQ_LM" else 1)
    return task, subs


def _mapping(cfg: _PromptConfig, task: str | None) -> dict[str, Any]:
    data = cfg.model_dump(exclude_none=True) | {"peft_type": cfg.peft_type}
    if task:
        data["task_type"] = task
    return data


def _plan(method: str, cfg: _PromptConfig, spec, tensors: list[NewTensor], task: str | None, **kw) -> MethodPlan:
    return MethodPlan(method=method, peft_type=cfg.peft_type, category="additive", adapted=(), new_tensors=tuple(tensors),
                      trainable_base=(), peft_config=_mapping(cfg, task), **kw)


@register("prompt_tuning", aliases=("prompt",), category="additive", config=PromptTuningConfig,
          paper="Lester et al. 2021, The Power of Scale for Parameter-Efficient Prompt Tuning (arXiv:2104.08691)")
def build_prompt(cfg: PromptTuningConfig, spec, method: str) -> MethodPlan:
    task, subs = _task(cfg, spec)
    n = cfg.num_virtual_tokens * subs
    t = NewTensor("", "prompt_encoder.default.embedding.weight", (n, spec.hidden_size), saved_name="prompt_embeddings")
    return _plan("prompt_tuning", cfg, spec, [t], task, virtual_tokens=cfg.num_virtual_tokens)


@register("p_tuning", aliases=("ptuning",), category="additive", config=PromptEncoderConfig,
          paper="Liu et al. 2021, GPT Understands, Too (arXiv:2103.10385)")
def build_p_tuning(cfg: PromptEncoderConfig, spec, method: str) -> MethodPlan:
    task, subs = _task(cfg, spec)
    n, d = cfg.num_virtual_tokens * subs, spec.hidden_size
    h = cfg.encoder_hidden_size or d
    p = "prompt_encoder.default"
    tensors = [NewTensor("", f"{p}.embedding.weight", (n, d), saved_name="prompt_embeddings", saved_shape=(n, d))]

    def lin(name: str, i: int, o: int) -> list[NewTensor]:
        return [NewTensor("", f"{p}.{name}.weight", (o, i)), NewTensor("", f"{p}.{name}.bias", (o,))]

    if cfg.encoder_reparameterization_type == "MLP":
        tensors += lin("mlp_head.0", d, h) + lin("mlp_head.2", h, h) + lin("mlp_head.4", h, d)
    else:
        for layer in range(cfg.encoder_num_layers):
            inp = d if layer == 0 else 2 * h
            for sfx in ("", "_reverse"):
                tensors += [NewTensor("", f"{p}.lstm_head.weight_ih_l{layer}{sfx}", (4 * h, inp)),
                            NewTensor("", f"{p}.lstm_head.weight_hh_l{layer}{sfx}", (4 * h, h)),
                            NewTensor("", f"{p}.lstm_head.bias_ih_l{layer}{sfx}", (4 * h,)),
                            NewTensor("", f"{p}.lstm_head.bias_hh_l{layer}{sfx}", (4 * h,))]
        tensors += lin("mlp_head.0", 2 * h, 2 * h) + lin("mlp_head.2", 2 * h, d)
    return _plan("p_tuning", cfg, spec, tensors, task, virtual_tokens=cfg.num_virtual_tokens)


def prefix_token_dim(spec) -> int:
    """token_dim PEFT uses for prefixes: hidden size, or head_dim x KV heads where the config has KV heads."""
    if spec.model_type in KV_HEAD_CONFIG_TYPES:
        return spec.head_dim * spec.num_key_value_heads
    return spec.hidden_size


@register("prefix_tuning", aliases=("prefix",), category="additive", config=PrefixTuningConfig,
          paper="Li & Liang 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation (arXiv:2101.00190)")
def build_prefix(cfg: PrefixTuningConfig, spec, method: str) -> MethodPlan:
    task, subs = _task(cfg, spec)
    layers = spec.num_encoder_layers if spec.is_encoder_decoder else spec.num_layers  # config.num_hidden_layers
    d = prefix_token_dim(spec)
    n = cfg.num_virtual_tokens
    out = layers * 2 * d
    p = "prompt_encoder.default"
    if cfg.prefix_projection:
        h = cfg.encoder_hidden_size or d
        tensors = [NewTensor("", f"{p}.embedding.weight", (n, d), saved_name="prompt_embeddings", saved_shape=(n, out)),
                   NewTensor("", f"{p}.transform.0.weight", (h, d)), NewTensor("", f"{p}.transform.0.bias", (h,)),
                   NewTensor("", f"{p}.transform.2.weight", (out, h)), NewTensor("", f"{p}.transform.2.bias", (out,))]
    else:
        tensors = [NewTensor("", f"{p}.embedding.weight", (n, out), saved_name="prompt_embeddings")]
    return _plan("prefix_tuning", cfg, spec, tensors, task, prefix_tokens=n,
                 notes=("Prefix tuning cannot be combined with gradient checkpointing (PEFT refuses it).",))
