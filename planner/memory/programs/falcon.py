"""Forward program of Falcon (rotary variants), mirroring transformers 5.24 ``modeling_falcon.py``.

What differs from llama: ``FalconLinear`` (``x @ W.T``), one fused ``query_key_value`` split three
ways depending on the variant (multi-query: a query slice and key / value *index copies*; new
decoder architecture: key / value broadcast to every head and flattened into copies; classic: three
selects), rotary on strided views, a causal mask built even for SDPA (``allow_is_causal_skip=False``),
parallel attention + MLP with an in-place ``mlp_output += attention_output``, GELU MLP.

With fewer key/value heads than query heads (multi-query) SDPA cannot use a fused kernel (no
``enable_gqa``) and runs its math path (fp32 upcast, B x H x L x L fp32 probabilities saved);
eager runs in the model dtype. ALiBi variants (``alibi: true``, Falcon-RW) are not replayed
op by op: they are estimated with the rotary program (noted in the plan).
"""

from __future__ import annotations

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs import _rope
from planner.memory.programs._decoder import (KVCache, causal_lm_loss, eager_causal_mask, embeddings_output,
                                               require_attn, run_block, sdpa_bias)
from planner.memory.programs._ops_extra import activation as act_fn
from planner.memory.programs._ops_extra import (add_inplace, bmm_operand, broadcast_operand, copy_passthrough, index_copy,
                                                 sdpa_math, slices)
from planner.memory.programs._ops_extra import sdpa as sdpa_op
from planner.memory.sim import Tensor

MODEL_TYPES = ("falcon",)


def buffer_bytes(ctx: Context) -> int:
    return _rope.rotary_buffer_bytes(ctx)


def _cfg(ctx: Context, key: str, default=None):
    v = ctx.spec.config.get(key, default)
    return default if v is None else v


def _p(ctx: Context, key: str) -> float:
    return float(ctx.spec.config.get(key) or 0.0)


def _ln(ctx: Context, x: Tensor, module: str) -> Tensor:
    return ops.layer_norm(ctx.sim, x, ctx.spec.hidden_size, ctx.param(module), ctx.param(module, "bias"))


def _kv_heads(ctx: Context) -> int:
    """Key/value heads the attention computes with (``num_kv_heads`` in ``FalconAttention.forward``)."""
    if _cfg(ctx, "new_decoder_architecture", False):
        return ctx.spec.num_attention_heads  # keys / values broadcast to every head
    if _cfg(ctx, "multi_query", True):
        return 1
    return ctx.spec.num_attention_heads


