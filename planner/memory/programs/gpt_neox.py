"""Forward program of GPT-NeoX / Pythia, mirroring transformers 5.24 ``modeling_gpt_neox.py``.

What differs from llama: one fused ``query_key_value`` viewed per head (B, H, L, 3D) and chunked
into q / k / v views (backward: ``cat`` of the three gradients, then a copying ``reshape`` of the
transposed result), partial rotary (``rotary_pct``) re-assembled with ``torch.cat``, LayerNorms,
GELU MLP, parallel (default) or sequential residual, embedding / attention / hidden dropouts.
"""

from __future__ import annotations

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs import _rope
from planner.memory.programs._decoder import (KVCache, causal_lm_loss, eager_causal_mask, embeddings_output,
                                               require_attn, run_layers)
from planner.memory.programs._ops_extra import _grad, activation as act_fn, split
from planner.memory.sim import Tensor

MODEL_TYPES = ("gpt_neox",)


def buffer_bytes(ctx: Context) -> int:
    return _rope.rotary_buffer_bytes(ctx)


def _p(ctx: Context, key: str) -> float:
    return float(ctx.spec.config.get(key) or 0.0)


def _ln(ctx: Context, x: Tensor, module: str) -> Tensor:
    return ops.layer_norm(ctx.sim, x, ctx.spec.hidden_size, ctx.param(module), ctx.param(module, "bias"))


def _head_view(sim, x: Tensor) -> Tensor:
    """``.view(B, L, H, 3D).transpose(1, 2)``: a view whose backward ``reshape`` copies the (now
    contiguous head-major) gradient back to (B, L, 3H)."""
    from planner.memory.programs._ops_extra import View

    out = View(sim, x, x.numel)
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        sim.node([], lambda outs: {xk: _grad(sim, xn, xd)}, [out], inputs=[x])
    return out


def attention(ctx: Context, x: Tensor, prefix: str, cos, sin, mask, cache: KVCache, batch, seq):
    sim = ctx.sim
    qkv = _head_view(sim, ctx.linear(x, f"{prefix}.query_key_value"))
    query_states, key_states, value_states = split(sim, qkv, [qkv.numel // 3] * 3)
    q_embed = _rope.apply_rotary_cat(ctx, query_states, cos, sin)
    k_embed = _rope.apply_rotary_cat(ctx, key_states, cos, sin)
    query_states, key_states = q_embed, k_embed
    del q_embed, k_embed
    key_states, value_states = cache.update(key_states, value_states)
    if ctx.settings.attn_implementation == "eager":
        out, weights = _rope.eager(ctx, query_states, key_states, value_states, mask, batch, seq, q_view=False,
                                   k_view=False, v_view=not cache.enabled, dropout=_p(ctx, "attention_dropout"))
    else:
        out = _rope.sdpa(ctx, query_states, key_states, value_states, batch, seq, q_head_major=True)
        weights = None
    o = ctx.linear(out, f"{prefix}.dense")
    del out
    return o, weights  # qkv dies here


def mlp(ctx: Context, x: Tensor, prefix: str) -> Tensor:
    h = ctx.linear(x, f"{prefix}.dense_h_to_4h")
    a = act_fn(ctx.sim, h, str(ctx.spec.config.get("hidden_act") or "gelu"))
    del h
    return ctx.linear(a, f"{prefix}.dense_4h_to_h")


def layer(ctx: Context, h: Tensor, n: int, cos, sin, mask, cache, batch, seq) -> Tensor:
    sim = ctx.sim
    p = f"gpt_neox.layers.{n}"
    drop = _p(ctx, "hidden_dropout")
    x = _ln(ctx, h, f"{p}.input_layernorm")
    attn_output, _ = attention(ctx, x, f"{p}.attention", cos, sin, mask, cache, batch, seq)
    del x
    attn_output = ops.dropout(sim, attn_output, drop)
    if ctx.spec.config.get("use_parallel_residual", True):
        x = _ln(ctx, h, f"{p}.post_attention_layernorm")
        mlp_output = mlp(ctx, x, f"{p}.mlp")
        del x
        mlp_output = ops.dropout(sim, mlp_output, drop)
        s = ops.add(sim, mlp_output, attn_output)
        out = ops.add(sim, s, h)
        del s
        return out
    attn_output = ops.add(sim, attn_output, h)
    x = _ln(ctx, attn_output, f"{p}.post_attention_layernorm")
    mlp_output = mlp(ctx, x, f"{p}.mlp")
    del x
    mlp_output = ops.dropout(sim, mlp_output, drop)
    return ops.add(sim, mlp_output, attn_output)


def forward(ctx: Context, batch, seq):
    require_attn(ctx, ("sdpa", "eager", "flash_attention_2"), "gpt_neox")
    sim, spec = ctx.sim, ctx.spec
    ids = sim.tensor(batch * seq, "int64", category="inputs")
    labels = sim.tensor(batch * seq, "int64", category="inputs")
    cache = KVCache(ctx)
    w = ctx.param("gpt_neox.embed_in")
    inputs_embeds = embeddings_output(ctx, ops.embedding(sim, ids, spec.hidden_size, w, w.dtype))
    arange = sim.tensor(seq, "int64", category="inputs")
    position_ids = sim.tensor(seq, "int64", category="inputs")
    del arange
    mask = eager_causal_mask(ctx, batch, seq) if ctx.settings.attn_implementation == "eager" else None
    h = ops.dropout(sim, inputs_embeds, _p(ctx, "hidden_dropout"))
    cos, sin = _rope.rotary_embeddings(ctx, seq, h.dtype)

    def fn(x, n, cos=cos, sin=sin, mask=mask):
        return layer(ctx, x, n, cos, sin, mask, cache, batch, seq)

    h = run_layers(ctx, h, fn)
    h = _ln(ctx, h, "gpt_neox.final_layer_norm")
    del fn, cos, sin, mask, inputs_embeds, position_ids  # GPTNeoXModel.forward returns
    loss = causal_lm_loss(ctx, h, batch, seq)
    return loss, {"batch": (ids, labels)}
