"""Forward program of the llama-shaped decoders (llama, mistral, qwen2, qwen3, gemma, gemma2),
mirroring transformers 5.24 ``modeling_llama.py`` (and the gemma / qwen3 copies) statement by
statement, so that temporaries die where Python frees them."""

from __future__ import annotations

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs.common import causal_lm_forward
from planner.memory.sim import Tensor

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")


class Shared:
    """Tensors made once per forward and used by every layer (rotary cos / sin, eager mask)."""

    def __init__(self, ctx: Context, batch, seq) -> None:
        sim, spec = ctx.sim, ctx.spec
        hd = spec.head_dim
        # LlamaRotaryEmbedding.forward: fp32 freqs (1, L, hd/2) -> cat (1, L, hd) -> cos/sin in x.dtype
        freqs = sim.tensor(seq * hd // 2, "float32")
        emb = sim.tensor(seq * hd, "float32")
        del freqs
        c32 = sim.tensor(seq * hd, "float32")
        s32 = sim.tensor(seq * hd, "float32")
        del emb
        dtype = ctx.stream_dtype
        self.cos = sim.tensor(seq * hd, dtype) if dtype != "float32" else c32
        self.sin = sim.tensor(seq * hd, dtype) if dtype != "float32" else s32
        del c32, s32
        self.mask = None
        if ctx.settings.attn_implementation == "eager":
            # create_causal_mask -> eager_mask: an additive (B, 1, L, L) mask in the model dtype
            self.mask = sim.tensor(batch * seq * seq, dtype)


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


def attention(ctx: Context, x: Tensor, prefix: str, sh: Shared, batch, seq) -> Tensor:
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
    if ctx.settings.attn_implementation == "eager":
        out = eager(ctx, q, k, v, sh, batch, seq)
    else:
        out = ops.sdpa(sim, q, k, v, batch=batch, heads=nh, q_len=seq, head_dim=hd)
    del q, k, v
    return ctx.linear(out, f"{prefix}.o_proj")


def eager(ctx: Context, q: Tensor, k: Tensor, v: Tensor, sh: Shared, batch, seq) -> Tensor:
    """``eager_attention_forward``: repeat_kv, scores = q k^T * scale + mask, fp32 softmax, cast,
    dropout, probs @ v, transpose + contiguous."""
    sim, spec = ctx.sim, ctx.spec
    groups = spec.num_attention_heads // spec.num_key_value_heads
    kr = ops.expand_copy(sim, k, groups)
    vr = ops.expand_copy(sim, v, groups)
    n_scores = batch * spec.num_attention_heads * seq * seq
    s = ops.matmul(sim, q, kr, n_scores)
    del kr
    s2 = ops.mul(sim, s, None)
    del s
    if sh.mask is not None:
        s3 = ops.add(sim, s2, sh.mask) if not s2.rg else _add_mask(ctx, s2, sh.mask)
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


def _add_mask(ctx: Context, s: Tensor, mask: Tensor) -> Tensor:
    return ops.add(ctx.sim, s, mask)


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
    a = attention(ctx, x, f"{p}.self_attn", sh, batch, seq)
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
    h = ops.embedding(sim, ids, spec.hidden_size, w, w.dtype)
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
