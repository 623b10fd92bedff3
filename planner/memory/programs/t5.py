"""Forward program of T5 / mT5 (``T5ForConditionalGeneration``), mirroring transformers 5.24
``modeling_t5.py`` (mT5's copy is the same code).

Source length = ``settings.seq_len``, target length = ``settings.target_len`` (default: seq_len).
Encoder: shared embedding, dropout, blocks (self-attention with a relative position bias computed
once by block 0 and reused, feed-forward), ``T5LayerNorm``, dropout; its output lives until the
model returns. Decoder: ``_shift_right`` labels, embedding, causal mask (eager), blocks with
self-attention (own relative bias), cross-attention (a zero position bias; ``requires_grad`` under
gradient checkpointing) and feed-forward, the ``EncoderDecoderCache`` copies of every key / value,
final norm, dropout; ``sequence_output * d_model ** -0.5`` when the LM head is tied; the loss is
``CrossEntropyLoss`` on the model-dtype logits (no fp32 upcast). Feed-forward: ReLU (saves its
output) or gated-GELU (``gelu_new``, a Python expression), dropouts (``dropout_rate``) everywhere,
attention dropout included.

SDPA: T5 passes its position bias as a float ``attn_mask``. On CUDA the memory-efficient kernel
takes it (it keeps the bias for backward and, when the bias trains, returns a B x H x L x S bias
gradient); that is what is replayed. A CPU run takes the math path (fp32 B x H x L x S
probabilities) whenever the mask requires grad (full fine-tuning, or the cross-attention bias
under checkpointing); set ``CPU_MATH_FOR_GRAD_MASK = True`` to replay that instead (used to
validate against CPU / fake-mode measurements).
"""

from __future__ import annotations

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs._decoder import KVCache, checkpoint, embeddings_output, require_attn
from planner.memory.programs._ops_extra import _grad, bmm_operand, copy_passthrough, sdpa_math
from planner.memory.programs._ops_extra import activation as act_fn
from planner.memory.sim import Tensor

MODEL_TYPES = ("t5", "mt5")

#: Replay SDPA with a grad-requiring float mask as the CPU does (math path) instead of CUDA's
#: memory-efficient kernel. For validation against CPU / fake-mode measurements only.
CPU_MATH_FOR_GRAD_MASK = False


def buffer_bytes(ctx: Context) -> int:
    return 0


def _p(ctx: Context) -> float:
    return float(ctx.spec.config.get("dropout_rate", 0.1) or 0.0)


def _norm(ctx: Context, x: Tensor, module: str) -> Tensor:
    """``T5LayerNorm``: ``variance = x.to(fp32).pow(2).mean(-1)`` (``pow`` saves the fp32 copy),
    ``x * rsqrt(variance + eps)`` with the *input* ``x`` (saved: unlike llama's RMSNorm, the 16-bit
    input stays alive) and an fp32 result, cast back to the weight dtype, times the weight."""
    sim = ctx.sim
    w = ctx.param(module)
    x32 = ops.cast(sim, x, "float32")
    sq = ops.pow2(sim, x32)
    del x32
    variance = ops.mean_last(sim, sq, ctx.spec.hidden_size)
    del sq
    ve = ops.add_scalar(sim, variance)
    rs = ops.unary(sim, ve, saves="output")
    del ve
    h = ops.mul(sim, x, rs, out_numel=x.numel)
    del rs
    if w.dtype in ("float16", "bfloat16"):
        h16 = ops.cast(sim, h, w.dtype)
        del h
        h = h16
        del h16
    out = ops.mul(sim, h, w)
    del h, variance
    return out


def _act(ctx: Context, x: Tensor) -> Tensor:
    cfg = ctx.spec.config
    ff = str(cfg.get("feed_forward_proj") or ("relu" if ctx.spec.model_type == "t5" else "gated-gelu"))
    act = cfg.get("dense_act_fn") or ("gelu_new" if ff == "gated-gelu" else ff.split("-")[-1])
    return act_fn(ctx.sim, x, str(act))


def _gated(ctx: Context) -> bool:
    cfg = ctx.spec.config
    ff = str(cfg.get("feed_forward_proj") or ("relu" if ctx.spec.model_type == "t5" else "gated-gelu"))
    return ff.startswith("gated-")


