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
    """``DynamicCache``: holds each layer's key / value copies until the forward returns."""

    def __init__(self, ctx: Context) -> None:
        self.enabled = use_cache(ctx)
        self.ctx = ctx
        self.layers: list[tuple[Tensor, Tensor]] = []

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if not self.enabled:
            return k, v
        sim = self.ctx.sim
        kc = copy_passthrough(sim, k)
        vc = copy_passthrough(sim, v)
        self.layers.append((kc, vc))
        return kc, vc


def input_grads_hook(ctx: Context) -> bool:
    """PEFT's ``_prepare_model_for_gradient_checkpointing``: a PEFT model (``peft_config`` set) built
    with gradient checkpointing on a model not loaded in 4 / 8 bit calls
    ``enable_input_require_grads``, a forward hook doing ``output.requires_grad_(True)`` on the
    input embedding's output."""
    return bool(ctx.settings.gradient_checkpointing and ctx.plan.peft_config is not None
                and not ctx.settings.quantization)


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


def run_layers(ctx: Context, h: Tensor, layer: Callable[[Tensor, int], Tensor], layers=None) -> Tensor:
    """The block loop over ``ctx.layer_indices`` (a prefix of the blocks when the model
    extrapolates); each block is a ``GradientCheckpointingLayer`` (non-reentrant checkpoint)."""
    sim = ctx.sim
    for n in (ctx.layer_indices if layers is None else layers):
        def fn(x, n=n):
            return layer(x, n)

        h = sim.checkpoint(fn, h) if ctx.settings.gradient_checkpointing else fn(h)
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
    n = np.where(active, seq * seq, 0) if isinstance(active, np.ndarray) else seq * seq
    sim = ctx.sim
    t1 = sim.tensor(n, "bool", category="inputs")
    t2 = sim.tensor(n, "bool", category="inputs")
    del t1
    t3 = sim.tensor(n, "bool", category="inputs")
    mask = sim.tensor(n, "bool", category="inputs")
    del t3, t2
    return mask


def sdpa_bias(ctx: Context, mask: Tensor | None, batch, seq, dtype: str) -> Tensor | None:
    """SDPA converts a bool mask into an additive float mask (``where``; broadcast to the batch) in
    the query dtype, per call; the kernel keeps it for backward."""
    if mask is None:
        return None
    return ctx.sim.tensor(batch * mask.numel, dtype)  # (B, 1, L, L); 0 where a swept length needs no mask


def checkpoint(sim, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``Sim.checkpoint`` for a region that also reads tensors created outside it (T5's decoder
    blocks read the encoder output): as ``torch.utils.checkpoint`` (non-reentrant), the region's
    backward hands gradients to *every* outside tensor, not only to ``x``. Same replay otherwise:
    the forward keeps only the input, backward recomputes the region and runs its backward."""
    outer, sim.nodes = sim.nodes, []
    sim.discard_saved = True
    out = fn(x)
    sim.discard_saved = False
    inner, sim.nodes = sim.nodes, outer
    del inner
    if not out.rg:
        return out
    xk = x.key
    holder: dict = {}

    def bw(outs):
        outer2, sim.nodes = sim.nodes, []
        out2 = fn(holder["input"])
        key2 = out2.key
        region, sim.nodes = [r() for r in sim.nodes], outer2
        del out2
        rest = sim.run_backward(region, {key2: outs[0]})
        return dict(rest)  # x's gradient and those of the other outside tensors the region read

    holder["input"] = x
    sim.node([], bw, [out], inputs=[x])
    return out
