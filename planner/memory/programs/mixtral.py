"""Forward program of Mixtral, mirroring transformers 5.24 ``modeling_mixtral.py`` with the default
``grouped_mm`` experts implementation (``integrations/moe.py``; the default on CUDA >= sm80 and on
the CPU): every routed (token, expert) pair is gathered, sorted by expert and run through two
``grouped_mm`` calls, so all shapes are fixed by batch x seq x top-k and the replay is exact (no
routing statistics needed).

Attention is Mistral's (separate q / k / v / o, rotary on transposed views, SDPA with
``enable_gqa``; eager repeats keys / values); the KV cache copies keys and values in training.
The router: ``F.linear`` (E logits), fp32 softmax (saved), ``topk``, in-place renormalisation
(autograd clones the top-k values first), then the expert block: sort, gather, ``histc`` /
``cumsum`` offsets, ``grouped_mm`` (gate_up), SiLU-gate, ``grouped_mm`` (down), the fp32 weighting,
un-permutation and the sum over top-k, cast back.

LoRA on expert parameters (``target_parameters``) is estimated with the experts' weights as
frozen parameters (PEFT's parametrization temporaries are not replayed); the plan says so.
"""

from __future__ import annotations

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs import _rope
from planner.memory.programs._decoder import KVCache, require_attn, sliding_regime
from planner.memory.programs._ops_extra import View, _grad, split
from planner.memory.sim import Tensor

MODEL_TYPES = ("mixtral",)

#: Sweeps crossing ``sliding_window`` replay each side apart (the SDPA mask exists from there on).
regime = sliding_regime


def buffer_bytes(ctx: Context) -> int:
    return _rope.rotary_buffer_bytes(ctx)


def attention(ctx: Context, x: Tensor, prefix: str, cos, sin, mask, cache: KVCache, batch, seq):
    sim, spec = ctx.sim, ctx.spec
    q = ctx.linear(x, f"{prefix}.q_proj")
    k = ctx.linear(x, f"{prefix}.k_proj")
    v = ctx.linear(x, f"{prefix}.v_proj")
    q_embed = _rope.rotate(sim, q, cos, sin)
    k_embed = _rope.rotate(sim, k, cos, sin)
    del q, k
    k_embed, v = cache.update(k_embed, v)
    if ctx.settings.attn_implementation == "eager":
        out, weights = _rope.eager(ctx, q_embed, k_embed, v, mask, batch, seq, q_view=True,
                                   k_view=not cache.enabled, v_view=not cache.enabled,
                                   dropout=float(spec.config.get("attention_dropout") or 0.0), kv_len=seq + cache.prefix_len)
    else:
        out = _rope.sdpa(ctx, q_embed, k_embed, v, batch, seq, q_head_major=False, mask=mask)
        weights = None
    del q_embed, k_embed, v
    o = ctx.linear(out, f"{prefix}.o_proj")
    del out
    return o, weights


def router(ctx: Context, x: Tensor, prefix: str, tokens):
    """``MixtralTopKRouter.forward``: (router_logits, top-k weights (fp32), top-k indices)."""
    sim, spec = ctx.sim, ctx.spec
    e, k = spec.num_experts, spec.num_experts_per_tok
    logits = ops.linear(sim, x, spec.hidden_size, e, ctx.param(f"{prefix}.gate"))
    l32 = ops.cast(sim, logits, "float32")
    probs = ops.softmax(sim, l32, "float32")
    del l32
    # topk: values (fp32) and int64 indices; backward scatters into a zero (T, E) gradient
    idx = sim.tensor(tokens * k, "int64")
    top = sim.tensor(tokens * k, "float32", probs.rg)
    if probs.rg:
        pk, pn = probs.key, probs.numel
        sim.node([idx], lambda outs: {pk: _grad(sim, pn, "float32")}, [top], inputs=[probs])
    del probs
    # top /= top.sum(-1, keepdim=True): the sum, then autograd clones ``top`` before the in-place div
    s = ops.unary(sim, top, saves="none", out_numel=tokens)
    clone = sim.tensor(tokens * k, "float32")
    scores = View(sim, top, top.numel, rg=top.rg or s.rg)
    if scores.rg:
        tk, sk = top.key, s.key

        def bw(outs):
            a = _grad(sim, tokens * k, "float32")
            b = _grad(sim, tokens, "float32")
            return {tk: a, sk: b}

        sim.node([clone, s], bw, [scores], inputs=[top, s])
    del clone, s
    return logits, scores, idx, top


