"""Forward program of BERT / RoBERTa masked-LM training (``BertForMaskedLM`` /
``RobertaForMaskedLM``), mirroring transformers 5.24 ``modeling_bert.py`` / ``modeling_roberta.py``.

The reference step (``executors.measure.make_batch``) uses labels = the input ids at every position,
so the masked-LM loss covers all B x L tokens: ``CrossEntropyLoss`` on the model-dtype logits (no
fp32 upcast). Embeddings: word + token-type (``gather`` of the buffered zeros) + position (BERT: a
view of the ``position_ids`` buffer; RoBERTa: computed from the ids, padding-aware), LayerNorm,
dropout. Layers (post-norm): q / k / v, attention (dropout ``attention_probs_dropout_prob``: inside
the fused kernel for SDPA on CUDA), output dense, dropout, ``LayerNorm(h + input)``, GELU MLP,
dropout, ``LayerNorm(h + attention_output)``. Head: dense, GELU, LayerNorm, decoder (biased, tied).
"""

from __future__ import annotations

from planner.memory import ops
from planner.memory.modules import Context
from planner.memory.programs import _rope
from planner.memory.programs._decoder import embeddings_output, require_attn, run_layers
from planner.memory.programs._ops_extra import _grad, activation as act_fn
from planner.memory.sim import Tensor

MODEL_TYPES = ("bert", "roberta")


def buffer_bytes(ctx: Context) -> int:
    """``position_ids`` and ``token_type_ids`` buffers: int64, ``max_position_embeddings`` each."""
    from planner.constants import DTYPE_BYTES
    from planner.memory.sim import round_alloc

    n = int(ctx.spec.max_position_embeddings or ctx.spec.config.get("max_position_embeddings") or 512)
    return 2 * round_alloc(n * DTYPE_BYTES["int64"])


def _base(ctx: Context) -> str:
    return ctx.spec.model_type  # "bert" | "roberta"


def _p(ctx: Context, key: str, default: float = 0.1) -> float:
    v = ctx.spec.config.get(key, default)
    return float(default if v is None else v)


def _ln(ctx: Context, x: Tensor, module: str) -> Tensor:
    return ops.layer_norm(ctx.sim, x, ctx.spec.hidden_size, ctx.param(module), ctx.param(module, "bias"))


def _act(ctx: Context, x: Tensor) -> Tensor:
    return act_fn(ctx.sim, x, str(ctx.spec.config.get("hidden_act") or "gelu"))


def embeddings(ctx: Context, ids: Tensor, batch, seq) -> Tensor:
    sim, spec = ctx.sim, ctx.spec
    base = _base(ctx)
    hidden = spec.hidden_size
    e = f"{base}.embeddings"
    if base == "roberta":
        # create_position_ids_from_input_ids: ne -> int(), cumsum (int64) -> type_as, + 0, * mask, long() + pad
        ne = sim.tensor(batch * seq, "bool", category="inputs")
        mask = sim.tensor(batch * seq, "int32", category="inputs")
        del ne
        cs = sim.tensor(batch * seq, "int64", category="inputs")
        c32 = sim.tensor(batch * seq, "int32", category="inputs")
        del cs
        a = sim.tensor(batch * seq, "int32", category="inputs")
        del c32
        m = sim.tensor(batch * seq, "int32", category="inputs")
        del a, mask
        lng = sim.tensor(batch * seq, "int64", category="inputs")
        del m
        position_ids = sim.tensor(batch * seq, "int64", category="inputs")
        del lng
        pos_rows = batch
    else:
        position_ids = None  # a view of the ``position_ids`` buffer
        pos_rows = 1
    token_type_ids = sim.tensor(pos_rows * seq, "int64", category="inputs")  # gather of the buffered zeros
    ww = ctx.param(f"{e}.word_embeddings")
    inputs_embeds = embeddings_output(ctx, ops.embedding(sim, ids, hidden, ww, ww.dtype))
    wt = ctx.param(f"{e}.token_type_embeddings")
    tt_index = sim.tensor(0, "int64")  # token_type_ids.expand(B, L): a view
    tt_index.numel = batch * seq
    token_type_embeddings = ops.embedding(sim, tt_index, hidden, wt, wt.dtype)
    del tt_index
    emb = ops.add(sim, inputs_embeds, token_type_embeddings)
    wp = ctx.param(f"{e}.position_embeddings")
    if position_ids is None:
        pidx = sim.tensor(0, "int64")
        pidx.numel = seq
    else:
        pidx = position_ids
    position_embeddings = ops.embedding(sim, pidx, hidden, wp, wp.dtype)
    del pidx
    emb2 = ops.add(sim, emb, position_embeddings)
    del emb
    emb3 = _ln(ctx, emb2, f"{e}.LayerNorm")
    del emb2
    out = ops.dropout(sim, emb3, _p(ctx, "hidden_dropout_prob"))
    return out  # the embedding module's locals die here


