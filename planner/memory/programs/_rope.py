"""Rotary position embeddings and the attention cores the rotary families (phi3, phi, gpt_neox,
falcon) share, mirroring transformers 5.24 op by op."""

from __future__ import annotations

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs._decoder import sdpa_bias
from planner.memory.programs._ops_extra import bmm_operand, cat, copy_passthrough, neg, slices, softmax_to
from planner.memory.programs._ops_extra import sdpa as sdpa_op
from planner.memory.sim import Tensor


def rotary_dim(ctx: Context) -> int:
    """Dimensions rotated per head (``head_dim * partial_rotary_factor``; GPT-NeoX ``rotary_pct``)."""
    cfg, hd = ctx.spec.config, ctx.spec.head_dim
    factor = cfg.get("partial_rotary_factor")
    if factor is None:
        factor = (cfg.get("rope_parameters") or {}).get("partial_rotary_factor")
    if factor is None:
        factor = cfg.get("rotary_pct", 1.0)
    return int(hd * float(factor))


def rotary_buffer_bytes(ctx: Context) -> int:
    """``inv_freq`` and ``original_inv_freq`` (fp32, ``rotary_dim / 2`` each)."""
    from planner.constants import DTYPE_BYTES
    from planner.memory.sim import round_alloc

    return 2 * round_alloc(rotary_dim(ctx) // 2 * DTYPE_BYTES["float32"])


def rotary_embeddings(ctx: Context, seq, dtype: str) -> tuple[Tensor, Tensor]:
    """``XRotaryEmbedding.forward``: ``position_ids[..., None].float() * inv_freq`` (fp32), ``cat``,
    ``cos() * scaling`` / ``sin() * scaling``, then ``.to(x.dtype)``; its fp32 locals die on return."""
    sim = ctx.sim
    rd = rotary_dim(ctx)
    pos = sim.tensor(seq, "float32")
    freqs = sim.tensor(seq * rd // 2, "float32")
    del pos
    emb = sim.tensor(seq * rd, "float32")
    tmp = sim.tensor(seq * rd, "float32")
    cos32 = sim.tensor(seq * rd, "float32")
    del tmp
    tmp = sim.tensor(seq * rd, "float32")
    sin32 = sim.tensor(seq * rd, "float32")
    del tmp
    cos = cos32 if dtype == "float32" else sim.tensor(seq * rd, dtype)
    sin = sin32 if dtype == "float32" else sim.tensor(seq * rd, dtype)
    del freqs, emb, cos32, sin32
    return cos, sin


def rotate(sim, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``(x * cos) + (rotate_half(x) * sin)``; ``rotate_half`` = ``cat((-x2, x1))`` of two slices."""
    a = ops.mul(sim, x, cos)
    x1, x2 = slices(sim, x, [x.numel // 2, x.numel // 2])
    n = neg(sim, x2)
    rot = cat(sim, [n, x1])
    del n, x1, x2
    b = ops.mul(sim, rot, sin)
    del rot
    out = ops.add(sim, a, b)
    del a, b
    return out


def apply_rotary_cat(ctx: Context, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Phi-3 / Phi / GPT-NeoX ``apply_rotary_pos_emb`` for one of q, k: ``x_rot, x_pass`` slices,
    the rotation of ``x_rot``, then ``torch.cat([rotated, x_pass])`` (a new contiguous tensor)."""
    sim = ctx.sim
    heads_numel = x.numel // ctx.spec.head_dim
    rd = rotary_dim(ctx)
    x_rot, x_pass = slices(sim, x, [heads_numel * rd, x.numel - heads_numel * rd])
    r = rotate(sim, x_rot, cos, sin)
    del x_rot
    out = cat(sim, [r, x_pass])
    del r, x_pass
    return out


def sdpa(ctx: Context, q: Tensor, k: Tensor, v: Tensor, batch, seq, *, q_head_major: bool,
         mask: Tensor | None = None) -> Tensor:
    """``sdpa_attention_forward``: with a mask and fewer key/value heads than query heads, ``repeat_kv``
    copies (``use_gqa_in_sdpa`` needs no mask); the fused kernel, then ``attn_output.transpose(1, 2).contiguous()``,
    a copy when ``q`` was laid out head-major (a ``cat`` / contiguous (B, H, L, D) tensor: the
    kernel's output follows the query's layout); none when ``q`` is a transposed view."""
    sim, spec = ctx.sim, ctx.spec
    groups = spec.num_attention_heads // spec.num_key_value_heads
    if mask is not None and groups > 1:  # use_gqa_in_sdpa is False with a mask: repeat_kv copies
        k = ops.expand_copy(sim, k, groups)
        v = ops.expand_copy(sim, v, groups)
    bias = sdpa_bias(ctx, mask, batch, seq, q.dtype)
    out = sdpa_op(sim, q, k, v, batch=batch, heads=spec.num_attention_heads, q_len=seq, head_dim=spec.head_dim,
                  bias=bias)
    del bias, k, v
    if q_head_major:
        c = copy_passthrough(sim, out)
        del out
        out = c
    return out


def eager(ctx: Context, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, batch, seq, *, q_view: bool,
          k_view: bool, v_view: bool, softmax_fp32: bool = True, dropout: float = 0.0,
          scale_first: bool = False, kv_len=None) -> tuple[Tensor, Tensor]:
    """``eager_attention_forward`` (llama-style): ``matmul(q, k^T) * scaling`` (+ mask), softmax
    (fp32 then ``.to(q.dtype)`` when ``softmax_fp32``), dropout, ``@ v``, ``transpose(1, 2)
    .contiguous()``. ``matmul`` copies an operand that is a strided view (``*_view``) to reshape it
    to 3-D when B > 1 (:func:`bmm_operand`); the copy is what the ``bmm`` saves. Returns
    ``(attn_output, attn_weights)``."""
    sim, spec = ctx.sim, ctx.spec
    groups = spec.num_attention_heads // spec.num_key_value_heads
    kr = ops.expand_copy(sim, k, groups)  # key_states / value_states = repeat_kv(...): bound until return
    vr = ops.expand_copy(sim, v, groups)
    qc = bmm_operand(sim, q, batch) if q_view else q  # matmul's reshape copies are temporaries
    kc = bmm_operand(sim, kr, batch) if (k_view and groups == 1) else kr
    n_scores = batch * spec.num_attention_heads * seq * (seq if kv_len is None else kv_len)
    s = ops.matmul(sim, qc, kc, n_scores)
    del qc, kc
    s2 = ops.mul(sim, s, None)
    del s
    if mask is not None:
        s3 = ops.add(sim, s2, mask)
        del s2
        s2 = s3
        del s3
    if softmax_fp32:
        p32 = softmax_to(sim, s2, "float32")
        del s2
        p = ops.cast(sim, p32, q.dtype)
        del p32
    else:
        p = ops.softmax(sim, s2, s2.dtype)
        del s2
    p = ops.dropout(sim, p, dropout)
    vc = bmm_operand(sim, vr, batch) if (v_view and groups == 1) else vr
    o = ops.matmul(sim, p, vc, q.numel)
    del vc
    out = ops.copy(sim, o)
    del o, kr, vr
    return out, p


def decoder_forward(ctx: Context, decoder_layer, batch, seq):
    """``XForCausalLM.forward`` of a rotary decoder with a KV cache and a (sliding-window) causal
    mask (phi3, mixtral): embeddings, cos / sin, the blocks, the final RMSNorm, the loss.
    ``decoder_layer(ctx, x, n, cos, sin, mask, cache, batch, seq)``."""
    from planner.memory.programs._decoder import (KVCache, causal_lm_loss, embeddings_output, prefix_cache, run_layers,
                                                  sliding_window_bool_mask, sliding_window_mask)

    sim, spec = ctx.sim, ctx.spec
    ids = sim.tensor(batch * seq, "int64", category="inputs")
    labels = sim.tensor(batch * seq, "int64", category="inputs")
    # prefix tuning: PeftModelForCausalLM.forward builds the prefix cache (get_prompt) first
    cache = KVCache(ctx, prefix_cache(ctx, batch) if ctx.plan.prefix_tokens else None)
    kv_len = seq + cache.prefix_len
    w = ctx.param("model.embed_tokens")
    inputs_embeds = embeddings_output(ctx, ops.embedding(sim, ids, spec.hidden_size, w, w.dtype))
    arange = sim.tensor(seq, "int64", category="inputs")
    position_ids = sim.tensor(seq, "int64", category="inputs")
    del arange
    if ctx.settings.attn_implementation == "eager":  # the bool mask, then an additive (B, 1, L, P + L) one
        b = sim.tensor(seq * kv_len, "bool", category="inputs")
        mask = sim.tensor(batch * seq * kv_len, ctx.stream_dtype, category="inputs")
        del b
    elif cache.prefix_len:  # a prefix offsets the queries: the mask is always built
        sliding = spec.config.get("sliding_window")
        mask = (sliding_window_bool_mask(ctx, seq, kv_len) if sliding
                else sim.tensor(seq * kv_len, "bool", category="inputs"))
    else:
        mask = sliding_window_mask(ctx, seq)
    h = inputs_embeds
    cos, sin = rotary_embeddings(ctx, seq, h.dtype)

    def layer(x, n, cos=cos, sin=sin, mask=mask):
        return decoder_layer(ctx, x, n, cos, sin, mask, cache, batch, seq)

    h = run_layers(ctx, h, layer)
    h = ops.rms_norm(sim, h, spec.hidden_size, ctx.param("model.norm"))
    del layer, cos, sin, mask, inputs_embeds, position_ids  # the base model's forward returns
    loss = causal_lm_loss(ctx, h, batch, seq)
    return loss, {"batch": (ids, labels)}
