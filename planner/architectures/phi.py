"""Phi-1/1.5/2 (``model_type: phi``): biased q/k/v/dense attention, fc1/fc2 MLP, one LayerNorm
per block (parallel attention + MLP), optional per-head q/k LayerNorms, biased LM head."""

from __future__ import annotations

from typing import Any

from planner.architectures._config import common, require
from planner.architectures.base import ModuleEntry, embedding, lm_head, linear, norm

MODEL_TYPES = ("phi",)


def parse(cfg: dict[str, Any]) -> dict[str, Any]:
    hidden = require(cfg, "hidden_size")
    heads = require(cfg, "num_attention_heads")
    return common(cfg, model_type="phi", architecture="PhiForCausalLM", task="causal_lm", hidden=hidden,
                  layers=require(cfg, "num_hidden_layers"), heads=heads,
                  kv_heads=require(cfg, "num_key_value_heads", default=heads),
                  # PhiConfig has no head_dim field, but PhiAttention reads config.head_dim when a config.json sets it
                  head_dim=require(cfg, "head_dim", default=None) or hidden // heads,
                  intermediate=require(cfg, "intermediate_size"), vocab=require(cfg, "vocab_size"),
                  tie=require(cfg, "tie_word_embeddings", bool, default=False),
                  max_pos=require(cfg, "max_position_embeddings", default=None), act=str(cfg.get("hidden_act", "gelu_new")))


def inventory(spec) -> list[ModuleEntry]:
    h, d, i = spec.hidden_size, spec.head_dim, spec.intermediate_size
    q_out, kv_out = spec.num_attention_heads * d, spec.num_key_value_heads * d
    qk_ln = bool(spec.config.get("qk_layernorm", False))
    out: list[ModuleEntry] = [embedding("model.embed_tokens", spec.vocab_size, h)]
    for n in range(spec.num_layers):
        p, kw = f"model.layers.{n}", dict(layer=n, stack="decoder")
        out += [
            linear(f"{p}.self_attn.q_proj", h, q_out, True, role="q", **kw),
            linear(f"{p}.self_attn.k_proj", h, kv_out, True, role="k", **kw),
            linear(f"{p}.self_attn.v_proj", h, kv_out, True, role="v", **kw),
            linear(f"{p}.self_attn.dense", q_out, h, True, role="o", **kw),
        ]
        if qk_ln:
            # sized hidden_size // num_attention_heads in PhiAttention, not head_dim
            qk = h // spec.num_attention_heads
            out += [norm(f"{p}.self_attn.q_layernorm", qk, bias=True, rms=False, **kw),
                    norm(f"{p}.self_attn.k_layernorm", qk, bias=True, rms=False, **kw)]
        out += [
            linear(f"{p}.mlp.fc1", h, i, True, role="mlp_up", **kw),
            linear(f"{p}.mlp.fc2", i, h, True, role="mlp_down", **kw),
            norm(f"{p}.input_layernorm", h, bias=True, rms=False, **kw),
        ]
    out.append(norm("model.final_layernorm", h, bias=True, rms=False, role="final_norm"))
    out.append(lm_head("lm_head", h, spec.vocab_size, bias=True,
                       tied_to="model.embed_tokens.weight" if spec.tie_word_embeddings else None))
    return out
