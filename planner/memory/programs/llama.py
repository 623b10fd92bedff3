"""Forward program of the llama-shaped decoders (llama, mistral, qwen2, qwen3, gemma, gemma2),
mirroring transformers 5.24 ``modeling_llama.py`` (and the gemma / qwen3 copies) statement by
statement, so that temporaries die where Python frees them."""

from __future__ import annotations

import numpy as np

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs._decoder import KVCache, eager_causal_mask, sliding_window_bool_mask
from planner.memory.programs._ops_extra import flash_attention_2
from planner.memory.programs._ops_extra import sdpa as sdpa_with_bias
from planner.memory.programs.common import causal_lm_forward
from planner.memory.sim import Tensor

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")

#: ``max_window_layers`` default of ``Qwen2Config`` / ``Qwen3Config`` (transformers 5.24).
QWEN_MAX_WINDOW_LAYERS_DEFAULT = 28
#: ``sliding_window`` default of ``Qwen2Config`` / ``Qwen3Config`` / ``Gemma2Config`` when the key is absent.
SLIDING_WINDOW_DEFAULT = 4096


def sliding_window(spec) -> int | None:
    """The window transformers' config ends up with (``config.sliding_window``): Mistral's as given;
    Qwen2 / Qwen3 only with ``use_sliding_window`` (``__post_init__`` sets it to None otherwise);
    Gemma2's always; none for Llama / Gemma / Qwen3 without it."""
    cfg, mt = spec.config, spec.model_type
    if mt == "mistral":
        w = cfg.get("sliding_window")
    elif mt in ("qwen2", "qwen3"):
        w = cfg.get("sliding_window", SLIDING_WINDOW_DEFAULT) if cfg.get("use_sliding_window") else None
    elif mt == "gemma2":
        w = cfg.get("sliding_window", SLIDING_WINDOW_DEFAULT)
    else:
        w = None
    return int(w) if w else None


def layer_types(spec) -> list[str]:
    """``config.layer_types`` as transformers 5.24 fills it: Mistral's every layer follows the one
    mask it builds (sliding when ``sliding_window`` is set); Qwen2 / Qwen3 slide from
    ``max_window_layers`` on; Gemma2 alternates, starting with a sliding layer."""
    cfg, mt, n = spec.config, spec.model_type, spec.num_layers
    w = sliding_window(spec)
    if mt == "mistral":
        return ["sliding_attention" if w else "full_attention"] * n
    if mt in ("qwen2", "qwen3", "gemma2") and cfg.get("layer_types"):
        return list(cfg["layer_types"])[:n]
    if mt in ("qwen2", "qwen3"):
        mwl = int(cfg.get("max_window_layers", QWEN_MAX_WINDOW_LAYERS_DEFAULT))
        return ["sliding_attention" if w is not None and i >= mwl else "full_attention" for i in range(n)]
    if mt == "gemma2":
        return ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
    return ["full_attention"] * n


def _window_active(ctx: Context, seq):
    """SDPA: ``_ignore_causal_mask_sdpa`` skips the mask (``is_causal``) unless ``kv_length >=
    sliding_window``; at and beyond the window a (1, 1, L, L) bool mask is built."""
    w = sliding_window(ctx.spec)
    if w is None or "sliding_attention" not in layer_types(ctx.spec):
        return False
    active = np.asarray(seq) >= w
    if active.all():
        return True
    if not active.any():
        return False
    raise ValueError("a swept sequence range crossing sliding_window must be replayed per regime (see regime())")


def regime(ctx: Context, batch, seq):
    """Sweep points that replay different code (the SDPA sliding-window mask on or off)."""
    w = sliding_window(ctx.spec)
    if w is None or ctx.settings.attn_implementation != "sdpa" or "sliding_attention" not in layer_types(ctx.spec):
        return None
    return (np.asarray(seq) >= w).astype(np.int64)


def extrapolates(ctx: Context) -> bool:
    """Blocks 1.. replay identically unless SDPA layers of both kinds (full: no mask; sliding:
    a mask, repeated keys / values) alternate. Eager masks have one size for both kinds."""
    if ctx.settings.attn_implementation != "sdpa":
        return True
    return len(set(layer_types(ctx.spec)[1:])) <= 1


