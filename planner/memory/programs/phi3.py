"""Forward program of Phi-3, mirroring transformers 5.24 ``modeling_phi3.py`` statement by statement.

What differs from llama: one fused ``qkv_proj`` sliced into q / k / v (each slice's backward
allocates a zero tensor of the fused size: three full-size gradients accumulate), rotary applied to
slices and re-assembled with ``torch.cat`` (q and k become new head-major tensors, so the SDPA
output is copied by ``transpose(1, 2).contiguous()``), residual dropouts (``resid_pdrop``), and a
fused ``gate_up_proj`` chunked into two views.
"""

from __future__ import annotations

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs import _rope
from planner.memory.programs._decoder import KVCache, require_attn, sliding_regime
from planner.memory.programs._ops_extra import activation as act_fn
from planner.memory.programs._ops_extra import slices, split
from planner.memory.sim import Tensor

MODEL_TYPES = ("phi3",)

#: Sweeps crossing ``sliding_window`` replay each side apart (the SDPA mask exists from there on).
regime = sliding_regime


def buffer_bytes(ctx: Context) -> int:
    return _rope.rotary_buffer_bytes(ctx)


def _p(ctx: Context, key: str) -> float:
    return float(ctx.spec.config.get(key) or 0.0)


def attention(ctx: Context, x: Tensor, prefix: str, cos, sin, mask, cache: KVCache, batch, seq):
    sim, spec = ctx.sim, ctx.spec
    nh, nkv, hd = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    qkv = ctx.linear(x, f"{prefix}.qkv_proj")
    n = qkv.numel // (nh + 2 * nkv)  # tokens x head_dim
    q, k, v = slices(sim, qkv, [nh * n, nkv * n, nkv * n])
    q_embed = _rope.apply_rotary_cat(ctx, q, cos, sin)
    del q
    k_embed = _rope.apply_rotary_cat(ctx, k, cos, sin)
    del k
    k_embed, v = cache.update(k_embed, v)
    if ctx.settings.attn_implementation == "eager":
        out, weights = _rope.eager(ctx, q_embed, k_embed, v, mask, batch, seq, q_view=False, k_view=False,
                                   v_view=not cache.enabled, dropout=_p(ctx, "attention_dropout"), kv_len=seq + cache.prefix_len)
    else:
        out = _rope.sdpa(ctx, q_embed, k_embed, v, batch, seq, q_head_major=True, mask=mask)
        weights = None
    del q_embed, k_embed, v
    o = ctx.linear(out, f"{prefix}.o_proj")
    del out
    return o, weights  # ``qkv`` dies when the attention returns


def mlp(ctx: Context, x: Tensor, prefix: str) -> Tensor:
    """``up_states = gate_up_proj(x); gate, up_states = chunk(2); up_states * act(gate)``."""
    sim = ctx.sim
    up_states = ctx.linear(x, f"{prefix}.gate_up_proj")
    gate, up = split(sim, up_states, [up_states.numel // 2] * 2)
    del up_states
    a = act_fn(sim, gate, str(ctx.spec.config.get("hidden_act") or "silu"))  # saves its input: a view of the fused output
    del gate
    m = ops.mul(sim, up, a)
    del up, a
    return ctx.linear(m, f"{prefix}.down_proj")


def decoder_layer(ctx: Context, h: Tensor, n: int, cos, sin, mask, cache, batch, seq) -> Tensor:
    sim, spec = ctx.sim, ctx.spec
    hidden = spec.hidden_size
    p = f"model.layers.{n}"
    drop = _p(ctx, "resid_pdrop")
    residual = h
    hs = ops.rms_norm(sim, h, hidden, ctx.param(f"{p}.input_layernorm"))
    del h
    hs, self_attn_weights = attention(ctx, hs, f"{p}.self_attn", cos, sin, mask, cache, batch, seq)
    d = ops.dropout(sim, hs, drop)
    hs = ops.add(sim, residual, d)
    del d
    residual = hs
    hs = ops.rms_norm(sim, hs, hidden, ctx.param(f"{p}.post_attention_layernorm"))
    hs = mlp(ctx, hs, f"{p}.mlp")
    d = ops.dropout(sim, hs, drop)
    hs = ops.add(sim, residual, d)
    return hs


def forward(ctx: Context, batch, seq):
    require_attn(ctx, ("sdpa", "eager", "flash_attention_2"), "phi3")
    return _rope.decoder_forward(ctx, decoder_layer, batch, seq)
