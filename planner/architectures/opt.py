"""OPT (``model_type: opt``): learned positions with OPT's 2-row offset, optional
``project_in``/``project_out`` when ``word_embed_proj_dim`` != hidden (opt-350m), q/k/v/out and
fc1/fc2 biased unless ``enable_bias`` is false, LayerNorms with weight and bias unless
``layer_norm_elementwise_affine`` is false (``enable_bias`` does not reach them)."""

from __future__ import annotations

from typing import Any

from planner.architectures._config import common, divisible, require
from planner.architectures.base import ModuleEntry, embedding, lm_head, linear, norm

MODEL_TYPES = ("opt",)

#: OPTLearnedPositionalEmbedding allocates max_position_embeddings + 2 rows (transformers modeling_opt.py).
OPT_POSITION_OFFSET = 2


def parse(cfg: dict[str, Any]) -> dict[str, Any]:
    hidden = require(cfg, "hidden_size")
    heads = require(cfg, "num_attention_heads")
    return common(cfg, model_type="opt", architecture="OPTForCausalLM", task="causal_lm", hidden=hidden,
                  layers=require(cfg, "num_hidden_layers"), heads=heads, kv_heads=heads,
                  head_dim=divisible(hidden, heads, "hidden_size", "num_attention_heads"),
                  intermediate=require(cfg, "ffn_dim"), vocab=require(cfg, "vocab_size"),
                  tie=require(cfg, "tie_word_embeddings", bool, default=True),
                  max_pos=require(cfg, "max_position_embeddings"), act=str(cfg.get("activation_function", "relu")))


def inventory(spec) -> list[ModuleEntry]:
    cfg, h, i = spec.config, spec.hidden_size, spec.intermediate_size
    proj = require(cfg, "word_embed_proj_dim", default=h)
    bias = bool(cfg.get("enable_bias", True))
    affine = bool(cfg.get("layer_norm_elementwise_affine", True))

    def ln(path: str, **kw) -> list[ModuleEntry]:
        # nn.LayerNorm(h, elementwise_affine=...): weight and bias together, whatever enable_bias says
        return [norm(path, h, bias=True, rms=False, **kw)] if affine else []

    out: list[ModuleEntry] = [
        embedding("model.decoder.embed_tokens", spec.vocab_size, proj),
        embedding("model.decoder.embed_positions", spec.max_position_embeddings + OPT_POSITION_OFFSET, h, role="pos_embed"),
    ]
    if proj != h:
        out += [linear("model.decoder.project_out", h, proj, False, role="project_out"),
                linear("model.decoder.project_in", proj, h, False, role="project_in")]
    if cfg.get("do_layer_norm_before", True) and not cfg.get("_remove_final_layer_norm", False):
        out += ln("model.decoder.final_layer_norm", role="final_norm")
    for n in range(spec.num_layers):
        p, kw = f"model.decoder.layers.{n}", dict(layer=n, stack="decoder")
        out += [
            linear(f"{p}.self_attn.k_proj", h, h, bias, role="k", **kw),
            linear(f"{p}.self_attn.v_proj", h, h, bias, role="v", **kw),
            linear(f"{p}.self_attn.q_proj", h, h, bias, role="q", **kw),
            linear(f"{p}.self_attn.out_proj", h, h, bias, role="o", **kw),
            *ln(f"{p}.self_attn_layer_norm", **kw),
            linear(f"{p}.fc1", h, i, bias, role="mlp_up", **kw),
            linear(f"{p}.fc2", i, h, bias, role="mlp_down", **kw),
            *ln(f"{p}.final_layer_norm", **kw),
        ]
    out.append(lm_head("lm_head", proj, spec.vocab_size,
                       tied_to="model.decoder.embed_tokens.weight" if spec.tie_word_embeddings else None))
    return out
