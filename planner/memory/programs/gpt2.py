"""Forward program of GPT-2, mirroring transformers 5.24 ``modeling_gpt2.py`` statement by statement.

What differs from llama: ``Conv1D`` layers (``addmm`` with a transposed weight: the same saving rule
as a linear), one fused ``c_attn`` whose output is split into q / k / v *views* (the attention
saves the query view, which keeps the whole fused tensor alive), learned position embeddings
(``wpe``, alive until ``GPT2Model.forward`` returns), LayerNorms, ``gelu_new`` (a Python
expression, op by op), and three dropouts (embedding, residual, attention) that save a bool mask
on CUDA; SDPA runs its dropout inside the fused kernel (footprint of p = 0), eager materialises it.
"""

from __future__ import annotations

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs._decoder import (KVCache, causal_lm_loss, embeddings_output, prefix_cache, require_attn,
                                               run_layers)
from planner.memory.programs._ops_extra import flash_attention_2
from planner.memory.programs._ops_extra import sdpa as sdpa_with_bias
from planner.memory.programs._ops_extra import activation as act_fn, bmm_operand, split
from planner.memory.sim import Tensor

MODEL_TYPES = ("gpt2",)


def _p(ctx: Context, key: str, default: float) -> float:
    v = ctx.spec.config.get(key, default)
    return float(default if v is None else v)


def buffer_bytes(ctx: Context) -> int:
    """GPT-2 registers no buffers in transformers 5.24."""
    return 0


def activation(ctx: Context, x: Tensor) -> Tensor:
    return act_fn(ctx.sim, x, str(ctx.spec.config.get("activation_function") or "gelu_new"))


