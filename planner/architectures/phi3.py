"""Phi-3 (``model_type: phi3``): fused ``qkv_proj`` (heads + 2 x KV heads) x head_dim and fused
``gate_up_proj`` (2 x intermediate); no biases; RMSNorm. transformers registers ``o_proj`` before
``qkv_proj``."""

from __future__ import annotations

from typing import Any

from planner.architectures._config import common, require
from planner.architectures.base import ModuleEntry, embedding, lm_head, linear, norm

MODEL_TYPES = ("phi3",)


def parse(cfg: dict[str, Any]) -> dict[str, Any]:
    hidden = require(cfg, "hidden_size")
    heads = require(cfg, "num_attention_heads")
    return common(cfg, model_type="phi3", architecture="Phi3ForCausalLM", task="causal_lm", hidden=hidden,
                  layers=require(cfg, "num_hidden_layers"), heads=heads,
                  kv_heads=require(cfg, "num_key_value_heads", default=heads),
                  head_dim=require(cfg, "head_dim", default=None) or hidden // heads,
                  intermediate=require(cfg, "intermediate_size"), vocab=require(cfg, "vocab_size"),
                  tie=require(cfg, "tie_word_embeddings", bool, default=False),
                  max_pos=require(cfg, "max_position_embeddings", default=None), act=str(cfg.get("hidden_act", "silu")))


def inventory(spec) -> list[ModuleEntry]:
    h, d, i = spec.hidden_size, spec.head_dim, spec.intermediate_size
    q_out = spec.num_attention_heads * d
    qkv_out = q_out + 2 * spec.num_key_value_heads * d
    out: list[ModuleEntry] = [embedding("model.embed_tokens", spec.vocab_size, h)]
    for n in range(spec.num_layers):
        p, kw = f"model.layers.{n}", dict(layer=n, stack="decoder")
        out += [
            linear(f"{p}.self_attn.o_proj", q_out, h, False, role="o", **kw),
            linear(f"{p}.self_attn.qkv_proj", h, qkv_out, False, role="qkv", **kw),
            linear(f"{p}.mlp.gate_up_proj", h, 2 * i, False, role="mlp_gate_up", **kw),
            linear(f"{p}.mlp.down_proj", i, h, False, role="mlp_down", **kw),
            norm(f"{p}.input_layernorm", h, bias=False, rms=True, **kw),
            norm(f"{p}.post_attention_layernorm", h, bias=False, rms=True, **kw),
        ]
    out.append(norm("model.norm", h, bias=False, rms=True, role="final_norm"))
    out.append(lm_head("lm_head", h, spec.vocab_size, tied_to="model.embed_tokens.weight" if spec.tie_word_embeddings else None))
    return out