def compute_bias(ctx: Context, module: str, q_len, k_len, *, bidirectional: bool) -> Tensor:
    """``T5Attention.compute_bias``: relative positions and their buckets (several L x S int64 /
    fp32 temporaries), then the ``relative_attention_bias`` embedding (saves the bucket indices
    when it trains); returned as a (1, H, L, S) permuted view."""
    sim, spec = ctx.sim, ctx.spec
    n = q_len * k_len
    ctx_pos = sim.tensor(q_len, "int64")
    mem_pos = sim.tensor(k_len, "int64")
    rel = sim.tensor(n, "int64")
    if bidirectional:
        t = sim.tensor(n, "int64")
        buckets = sim.tensor(n, "int64")  # (rel > 0).long() * nb (+ 0)
        del t
        relpos = sim.tensor(n, "int64")  # abs
    else:
        t = sim.tensor(n, "int64")
        relpos = sim.tensor(n, "int64")  # -min(rel, 0)
        del t
        buckets = None
    is_small = sim.tensor(n, "bool")
    f1 = sim.tensor(n, "float32")
    f2 = sim.tensor(n, "float32")
    del f1
    large = sim.tensor(n, "int64")
    del f2
    full = sim.tensor(n, "int64")
    large_min = sim.tensor(n, "int64")
    del full, large
    where = sim.tensor(n, "int64")
    if buckets is None:
        buckets = sim.tensor(n, "int64")  # 0 + where
    del where, relpos, is_small, large_min
    w = ctx.param(module)
    values = ops.embedding(sim, buckets, spec.num_attention_heads, w, w.dtype)
    del buckets, ctx_pos, mem_pos, rel
    return values