def attention(ctx: Context, x: Tensor, prefix: str, mask: Tensor | None, cache: KVCache, batch, seq, layer: int = 0):
    """``GPT2Attention.forward``; returns ``(attn_output, attn_weights)`` as it does (eager returns
    the dropped-out probabilities, which the block binds to ``_`` until it returns)."""
    sim, spec = ctx.sim, ctx.spec
    qkv = ctx.linear(x, f"{prefix}.c_attn")
    q, k, v = split(sim, qkv, [qkv.numel // 3] * 3)
    del qkv
    k, v = cache.update(k, v, layer)
    kv_len = seq + cache.prefix_len
    if ctx.settings.attn_implementation == "eager":
        out, weights = _eager(ctx, q, k, v, mask, batch, seq, kv_contiguous=cache.enabled, kv_len=kv_len)
    elif ctx.settings.attn_implementation == "flash_attention_2":  # dropout inside the kernel (RNG state only)
        out = flash_attention_2(sim, q, k, v, batch=batch, heads=spec.num_attention_heads, q_len=seq,
                                head_dim=spec.head_dim, target_dtype=ctx.settings.dtype)
        weights = None
    elif mask is None:  # sdpa (dropout inside the fused kernel on CUDA)
        out = ops.sdpa(sim, q, k, v, batch=batch, heads=spec.num_attention_heads, q_len=seq, head_dim=spec.head_dim)
        weights = None
    else:  # a prefix cache: SDPA gets the (1, 1, L, P + L) bool mask and converts it per call
        inverted = sim.tensor(batch * mask.numel, "bool")
        bias = sim.tensor(batch * mask.numel, q.dtype)
        del inverted
        out = sdpa_with_bias(sim, q, k, v, batch=batch, heads=spec.num_attention_heads, q_len=seq,
                             head_dim=spec.head_dim, bias=bias)
        del bias
        weights = None
    o = ctx.linear(out, f"{prefix}.c_proj")
    del out
    o = ops.dropout(sim, o, _p(ctx, "resid_pdrop", 0.1))
    return o, weights  # query / key / value states (views of ``qkv`` or cache copies) die here


def _eager(ctx: Context, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, batch, seq, *,
           kv_contiguous: bool, kv_len=None):
    """``eager_attention_forward``: ``matmul(q, k^T)``, ``* scaling``, ``+ mask``, softmax in the
    input dtype, dropout (bool mask), ``@ v``, transpose and a copying ``reshape``. ``matmul``
    reshapes its operands to 3-D: a view of the fused ``c_attn`` output is copied when B > 1 (the copy is
    what the ``bmm`` saves); the KV cache's copies are contiguous and used as they are."""
    sim, spec = ctx.sim, ctx.spec
    qc = bmm_operand(sim, q, batch)
    kc = k if kv_contiguous else bmm_operand(sim, k, batch)
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
    p = ops.softmax(sim, s2, s2.dtype)
    del s2
    p = ops.dropout(sim, p, _p(ctx, "attn_pdrop", 0.1))
    vc = v if kv_contiguous else bmm_operand(sim, v, batch)
    o = ops.matmul(sim, p, vc, q.numel)
    del vc
    return ops.copy(sim, o), p


def mlp(ctx: Context, x: Tensor, prefix: str) -> Tensor:
    sim = ctx.sim
    h = ctx.linear(x, f"{prefix}.c_fc")
    a = activation(ctx, h)
    del h
    o = ctx.linear(a, f"{prefix}.c_proj")
    del a
    return ops.dropout(sim, o, _p(ctx, "resid_pdrop", 0.1))


def block(ctx: Context, h: Tensor, n: int, mask, cache: KVCache, batch, seq) -> Tensor:
    """``GPT2Block.forward``: its locals (``attn_output``, ``_`` = eager's probabilities, the MLP
    output) live until it returns."""
    sim, spec = ctx.sim, ctx.spec
    hidden = spec.hidden_size
    p = f"transformer.h.{n}"
    residual = h
    hs = ops.layer_norm(sim, h, hidden, ctx.param(f"{p}.ln_1"), ctx.param(f"{p}.ln_1", "bias"))
    del h
    attn_output, _ = attention(ctx, hs, f"{p}.attn", mask, cache, batch, seq, n)
    hs = ops.add(sim, attn_output, residual)
    residual = hs
    hs = ops.layer_norm(sim, hs, hidden, ctx.param(f"{p}.ln_2"), ctx.param(f"{p}.ln_2", "bias"))
    feed_forward = mlp(ctx, hs, f"{p}.mlp")
    hs = ops.add(sim, residual, feed_forward)
    return hs


def forward(ctx: Context, batch, seq):
    require_attn(ctx, ("sdpa", "eager", "flash_attention_2"), "gpt2")
    sim, spec = ctx.sim, ctx.spec
    if ctx.settings.attn_implementation == "eager" and spec.config.get("reorder_and_upcast_attn"):
        ctx.unsupported.append("gpt2 reorder_and_upcast_attn: its fp32 baddbmm scores are replayed as the default "
                               "eager path")
    hidden = spec.hidden_size
    ids = sim.tensor(batch * seq, "int64", category="inputs")
    labels = sim.tensor(batch * seq, "int64", category="inputs")
    # prefix tuning: PeftModelForCausalLM.forward builds the prefix cache (get_prompt) first
    cache = KVCache(ctx, prefix_cache(ctx, batch) if ctx.plan.prefix_tokens else None)
    kv_len = seq + cache.prefix_len
    # GPT2Model.forward
    wte = ctx.param("transformer.wte")
    inputs_embeds = embeddings_output(ctx, ops.embedding(sim, ids, hidden, wte, wte.dtype))
    arange = sim.tensor(seq, "int64", category="inputs")
    position_ids = sim.tensor(seq, "int64", category="inputs")  # arange(L) + past_seen_tokens
    del arange
    wpe = ctx.param("transformer.wpe")
    position_embeds = ops.embedding(sim, position_ids, hidden, wpe, wpe.dtype)
    h = ops.add(sim, inputs_embeds, position_embeds)
    if ctx.settings.attn_implementation == "eager":  # create_causal_mask: (B, 1, L, P + L) additive
        b = sim.tensor(seq * kv_len, "bool", category="inputs")
        mask = sim.tensor(batch * seq * kv_len, ctx.stream_dtype, category="inputs")
        del b
    else:  # SDPA: is_causal, unless a prefix cache offsets the queries: a (1, 1, L, P + L) bool mask
        mask = sim.tensor(seq * kv_len, "bool", category="inputs") if (
            cache.prefix_len and ctx.settings.attn_implementation == "sdpa") else None  # FA2: never a mask
    h = ops.dropout(sim, h, _p(ctx, "embd_pdrop", 0.1))

    def layer(x, n, mask=mask):
        return block(ctx, x, n, mask, cache, batch, seq)

    h = run_layers(ctx, h, layer)
    del layer
    h = ops.layer_norm(sim, h, hidden, ctx.param("transformer.ln_f"), ctx.param("transformer.ln_f", "bias"))
    del mask  # checkpointed blocks keep it (through ``layer``) until their backward has run
    del inputs_embeds, position_embeds, position_ids
    # GPT2LMHeadModel.forward: the base output keeps ``h`` (last_hidden_state) until it returns
    loss = causal_lm_loss(ctx, h, batch, seq)
    return loss, {"batch": (ids, labels)}  # h and the KV cache die with the model output
