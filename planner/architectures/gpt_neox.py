"""GPT-NeoX / Pythia (``model_type: gpt_neox``): fused ``query_key_value`` (H -> 3H), biases on
attention (``attention_bias``) and MLP, LayerNorms with bias, untied LM head by default."""

from __future__ import annotations

from typing import Any

from planner.architectures._config import common, divisible, require
from planner.architectures.base import ModuleEntry, embedding, lm_head, linear, norm

MODEL_TYPES = ("gpt_neox",)


def parse(cfg: dict[str, Any]) -> dict[str, Any]:
    hidden = require(cfg, "hidden_size")
    heads = require(cfg, "num_attention_heads")
    return common(cfg, model_type="gpt_neox", architecture="GPTNeoXForCausalLM", task="causal_lm", hidden=hidden,
                  layers=require(cfg, "num_hidden_layers"), heads=heads, kv_heads=heads,
                  head_dim=divisible(hidden, heads, "hidden_size", "num_attention_heads"),
                  intermediate=require(cfg, "intermediate_size"), vocab=require(cfg, "vocab_size"),
                  tie=require(cfg, "tie_word_embeddings", bool, default=False),
                  max_pos=require(cfg, "max_position_embeddings", default=None), act=str(cfg.get("hidden_act", "gelu")))


def inventory(spec) -> list[ModuleEntry]:
    h, i = spec.hidden_size, spec.intermediate_size
    attn_bias = bool(spec.config.get("attention_bias", True))
    out: list[ModuleEntry] = [embedding("gpt_neox.embed_in", spec.vocab_size, h)]
    for n in range(spec.num_layers):
        p, kw = f"gpt_neox.layers.{n}", dict(layer=n, stack="decoder")
        out += [
            norm(f"{p}.input_layernorm", h, bias=True, rms=False, **kw),
            norm(f"{p}.post_attention_layernorm", h, bias=True, rms=False, **kw),
            linear(f"{p}.attention.query_key_value", h, 3 * h, attn_bias, role="qkv", **kw),
            linear(f"{p}.attention.dense", h, h, attn_bias, role="o", **kw),
            linear(f"{p}.mlp.dense_h_to_4h", h, i, True, role="mlp_up", **kw),
            linear(f"{p}.mlp.dense_4h_to_h", i, h, True, role="mlp_down", **kw),
        ]
    out.append(norm("gpt_neox.final_layer_norm", h, bias=True, rms=False, role="final_norm"))
    out.append(lm_head("lm_head", h, spec.vocab_size, tied_to="gpt_neox.embed_in.weight" if spec.tie_word_embeddings else None))
    return out