def _position_bias_mask(ctx: Context, bias: Tensor, causal: bool, permuted: bool) -> Tensor:
    """``create_position_bias_mask``: ``where(causal, bias, min)`` (decoder self-attention) then
    ``.contiguous()`` (a copy of a permuted bias)."""
    sim = ctx.sim
    if causal:
        ge = sim.tensor(bias.numel // ctx.spec.num_attention_heads, "bool")
        w = ops.copy(sim, bias)  # where(causal_mask, position_bias, min): backward where(mask, grad, 0)
        del ge
        out = copy_passthrough(sim, w)  # .contiguous() of the permuted layout
        del w
        return out
    if permuted:
        return copy_passthrough(sim, bias)
    return bias


def attention(ctx: Context, x: Tensor, prefix: str, kv_src: Tensor | None, position_bias, mask, cache: KVCache,
              *, has_rel: bool, decoder: bool, batch, q_len, kv_len):
    """``T5Attention.forward``: returns (attn_output, position_bias, attn_weights)."""
    sim, spec = ctx.sim, ctx.spec
    nh = spec.num_attention_heads
    cross = kv_src is not None
    q = ctx.linear(x, f"{prefix}.q")
    src = kv_src if cross else x
    k = ctx.linear(src, f"{prefix}.k")
    v = ctx.linear(src, f"{prefix}.v")
    k, v = cache.update(k, v)
    if position_bias is None:
        if has_rel:
            position_bias = compute_bias(ctx, f"{prefix}.relative_attention_bias", q_len, kv_len,
                                         bidirectional=not decoder)
        else:
            # torch.zeros((1, H, L, S)); requires_grad under gradient checkpointing
            position_bias = sim.tensor(nh * q_len * kv_len, x.dtype, ctx.settings.gradient_checkpointing)
    drop = _p(ctx)
    if ctx.settings.attn_implementation == "eager":
        qc = bmm_operand(sim, q, batch)
        kc = k if cache.enabled else bmm_operand(sim, k, batch)
        s = ops.matmul(sim, qc, kc, batch * nh * q_len * kv_len)
        del qc, kc
        s2 = ops.mul(sim, s, None)  # * scaling (1.0: still a new tensor)
        del s
        s3 = ops.add(sim, s2, position_bias)
        del s2
        if mask is not None:
            s4 = ops.add(sim, s3, mask)
            del s3
            s3 = s4
            del s4
        p = ops.softmax(sim, s3, s3.dtype)
        del s3
        weights = ops.dropout(sim, p, drop)
        del p
        vc = v if cache.enabled else bmm_operand(sim, v, batch)
        o = ops.matmul(sim, weights, vc, q.numel)
        del vc
        out = ops.copy(sim, o)
        del o
    else:
        causal = decoder and not cross
        pbm = _position_bias_mask(ctx, position_bias, causal, permuted=not cross)
        if CPU_MATH_FOR_GRAD_MASK and pbm.rg:
            out = sdpa_math(sim, q, k, v, batch=batch, heads=nh, kv_heads=nh, q_len=q_len, mask_bias=False,
                            q_bmm_copy=True, k_bmm_copy=True, v_bmm_copy=True, bias=pbm, kv_len=kv_len)
        else:
            out = _mem_efficient(sim, q, k, v, pbm, batch=batch, heads=nh, q_len=q_len, kv_len=kv_len)
        del pbm
        weights = None
    del q, k, v
    o = ctx.linear(out, f"{prefix}.o")
    del out
    return o, position_bias, weights


def _mem_efficient(sim, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, *, batch, heads, q_len, kv_len) -> Tensor:
    """CUDA's memory-efficient SDPA with a float bias (broadcast over the batch): saves q, k, v,
    the output, the fp32 log-sum-exp and the bias; backward returns q / k / v gradients and, when
    the bias trains, a full B x H x L x S bias gradient that the broadcast sums back."""
    rg = q.rg or k.rg or v.rg or bias.rg
    out = sim.tensor(q.numel, q.dtype, rg)
    if rg:
        lse = sim.tensor(batch * heads * q_len, "float32")
        spec = [(t.key, t.numel, t.dtype) for t in (q, k, v) if t.rg]
        bk, bn, bd, b_rg = bias.key, bias.numel, bias.dtype, bias.rg

        def bw(outs):
            res = {kk: _grad(sim, n, d) for kk, n, d in spec}
            if b_rg:  # the kernel's (B, H, L, S) bias gradient, summed back over the broadcast batch
                full = _grad(sim, batch * heads * q_len * kv_len, bd)
                res[bk] = _grad(sim, bn, bd)
                del full
            return res

        sim.node([q, k, v, out, lse, bias], bw, [out], inputs=[q, k, v, bias])
        del lse
    return out


def _fp16_clamp(ctx: Context, h: Tensor) -> Tensor:
    """``torch.clamp`` after each sub-layer when running in float16 (``isinf().any()`` first)."""
    if h.dtype != "float16":
        return h
    sim = ctx.sim
    inf = sim.tensor(h.numel, "bool")
    del inf
    return ops.unary(sim, h, saves="input")


def ff_layer(ctx: Context, h: Tensor, p: str) -> Tensor:
    sim = ctx.sim
    drop = _p(ctx)
    x = _norm(ctx, h, f"{p}.layer_norm")
    q = f"{p}.DenseReluDense"
    if _gated(ctx):
        g = ctx.linear(x, f"{q}.wi_0")
        hidden_gelu = _act(ctx, g)
        del g
        hidden_linear = ctx.linear(x, f"{q}.wi_1")
        m = ops.mul(sim, hidden_gelu, hidden_linear)
        del hidden_gelu, hidden_linear
    else:
        g = ctx.linear(x, f"{q}.wi")
        m = _act(ctx, g)
        del g
    m = ops.dropout(sim, m, drop)
    f = ctx.linear(m, f"{q}.wo")
    del m, x  # T5LayerFF holds the normed input until DenseReluDense returns
    d = ops.dropout(sim, f, drop)
    del f
    return ops.add(sim, h, d)


def block(ctx: Context, h: Tensor, stack: str, n: int, position_bias, mask, enc, enc_bias, cache, batch, q_len,
          kv_len):
    """``T5Block.forward``: (hidden, self-attention bias, cross-attention bias)."""
    sim = ctx.sim
    decoder = stack == "decoder"
    p = f"{stack}.block.{n}.layer"
    drop = _p(ctx)
    normed = _norm(ctx, h, f"{p}.0.layer_norm")
    # ``hidden_states, self_attn_position_bias, _ = self.layer[0](...)``: ``_`` (eager: the attention
    # probabilities) stays bound in the block until the next sub-layer rebinds it
    a, self_bias, _ = attention(ctx, normed, f"{p}.0.SelfAttention", None, position_bias, mask, cache,
                                has_rel=(n == 0), decoder=decoder, batch=batch, q_len=q_len, kv_len=q_len)
    del normed
    d = ops.dropout(sim, a, drop)
    del a
    h = _fp16_clamp(ctx, ops.add(sim, h, d))
    del d
    cross_bias = None
    if decoder:
        normed = _norm(ctx, h, f"{p}.1.layer_norm")
        a, cross_bias, _ = attention(ctx, normed, f"{p}.1.EncDecAttention", enc, enc_bias, None, cache.cross,
                                     has_rel=False, decoder=True, batch=batch, q_len=q_len, kv_len=kv_len)
        del normed
        d = ops.dropout(sim, a, drop)
        del a
        h = _fp16_clamp(ctx, ops.add(sim, h, d))
        del d
    h = _fp16_clamp(ctx, ff_layer(ctx, h, f"{p}.{2 if decoder else 1}"))
    return h, self_bias, cross_bias


class _Caches:
    """``EncoderDecoderCache``: self-attention and cross-attention ``DynamicCache`` copies."""

    def __init__(self, ctx: Context, enabled: bool) -> None:
        self_cache = KVCache(ctx)
        self_cache.enabled = enabled
        cross = KVCache(ctx)
        cross.enabled = enabled
        self.self_cache, self.cross = self_cache, cross

    def update(self, k, v):
        return self.self_cache.update(k, v)

    @property
    def enabled(self) -> bool:
        return self.self_cache.enabled


class _NoCache:
    enabled = False
    cross = None

    def update(self, k, v):
        return k, v


def stack_forward(ctx: Context, stack: str, ids: Tensor, layers, batch, q_len, kv_len, enc=None):
    sim, spec = ctx.sim, ctx.spec
    drop = _p(ctx)
    gc = ctx.settings.gradient_checkpointing
    w = ctx.param("shared")
    inputs_embeds = embeddings_output(ctx, ops.embedding(sim, ids, spec.hidden_size, w, w.dtype))
    if stack == "encoder":
        cache = _NoCache()
        mask = None
    else:
        cache = _Caches(ctx, bool(spec.config.get("use_cache", True)) and not gc)
        cache.cross.enabled = cache.enabled
        mask = None
        if ctx.settings.attn_implementation == "eager":
            bm = sim.tensor(q_len * q_len, "bool", category="inputs")
            mask = sim.tensor(batch * q_len * q_len, ctx.stream_dtype, category="inputs")
            del bm
    h = ops.dropout(sim, inputs_embeds, drop)
    holder: dict = {"pb": None, "eb": None}

    def fn(x, n, pb, eb, keep, mask=mask, enc=enc):
        out, pb2, eb2 = block(ctx, x, stack, n, pb, mask, enc, eb, cache, batch, q_len, kv_len)
        if not gc or sim.discard_saved:  # not a backward recomputation
            holder["pb"], holder["eb"] = pb2, eb2
            if eb is None and eb2 is not None and eb2.rg:
                # the cross-attention zero bias is a leaf that requires grad under checkpointing:
                # autograd's AccumulateGrad in the block's graph holds it until that block's backward
                keep["eb"] = eb2
        return out

    for n in layers:
        pb, eb = holder["pb"], holder["eb"]  # position biases returned by the previous block
        keep: dict = {}
        h = (checkpoint(sim, lambda x, n=n, pb=pb, eb=eb, keep=keep: fn(x, n, pb, eb, keep), h) if gc
             else fn(h, n, pb, eb, keep))
        del pb, eb, keep
    h = _norm(ctx, h, f"{stack}.final_layer_norm")
    h = ops.dropout(sim, h, drop)
    holder.clear()
    del inputs_embeds, mask  # T5Stack.forward returns (the decoder's caches die with the output)
    return h, cache


def forward(ctx: Context, batch, seq):
    require_attn(ctx, ("sdpa", "eager"), ctx.spec.model_type)
    sim, spec = ctx.sim, ctx.spec
    src = seq
    tgt = ctx.settings.target_len or seq
    full = tuple(ctx.layer_indices) == tuple(range(spec.num_layers))
    enc_layers = range(spec.num_encoder_layers) if full else ctx.layer_indices
    ids = sim.tensor(batch * src, "int64", category="inputs")
    labels = sim.tensor(batch * tgt, "int64", category="inputs")
    enc, _ = stack_forward(ctx, "encoder", ids, enc_layers, batch, src, src)
    # _shift_right(labels): new_zeros, a shifted clone, masked_fill_(== -100)
    dec_ids = sim.tensor(batch * tgt, "int64", category="inputs")
    tmp = sim.tensor(batch * (tgt - 1), "int64", category="inputs")
    del tmp
    eq = sim.tensor(batch * tgt, "bool", category="inputs")
    del eq
    dec, caches = stack_forward(ctx, "decoder", dec_ids, ctx.layer_indices, batch, tgt, src, enc=enc)
    sequence_output = dec  # decoder_outputs keeps the decoder output until the model returns
    if spec.tie_word_embeddings and spec.config.get("tie_word_embeddings", True) is not False:
        sequence_output = ops.mul(sim, dec, None)  # sequence_output * d_model ** -0.5
    sim.category = "logits"
    logits = ctx.linear(sequence_output, "lm_head")
    # CrossEntropyLoss(logits.view(-1, V), labels.view(-1)): log_softmax in the logits dtype, nll_loss
    logp = ops.unary(sim, logits, saves="output")
    weight = sim.tensor(1, "float32")
    loss = sim.tensor(1, logits.dtype, logp.rg)
    if logp.rg:
        lk, ln, ld = logp.key, logp.numel, logp.dtype
        sim.node([labels, weight], lambda outs: {lk: _grad(sim, ln, ld)}, [loss], inputs=[logp])
    del weight, logp, logits
    sim.category = "activations"
    return loss, {"batch": (ids, labels)}  # the encoder output, decoder ids and caches die with the output