def self_attention(ctx: Context, x: Tensor, p: str, batch, seq):
    sim, spec = ctx.sim, ctx.spec
    q = ctx.linear(x, f"{p}.query")
    k = ctx.linear(x, f"{p}.key")
    v = ctx.linear(x, f"{p}.value")
    drop = _p(ctx, "attention_probs_dropout_prob")
    if ctx.settings.attn_implementation == "eager":
        out, weights = _rope.eager(ctx, q, k, v, None, batch, seq, q_view=True, k_view=True, v_view=True,
                                   softmax_fp32=False, dropout=drop)
    else:  # no mask (no padding), dropout inside the fused kernel on CUDA
        out = ops.sdpa(sim, q, k, v, batch=batch, heads=spec.num_attention_heads, q_len=seq, head_dim=spec.head_dim)
        weights = None
    del q, k, v
    return out, weights


def layer(ctx: Context, h: Tensor, n: int, batch, seq) -> Tensor:
    sim = ctx.sim
    p = f"{_base(ctx)}.encoder.layer.{n}"
    drop = _p(ctx, "hidden_dropout_prob")
    # BertAttention: self-attention, then BertSelfOutput(dense, dropout, LayerNorm(h + input))
    a, _ = self_attention(ctx, h, f"{p}.attention.self", batch, seq)
    d = ctx.linear(a, f"{p}.attention.output.dense")
    del a
    d = ops.dropout(sim, d, drop)
    s = ops.add(sim, d, h)
    del d
    attention_output = _ln(ctx, s, f"{p}.attention.output.LayerNorm")
    del s
    # feed_forward_chunk: intermediate (dense + act), BertOutput(dense, dropout, LayerNorm(h + attention_output))
    i = ctx.linear(attention_output, f"{p}.intermediate.dense")
    intermediate_output = _act(ctx, i)
    del i
    o = ctx.linear(intermediate_output, f"{p}.output.dense")
    o = ops.dropout(sim, o, drop)
    s = ops.add(sim, o, attention_output)
    del o
    out = _ln(ctx, s, f"{p}.output.LayerNorm")
    return out  # the layer's locals (``_``: eager probabilities, intermediate_output, ...) die here


def forward(ctx: Context, batch, seq):
    require_attn(ctx, ("sdpa", "eager", "flash_attention_2"), ctx.spec.model_type)
    sim, spec = ctx.sim, ctx.spec
    base = _base(ctx)
    ids = sim.tensor(batch * seq, "int64", category="inputs")
    labels = sim.tensor(batch * seq, "int64", category="inputs")
    h = embeddings(ctx, ids, batch, seq)

    def fn(x, n):
        return layer(ctx, x, n, batch, seq)

    h = run_layers(ctx, h, fn)
    sequence_output = h
    sim.category = "logits"
    head = "cls.predictions" if base == "bert" else "lm_head"
    dense = f"{head}.transform.dense" if base == "bert" else f"{head}.dense"
    head_ln = f"{head}.transform.LayerNorm" if base == "bert" else f"{head}.layer_norm"
    t = ctx.linear(sequence_output, dense)
    t2 = _act(ctx, t)
    del t
    t3 = _ln(ctx, t2, head_ln)
    del t2
    logits = ctx.linear(t3, f"{head}.decoder")
    del t3
    # CrossEntropyLoss(logits.view(-1, V), labels.view(-1)) in the logits dtype
    logp = ops.unary(sim, logits, saves="output")
    weight = sim.tensor(1, "float32")
    loss = sim.tensor(1, logits.dtype, logp.rg)
    if logp.rg:
        lk, ln, ld = logp.key, logp.numel, logp.dtype
        sim.node([labels, weight], lambda outs: {lk: _grad(sim, ln, ld)}, [loss], inputs=[logp])
    del weight, logp, logits
    sim.category = "activations"
    return loss, {"batch": (ids, labels)}
