"""Forward skeletons shared by the family programs."""

from __future__ import annotations

from typing import Any

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs._decoder import prefix_cache, run_block


def causal_lm_forward(ctx: Context, prog: Any, batch: Any, seq: Any):
    """``XForCausalLM.forward(input_ids, labels)``: embeddings, the blocks (checkpointed when asked),
    the final norm, ``lm_head``, then transformers' ``ForCausalLMLoss`` (fp32 upcast, padded and
    shifted labels, ``cross_entropy``). Returns the loss and what stays alive until backward ends."""
    sim, spec = ctx.sim, ctx.spec
    ids = sim.tensor(batch * seq, "int64", category="inputs")
    labels = sim.tensor(batch * seq, "int64", category="inputs")
    # prefix tuning: PeftModelForCausalLM.forward builds the prefix cache (get_prompt) first
    prefix = prefix_cache(ctx, batch) if ctx.plan.prefix_tokens else None
    h = prog.embed(ctx, ids)
    n_virtual = ctx.plan.virtual_tokens
    peft_frame = None
    if n_virtual:  # PeftModelForCausalLM.forward, prompt tuning / P-tuning: prompts prepended
        h, labels, seq, peft_frame = prepend_prompts(ctx, h, labels, batch, seq, n_virtual)
    inputs_embeds = h  # LlamaModel.forward keeps ``inputs_embeds`` bound until it returns
    # position_ids = arange(L) (+ the int64 range transformers builds for the mask / cache position)
    positions = (sim.tensor(seq, "int64", category="inputs"), sim.tensor(seq, "int64", category="inputs"))
    shared = prog.Shared(ctx, batch, seq, prefix)
    del prefix  # now held by the cache only
    for n in ctx.layer_indices:
        def layer(x, n=n):
            return prog.decoder_layer(ctx, x, n, shared, batch, seq)

        h = run_block(ctx, n, layer, h)
    h = prog.final(ctx, h)
    del inputs_embeds, positions
    cache = getattr(shared, "cache", None)  # the model output holds the KV cache until forward returns
    if not ctx.settings.gradient_checkpointing:
        del shared  # checkpointed layers keep cos / sin (and the mask) for their recomputation
    sim.category = "logits"
    logits = ctx.linear(h, "lm_head")  # the model output keeps ``h`` (last_hidden_state) until forward returns
    logits = prog.logits_transform(ctx, logits)
    l32 = ops.cast(sim, logits, "float32")
    # ForCausalLMLoss: labels padded by one (B x (L+1)), shifted copy (B x L) kept by nll_loss
    padded = sim.tensor(batch * (seq + 1), "int64", category="inputs")
    loss = ops.cross_entropy(sim, l32, spec.vocab_size, batch * seq)
    del padded, l32, logits, h, peft_frame, cache
    sim.autocast_cache.clear()  # the autocast region (forward and loss) exits: cached weight copies go
    sim.category = "activations"
    return loss, {"batch": (ids, labels), "graph": locals().get("shared")}




def prepend_prompts(ctx: Context, emb, labels, batch, seq, n_virtual: int):
    """PEFT's prompt-learning forward (peft_model.py ``PeftModelForCausalLM.forward``):
    ``prefix_labels`` (-100) concatenated to the labels; ``get_prompt``: the prompt encoder's
    embedding of the virtual-token ids (batch-expanded), through the MLP head for P-tuning;
    cast to the model dtype; ``cat((prompts, inputs_embeds), dim=1)``: every block then runs on
    ``seq + num_virtual_tokens`` positions."""
    sim, spec = ctx.sim, ctx.spec
    hidden = spec.hidden_size
    prefix_labels = sim.tensor(batch * n_virtual, "int64", category="inputs")
    labels2 = sim.tensor(batch * (seq + n_virtual), "int64", category="inputs")
    tensors = {t.name: t for t in ctx.plan.new_tensors if t.module == ""}
    ad = ctx.settings.adapter_dtype
    emb_t = tensors["prompt_encoder.default.embedding.weight"]
    tokens = sim.tensor(batch * n_virtual, "int64", category="inputs")
    prompts = ops.embedding(sim, tokens, emb_t.shape[1], ops.Param("prompt_encoder.embedding", emb_t.numel, ad, True), ad)
    del tokens
    layers = sorted(n for n in tensors if n.startswith("prompt_encoder.default.mlp_head.") and n.endswith(".weight"))
    for i, name in enumerate(layers):
        w = tensors[name]
        b = tensors.get(name[: -len("weight")] + "bias")
        x = prompts
        prompts = ops.linear(sim, x, w.shape[1], w.shape[0], ops.Param(name, w.numel, ad, True),
                             ops.Param(name + ".b", b.numel, ad, True) if b else None)
        del x
        if i < len(layers) - 1:  # ReLU between the MLP layers: saves its output
            x = prompts
            prompts = ops.unary(sim, x, saves="output")
            del x
    p16 = ops.cast(sim, prompts, emb.dtype)
    del prompts
    h = ops.cat(sim, [p16, emb], batch * (seq + n_virtual) * hidden, emb.dtype)
    del labels
    # the PEFT frame keeps ``prompts``, ``prefix_labels`` and ``inputs_embeds`` until forward returns
    return h, labels2, seq + n_virtual, (p16, prefix_labels, h)
