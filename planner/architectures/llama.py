"""Llama-shaped decoders: llama, mistral, qwen2, qwen3, gemma, gemma2, and mixtral (MoE).

Shapes as in transformers 5 ``modeling_<type>.py``: q/k/v/o projections with GQA
(``num_key_value_heads``) and an explicit ``head_dim`` where the config sets one (gemma,
qwen3, mistral-nemo); a gated MLP (gate/up/down); RMSNorm. Per-type differences:
qwen2 has q/k/v biases; qwen3 adds per-head ``q_norm``/``k_norm``; gemma2 adds
pre/post-feedforward norms; mixtral replaces the MLP with a router and fused expert tensors
(``gate_up_proj`` (E, 2I, H), ``down_proj`` (E, H, I)).
"""

from __future__ import annotations

from typing import Any

from planner.architectures._config import common, require
from planner.errors import ConfigError
from planner.architectures.base import ModuleEntry, ModuleKind, ParamEntry, embedding, lm_head, linear, norm

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "mixtral")

# transformers' defaults per model type when the key is absent from config.json (config classes,
# transformers 5.24 configuration_<type>.py). An absent key takes the class default; an explicit
# null falls back to the derived value (num_attention_heads; hidden_size // num_attention_heads).
_TIE_DEFAULT = {"gemma": True, "gemma2": True}
_KV_HEADS_DEFAULT = {"mistral": 8, "mixtral": 8, "qwen2": 32, "qwen3": 32, "gemma": 16, "gemma2": 4}
_HEAD_DIM_DEFAULT = {"qwen3": 128, "gemma": 256, "gemma2": 256}
# Which types read ``attention_bias`` / ``mlp_bias`` (modeling_<type>.py, transformers 5.24): mistral and
# mixtral hard-code bias=False, qwen2 hard-codes q/k/v biases and an unbiased o_proj, only llama reads mlp_bias.
_ATTENTION_BIAS_TYPES = frozenset({"llama", "qwen3", "gemma", "gemma2"})
_MLP_BIAS_TYPES = frozenset({"llama"})
_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
         "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
         "mixtral": "MixtralForCausalLM"}


def parse(cfg: dict[str, Any]) -> dict[str, Any]:
    mt = cfg["model_type"]
    hidden = require(cfg, "hidden_size")
    heads = require(cfg, "num_attention_heads")
    kv_default = _KV_HEADS_DEFAULT.get(mt, heads) if "num_key_value_heads" not in cfg else heads
    kv = require(cfg, "num_key_value_heads", default=kv_default)
    if "num_key_value_heads" not in cfg and heads % kv:
        raise ConfigError(f"num_key_value_heads is missing, and transformers' {_ARCH[mt].removesuffix('ForCausalLM')}Config "
                          f"default ({kv}) does not divide num_attention_heads={heads}; set num_key_value_heads",
                          field="num_key_value_heads")
    hd_default = _HEAD_DIM_DEFAULT.get(mt) if "head_dim" not in cfg else None
    head_dim = require(cfg, "head_dim", default=None) or hd_default or hidden // heads
    extra = {}
    if mt == "mixtral":
        extra = dict(num_experts=require(cfg, "num_local_experts"), num_experts_per_tok=require(cfg, "num_experts_per_tok"))
    return common(
        cfg, model_type=mt, architecture=_ARCH[mt], task="causal_lm", hidden=hidden,
        layers=require(cfg, "num_hidden_layers"), heads=heads, kv_heads=kv, head_dim=head_dim,
        intermediate=require(cfg, "intermediate_size"), vocab=require(cfg, "vocab_size"),
        tie=require(cfg, "tie_word_embeddings", bool, default=_TIE_DEFAULT.get(mt, False)),
        max_pos=require(cfg, "max_position_embeddings", default=None),
        act=str(cfg.get("hidden_act") or cfg.get("hidden_activation") or "silu"), **extra,
    )


def inventory(spec) -> list[ModuleEntry]:
    cfg, mt = spec.config, spec.model_type
    h, i, d = spec.hidden_size, spec.intermediate_size, spec.head_dim
    q_out, kv_out = spec.num_attention_heads * d, spec.num_key_value_heads * d
    attn_bias = mt in _ATTENTION_BIAS_TYPES and bool(cfg.get("attention_bias", False))
    qkv_bias = mt == "qwen2" or attn_bias
    o_bias = attn_bias
    mlp_bias = mt in _MLP_BIAS_TYPES and bool(cfg.get("mlp_bias", False))
    out: list[ModuleEntry] = [embedding("model.embed_tokens", spec.vocab_size, h)]
    for n in range(spec.num_layers):
        p = f"model.layers.{n}"
        kw = dict(layer=n, stack="decoder")
        out += [
            linear(f"{p}.self_attn.q_proj", h, q_out, qkv_bias, role="q", **kw),
            linear(f"{p}.self_attn.k_proj", h, kv_out, qkv_bias, role="k", **kw),
            linear(f"{p}.self_attn.v_proj", h, kv_out, qkv_bias, role="v", **kw),
            linear(f"{p}.self_attn.o_proj", q_out, h, o_bias, role="o", **kw),
        ]
        if mt == "qwen3":
            out += [norm(f"{p}.self_attn.q_norm", d, bias=False, rms=True, **kw),
                    norm(f"{p}.self_attn.k_norm", d, bias=False, rms=True, **kw)]
        if mt == "mixtral":
            e = spec.num_experts
            out += [
                ModuleEntry(f"{p}.mlp.gate", ModuleKind.ROUTER, (ParamEntry("weight", (e, h)),), h, e, n, "decoder", "router"),
                ModuleEntry(f"{p}.mlp.experts", ModuleKind.EXPERTS,
                            (ParamEntry("gate_up_proj", (e, 2 * i, h)), ParamEntry("down_proj", (e, h, i))),
                            h, h, n, "decoder", "experts"),
            ]
        else:
            out += [
                linear(f"{p}.mlp.gate_proj", h, i, mlp_bias, role="mlp_gate", **kw),
                linear(f"{p}.mlp.up_proj", h, i, mlp_bias, role="mlp_up", **kw),
                linear(f"{p}.mlp.down_proj", i, h, mlp_bias, role="mlp_down", **kw),
            ]
        names = ["input_layernorm", "post_attention_layernorm"]
        if mt == "gemma2":
            names += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
        out += [norm(f"{p}.{nm}", h, bias=False, rms=True, **kw) for nm in names]
    out.append(norm("model.norm", h, bias=False, rms=True, role="final_norm"))
    out.append(lm_head("lm_head", h, spec.vocab_size, tied_to="model.embed_tokens.weight" if spec.tie_word_embeddings else None))
    return out
