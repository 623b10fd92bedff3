"""Falcon (``model_type: falcon``): fused ``query_key_value`` whose width depends on the attention
layout (multi-query: H + 2 x head_dim; new decoder architecture: (2 x KV heads + heads) x head_dim;
else 3H), ``FalconLinear`` (an nn.Linear), parallel attention with one or two LayerNorms."""

from __future__ import annotations

from typing import Any

from planner.architectures._config import common, divisible, require
from planner.architectures.base import ModuleEntry, embedding, lm_head, linear, norm

MODEL_TYPES = ("falcon",)


def parse(cfg: dict[str, Any]) -> dict[str, Any]:
    hidden = require(cfg, ("hidden_size", "n_embed"))
    heads = require(cfg, ("num_attention_heads", "n_head"))
    if cfg.get("new_decoder_architecture", False):
        kv = require(cfg, "num_kv_heads", default=heads)
    elif cfg.get("multi_query", True):
        kv = 1
    else:
        kv = heads
    return common(cfg, model_type="falcon", architecture="FalconForCausalLM", task="causal_lm", hidden=hidden,
                  layers=require(cfg, ("num_hidden_layers", "n_layer")), heads=heads, kv_heads=kv,
                  head_dim=divisible(hidden, heads, "hidden_size", "num_attention_heads"),
                  intermediate=require(cfg, "ffn_hidden_size", default=None) or 4 * hidden,
                  vocab=require(cfg, "vocab_size"), tie=require(cfg, "tie_word_embeddings", bool, default=True),
                  max_pos=require(cfg, "max_position_embeddings", default=None), act=str(cfg.get("activation", "gelu")))


def inventory(spec) -> list[ModuleEntry]:
    cfg, h, i, d = spec.config, spec.hidden_size, spec.intermediate_size, spec.head_dim
    bias = bool(cfg.get("bias", False))
    new_arch = bool(cfg.get("new_decoder_architecture", False))
    qkv_out = (2 * spec.num_key_value_heads + spec.num_attention_heads) * d
    n_ln = cfg.get("num_ln_in_parallel_attn") or (2 if new_arch else None)
    out: list[ModuleEntry] = [embedding("transformer.word_embeddings", spec.vocab_size, h)]
    for n in range(spec.num_layers):
        p, kw = f"transformer.h.{n}", dict(layer=n, stack="decoder")
        out += [
            linear(f"{p}.self_attention.query_key_value", h, qkv_out, bias, role="qkv", **kw),
            linear(f"{p}.self_attention.dense", h, h, bias, role="o", **kw),
            linear(f"{p}.mlp.dense_h_to_4h", h, i, bias, role="mlp_up", **kw),
            linear(f"{p}.mlp.dense_4h_to_h", i, h, bias, role="mlp_down", **kw),
        ]
        if not cfg.get("parallel_attn", True):
            names = ["post_attention_layernorm", "input_layernorm"]
        elif n_ln == 2:
            names = ["ln_attn", "ln_mlp"]
        else:
            names = ["input_layernorm"]
        out += [norm(f"{p}.{nm}", h, bias=True, rms=False, **kw) for nm in names]
    out.append(norm("transformer.ln_f", h, bias=True, rms=False, role="final_norm"))
    out.append(lm_head("lm_head", h, spec.vocab_size, tied_to="transformer.word_embeddings.weight" if spec.tie_word_embeddings else None))
    return out