def split_heads(ctx: Context, fused: Tensor):
    """``FalconAttention._split_heads``: (q, k, v, whether k / v are contiguous copies)."""
    sim, spec = ctx.sim, ctx.spec
    nh = spec.num_attention_heads
    if _cfg(ctx, "new_decoder_architecture", False):
        nkv = spec.num_key_value_heads
        per = nh // nkv + 2
        unit = fused.numel // (nkv * per)  # tokens x head_dim
        (query,) = slices(sim, fused, [unit * nh])  # qkv[:, :, :, :-2]
        key = index_copy(sim, fused, unit * nkv)  # qkv[:, :, :, [-2]]
        value = index_copy(sim, fused, unit * nkv)
        # broadcast_to(query.shape) then flatten(2, 3): copies (the query too, unless one group)
        q = copy_passthrough(sim, query) if nkv > 1 else query
        k = ops.expand_copy(sim, key, nh // nkv)
        v = ops.expand_copy(sim, value, nh // nkv)
        del query, key, value
        return q, k, v, True
    if _cfg(ctx, "multi_query", True):
        unit = fused.numel // (nh + 2)
        (q,) = slices(sim, fused, [unit * nh])  # fused.view(B, L, H + 2, D)[..., :-2, :]
        k = index_copy(sim, fused, unit)  # [..., [-2], :]
        v = index_copy(sim, fused, unit)
        return q, k, v, True
    q, k, v = slices(sim, fused, [fused.numel // 3] * 3)  # fused.view(B, L, H, 3, D)[..., i, :]
    return q, k, v, False


def attention(ctx: Context, x: Tensor, prefix: str, cos, sin, mask, cache: KVCache, batch, seq):
    sim, spec = ctx.sim, ctx.spec
    nh = spec.num_attention_heads
    fused_qkv = ctx.linear(x, f"{prefix}.query_key_value")
    query_layer, key_layer, value_layer, kv_copied = split_heads(ctx, fused_qkv)
    q_embed = _rope.rotate(sim, query_layer, cos, sin)
    k_embed = _rope.rotate(sim, key_layer, cos, sin)
    query_layer, key_layer = q_embed, k_embed
    del q_embed, k_embed
    key_layer, value_layer = cache.update(key_layer, value_layer)
    kv_heads = _kv_heads(ctx)
    kv_contig = cache.enabled or kv_copied
    if ctx.settings.attn_implementation == "eager":
        factor = nh // kv_heads
        kb = broadcast_operand(sim, key_layer, factor, batch) if factor > 1 else (
            key_layer if kv_contig else bmm_operand(sim, key_layer, batch))
        qb = bmm_operand(sim, query_layer, batch)  # strided (B, L, H, D) layout -> 3-D bmm operand
        scores = ops.matmul(sim, qb, kb, batch * nh * seq * seq)
        del qb, kb
        s2 = ops.add(sim, scores, mask)  # (scores /= sqrt(d) is in place) + mask
        attention_scores = ops.softmax(sim, s2, s2.dtype)
        del s2, scores  # the name is rebound to the softmax output only once it exists
        vb = broadcast_operand(sim, value_layer, factor, batch) if factor > 1 else (
            value_layer if kv_contig else bmm_operand(sim, value_layer, batch))
        attn_output = ops.matmul(sim, attention_scores, vb, query_layer.numel)
        del vb
    elif kv_heads != nh:
        attention_scores = None
        attn_output = sdpa_math(sim, query_layer, key_layer, value_layer, batch=batch, heads=nh, kv_heads=kv_heads,
                                q_len=seq, mask_bias=mask is not None, q_bmm_copy=True, k_bmm_copy=False,
                                v_bmm_copy=False)
    else:
        attention_scores = None
        bias = sdpa_bias(ctx, mask, batch, seq, query_layer.dtype)
        attn_output = sdpa_op(sim, query_layer, key_layer, value_layer, batch=batch, heads=nh, q_len=seq,
                              head_dim=spec.head_dim, bias=bias)
        del bias
    if attention_scores is None and kv_heads == nh:
        merged = attn_output  # the fused kernel's output follows q's (B, L, H, D) layout: the reshape is a view
    else:
        merged = ops.copy(sim, attn_output)  # a head-major bmm output: view / permute / reshape copies
    del attn_output
    o = ctx.linear(merged, f"{prefix}.dense")
    del merged
    return o, attention_scores  # fused_qkv and the per-head views die here


def decoder_layer(ctx: Context, h: Tensor, n: int, cos, sin, mask, cache, batch, seq):
    sim = ctx.sim
    p = f"transformer.h.{n}"
    new_arch = bool(_cfg(ctx, "new_decoder_architecture", False))
    parallel = bool(_cfg(ctx, "parallel_attn", True))
    n_ln = _cfg(ctx, "num_ln_in_parallel_attn", 2 if new_arch else None)
    residual = h
    mlp_layernorm_out = None
    if new_arch and n_ln == 2:
        attention_layernorm_out = _ln(ctx, h, f"{p}.ln_attn")
        mlp_layernorm_out = _ln(ctx, h, f"{p}.ln_mlp")
    else:
        attention_layernorm_out = _ln(ctx, h, f"{p}.input_layernorm")
    attention_output, attn_weights = attention(ctx, attention_layernorm_out, f"{p}.self_attention", cos, sin, mask,
                                               cache, batch, seq)
    if not new_arch:
        if parallel:
            mlp_layernorm_out = attention_layernorm_out
        else:
            d = ops.dropout(sim, attention_output, _p(ctx, "attention_dropout"))
            residual = ops.add(sim, residual, d)
            del d
            mlp_layernorm_out = _ln(ctx, residual, f"{p}.post_attention_layernorm")
    if new_arch and parallel and n_ln == 1:
        mlp_layernorm_out = attention_layernorm_out
    m = ctx.linear(mlp_layernorm_out, f"{p}.mlp.dense_h_to_4h")
    a = act_fn(sim, m, str(_cfg(ctx, "activation", "gelu")))
    del m
    mlp_output = ctx.linear(a, f"{p}.mlp.dense_4h_to_h")
    del a
    if new_arch or parallel:
        mlp_output = add_inplace(sim, mlp_output, attention_output)
    d = ops.dropout(sim, mlp_output, _p(ctx, "hidden_dropout"))
    output = ops.add(sim, residual, d)
    del d
    return output, attn_weights


def forward(ctx: Context, batch, seq):
    require_attn(ctx, ("sdpa", "eager", "flash_attention_2"), "falcon")
    sim, spec = ctx.sim, ctx.spec
    if _cfg(ctx, "alibi", False):
        ctx.unsupported.append("falcon with alibi: estimated with the rotary program (ALiBi bias and its mask are "
                               "not replayed)")
    ids = sim.tensor(batch * seq, "int64", category="inputs")
    labels = sim.tensor(batch * seq, "int64", category="inputs")
    cache = KVCache(ctx)
    w = ctx.param("transformer.word_embeddings")
    inputs_embeds = embeddings_output(ctx, ops.embedding(sim, ids, spec.hidden_size, w, w.dtype))
    arange = sim.tensor(seq, "int64", category="inputs")
    position_ids = sim.tensor(seq, "int64", category="inputs")
    del arange
    if ctx.settings.attn_implementation == "eager":
        mask = eager_causal_mask(ctx, batch, seq)
    else:  # allow_is_causal_skip=False: a (1, 1, L, L) bool mask even for SDPA
        mask = sim.tensor(seq * seq, "bool", category="inputs")
    h = inputs_embeds
    cos, sin = _rope.rotary_embeddings(ctx, seq, h.dtype)
    gc = ctx.settings.gradient_checkpointing
    holder: dict = {}

    def fn(x, n):
        out, weights = decoder_layer(ctx, x, n, cos, sin, mask, cache, batch, seq)
        if not gc or sim.discard_saved:
            holder["w"] = weights
        return out

    outputs = None
    for n in ctx.layer_indices:
        h = run_block(ctx, n, lambda x, n=n: fn(x, n), h)
        outputs = holder.pop("w")  # ``outputs = block(...)``: the previous block's tuple dies now
    h = _ln(ctx, h, "transformer.ln_f")
    del outputs, inputs_embeds, position_ids  # FalconModel.forward returns
    if not gc:
        del mask, cos, sin, fn
    loss = causal_lm_loss(ctx, h, batch, seq)
    return loss, {"batch": (ids, labels)}
