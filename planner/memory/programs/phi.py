"""Forward program of Phi-1 / 1.5 / 2, mirroring transformers 5.24 ``modeling_phi.py``.

What differs from llama: LayerNorms with bias, one norm per block feeding attention and MLP in
parallel (``attn + mlp + residual``), partial rotary (``query_rot`` / ``query_pass`` slices,
re-assembled with ``torch.cat``: the attention's locals keep the rotated halves and the
projections alive until it returns), biased projections and LM head, ``gelu_new`` MLP, embedding
and residual dropouts.
"""

from __future__ import annotations

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs import _rope
from planner.memory.programs._decoder import (KVCache, causal_lm_loss, eager_causal_mask, embeddings_output,
                                               require_attn, run_layers)
from planner.memory.programs._ops_extra import activation as act_fn, cat, slices
from planner.memory.sim import Tensor

MODEL_TYPES = ("phi",)


def buffer_bytes(ctx: Context) -> int:
    return _rope.rotary_buffer_bytes(ctx)


def _p(ctx: Context, key: str) -> float:
    return float(ctx.spec.config.get(key) or 0.0)


def _ln(ctx: Context, x: Tensor, module: str, dim: int) -> Tensor:
    return ops.layer_norm(ctx.sim, x, dim, ctx.param(module), ctx.param(module, "bias"))


def activation(ctx: Context, x: Tensor) -> Tensor:
    return act_fn(ctx.sim, x, str(ctx.spec.config.get("hidden_act") or "gelu_new"))


def attention(ctx: Context, x: Tensor, prefix: str, cos, sin, mask, cache: KVCache, batch, seq):
    sim, spec = ctx.sim, ctx.spec
    hd = spec.head_dim
    rd = _rope.rotary_dim(ctx)
    query_states = ctx.linear(x, f"{prefix}.q_proj")
    key_states = ctx.linear(x, f"{prefix}.k_proj")
    value_states = ctx.linear(x, f"{prefix}.v_proj")
    if spec.config.get("qk_layernorm"):
        qk = spec.hidden_size // spec.num_attention_heads
        query_states = _ln(ctx, query_states, f"{prefix}.q_layernorm", qk)
        key_states = _ln(ctx, key_states, f"{prefix}.k_layernorm", qk)
    qn, kn = query_states.numel // hd, key_states.numel // hd
    query_rot, query_pass = slices(sim, query_states, [qn * rd, qn * (hd - rd)])
    key_rot, key_pass = slices(sim, key_states, [kn * rd, kn * (hd - rd)])
    query_rot = _rope.rotate(sim, query_rot, cos, sin)
    key_rot = _rope.rotate(sim, key_rot, cos, sin)
    query_states = cat(sim, [query_rot, query_pass])
    key_states = cat(sim, [key_rot, key_pass])
    key_states, value_states = cache.update(key_states, value_states)
    if ctx.settings.attn_implementation == "eager":
        out, weights = _rope.eager(ctx, query_states, key_states, value_states, mask, batch, seq, q_view=False,
                                   k_view=False, v_view=not cache.enabled, dropout=_p(ctx, "attention_dropout"))
    else:
        out = _rope.sdpa(ctx, query_states, key_states, value_states, batch, seq, q_head_major=True)
        weights = None
    o = ctx.linear(out, f"{prefix}.dense")
    del out
    return o, weights  # query_rot / query_pass / key_rot / key_pass die here


def decoder_layer(ctx: Context, h: Tensor, n: int, cos, sin, mask, cache, batch, seq) -> Tensor:
    sim, spec = ctx.sim, ctx.spec
    p = f"model.layers.{n}"
    drop = _p(ctx, "resid_pdrop")
    residual = h
    hs = _ln(ctx, h, f"{p}.input_layernorm", spec.hidden_size)
    del h
    attn_outputs, _ = attention(ctx, hs, f"{p}.self_attn", cos, sin, mask, cache, batch, seq)
    attn_outputs = ops.dropout(sim, attn_outputs, drop)
    f1 = ctx.linear(hs, f"{p}.mlp.fc1")
    f2 = activation(ctx, f1)
    del f1
    f3 = ctx.linear(f2, f"{p}.mlp.fc2")
    del f2
    feed_forward_hidden_states = ops.dropout(sim, f3, drop)
    del f3
    s = ops.add(sim, attn_outputs, feed_forward_hidden_states)
    hs = ops.add(sim, s, residual)
    del s
    return hs


def forward(ctx: Context, batch, seq):
    require_attn(ctx, ("sdpa", "eager", "flash_attention_2"), "phi")
    sim, spec = ctx.sim, ctx.spec
    ids = sim.tensor(batch * seq, "int64", category="inputs")
    labels = sim.tensor(batch * seq, "int64", category="inputs")
    cache = KVCache(ctx)
    w = ctx.param("model.embed_tokens")
    inputs_embeds = embeddings_output(ctx, ops.embedding(sim, ids, spec.hidden_size, w, w.dtype))
    arange = sim.tensor(seq, "int64", category="inputs")
    position_ids = sim.tensor(seq, "int64", category="inputs")
    del arange
    mask = eager_causal_mask(ctx, batch, seq) if ctx.settings.attn_implementation == "eager" else None
    inputs_embeds = ops.dropout(sim, inputs_embeds, _p(ctx, "embd_pdrop"))
    h = inputs_embeds
    cos, sin = _rope.rotary_embeddings(ctx, seq, h.dtype)

    def layer(x, n, cos=cos, sin=sin, mask=mask):
        return decoder_layer(ctx, x, n, cos, sin, mask, cache, batch, seq)

    h = run_layers(ctx, h, layer)
    h = _ln(ctx, h, "model.final_layernorm", spec.hidden_size)
    del layer, cos, sin, mask, inputs_embeds, position_ids  # PhiModel.forward returns
    loss = causal_lm_loss(ctx, h, batch, seq)
    return loss, {"batch": (ids, labels)}
