"""T5 / mT5 encoder-decoders (``model_type: t5 | mt5``): ``shared`` embedding used by both stacks,
q/k/v/o without biases (inner dim = heads x d_kv), relative attention bias in block 0 of each
stack, ``DenseReluDense`` with ``wi`` or gated ``wi_0``/``wi_1``, T5LayerNorm (RMS, weight only).

Tying: transformers 5 builds T5 with ``lm_head`` tied to ``shared`` whatever the file says, but
``from_pretrained`` unties it when the checkpoint stores a separate ``lm_head`` (T5 v1.1, flan-t5,
mT5, T0: ``tie_word_embeddings: false``). The planner follows the file, i.e. the model a user
actually fine-tunes; the executors untie the same way (see executors.build).
"""

from __future__ import annotations

from typing import Any

from planner.architectures._config import common, require
from planner.architectures.base import ModuleEntry, embedding, lm_head, linear, norm

MODEL_TYPES = ("t5", "mt5")


def parse(cfg: dict[str, Any]) -> dict[str, Any]:
    mt = cfg["model_type"]
    d_model = require(cfg, "d_model")
    heads = require(cfg, "num_heads")
    enc_layers = require(cfg, "num_layers")
    dec_layers = require(cfg, "num_decoder_layers", default=enc_layers)
    ff = str(cfg.get("feed_forward_proj", "relu" if mt == "t5" else "gated-gelu"))
    fields = common(cfg, model_type=mt, architecture="T5ForConditionalGeneration" if mt == "t5" else "MT5ForConditionalGeneration",
                    task="seq2seq_lm", hidden=d_model, layers=dec_layers, heads=heads, kv_heads=heads,
                    head_dim=require(cfg, "d_kv"), intermediate=require(cfg, "d_ff"), vocab=require(cfg, "vocab_size"),
                    tie=require(cfg, "tie_word_embeddings", bool, default=True), max_pos=None, act=ff)
    fields["num_encoder_layers"] = enc_layers
    return fields


def _block(stack: str, n: int, spec, gated: bool, buckets: int) -> list[ModuleEntry]:
    h, inner, ff = spec.hidden_size, spec.num_attention_heads * spec.head_dim, spec.intermediate_size
    p, kw = f"{stack}.block.{n}.layer", dict(layer=n, stack=stack)

    def attn(prefix: str, kind: str) -> list[ModuleEntry]:
        mods = [linear(f"{prefix}.{x}", h, inner, False, role=x if kind == "self" else f"cross_{x}", **kw) for x in "qkv"]
        mods.append(linear(f"{prefix}.o", inner, h, False, role="o" if kind == "self" else "cross_o", **kw))
        if kind == "self" and n == 0:
            mods.append(embedding(f"{prefix}.relative_attention_bias", buckets, spec.num_attention_heads,
                                  role="relative_attention_bias", **kw))
        return mods

    out = [*attn(f"{p}.0.SelfAttention", "self"), norm(f"{p}.0.layer_norm", h, bias=False, rms=True, **kw)]
    ff_idx = 1
    if stack == "decoder":
        out += [*attn(f"{p}.1.EncDecAttention", "cross"), norm(f"{p}.1.layer_norm", h, bias=False, rms=True, **kw)]
        ff_idx = 2
    q = f"{p}.{ff_idx}.DenseReluDense"
    if gated:
        out += [linear(f"{q}.wi_0", h, ff, False, role="mlp_gate", **kw), linear(f"{q}.wi_1", h, ff, False, role="mlp_up", **kw)]
    else:
        out.append(linear(f"{q}.wi", h, ff, False, role="mlp_up", **kw))
    out += [linear(f"{q}.wo", ff, h, False, role="mlp_down", **kw),
            norm(f"{p}.{ff_idx}.layer_norm", h, bias=False, rms=True, **kw)]
    return out


def inventory(spec) -> list[ModuleEntry]:
    h, v = spec.hidden_size, spec.vocab_size
    gated = spec.hidden_act.startswith("gated-")
    buckets = require(spec.config, "relative_attention_num_buckets", default=32)
    out: list[ModuleEntry] = [embedding("shared", v, h)]
    for stack, layers in (("encoder", spec.num_encoder_layers), ("decoder", spec.num_layers)):
        out.append(embedding(f"{stack}.embed_tokens", v, h, tied_to="shared.weight"))
        for n in range(layers):
            out += _block(stack, n, spec, gated, buckets)
        out.append(norm(f"{stack}.final_layer_norm", h, bias=False, rms=True, stack=stack, role="final_norm"))
    out.append(lm_head("lm_head", h, v, tied_to="shared.weight" if spec.tie_word_embeddings else None))
    return out
