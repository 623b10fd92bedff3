"""GPT-2 (``model_type: gpt2``): transformers' ``Conv1D`` layers (weight stored (in, out)), fused
``c_attn`` (H -> 3H), learned positions (``wpe``), LayerNorms with bias, LM head tied to ``wte``."""

from __future__ import annotations

from typing import Any

from planner.architectures._config import common, divisible, require
from planner.architectures.base import ModuleEntry, conv1d, embedding, lm_head, norm

MODEL_TYPES = ("gpt2",)


def parse(cfg: dict[str, Any]) -> dict[str, Any]:
    hidden = require(cfg, ("n_embd", "hidden_size"))
    heads = require(cfg, ("n_head", "num_attention_heads"))
    return common(cfg, model_type="gpt2", architecture="GPT2LMHeadModel", task="causal_lm", hidden=hidden,
                  layers=require(cfg, ("n_layer", "num_hidden_layers")), heads=heads, kv_heads=heads,
                  head_dim=divisible(hidden, heads, "n_embd", "n_head"),
                  intermediate=require(cfg, "n_inner", default=None) or 4 * hidden, vocab=require(cfg, "vocab_size"),
                  tie=require(cfg, "tie_word_embeddings", bool, default=True),
                  max_pos=require(cfg, ("n_positions", "max_position_embeddings")),
                  act=str(cfg.get("activation_function", "gelu_new")))


def inventory(spec) -> list[ModuleEntry]:
    h, i = spec.hidden_size, spec.intermediate_size
    out: list[ModuleEntry] = [
        embedding("transformer.wte", spec.vocab_size, h),
        embedding("transformer.wpe", spec.max_position_embeddings, h, role="pos_embed"),
    ]
    for n in range(spec.num_layers):
        p, kw = f"transformer.h.{n}", dict(layer=n, stack="decoder")
        out += [
            norm(f"{p}.ln_1", h, bias=True, rms=False, **kw),
            conv1d(f"{p}.attn.c_attn", h, 3 * h, role="qkv", **kw),
            conv1d(f"{p}.attn.c_proj", h, h, role="o", **kw),
            norm(f"{p}.ln_2", h, bias=True, rms=False, **kw),
            conv1d(f"{p}.mlp.c_fc", h, i, role="mlp_up", **kw),
            conv1d(f"{p}.mlp.c_proj", i, h, role="mlp_down", **kw),
        ]
    out.append(norm("transformer.ln_f", h, bias=True, rms=False, role="final_norm"))
    out.append(lm_head("lm_head", h, spec.vocab_size, tied_to="transformer.wte.weight" if spec.tie_word_embeddings else None))
    return out
