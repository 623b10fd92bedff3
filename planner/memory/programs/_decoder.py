"""Pieces the decoder-only family programs share: the layer loop (checkpointed when asked), the KV
cache transformers builds in training, and ``ForCausalLMLoss``."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from planner.errors import PlannerError
from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs._ops_extra import copy_passthrough
from planner.memory.sim import Tensor


def use_cache(ctx: Context) -> bool:
    """``use_cache`` as the model sees it in a training forward: the config's value (default True),
    forced off by gradient checkpointing (``merge_with_config_defaults``). With a cache,
    ``DynamicLayer.update`` stores ``torch.cat([empty, k])`` copies of every layer's keys and values,
    which the attention then uses; the cache dies with the model output, at the end of forward."""
    return bool(ctx.spec.config.get("use_cache", True)) and not ctx.settings.gradient_checkpointing


class KVCache:
    """``DynamicCache``: holds each layer's key / value copies until the forward returns. With
    prefix tuning it starts filled with PEFT's prefixes (:func:`prefix_cache`): a layer's update then
    concatenates ``[prefix, new]`` (P + L positions) and the prefix copy it replaces is freed."""

    def __init__(self, ctx: Context, prefix: list[tuple[Tensor, Tensor]] | None = None) -> None:
        self.enabled = use_cache(ctx) or prefix is not None  # a cache passed in is used whatever use_cache says
        self.ctx = ctx
        self.layers: list[tuple[Tensor, Tensor]] = []
        self.prefix: dict[int, tuple[Tensor, Tensor]] = dict(enumerate(prefix)) if prefix is not None else {}
        self.prefix_len = 0 if prefix is None else ctx.plan.prefix_tokens
        self._calls = 0

    def update(self, k: Tensor, v: Tensor, layer: int | None = None) -> tuple[Tensor, Tensor]:
        """``cache.update(k, v, layer_idx)``; without ``layer`` the calls are taken as the blocks in order."""
        if not self.enabled:
            return k, v
        sim = self.ctx.sim
        if layer is None:
            layer = self._calls
        self._calls += 1
        past = self.prefix.pop(layer, None)
        if past is None:
            kc = copy_passthrough(sim, k)
            vc = copy_passthrough(sim, v)
        else:  # torch.cat([self.keys, key_states], dim=-2): gradients are narrowed views of the result's
            kc = ops.cat(sim, [past[0], k], past[0].numel + k.numel, k.dtype)
            vc = ops.cat(sim, [past[1], v], past[1].numel + v.numel, v.dtype)
            del past
        self.layers.append((kc, vc))
        return kc, vc


def prefix_cache(ctx: Context, batch) -> list[tuple[Tensor, Tensor]]:
    """PEFT's ``get_prompt`` for prefix tuning (peft_model.py, ``num_transformer_submodules == 1``):
    the prompt encoder's embedding of the virtual-token ids, batch-expanded, (B, P, layers x 2 x
    token_dim) in the adapter dtype (with ``prefix_projection``: an embedding of token_dim, then
    ``Linear -> Tanh -> Linear``); ``.to(base dtype)``; ``view`` / ``permute`` / ``split(2)`` /
    unpacking (views); ``DynamicCache(past_key_values)`` copies every layer's key and value prefix
    (``cat([empty, k])``, (B, heads, P, head_dim) each). The encoder's outputs die when ``get_prompt``
    returns; the copies live in the cache. Backward: each layer's prefix gradient is a narrowed view
    of that layer's whole (P + L) key / value gradient, held until the prefix nodes run (last:
    they were created first), then ``unbind`` / ``split`` backward (stack, cat), the ``view``
    backward of the permuted gradient (a copy), the cast back to the adapter dtype and the
    embedding's dense weight gradient."""
    from planner.memory.programs._ops_extra import View, _grad, split

    sim, plan = ctx.sim, ctx.plan
    tensors = {t.name: t for t in plan.new_tensors if t.module == ""}
    ad = ctx.settings.adapter_dtype
    p = "prompt_encoder.default"
    n_tokens = plan.prefix_tokens
    n_layers = ctx.spec.num_encoder_layers if ctx.spec.is_encoder_decoder else ctx.spec.num_layers
    emb_t = tensors[f"{p}.embedding.weight"]
    tokens = sim.tensor(batch * n_tokens, "int64", category="inputs")  # prompt_tokens, expanded (a view on the GPU copy)
    out = ops.embedding(sim, tokens, emb_t.shape[1], ops.Param(f"{p}.embedding", emb_t.numel, ad, True), ad)
    if f"{p}.transform.0.weight" in tensors:
        for i, name in enumerate((f"{p}.transform.0", f"{p}.transform.2")):
            w, b = tensors[f"{name}.weight"], tensors[f"{name}.bias"]
            x = out
            out = ops.linear(sim, x, w.shape[1], w.shape[0], ops.Param(f"{name}.weight", w.numel, ad, True),
                             ops.Param(f"{name}.bias", b.numel, ad, True))
            del x
            if i == 0:  # Tanh: saves its output
                x = out
                out = ops.unary(sim, x, saves="output")
                del x
    del tokens
    flat = ops.cast(sim, out, ctx.stream_dtype)  # .to(base_model_torch_dtype)
    del out
    # view (B, P, 2 x layers, heads, head_dim) + permute: views; the view's backward reshapes the
    # permuted gradient, a copy
    permuted = View(sim, flat, flat.numel)
    if flat.rg:
        fk, fn, fd = flat.key, flat.numel, flat.dtype
        sim.node([], lambda outs: {fk: _grad(sim, fn, fd)}, [permuted], inputs=[flat])
    del flat
    per_layer = permuted.numel // n_layers
    chunks = split(sim, permuted, [per_layer] * n_layers)
    del permuted
    out_kv: list[tuple[Tensor, Tensor]] = []
    for chunk in chunks:
        k, v = split(sim, chunk, [per_layer // 2, per_layer // 2])  # unpacking = unbind(0)
        out_kv.append((copy_passthrough(sim, k), copy_passthrough(sim, v)))
        del k, v
    del chunks, chunk
    return out_kv


def input_grads_hook(ctx: Context) -> bool:
    """Whether the input embedding's output is made to require grad: transformers 5.24's
    ``activation_checkpointing_enable`` (behind ``gradient_checkpointing_enable``) calls
    ``enable_input_require_grads`` for every model whose ``main_input_name`` is ``input_ids``
    (modeling_utils.py, ``needs_embedding_grads``), PEFT or not, quantized or not: a forward hook
    doing ``output.requires_grad_(True)``. So with checkpointing the backward always runs down to the
    embeddings, through frozen blocks too (found by the FLOP check, executors/flops.py, and measured:
    partial fine-tuning with checkpointing)."""
    return bool(ctx.settings.gradient_checkpointing)


def embeddings_output(ctx: Context, t: Tensor) -> Tensor:
    """The input embedding's output, made a leaf that requires grad where PEFT's hook does so
    (:func:`input_grads_hook`). Its ``AccumulateGrad`` node holds the leaf (alive as long as the
    graph) and, in backward, its ``.grad`` (until the graph is freed)."""
    if t.rg or not input_grads_hook(ctx):
        return t
    sim = ctx.sim
    t.rg = True
    grads: list = []
    sim.node([t], lambda outs: (grads.extend(outs), {})[1], [t], inputs=[])
    return t


def run_block(ctx: Context, n: int, fn: Callable[[Tensor], Tensor], h: Tensor) -> Tensor:
    """Block ``n``: checkpointed when asked (``GradientCheckpointingLayer``, non-reentrant), inside the
    data-parallel wrapper's per-block events where the strategy gathers parameters per block
    (FSDP / ZeRO-3: all-gather before, reshard after, gradient reduction when its backward ends)."""
    sim = ctx.sim
    gc = ctx.settings.gradient_checkpointing

    def run(x):
        return sim.checkpoint(fn, x) if gc else fn(x)

    par = ctx.parallel
    if par is not None and par.per_layer:
        return par.layer(n, run, h)
    return run(h)


def run_layers(ctx: Context, h: Tensor, layer: Callable[[Tensor, int], Tensor], layers=None) -> Tensor:
    """The block loop over ``ctx.layer_indices`` (a prefix of the blocks when the model
    extrapolates); each block is a ``GradientCheckpointingLayer`` (non-reentrant checkpoint)."""
    for n in (ctx.layer_indices if layers is None else layers):
        def fn(x, n=n):
            return layer(x, n)

        h = run_block(ctx, n, fn, h)
    return h


def causal_lm_loss(ctx: Context, h: Tensor, batch: Any, seq: Any, lm_head: str = "lm_head",
                   logits_transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``lm_head`` then transformers' ``ForCausalLMLoss``: ``logits.float()``, labels padded by one
    (B x (L+1)) and shifted (a contiguous B x L copy that ``nll_loss`` keeps), ``cross_entropy``."""
    sim = ctx.sim
    sim.category = "logits"
    logits = ctx.linear(h, lm_head)
    if logits_transform is not None:
        logits = logits_transform(logits)
    l32 = ops.cast(sim, logits, "float32")
    padded = sim.tensor(batch * (seq + 1), "int64", category="inputs")
    loss = ops.cross_entropy(sim, l32, ctx.spec.vocab_size, batch * seq)
    del padded, l32, logits
    sim.category = "activations"
    return loss


def require_attn(ctx: Context, supported: tuple[str, ...], model: str) -> str:
    """The attention implementation, or a PlannerError naming ``attn_implementation`` where
    transformers refuses it for this model."""
    impl = ctx.settings.attn_implementation
    if impl not in supported:
        raise PlannerError(
            f"{model} does not support attn_implementation={impl!r} in transformers 5.24 "
            f"(supported: {', '.join(supported)})", field="attn_implementation")
    return impl


def eager_causal_mask(ctx: Context, batch, seq) -> Tensor:
    """``create_causal_mask`` for eager attention: index ranges, a (1, 1, L, L) bool mask, then
    ``where`` into an additive (B, 1, L, L) mask in the model dtype (alive until the base model
    returns, or, under checkpointing, until the blocks' backward has run)."""
    sim = ctx.sim
    bool_mask = sim.tensor(seq * seq, "bool", category="inputs")
    mask = sim.tensor(batch * seq * seq, ctx.stream_dtype, category="inputs")
    del bool_mask
    return mask


def sliding_window_bool_mask(ctx: Context, seq, kv_len=None) -> Tensor:
    """The bool (1, 1, L, S) mask of ``sliding_window_causal_mask_function`` (S = L + cached
    positions): ``and_masks`` starts from a 0-dim True and ANDs the window overlay (``kv > q - w``),
    then the causal one (``kv <= q``): four L x S bool tensors, the last one kept."""
    sim = ctx.sim
    n = seq * (seq if kv_len is None else kv_len)
    t1 = sim.tensor(n, "bool", category="inputs")
    t2 = sim.tensor(n, "bool", category="inputs")
    del t1
    t3 = sim.tensor(n, "bool", category="inputs")
    mask = sim.tensor(n, "bool", category="inputs")
    del t3, t2
    return mask


def sliding_window_mask(ctx: Context, seq) -> Tensor | None:
    """``create_sliding_window_causal_mask`` for SDPA: None (``is_causal``) while the sequence is
    shorter than ``sliding_window``; else a (1, 1, L, L) bool mask (built in two ``bitwise_and``
    steps), alive until the base model returns."""
    w = ctx.spec.config.get("sliding_window")
    if not w:
        return None
    active = seq >= int(w)  # a bool, or a bool array when the replay sweeps sequence lengths
    if not np.any(active):
        return None
    n = np.where(active, seq, 0) if isinstance(active, np.ndarray) else seq
    return sliding_window_bool_mask(ctx, n)


def sdpa_bias(ctx: Context, mask: Tensor | None, batch, seq, dtype: str) -> Tensor | None:
    """SDPA converts a bool mask into an additive float mask in the query dtype, per call
    (``convert_boolean_attn_mask``: ``where(mask.logical_not(), -inf, 0)``; both results broadcast
    to the batch, the bool one a temporary); the kernel keeps the float mask for backward."""
    if mask is None:
        return None
    inverted = ctx.sim.tensor(batch * mask.numel, "bool")
    bias = ctx.sim.tensor(batch * mask.numel, dtype)  # (B, 1, L, L); 0 where a swept length needs no mask
    del inverted
    return bias


def sliding_regime(ctx: Context, batch, seq):
    """Sweep regimes of a model with ``config.sliding_window``: under SDPA the mask (and what it
    brings: the additive bias, repeated keys / values) exists only from ``seq >= sliding_window`` on."""
    w = ctx.spec.config.get("sliding_window")
    if not w or ctx.settings.attn_implementation != "sdpa":
        return None
    return (np.asarray(seq) >= int(w)).astype(np.int64)


def checkpoint(sim, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``Sim.checkpoint`` for a region that also reads tensors created outside it (T5's decoder
    blocks read the encoder output): as ``torch.utils.checkpoint`` (non-reentrant), the region's
    graph hands gradients to *every* outside tensor, not only to ``x`` (which ``Sim.checkpoint``
    does: the region's own nodes stay in the graph)."""
    return sim.checkpoint(fn, x)
