"""BERT / RoBERTa encoders with their masked-LM heads (``BertForMaskedLM``,
``RobertaForMaskedLM``; no pooler). Biased q/k/v, LayerNorms with bias, absolute position and
token-type embeddings; the MLM decoder's weight is tied to the word embeddings and its bias to the
head's own ``bias`` parameter (both only under ``tie_word_embeddings``, the default)."""

from __future__ import annotations

from typing import Any

from planner.architectures._config import common, divisible, require
from planner.architectures.base import ModuleEntry, ModuleKind, ParamEntry, embedding, linear, norm

MODEL_TYPES = ("bert", "roberta")


def parse(cfg: dict[str, Any]) -> dict[str, Any]:
    mt = cfg["model_type"]
    hidden = require(cfg, "hidden_size")
    heads = require(cfg, "num_attention_heads")
    return common(cfg, model_type=mt, architecture="BertForMaskedLM" if mt == "bert" else "RobertaForMaskedLM",
                  task="masked_lm", hidden=hidden, layers=require(cfg, "num_hidden_layers"), heads=heads, kv_heads=heads,
                  head_dim=divisible(hidden, heads, "hidden_size", "num_attention_heads"),
                  intermediate=require(cfg, "intermediate_size"), vocab=require(cfg, "vocab_size"),
                  tie=require(cfg, "tie_word_embeddings", bool, default=True),
                  max_pos=require(cfg, "max_position_embeddings"), act=str(cfg.get("hidden_act", "gelu")))


def inventory(spec) -> list[ModuleEntry]:
    mt, h, i, v = spec.model_type, spec.hidden_size, spec.intermediate_size, spec.vocab_size
    base = mt  # "bert." or "roberta."
    types = require(spec.config, "type_vocab_size", default=2)
    word = embedding(f"{base}.embeddings.word_embeddings", v, h)
    pos = embedding(f"{base}.embeddings.position_embeddings", spec.max_position_embeddings, h, role="pos_embed")
    tok = embedding(f"{base}.embeddings.token_type_embeddings", types, h, role="type_embed")
    ln = norm(f"{base}.embeddings.LayerNorm", h, bias=True, rms=False, role="embed_norm")
    out: list[ModuleEntry] = [word, pos, tok, ln] if mt == "bert" else [word, tok, ln, pos]
    for n in range(spec.num_layers):
        p, kw = f"{base}.encoder.layer.{n}", dict(layer=n, stack="encoder")
        out += [
            linear(f"{p}.attention.self.query", h, h, True, role="q", **kw),
            linear(f"{p}.attention.self.key", h, h, True, role="k", **kw),
            linear(f"{p}.attention.self.value", h, h, True, role="v", **kw),
            linear(f"{p}.attention.output.dense", h, h, True, role="o", **kw),
            norm(f"{p}.attention.output.LayerNorm", h, bias=True, rms=False, **kw),
            linear(f"{p}.intermediate.dense", h, i, True, role="mlp_up", **kw),
            linear(f"{p}.output.dense", i, h, True, role="mlp_down", **kw),
            norm(f"{p}.output.LayerNorm", h, bias=True, rms=False, **kw),
        ]
    head = "cls.predictions" if mt == "bert" else "lm_head"
    dense = f"{head}.transform.dense" if mt == "bert" else f"{head}.dense"
    head_ln = f"{head}.transform.LayerNorm" if mt == "bert" else f"{head}.layer_norm"
    # transformers 5 ties the decoder's weight to the word embeddings and its bias to the head's
    # ``bias`` both under tie_word_embeddings; untied, the decoder owns both.
    tied_w = f"{base}.embeddings.word_embeddings.weight" if spec.tie_word_embeddings else None
    tied_b = f"{head}.bias" if spec.tie_word_embeddings else None
    out += [
        ModuleEntry(head, ModuleKind.OTHER, (ParamEntry("bias", (v,)),), role="lm_head_bias"),
        linear(dense, h, h, True, role="head_dense"),
        norm(head_ln, h, bias=True, rms=False, role="head_norm"),
        ModuleEntry(f"{head}.decoder", ModuleKind.LINEAR,
                    (ParamEntry("weight", (v, h), tied_w), ParamEntry("bias", (v,), tied_b)), h, v, role="lm_head"),
    ]
    return out