def experts(ctx: Context, x: Tensor, prefix: str, weights: Tensor, index: Tensor, tokens) -> Tensor:
    """``grouped_mm_experts_forward``."""
    sim, spec = ctx.sim, ctx.spec
    h, i, e, k = spec.hidden_size, spec.intermediate_size, spec.num_experts, spec.num_experts_per_tok
    rows = tokens * k
    expert_ids_g = sim.tensor(rows, "int64")  # sort(expert_ids): values and permutation
    perm = sim.tensor(rows, "int64")
    tok = sim.tensor(rows, "int64")  # perm // top_k
    selected = sim.tensor(rows * h, x.dtype, x.rg)  # hidden_states[perm // top_k]
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        sim.node([tok], lambda outs: {xk: _grad(sim, xn, xd)}, [selected], inputs=[x])
    del tok
    wg = sim.tensor(rows, "float32", weights.rg)  # sample_weights[perm]
    if weights.rg:
        wk, wn = weights.key, weights.numel
        sim.node([perm], lambda outs: {wk: _grad(sim, wn, "float32")}, [wg], inputs=[weights])
    histc_in = sim.tensor(rows, "float32")  # expert_ids_g.float() (CPU; ``.int()`` on CUDA: same bytes)
    counts = sim.tensor(e, "float32")
    offsets = sim.tensor(e, "int32")
    gate_up = ctx.param(f"{prefix}.experts", "gate_up_proj")
    down = ctx.param(f"{prefix}.experts", "down_proj")
    proj = ops.linear(sim, selected, h, 2 * i, gate_up)  # grouped_mm
    del selected
    gate, up = split(sim, proj, [proj.numel // 2] * 2)  # _default_apply_gate: chunk(2)
    del proj
    a = ops.unary(sim, gate, saves="input")
    del gate
    m = ops.mul(sim, a, up)
    del a, up
    out = ops.linear(sim, m, i, h, down)  # grouped_mm
    del m
    weighted = ops.mul(sim, out, wg, out_numel=out.numel)  # bf16 x fp32 -> fp32
    del out, wg
    inv_perm = sim.tensor(rows, "int64")
    ar = sim.tensor(rows, "int64")
    del ar
    unperm = sim.tensor(rows * h, "float32", weighted.rg)  # weighted_out[inv_perm]
    if weighted.rg:
        wk2, wn2 = weighted.key, weighted.numel
        sim.node([inv_perm], lambda outs: {wk2: _grad(sim, wn2, "float32")}, [unperm], inputs=[weighted])
    del weighted, inv_perm
    summed = ops.unary(sim, unperm, saves="none", out_numel=tokens * h)  # .view(T, k, H).sum(1)
    del unperm
    final = ops.cast(sim, summed, x.dtype)
    del summed, expert_ids_g, histc_in, counts, offsets, perm
    return final


def moe_block(ctx: Context, x: Tensor, prefix: str, batch, seq) -> Tensor:
    tokens = batch * seq
    _, top_k_weights, top_k_index, _top = router(ctx, x, prefix, tokens)
    del _top
    out = experts(ctx, x, prefix, top_k_weights, top_k_index, tokens)
    return out  # router logits (``_``) and the router outputs die here


def decoder_layer(ctx: Context, h: Tensor, n: int, cos, sin, mask, cache, batch, seq) -> Tensor:
    sim, spec = ctx.sim, ctx.spec
    hidden = spec.hidden_size
    p = f"model.layers.{n}"
    residual = h
    hs = ops.rms_norm(sim, h, hidden, ctx.param(f"{p}.input_layernorm"))
    del h
    hs, _ = attention(ctx, hs, f"{p}.self_attn", cos, sin, mask, cache, batch, seq)
    hs = ops.add(sim, residual, hs)
    residual = hs
    hs = ops.rms_norm(sim, hs, hidden, ctx.param(f"{p}.post_attention_layernorm"))
    hs = moe_block(ctx, hs, f"{p}.mlp", batch, seq)
    return ops.add(sim, residual, hs)


def forward(ctx: Context, batch, seq):
    require_attn(ctx, ("sdpa", "eager", "flash_attention_2"), "mixtral")
    spec = ctx.spec
    if spec.config.get("output_router_logits"):
        ctx.unsupported.append("output_router_logits: the router auxiliary loss is not replayed")
    if any(m.endswith(".experts") for m in ctx.adapters):
        ctx.unsupported.append("LoRA on expert parameters: estimated without PEFT's parametrization temporaries")
    return _rope.decoder_forward(ctx, decoder_layer, batch, seq)
