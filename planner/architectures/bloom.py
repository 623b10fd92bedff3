"""BLOOM (``model_type: bloom``): ALiBi (no position table), LayerNorm after the word embeddings,
fused ``query_key_value`` (H -> 3H) and 4H MLP, all biased; LM head tied to the embeddings."""

from __future__ import annotations

from typing import Any

from planner.architectures._config import common, divisible, require
from planner.architectures.base import ModuleEntry, embedding, lm_head, linear, norm

MODEL_TYPES = ("bloom",)


def parse(cfg: dict[str, Any]) -> dict[str, Any]:
    hidden = require(cfg, ("hidden_size", "n_embed"))
    heads = require(cfg, ("n_head", "num_attention_heads"))
    return common(cfg, model_type="bloom", architecture="BloomForCausalLM", task="causal_lm", hidden=hidden,
                  layers=require(cfg, ("n_layer", "num_hidden_layers")), heads=heads, kv_heads=heads,
                  head_dim=divisible(hidden, heads, "hidden_size", "n_head"), intermediate=4 * hidden,
                  vocab=require(cfg, "vocab_size"), tie=require(cfg, "tie_word_embeddings", bool, default=True),
                  max_pos=None, act="gelu")


def inventory(spec) -> list[ModuleEntry]:
    h = spec.hidden_size
    out: list[ModuleEntry] = [
        embedding("transformer.word_embeddings", spec.vocab_size, h),
        norm("transformer.word_embeddings_layernorm", h, bias=True, rms=False, role="embed_norm"),
    ]
    for n in range(spec.num_layers):
        p, kw = f"transformer.h.{n}", dict(layer=n, stack="decoder")
        out += [
            norm(f"{p}.input_layernorm", h, bias=True, rms=False, **kw),
            linear(f"{p}.self_attention.query_key_value", h, 3 * h, True, role="qkv", **kw),
            linear(f"{p}.self_attention.dense", h, h, True, role="o", **kw),
            norm(f"{p}.post_attention_layernorm", h, bias=True, rms=False, **kw),
            linear(f"{p}.mlp.dense_h_to_4h", h, 4 * h, True, role="mlp_up", **kw),
            linear(f"{p}.mlp.dense_4h_to_h", 4 * h, h, True, role="mlp_down", **kw),
        ]
    out.append(norm("transformer.ln_f", h, bias=True, rms=False, role="final_norm"))
    out.append(lm_head("lm_head", h, spec.vocab_size, tied_to="transformer.word_embeddings.weight" if spec.tie_word_embeddings else None))
    return out