class Shared:
    """Tensors made once per forward and used by every layer: the KV cache, the attention masks
    (by layer type), rotary cos / sin. ``LlamaModel.forward`` order: cache, position ids, masks,
    rotary embeddings."""

    def __init__(self, ctx: Context, batch, seq, prefix=None) -> None:
        sim, spec = ctx.sim, ctx.spec
        hd = spec.head_dim
        dtype = ctx.stream_dtype
        self.cache = KVCache(ctx, prefix)
        self.kv_len = kv = seq + self.cache.prefix_len  # a prefix cache: queries at offset P over P + L keys
        self.types = layer_types(spec)
        self.masks: dict[str, Tensor | None] = {}
        kinds = set(self.types) | ({"full_attention", "sliding_attention"} if spec.model_type == "gemma2" else set())
        if ctx.settings.attn_implementation == "eager":
            # eager_mask: the bool mask, then ``where`` into an additive (B, 1, L, P + L) mask in the
            # embeddings' dtype (one per mask type the model builds)
            if "full_attention" in kinds:
                b = sim.tensor(seq * kv, "bool", category="inputs")
                self.masks["full_attention"] = sim.tensor(batch * seq * kv, dtype, category="inputs")
                del b
            if "sliding_attention" in kinds:
                b = sliding_window_bool_mask(ctx, seq, kv)
                self.masks["sliding_attention"] = sim.tensor(batch * seq * kv, dtype, category="inputs")
                del b
        elif ctx.settings.attn_implementation == "sdpa":  # flash_attention_2: no mask at all (flash_attention_mask)
            # SDPA: ``_ignore_causal_mask_sdpa`` skips the mask (is_causal) only with as many keys as
            # queries (no prefix) and, for a sliding window, fewer keys than the window
            if "full_attention" in kinds and self.cache.prefix_len:
                self.masks["full_attention"] = sim.tensor(seq * kv, "bool", category="inputs")  # kv <= q + P
            if "sliding_attention" in kinds and (self.cache.prefix_len or _window_active(ctx, kv)):
                self.masks["sliding_attention"] = sliding_window_bool_mask(ctx, seq, kv)  # (1, 1, L, P + L) bool
        # LlamaRotaryEmbedding.forward: fp32 freqs (1, L, hd/2) -> cat (1, L, hd) -> cos/sin in x.dtype
        freqs = sim.tensor(seq * hd // 2, "float32")
        emb = sim.tensor(seq * hd, "float32")
        del freqs
        c32 = sim.tensor(seq * hd, "float32")
        s32 = sim.tensor(seq * hd, "float32")
        del emb
        self.cos = sim.tensor(seq * hd, dtype) if dtype != "float32" else c32
        self.sin = sim.tensor(seq * hd, dtype) if dtype != "float32" else s32
        del c32, s32

    def mask(self, n: int) -> Tensor | None:
        return self.masks.get(self.types[n])


def rotary(ctx: Context, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``(x * cos) + (rotate_half(x) * sin)``; ``rotate_half`` = cat(-x2, x1)."""
    sim = ctx.sim
    a = ops.mul(sim, x, cos)
    neg = ops.unary(sim, x, saves="none", out_numel=x.numel // 2)  # -x2 (a slice: half the size)
    rot = ops.copy(sim, x)  # cat((-x2, x1)): a new full tensor
    del neg
    b = ops.mul(sim, rot, sin)
    del rot
    return ops.add(sim, a, b)


def attention(ctx: Context, x: Tensor, prefix: str, sh: Shared, batch, seq, n: int) -> Tensor:
    sim, spec = ctx.sim, ctx.spec
    nh, nkv, hd = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    q = ctx.linear(x, f"{prefix}.q_proj")
    k = ctx.linear(x, f"{prefix}.k_proj")
    v = ctx.linear(x, f"{prefix}.v_proj")
    if spec.model_type == "qwen3":  # per-head RMSNorm on q and k
        q = ops.rms_norm(sim, q, hd, ctx.param(f"{prefix}.q_norm"))
        k = ops.rms_norm(sim, k, hd, ctx.param(f"{prefix}.k_norm"))
    q = rotary(ctx, q, sh.cos, sh.sin)
    k = rotary(ctx, k, sh.cos, sh.sin)
    k, v = sh.cache.update(k, v, n)  # DynamicCache: ``cat([past, k])`` copies, held until forward returns
    mask = sh.mask(n)
    q32 = k32 = None
    if ctx.autocast_dtype is not None:
        # SDPA is on autocast's lower-precision list: the fp32 q / k (rotary's cos / sin are fp32)
        # are cast (k first, as traced), v is already in the autocast dtype; the fp32 query_states /
        # key_states stay bound in LlamaAttention.forward until it returns (the bf16 copies are what
        # SDPA saves)
        q32, k32 = q, k
        if mask is None or ctx.settings.attn_implementation != "sdpa":
            k = ops.cast(sim, k, ctx.autocast_dtype)
            q = ops.cast(sim, q, ctx.autocast_dtype)
            v = ops.cast(sim, v, ctx.autocast_dtype)
    if ctx.settings.attn_implementation == "eager":
        out = eager(ctx, q, k, v, mask, batch, seq, sh.kv_len)
    elif ctx.settings.attn_implementation == "flash_attention_2":
        out = flash_attention_2(sim, q, k, v, batch=batch, heads=nh, q_len=seq, head_dim=hd,
                                target_dtype=ctx.settings.dtype)
    elif mask is None:
        out = ops.sdpa(sim, q, k, v, batch=batch, heads=nh, q_len=seq, head_dim=hd)  # is_causal, enable_gqa
    else:
        out = sdpa_masked(ctx, q, k, v, mask, batch, seq, sh.kv_len)
    del q, k, v
    o = ctx.linear(out, f"{prefix}.o_proj")
    del q32, k32
    return o


def sdpa_masked(ctx: Context, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, batch, seq, kv_len) -> Tensor:
    """``sdpa_attention_forward`` with a bool mask (the sliding window at ``seq >= sliding_window``):
    ``use_gqa_in_sdpa`` is False with a mask, so ``repeat_kv`` copies keys and values to every
    query head; then ``F.scaled_dot_product_attention`` converts the mask
    (``convert_boolean_attn_mask``: ``logical_not`` of the batch-expanded (B, 1, L, L) view, a
    bool temporary, and ``where`` into an additive (B, 1, L, L) mask in the query dtype) and runs the
    memory-efficient kernel, which saves that additive mask with q, k, v, out and the log-sum-exp."""
    sim, spec = ctx.sim, ctx.spec
    groups = spec.num_attention_heads // spec.num_key_value_heads
    kr = ops.expand_copy(sim, k, groups)
    vr = ops.expand_copy(sim, v, groups)
    held = ()
    if ctx.autocast_dtype is not None:  # repeat_kv runs before F.scaled_dot_product_attention casts
        held = (kr, vr)  # the fp32 repeats stay bound in sdpa_attention_forward during the call
        kr = ops.cast(sim, kr, ctx.autocast_dtype)
        q = ops.cast(sim, q, ctx.autocast_dtype)
        vr = ops.cast(sim, vr, ctx.autocast_dtype)
    inverted = sim.tensor(batch * seq * kv_len, "bool")
    bias = sim.tensor(batch * seq * kv_len, q.dtype)
    del inverted
    out = sdpa_with_bias(sim, q, kr, vr, batch=batch, heads=spec.num_attention_heads, q_len=seq,
                         head_dim=spec.head_dim, bias=bias)
    del kr, vr, bias, held
    return out


def eager(ctx: Context, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, batch, seq, kv_len) -> Tensor:
    """``eager_attention_forward``: repeat_kv, scores = q k^T * scale (Gemma2: soft-capped,
    ``tanh(s / cap) * cap``) + mask, fp32 softmax, cast, dropout, probs @ v, transpose + contiguous."""
    sim, spec = ctx.sim, ctx.spec
    groups = spec.num_attention_heads // spec.num_key_value_heads
    kr = ops.expand_copy(sim, k, groups)
    vr = ops.expand_copy(sim, v, groups)
    n_scores = batch * spec.num_attention_heads * seq * kv_len
    s = ops.matmul(sim, q, kr, n_scores)
    del kr
    s2 = ops.mul(sim, s, None)
    del s
    if spec.model_type == "gemma2" and spec.config.get("attn_logit_softcapping"):
        s3 = ops.mul(sim, s2, None)  # / softcap
        del s2
        t = ops.unary(sim, s3, saves="output")  # tanh
        del s3
        s2 = ops.mul(sim, t, None)  # * softcap
        del t
    if mask is not None:
        s3 = ops.add(sim, s2, mask)
        del s2
        s2 = s3
    p32 = ops.softmax(sim, s2, "float32")
    del s2
    p = ops.cast(sim, p32, q.dtype)
    del p32
    p = ops.dropout(sim, p, float(ctx.spec.config.get("attention_dropout", 0.0) or 0.0))
    o = ops.matmul(sim, p, vr, q.numel)
    del p, vr
    return ops.copy(sim, o)


def mlp(ctx: Context, x: Tensor, prefix: str) -> Tensor:
    """``down(act(gate(x)) * up(x))``."""
    sim = ctx.sim
    g = ctx.linear(x, f"{prefix}.gate_proj")
    a = ops.unary(sim, g, saves="input")  # silu / gelu(tanh): save their input
    del g
    u = ctx.linear(x, f"{prefix}.up_proj")
    m = ops.mul(sim, a, u)
    del a, u
    return ctx.linear(m, f"{prefix}.down_proj")


def decoder_layer(ctx: Context, h: Tensor, n: int, sh: Shared, batch, seq) -> Tensor:
    sim, spec = ctx.sim, ctx.spec
    hidden = spec.hidden_size
    p = f"model.layers.{n}"
    gemma = spec.model_type in ("gemma", "gemma2")
    residual = h
    x = ops.rms_norm(sim, h, hidden, ctx.param(f"{p}.input_layernorm"), offset_one=gemma)
    a = attention(ctx, x, f"{p}.self_attn", sh, batch, seq, n)
    del x
    if spec.model_type == "gemma2":
        a2 = ops.rms_norm(sim, a, hidden, ctx.param(f"{p}.post_attention_layernorm"), offset_one=True)
        del a
        a = a2
    h = ops.add(sim, residual, a)
    del a, residual
    residual = h
    norm2 = "pre_feedforward_layernorm" if spec.model_type == "gemma2" else "post_attention_layernorm"
    x = ops.rms_norm(sim, h, hidden, ctx.param(f"{p}.{norm2}"), offset_one=gemma)
    m = mlp(ctx, x, f"{p}.mlp")
    del x
    if spec.model_type == "gemma2":
        m2 = ops.rms_norm(sim, m, hidden, ctx.param(f"{p}.post_feedforward_layernorm"), offset_one=True)
        del m
        m = m2
    h = ops.add(sim, residual, m)
    return h


def embed(ctx: Context, ids: Tensor) -> Tensor:
    sim, spec = ctx.sim, ctx.spec
    w = ctx.param("model.embed_tokens")
    from planner.memory.programs._decoder import embeddings_output

    # the input-require-grads hook sits on embed_tokens' output, before gemma's normaliser
    h = embeddings_output(ctx, ops.embedding(sim, ids, spec.hidden_size, w, w.dtype))
    if spec.model_type in ("gemma", "gemma2"):  # hidden_states * sqrt(hidden) (a 0-dim tensor)
        h = ops.mul(sim, h, None)
    return h


def final(ctx: Context, h: Tensor) -> Tensor:
    gemma = ctx.spec.model_type in ("gemma", "gemma2")
    return ops.rms_norm(ctx.sim, h, ctx.spec.hidden_size, ctx.param("model.norm"), offset_one=gemma)


def logits_transform(ctx: Context, logits: Tensor) -> Tensor:
    """Gemma2's final logit soft-capping: ``tanh(logits / cap) * cap``."""
    if ctx.spec.model_type == "gemma2" and ctx.spec.config.get("final_logit_softcapping"):
        sim = ctx.sim
        a = ops.mul(sim, logits, None)
        t = ops.unary(sim, a, saves="output")
        del a
        return ops.mul(sim, t, None)
    return logits


def forward(ctx: Context, batch, seq):
    return causal_lm_forward(ctx, __import__(__name__, fromlist=["x"]), batch, seq)
