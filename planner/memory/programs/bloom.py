"""Forward program of BLOOM, mirroring transformers 5.24 ``modeling_bloom.py``.

BLOOM has one attention implementation (transformers refuses ``sdpa`` and ``flash_attention_2``):
ALiBi added through ``baddbmm``, an fp32 softmax that is saved (B x H x L x L fp32), its cast to the
model dtype, attention dropout, ``bmm`` with the values and a copying ``_merge_heads``. Also: a
LayerNorm on the word embeddings, the fused ``query_key_value`` viewed as (B, L, H, 3, D) (the
query view is copied by ``reshape``), a custom autograd GeLU (saves its input; Python-expression
temporaries in forward and backward), ``dropout_add`` residuals, and the block's output tuple, which
keeps each block's attention probabilities alive until the next block returns.
"""

from __future__ import annotations

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs._decoder import (KVCache, causal_lm_loss, eager_causal_mask, embeddings_output,
                                               require_attn, run_block)
from planner.memory.programs._ops_extra import _grad, bmm_operand, slices, softmax_to
from planner.memory.sim import Tensor

MODEL_TYPES = ("bloom",)


def buffer_bytes(ctx: Context) -> int:
    return 0


def _p(ctx: Context, key: str) -> float:
    return float(ctx.spec.config.get(key) or 0.0)


def _ln(ctx: Context, x: Tensor, module: str) -> Tensor:
    return ops.layer_norm(ctx.sim, x, ctx.spec.hidden_size, ctx.param(module), ctx.param(module, "bias"))


def bloom_gelu(sim, x: Tensor) -> Tensor:
    """``GeLUFunction``: saves its input. Forward (no grad) evaluates
    ``x * 0.5 * (1.0 + tanh(0.79788456 * x * (1 + 0.044715 * x * x)))``: four temporaries of x's size
    at once; backward (``bloom_gelu_back``) holds five, then ``ff * g``."""
    n, d = x.numel, x.dtype
    tmp = [sim.tensor(n, d) for _ in range(4)]
    del tmp
    out = sim.tensor(n, d, x.rg)
    if x.rg:
        xk = x.key

        def bw(outs):
            t = [sim.tensor(n, d, category="gradients_act") for _ in range(5)]
            del t
            tanh_out = sim.tensor(n, d, category="gradients_act")
            ff = sim.tensor(n, d, category="gradients_act")
            g = _grad(sim, n, d)
            del tanh_out, ff
            return {xk: g}

        sim.node([x], bw, [out], inputs=[x])
    return out


def attention(ctx: Context, x: Tensor, residual: Tensor, prefix: str, alibi: Tensor, mask, cache: KVCache,
              batch, seq):
    sim, spec = ctx.sim, ctx.spec
    fused_qkv = ctx.linear(x, f"{prefix}.query_key_value")
    # ``fused_qkv.view(B, L, H, 3, D)[..., i, :]``: selects (each backward a zero tensor of the fused size)
    q, k, v = slices(sim, fused_qkv, [fused_qkv.numel // 3] * 3)
    k, v = cache.update(k, v)
    query_layer = bmm_operand(sim, q, batch)  # reshape(B * H, L, D) of a strided view: a copy if B > 1
    del q
    key_layer = k if cache.enabled else bmm_operand(sim, k, batch)
    value_layer = v if cache.enabled else bmm_operand(sim, v, batch)
    del k, v
    n_scores = batch * spec.num_attention_heads * seq * seq
    attention_scores = ops.matmul(sim, query_layer, key_layer, n_scores)  # alibi.baddbmm(q, k^T)
    attn_weights = ops.add(sim, attention_scores, mask)  # both names stay bound until the attention returns
    p32 = softmax_to(sim, attn_weights, "float32")
    probs = ops.cast(sim, p32, x.dtype)
    del p32
    probs = ops.dropout(sim, probs, _p(ctx, "attention_dropout"))
    context = ops.matmul(sim, probs, value_layer, query_layer.numel)
    merged = ops.copy(sim, context)  # _merge_heads: permute + reshape
    del context
    o = ctx.linear(merged, f"{prefix}.dense")
    del merged
    d = ops.dropout(sim, o, _p(ctx, "hidden_dropout"))
    del o
    out = ops.add(sim, residual, d)
    del d, attention_scores, attn_weights
    return out, probs


def block(ctx: Context, h: Tensor, n: int, alibi, mask, cache, batch, seq):
    sim = ctx.sim
    p = f"transformer.h.{n}"
    post = bool(ctx.spec.config.get("apply_residual_connection_post_layernorm"))
    layernorm_output = _ln(ctx, h, f"{p}.input_layernorm")
    residual = layernorm_output if post else h
    attention_output, attn_weights = attention(ctx, layernorm_output, residual, f"{p}.self_attention", alibi, mask,
                                               cache, batch, seq)
    layernorm_output = _ln(ctx, attention_output, f"{p}.post_attention_layernorm")
    residual = layernorm_output if post else attention_output
    h4 = ctx.linear(layernorm_output, f"{p}.mlp.dense_h_to_4h")
    g = bloom_gelu(sim, h4)
    del h4
    inter = ctx.linear(g, f"{p}.mlp.dense_4h_to_h")
    del g
    d = ops.dropout(sim, inter, _p(ctx, "hidden_dropout"))
    del inter
    output = ops.add(sim, residual, d)
    return output, attn_weights


def forward(ctx: Context, batch, seq):
    require_attn(ctx, ("eager",), "bloom")
    sim, spec = ctx.sim, ctx.spec
    ids = sim.tensor(batch * seq, "int64", category="inputs")
    labels = sim.tensor(batch * seq, "int64", category="inputs")
    cache = KVCache(ctx)
    w = ctx.param("transformer.word_embeddings")
    inputs_embeds = embeddings_output(ctx, ops.embedding(sim, ids, spec.hidden_size, w, w.dtype))
    h = _ln(ctx, inputs_embeds, "transformer.word_embeddings_layernorm")
    # alibi = (slopes[:, None, None] * arange(L)).repeat(B, 1, 1).to(dtype): (B * H, 1, L)
    heads = spec.num_attention_heads
    slopes = sim.tensor(heads, "float32")
    ar = sim.tensor(seq, "int64")
    a32 = sim.tensor(heads * seq, "float32")
    del ar
    rep = sim.tensor(batch * heads * seq, "float32")
    del a32
    alibi = sim.tensor(batch * heads * seq, h.dtype) if h.dtype != "float32" else rep
    del rep, slopes
    mask = eager_causal_mask(ctx, batch, seq)
    gc = ctx.settings.gradient_checkpointing
    holder: dict = {}

    def fn(x, n):
        out, probs = block(ctx, x, n, alibi, mask, cache, batch, seq)
        if not gc or sim.discard_saved:  # not a backward recomputation
            holder["probs"] = probs
        return out

    outputs = None
    for n in ctx.layer_indices:
        h = run_block(ctx, n, lambda x, n=n: fn(x, n), h)
        outputs = holder.pop("probs")  # ``outputs = block(...)``: the previous tuple dies now
    h = _ln(ctx, h, "transformer.ln_f")
    del outputs, inputs_embeds  # BloomModel.forward returns
    if not gc:
        del mask, alibi, fn
    loss = causal_lm_loss(ctx, h, batch, seq)
    return loss, {"batch": (ids, labels)}
