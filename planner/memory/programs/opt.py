"""Forward program of OPT, mirroring transformers 5.24 ``modeling_opt.py``.

What differs from llama: learned positions computed from a float ``ones`` mask
(``cumsum``, ``* mask - 1``, ``.long()``, ``+ offset``; the position embeddings are a full
B x L x H tensor), optional ``project_in`` / ``project_out``, LayerNorms (pre- or post-norm),
the query scaled right after ``q_proj`` (a new tensor), ReLU MLP (saves its output), dropouts.
"""

from __future__ import annotations

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs import _rope
from planner.memory.programs._decoder import (KVCache, causal_lm_loss, eager_causal_mask, embeddings_output,
                                               require_attn, run_layers)
from planner.memory.programs._ops_extra import activation as act_fn
from planner.memory.sim import Tensor

MODEL_TYPES = ("opt",)


def buffer_bytes(ctx: Context) -> int:
    return 0


def _p(ctx: Context, key: str) -> float:
    return float(ctx.spec.config.get(key) or 0.0)


def _ln(ctx: Context, x: Tensor, module: str) -> Tensor:
    return ops.layer_norm(ctx.sim, x, ctx.spec.hidden_size, ctx.param(module), ctx.param(module, "bias"))


def activation(ctx: Context, x: Tensor) -> Tensor:
    return act_fn(ctx.sim, x, str(ctx.spec.config.get("activation_function") or "relu"))


def attention(ctx: Context, x: Tensor, prefix: str, mask, cache: KVCache, batch, seq):
    sim = ctx.sim
    q = ctx.linear(x, f"{prefix}.q_proj")
    query_states = ops.mul(sim, q, None)  # q_proj(x) * scaling
    del q
    key_states = ctx.linear(x, f"{prefix}.k_proj")
    value_states = ctx.linear(x, f"{prefix}.v_proj")
    key_states, value_states = cache.update(key_states, value_states)
    if ctx.settings.attn_implementation == "eager":
        out, weights = _rope.eager(ctx, query_states, key_states, value_states, mask, batch, seq, q_view=True,
                                   k_view=not cache.enabled, v_view=not cache.enabled,
                                   dropout=_p(ctx, "attention_dropout"))
    else:
        out = _rope.sdpa(ctx, query_states, key_states, value_states, batch, seq, q_head_major=False)
        weights = None
    del query_states, key_states, value_states
    o = ctx.linear(out, f"{prefix}.out_proj")
    del out
    return o, weights


def decoder_layer(ctx: Context, h: Tensor, n: int, mask, cache, batch, seq) -> Tensor:
    sim = ctx.sim
    p = f"model.decoder.layers.{n}"
    pre = ctx.spec.config.get("do_layer_norm_before", True)
    drop = _p(ctx, "dropout")
    residual = h
    hs = _ln(ctx, h, f"{p}.self_attn_layer_norm") if pre else h
    del h
    hs, _ = attention(ctx, hs, f"{p}.self_attn", mask, cache, batch, seq)
    hs = ops.dropout(sim, hs, drop)
    hs = ops.add(sim, residual, hs)
    if not pre:
        hs = _ln(ctx, hs, f"{p}.self_attn_layer_norm")
    residual = hs
    if pre:
        hs = _ln(ctx, hs, f"{p}.final_layer_norm")
    hs = ctx.linear(hs, f"{p}.fc1")
    hs = activation(ctx, hs)
    hs = ctx.linear(hs, f"{p}.fc2")
    hs = ops.dropout(sim, hs, drop)
    hs = ops.add(sim, residual, hs)
    if not pre:
        hs = _ln(ctx, hs, f"{p}.final_layer_norm")
    return hs


def forward(ctx: Context, batch, seq):
    require_attn(ctx, ("sdpa", "eager", "flash_attention_2"), "opt")
    sim, spec = ctx.sim, ctx.spec
    ids = sim.tensor(batch * seq, "int64", category="inputs")
    labels = sim.tensor(batch * seq, "int64", category="inputs")
    cache = KVCache(ctx)
    w = ctx.param("model.decoder.embed_tokens")
    proj = int(spec.config.get("word_embed_proj_dim") or spec.hidden_size)
    inputs_embeds = embeddings_output(ctx, ops.embedding(sim, ids, proj, w, w.dtype))
    # position_attention_mask = ones(B, L) (fp32); position_ids = (cumsum(m) * m - 1).long()
    position_attention_mask = sim.tensor(batch * seq, "float32", category="inputs")
    c = sim.tensor(batch * seq, "float32", category="inputs")
    m = sim.tensor(batch * seq, "float32", category="inputs")
    del c
    s = sim.tensor(batch * seq, "float32", category="inputs")
    del m
    position_ids = sim.tensor(batch * seq, "int64", category="inputs")
    del s
    mask = eager_causal_mask(ctx, batch, seq) if ctx.settings.attn_implementation == "eager" else None
    shifted = sim.tensor(batch * seq, "int64", category="inputs")  # position_ids + offset
    wp = ctx.param("model.decoder.embed_positions")
    pos_embeds = ops.embedding(sim, shifted, spec.hidden_size, wp, wp.dtype)
    del shifted
    if "model.decoder.project_in" in spec.inventory.by_path:
        inputs_embeds = ctx.linear(inputs_embeds, "model.decoder.project_in")
    h = ops.add(sim, inputs_embeds, pos_embeds)

    def layer(x, n, mask=mask):
        return decoder_layer(ctx, x, n, mask, cache, batch, seq)

    h = run_layers(ctx, h, layer)
    if "model.decoder.final_layer_norm" in spec.inventory.by_path:
        h = _ln(ctx, h, "model.decoder.final_layer_norm")
    if "model.decoder.project_out" in spec.inventory.by_path:
        h = ctx.linear(h, "model.decoder.project_out")
    del layer, mask, inputs_embeds, pos_embeds, position_ids, position_attention_mask  # OPTDecoder returns
    loss = causal_lm_loss(ctx, h, batch, seq)
    return loss, {"batch": (ids, labels)}
