"""Matmul FLOPs of one training step, counted the way ``torch.utils.flop_counter.FlopCounterMode``
counts them (torch 2.13 ``torch/utils/flop_counter.py``).

What is counted: every ``mm`` / ``addmm`` / ``bmm`` / ``baddbmm`` / grouped MoE matmul as ``2 m n k``
(``nn.Linear``, GPT-2's ``Conv1D``, LoRA's A / B, the MoE router and experts, eager attention's two
products), and fused SDPA (flash / memory-efficient kernels) with FlopCounterMode's own formulas:
forward ``q k^T`` and ``p v`` (``4 B H Lq Lk d``), backward five products (the score recomputation,
``grad_p``, ``grad_v``, ``grad_q``, ``grad_k``: ``10 B H Lq Lk d``). Like FlopCounterMode the full
``Lq x Lk`` score matrix is counted, causal or not. Elementwise work (norms, activations, softmax,
the loss, the optimizer) and embedding lookups are not counted.

The step is the executors' reference step (``docs/memory-model.md``): ``model(input_ids, labels)``
then ``loss.backward()``. Its parts:

- forward: every matmul once;
- backward, activation gradients (``backward_input_flops``): a matmul's input gradient is computed
  only where that input requires grad. Frozen base weights never need gradients, so with PEFT the
  residual stream requires grad only from the first adapted module on (layer 0's q / k / v input
  gradients are skipped under LoRA unless PEFT's ``enable_input_require_grads`` hook runs: gradient
  checkpointing on a non-quantized model); attention's backward runs where q, k, v or the bias
  requires grad;
- backward, weight gradients (``backward_weight_flops``): one product per trainable weight (full
  fine-tuning: all; LoRA: A and B; frozen weights: none) -- the difference between ~2x and ~1x the
  forward for the backward;
- recomputation (``recompute_flops``): with gradient checkpointing each block's forward runs again
  in backward (``torch.utils.checkpoint``, non-reentrant), up to the op that saves the block's last
  tensor for backward (early stop): a block ending in a matmul whose inputs are its last saved
  tensors (llama's ``down_proj``) does not recompute that matmul.

Methods: full fine-tuning, LoRA / rsLoRA / QLoRA (dequantization is not a matmul), DoRA (plus its
``lora_B(lora_A(eye))`` weight product, forward only: it is detached from the loss), IA3, BitFit,
partial fine-tuning, LN tuning, ``modules_to_save`` copies, prompt tuning and P-tuning (MLP encoder;
causal and seq2seq models), prefix tuning (causal models). Others: :func:`unsupported_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict

from planner.errors import PlannerError
from planner.memory.settings import TrainingSettings
from planner.methods.base import MethodPlan
from planner.spec import ModelSpec

#: Where a matmul belongs: the base model's linear layers (MoE router and experts included), the
#: attention products, what the method adds (LoRA / DoRA products, prompt / prefix encoders), and
#: the output head (``lm_head``; BERT's MLM head transform too).
PARTS: tuple[str, ...] = ("linear", "attention", "adapter", "lm_head")
Kernel = Literal["fused", "eager", "math"]

#: Methods whose matmuls are counted (registered names and the LoRA aliases).
COUNTED_METHODS = frozenset({"full", "lora", "qlora", "dora", "rslora", "ia3", "bitfit", "partial", "ln_tuning",
                             "prompt_tuning", "p_tuning", "prefix_tuning"})


class FlopsNotModelledError(PlannerError):
    """The FLOPs of this (model, method, settings) are not counted; the message says why."""


class PartFlops(BaseModel):
    """FLOPs of one part of the step (see :data:`PARTS`), per phase."""

    model_config = ConfigDict(frozen=True)

    forward_flops: int = 0
    backward_input_flops: int = 0
    backward_weight_flops: int = 0
    recompute_flops: int = 0

    @property
    def backward_flops(self) -> int:
        return self.backward_input_flops + self.backward_weight_flops

    @property
    def total_flops(self) -> int:
        return self.forward_flops + self.backward_flops + self.recompute_flops


class StepFlops(BaseModel):
    """Matmul FLOPs of one training step (one micro-batch: forward with labels, backward).

    ``backward_flops`` excludes the recomputation; a FlopCounterMode around ``loss.backward()``
    counts ``backward_flops + recompute_flops``. ``tokens`` = batch x seq_len (T5: source tokens).
    """

    model_config = ConfigDict(frozen=True)

    forward_flops: int
    backward_input_flops: int
    backward_weight_flops: int
    backward_flops: int
    recompute_flops: int
    total_flops: int
    tokens: int
    per_token_flops: float
    attention_kernel: Kernel
    parts: dict[str, PartFlops]
    notes: list[str] = []

    @property
    def backward_to_forward(self) -> float:
        """Backward over forward (full fine-tuning ~2, frozen weights ~1)."""
        return self.backward_flops / self.forward_flops


# ----- what the method did to each module ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Adapter:
    kind: Literal["lora", "lora_embedding", "ia3_in", "ia3_out"]
    r: int = 0
    dora: bool = False


def _adapters(plan: MethodPlan) -> dict[str, _Adapter]:
    """Module path -> the adapter on it, read from the plan's new tensors (PEFT's names)."""
    by_module: dict[str, dict[str, tuple[int, ...]]] = {}
    for t in plan.new_tensors:
        if t.module:
            by_module.setdefault(t.module, {})[t.name] = t.shape
    out: dict[str, _Adapter] = {}
    for module, names in by_module.items():
        dora = "lora_magnitude_vector.default.weight" in names
        if "lora_A.default.weight" in names:
            out[module] = _Adapter("lora", r=names["lora_A.default.weight"][0], dora=dora)
        elif "lora_embedding_A.default" in names:
            out[module] = _Adapter("lora_embedding", r=names["lora_embedding_A.default"][0], dora=dora)
        elif "ia3_l.default" in names:
            shape = names["ia3_l.default"]
            out[module] = _Adapter("ia3_in" if shape[0] == 1 and shape[-1] != 1 else "ia3_out")
    return out


def unsupported_reason(spec: ModelSpec, plan: MethodPlan, settings: TrainingSettings) -> str | None:
    """Why the FLOPs of this case are not counted (None: they are)."""
    if plan.method not in COUNTED_METHODS:
        return (f"FLOPs are not counted for {plan.method} yet (counted: {', '.join(sorted(COUNTED_METHODS))})")
    if spec.model_type not in _WALKERS:
        return f"FLOPs are not counted for model_type {spec.model_type!r} yet"
    if any("[" in t.name for t in plan.new_tensors):
        return "FLOPs of LoRA on fused MoE expert / router parameters (target_parameters) are not counted yet"
    if plan.method == "p_tuning" and (plan.peft_config or {}).get("encoder_reparameterization_type") == "LSTM":
        return "FLOPs of P-tuning with an LSTM prompt encoder are not counted yet (the MLP encoder is)"
    if plan.method in ("prompt_tuning", "p_tuning", "prefix_tuning") and spec.task == "masked_lm":
        return f"FLOPs of {plan.method} on masked-LM encoders are not counted yet"
    if plan.method == "prefix_tuning" and spec.task != "causal_lm":
        return "FLOPs of prefix tuning are counted for causal LMs only"
    if plan.method == "prefix_tuning" and settings.gradient_checkpointing:
        return "PEFT refuses prefix tuning with gradient checkpointing (ValueError in _setup_prompt_encoder)"
    return None


# ----- the walk ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Op:
    """One matmul (or a zero-FLOP op that saves tensors for backward, a *marker*)."""

    part: str
    forward: int = 0
    backward_input: int = 0
    backward_weight: int = 0
    saves: bool = False  # packs a tensor for backward: where a checkpointed block's recomputation stops
    saves_output: bool = False  # its last saved tensor is an output, so its own work runs before the stop


@dataclass
class _Walker:
    """Follows a family's forward, tracking ``requires_grad`` as autograd does, and records each
    matmul with the backward products autograd would run for it."""

    spec: ModelSpec
    plan: MethodPlan
    settings: TrainingSettings
    cpu_kernels: bool = False
    ops: list[_Op] = field(default_factory=list)
    recompute: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    kernels: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        spec, plan = self.spec, self.plan
        self.inv = spec.inventory
        self.trainable = set(plan.trainable_base)
        if plan.category == "full":
            self.trainable |= {n for n, p in self.inv.named_parameters()}
        self.copied = {m.path for m in plan.copied_modules}
        self.ln_tuned = {t.module for t in plan.new_tensors if t.name.startswith("ln_tuning_layers.")}
        self.adapters = _adapters(plan)
        self.lora_dropout = float(plan.extra.get("lora_dropout", 0.0) or 0.0)
        self.batch = self.settings.batch_size

    # -- recording ------------------------------------------------------------------------------
    def op(self, part: str, forward: int, backward_input: int = 0, backward_weight: int = 0, *, saves: bool = False,
           saves_output: bool = False) -> None:
        self.ops.append(_Op(part, forward, backward_input, backward_weight, saves, saves_output))

    def mark(self, saves: bool) -> None:
        """An elementwise op (norm, activation, product, dropout with p > 0) that saves tensors when
        its output requires grad: it moves a checkpointed block's recomputation stop past earlier matmuls."""
        if saves:
            self.ops.append(_Op("linear", saves=True))

    def block(self, fn: Callable[..., bool], *args) -> bool:
        """A transformer block, checkpointed when asked (``GradientCheckpointingLayer``)."""
        if not self.settings.gradient_checkpointing:
            return fn(*args)
        outer, self.ops = self.ops, []
        out_rg = fn(*args)
        region, self.ops = self.ops, outer
        self.ops.extend(region)
        savers = [i for i, o in enumerate(region) if o.saves]
        if out_rg and savers:
            last = savers[-1]
            for o in region[:last]:
                self.recompute[o.part] += o.forward
            if region[last].saves_output:
                self.recompute[region[last].part] += region[last].forward
        return out_rg

    # -- parameters -----------------------------------------------------------------------------
    def has(self, path: str) -> bool:
        return path in self.inv.by_path

    def trains(self, path: str, name: str) -> bool:
        entry = self.inv.by_path.get(path)
        p = entry.param(name) if entry is not None else None
        if p is None:
            return False
        if path in self.copied or path in self.ln_tuned:
            return True
        return (p.tied_to or f"{path}.{name}") in self.trainable

    def module_trains(self, path: str) -> bool:
        entry = self.inv.by_path.get(path)
        return entry is not None and any(self.trains(path, p.name) for p in entry.params)

    def cfg(self, key: str, default: float) -> float:
        v = self.spec.config.get(key, default)
        return float(default if v is None else v)

    # -- modules --------------------------------------------------------------------------------
    def linear(self, path: str, rows: int, x_rg: bool, part: str = "linear") -> bool:
        """A Linear / Conv1D with whatever the method did to it; returns ``requires_grad`` of its output."""
        e = self.inv.by_path[path]
        i, o = e.in_features, e.out_features
        ad = self.adapters.get(path)
        w_tr, b_tr = self.trains(path, "weight"), self.trains(path, "bias")
        mm = 2 * rows * i * o
        base_in = x_rg
        if ad is not None and ad.kind == "ia3_in":  # (x * ia3_l) -> base: a trainable scale on the input
            self.mark(True)
            base_in = True
        out_rg = base_in or w_tr or b_tr
        self.op(part, mm, mm if base_in else 0, mm if w_tr else 0, saves=out_rg)
        if ad is None or ad.kind == "ia3_in":
            return out_rg
        if ad.kind == "ia3_out":  # base(x) * ia3_l
            self.mark(True)
            return True
        r = ad.r
        a, b = 2 * rows * i * r, 2 * rows * r * o
        if self.lora_dropout > 0:
            self.mark(x_rg)
        if ad.dora:
            # DoraLinearLayer.get_lora_weight: lora_B(lora_A(eye(in))), used only detached (weight norm)
            self.op("adapter", 2 * i * i * r + 2 * i * r * o, saves=True)
        self.op("adapter", a, a if x_rg else 0, a, saves=True)
        self.op("adapter", b, b, b, saves=True)
        if ad.dora:
            if self.lora_dropout > 0:  # base result recomputed from the dropped-out input: F.linear(x, W)
                self.op("adapter", mm, mm if x_rg else 0, 0, saves=x_rg)
            self.mark(True)  # (m / ||W'|| - 1) * base + m / ||W'|| * lora * s
        return True

    def embedding(self, path: str, rows: int) -> bool:
        """An embedding lookup (no matmul) and LoRA's ``after_A @ lora_embedding_B`` on it."""
        rg = self.trains(path, "weight")
        ad = self.adapters.get(path)
        if ad is not None and ad.kind == "lora_embedding":
            e = self.inv.by_path[path]
            f = 2 * rows * ad.r * e.out_features
            if ad.dora:  # get_lora_weight: (lora_A @ lora_B).T
                self.op("adapter", 2 * e.in_features * ad.r * e.out_features, saves=True)
            self.op("adapter", f, f, f, saves=True)
            rg = True
        return rg

    def norm(self, path: str, x_rg: bool) -> bool:
        rg = x_rg or self.module_trains(path)
        self.mark(rg)
        return rg

    def act(self, x_rg: bool) -> bool:
        self.mark(x_rg)
        return x_rg

    def dropout(self, p: float, x_rg: bool) -> bool:
        self.mark(x_rg and p > 0)
        return x_rg

    def kernel(self, *, bias_rg: bool = False, math: bool = False) -> Kernel:
        """The attention kernel a CUDA run takes (``cpu_kernels``: the one a CPU run takes)."""
        if self.settings.attn_implementation == "eager":
            return "eager"
        if math or (self.cpu_kernels and bias_rg):
            return "math"
        return "fused"

    def attention(self, q_rg: bool, k_rg: bool, v_rg: bool, *, q_len: int, kv_len: int, kernel: Kernel,
                  bias_rg: bool = False) -> bool:
        """``softmax(q k^T + bias) v`` over all heads; returns ``requires_grad`` of the output."""
        self.kernels.add(kernel)
        one = 2 * self.batch * self.spec.num_attention_heads * q_len * kv_len * self.spec.head_dim
        rg = q_rg or k_rg or v_rg or bias_rg
        if kernel == "fused":  # FlopCounterMode's sdpa_flop_count / sdpa_backward_flop_count
            self.op("attention", 2 * one, 5 * one if rg else 0, saves=rg, saves_output=True)
            return rg
        s_rg = q_rg or k_rg or bias_rg  # scores = q @ k^T (+ bias): bmm, gradients per operand
        self.op("attention", one, one * (q_rg + k_rg), saves=q_rg or k_rg)
        self.mark(s_rg)  # softmax saves its output
        self.op("attention", one, one * (s_rg + v_rg), saves=s_rg or v_rg)
        return s_rg or v_rg

    def gated_mlp(self, prefix: str, gate: str, up: str, down: str, rows: int, x_rg: bool) -> bool:
        g = self.act(self.linear(f"{prefix}.{gate}", rows, x_rg))
        u = self.linear(f"{prefix}.{up}", rows, x_rg)
        self.mark(g or u)
        return self.linear(f"{prefix}.{down}", rows, g or u)

    def mlp(self, up: str, down: str, rows: int, x_rg: bool) -> bool:
        return self.linear(down, rows, self.act(self.linear(up, rows, x_rg)))

    # -- what the method adds around the model --------------------------------------------------
    def hook(self) -> bool:
        """``enable_input_require_grads``: transformers 5.24's ``gradient_checkpointing_enable``
        calls it for every model whose main input is ``input_ids`` (``_activation_checkpointing_enable``
        in modeling_utils.py; PEFT adds the same hook), so under checkpointing the input embedding's
        output requires grad -- block 0's input gradients are computed even when nothing before the
        first trained module needs them (partial fine-tuning, QLoRA included)."""
        return self.settings.gradient_checkpointing

    def prompt_encoder(self) -> None:
        """P-tuning's MLP (Linear, ReLU, Linear, ReLU, Linear) or prefix tuning's projection
        (Linear, Tanh, Linear) on the virtual tokens; every input requires grad (the encoder's
        embedding trains)."""
        tensors = {t.name: t.shape for t in self.plan.new_tensors if t.module == ""}
        emb = tensors.get("prompt_encoder.default.embedding.weight")
        if emb is None:
            return
        # prefix tuning runs the encoder on the batch-expanded tokens; P-tuning on one copy of them,
        # then repeats the prompts over the batch (PeftModel.get_prompt, peft issue #2043)
        rows = self.batch * self.plan.prefix_tokens if self.plan.prefix_tokens else emb[0]
        names = sorted(n for n in tensors if n.endswith(".weight") and (".mlp_head." in n or ".transform." in n))
        for n in names:
            out_f, in_f = tensors[n]
            f = 2 * rows * in_f * out_f
            self.op("adapter", f, f, f, saves=True)
            self.mark(True)

    def lm_head(self, rows: int, x_rg: bool, path: str | None = None) -> bool:
        """The output layer (the inventory's ``lm_head`` role unless ``path`` names it)."""
        if path is None:
            path = next(m.path for m in self.inv if m.role == "lm_head")
        return self.linear(path, rows, x_rg, part="lm_head")

    # -- result ---------------------------------------------------------------------------------
    def result(self, tokens: int, notes: list[str]) -> StepFlops:
        sums = {p: [0, 0, 0] for p in PARTS}
        for o in self.ops:
            s = sums[o.part]
            s[0] += o.forward
            s[1] += o.backward_input
            s[2] += o.backward_weight
        parts = {p: PartFlops(forward_flops=s[0], backward_input_flops=s[1], backward_weight_flops=s[2],
                              recompute_flops=self.recompute[p]) for p, s in sums.items()}
        fwd = sum(p.forward_flops for p in parts.values())
        bin_ = sum(p.backward_input_flops for p in parts.values())
        bw = sum(p.backward_weight_flops for p in parts.values())
        rec = sum(p.recompute_flops for p in parts.values())
        total = fwd + bin_ + bw + rec
        kernel: Kernel = "math" if "math" in self.kernels else ("eager" if "eager" in self.kernels else "fused")
        return StepFlops(forward_flops=fwd, backward_input_flops=bin_, backward_weight_flops=bw,
                         backward_flops=bin_ + bw, recompute_flops=rec, total_flops=total, tokens=tokens,
                         per_token_flops=total / tokens, attention_kernel=kernel, parts=parts, notes=notes)


# ----- families ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Causal:
    """Lengths of a causal LM step: prompt tokens run through every block, prefix positions only
    through the keys and values."""

    seq: int  # positions each block runs on (seq_len + virtual tokens)
    rows: int  # batch x seq
    kv_len: int  # key positions (seq + prefix tokens)
    prefix: bool


def _causal_start(w: _Walker, embed_rg: bool) -> tuple[_Causal, bool]:
    """Lengths, and ``requires_grad`` of the hidden states entering block 0."""
    s, plan = w.settings, w.plan
    seq = s.seq_len + plan.virtual_tokens
    w.prompt_encoder()
    rg = embed_rg or w.hook() or plan.virtual_tokens > 0
    return _Causal(seq=seq, rows=w.batch * seq, kv_len=seq + plan.prefix_tokens, prefix=plan.prefix_tokens > 0), rg


def _kv(c: _Causal, k: bool, v: bool) -> tuple[bool, bool]:
    """Keys and values after the (trainable) prefix is concatenated in front of them."""
    return (k or c.prefix, v or c.prefix)


def _llama(w: _Walker) -> None:
    """llama, mistral, qwen2, qwen3, gemma, gemma2, phi3 and mixtral (the same block shape)."""
    spec = w.spec
    mt = spec.model_type
    c, h = _causal_start(w, w.embedding("model.embed_tokens", w.batch * w.settings.seq_len))
    drop = w.cfg("resid_pdrop", 0.0) if mt == "phi3" else 0.0

    def layer(h: bool, n: int) -> bool:
        p, a = f"model.layers.{n}", f"model.layers.{n}.self_attn"
        x = w.norm(f"{p}.input_layernorm", h)
        if mt == "phi3":
            q = k = v = w.linear(f"{a}.qkv_proj", c.rows, x)
        else:
            q, k, v = (w.linear(f"{a}.{m}_proj", c.rows, x) for m in "qkv")
        if mt == "qwen3":
            q, k = w.norm(f"{a}.q_norm", q), w.norm(f"{a}.k_norm", k)
        k, v = _kv(c, k, v)
        o = w.attention(q, k, v, q_len=c.seq, kv_len=c.kv_len, kernel=w.kernel())
        o = w.linear(f"{a}.o_proj", c.rows, o)
        if mt == "gemma2":
            o = w.norm(f"{p}.post_attention_layernorm", o)
        h = h | w.dropout(drop, o)
        x = w.norm(f"{p}.{'pre_feedforward_layernorm' if mt == 'gemma2' else 'post_attention_layernorm'}", h)
        if mt == "mixtral":
            m = _moe(w, f"{p}.mlp", c.rows, x)
        elif mt == "phi3":
            gu = w.act(w.linear(f"{p}.mlp.gate_up_proj", c.rows, x))
            w.mark(gu)
            m = w.linear(f"{p}.mlp.down_proj", c.rows, gu)
        else:
            m = w.gated_mlp(f"{p}.mlp", "gate_proj", "up_proj", "down_proj", c.rows, x)
        if mt == "gemma2":
            m = w.norm(f"{p}.post_feedforward_layernorm", m)
        return h | w.dropout(drop, m)

    for n in range(spec.num_layers):
        h = w.block(layer, h, n)
    w.lm_head(c.rows, w.norm("model.norm", h))


def _moe(w: _Walker, prefix: str, rows: int, x: bool) -> bool:
    """Mixtral's sparse block: the router (``F.linear``, E logits) and the experts, each routed
    (token, expert) pair through ``gate_up_proj`` and ``down_proj`` (``grouped_mm``: tokens x top-k
    rows in all, whatever the routing)."""
    spec = w.spec
    h, i, k = spec.hidden_size, spec.intermediate_size, spec.num_experts_per_tok
    router = w.trains(f"{prefix}.gate", "weight")
    mm = 2 * rows * h * spec.num_experts
    self_rg = x or router
    w.op("linear", mm, mm if x else 0, mm if router else 0, saves=self_rg)
    w.mark(self_rg)  # softmax / top-k
    experts = f"{prefix}.experts"
    routed = rows * k
    up_tr, down_tr = w.trains(experts, "gate_up_proj"), w.trains(experts, "down_proj")
    f_up, f_down = 2 * routed * h * 2 * i, 2 * routed * i * h
    up_rg = x or up_tr
    w.op("linear", f_up, f_up if x else 0, f_up if up_tr else 0, saves=up_rg)
    w.mark(up_rg)  # activation x up
    down_rg = up_rg or down_tr
    w.op("linear", f_down, f_down if up_rg else 0, f_down if down_tr else 0, saves=down_rg)
    out = down_rg or self_rg
    w.mark(out)  # routing-weight product, un-permutation
    return out


def _gpt2(w: _Walker) -> None:
    spec = w.spec
    c, h = _causal_start(w, w.embedding("transformer.wte", w.batch * w.settings.seq_len)
                         or w.trains("transformer.wpe", "weight"))
    resid = w.cfg("resid_pdrop", 0.1)
    h = w.dropout(w.cfg("embd_pdrop", 0.1), h)

    def layer(h: bool, n: int) -> bool:
        p = f"transformer.h.{n}"
        x = w.norm(f"{p}.ln_1", h)
        qkv = w.linear(f"{p}.attn.c_attn", c.rows, x)
        k, v = _kv(c, qkv, qkv)
        o = w.attention(qkv, k, v, q_len=c.seq, kv_len=c.kv_len, kernel=w.kernel())
        h = h | w.dropout(resid, w.linear(f"{p}.attn.c_proj", c.rows, o))
        x = w.norm(f"{p}.ln_2", h)
        m = w.mlp(f"{p}.mlp.c_fc", f"{p}.mlp.c_proj", c.rows, x)
        return h | w.dropout(resid, m)

    for n in range(spec.num_layers):
        h = w.block(layer, h, n)
    w.lm_head(c.rows, w.norm("transformer.ln_f", h))


def _phi(w: _Walker) -> None:
    spec = w.spec
    c, h = _causal_start(w, w.embedding("model.embed_tokens", w.batch * w.settings.seq_len))
    resid = w.cfg("resid_pdrop", 0.0)
    h = w.dropout(w.cfg("embd_pdrop", 0.0), h)

    def layer(h: bool, n: int) -> bool:
        p, a = f"model.layers.{n}", f"model.layers.{n}.self_attn"
        x = w.norm(f"{p}.input_layernorm", h)
        q, k, v = (w.linear(f"{a}.{m}_proj", c.rows, x) for m in "qkv")
        if spec.config.get("qk_layernorm"):
            q, k = w.norm(f"{a}.q_layernorm", q), w.norm(f"{a}.k_layernorm", k)
        k, v = _kv(c, k, v)
        o = w.dropout(resid, w.linear(f"{a}.dense", c.rows,
                                      w.attention(q, k, v, q_len=c.seq, kv_len=c.kv_len, kernel=w.kernel())))
        m = w.dropout(resid, w.mlp(f"{p}.mlp.fc1", f"{p}.mlp.fc2", c.rows, x))
        return h or o or m

    for n in range(spec.num_layers):
        h = w.block(layer, h, n)
    w.lm_head(c.rows, w.norm("model.final_layernorm", h))


def _gpt_neox(w: _Walker) -> None:
    spec = w.spec
    c, h = _causal_start(w, w.embedding("gpt_neox.embed_in", w.batch * w.settings.seq_len))
    drop = w.cfg("hidden_dropout", 0.0)
    h = w.dropout(drop, h)
    parallel = spec.config.get("use_parallel_residual", True)

    def layer(h: bool, n: int) -> bool:
        p = f"gpt_neox.layers.{n}"
        x = w.norm(f"{p}.input_layernorm", h)
        qkv = w.linear(f"{p}.attention.query_key_value", c.rows, x)
        k, v = _kv(c, qkv, qkv)
        o = w.attention(qkv, k, v, q_len=c.seq, kv_len=c.kv_len, kernel=w.kernel())
        o = w.dropout(drop, w.linear(f"{p}.attention.dense", c.rows, o))
        if not parallel:
            h = h or o
        x = w.norm(f"{p}.post_attention_layernorm", h)
        m = w.dropout(drop, w.mlp(f"{p}.mlp.dense_h_to_4h", f"{p}.mlp.dense_4h_to_h", c.rows, x))
        return h or o or m

    for n in range(spec.num_layers):
        h = w.block(layer, h, n)
    w.lm_head(c.rows, w.norm("gpt_neox.final_layer_norm", h))


def _opt(w: _Walker) -> None:
    spec = w.spec
    c, h = _causal_start(w, w.embedding("model.decoder.embed_tokens", w.batch * w.settings.seq_len))
    if w.has("model.decoder.project_in"):
        h = w.linear("model.decoder.project_in", c.rows, h)
    h = h or w.trains("model.decoder.embed_positions", "weight")
    pre = spec.config.get("do_layer_norm_before", True)
    drop = w.cfg("dropout", 0.1)

    def layer(h: bool, n: int) -> bool:
        p, a = f"model.decoder.layers.{n}", f"model.decoder.layers.{n}.self_attn"
        x = w.norm(f"{p}.self_attn_layer_norm", h) if pre else h
        q, k, v = (w.linear(f"{a}.{m}_proj", c.rows, x) for m in "qkv")
        k, v = _kv(c, k, v)
        o = w.attention(q, k, v, q_len=c.seq, kv_len=c.kv_len, kernel=w.kernel())
        h = h | w.dropout(drop, w.linear(f"{a}.out_proj", c.rows, o))
        if not pre:
            h = w.norm(f"{p}.self_attn_layer_norm", h)
        x = w.norm(f"{p}.final_layer_norm", h) if pre else h
        h = h | w.dropout(drop, w.mlp(f"{p}.fc1", f"{p}.fc2", c.rows, x))
        return w.norm(f"{p}.final_layer_norm", h) if not pre else h

    for n in range(spec.num_layers):
        h = w.block(layer, h, n)
    if w.has("model.decoder.final_layer_norm"):
        h = w.norm("model.decoder.final_layer_norm", h)
    if w.has("model.decoder.project_out"):
        h = w.linear("model.decoder.project_out", c.rows, h)
    w.lm_head(c.rows, h)


def _bloom(w: _Walker) -> None:
    """BLOOM: eager attention only (ALiBi through ``baddbmm``, counted as ``bmm``)."""
    spec = w.spec
    c, h = _causal_start(w, w.embedding("transformer.word_embeddings", w.batch * w.settings.seq_len))
    h = w.norm("transformer.word_embeddings_layernorm", h)
    drop = w.cfg("hidden_dropout", 0.0)
    post = bool(spec.config.get("apply_residual_connection_post_layernorm"))

    def layer(h: bool, n: int) -> bool:
        p = f"transformer.h.{n}"
        x = w.norm(f"{p}.input_layernorm", h)
        qkv = w.linear(f"{p}.self_attention.query_key_value", c.rows, x)
        k, v = _kv(c, qkv, qkv)
        o = w.attention(qkv, k, v, q_len=c.seq, kv_len=c.kv_len, kernel="eager")
        o = w.dropout(drop, w.linear(f"{p}.self_attention.dense", c.rows, o))
        h = (x if post else h) or o
        x = w.norm(f"{p}.post_attention_layernorm", h)
        m = w.dropout(drop, w.mlp(f"{p}.mlp.dense_h_to_4h", f"{p}.mlp.dense_4h_to_h", c.rows, x))
        return (x if post else h) or m

    for n in range(spec.num_layers):
        h = w.block(layer, h, n)
    w.lm_head(c.rows, w.norm("transformer.ln_f", h))


def _falcon(w: _Walker) -> None:
    spec = w.spec
    cfg = spec.config
    c, h = _causal_start(w, w.embedding("transformer.word_embeddings", w.batch * w.settings.seq_len))
    new_arch = bool(cfg.get("new_decoder_architecture", False))
    parallel = bool(cfg.get("parallel_attn", True))
    n_ln = cfg.get("num_ln_in_parallel_attn", 2 if new_arch else None)
    multi_query = bool(cfg.get("multi_query", True))
    # FalconAttention calls SDPA without enable_gqa: fewer key/value heads take the math path
    grouped = not new_arch and multi_query and spec.num_attention_heads > 1
    drop = w.cfg("hidden_dropout", 0.0)

    def layer(h: bool, n: int) -> bool:
        p = f"transformer.h.{n}"
        if new_arch and n_ln == 2:
            x, xm = w.norm(f"{p}.ln_attn", h), w.norm(f"{p}.ln_mlp", h)
        else:
            x = xm = w.norm(f"{p}.input_layernorm", h)
        qkv = w.linear(f"{p}.self_attention.query_key_value", c.rows, x)
        k, v = _kv(c, qkv, qkv)
        o = w.attention(qkv, k, v, q_len=c.seq, kv_len=c.kv_len, kernel=w.kernel(math=grouped))
        o = w.linear(f"{p}.self_attention.dense", c.rows, o)
        if not new_arch and not parallel:
            h = h | w.dropout(w.cfg("attention_dropout", 0.0), o)
            xm = w.norm(f"{p}.post_attention_layernorm", h)
        m = w.mlp(f"{p}.mlp.dense_h_to_4h", f"{p}.mlp.dense_4h_to_h", c.rows, xm)
        if new_arch or parallel:
            m = m or o  # mlp_output += attention_output (in place: saves nothing)
        return h | w.dropout(drop, m)

    for n in range(spec.num_layers):
        h = w.block(layer, h, n)
    w.lm_head(c.rows, w.norm("transformer.ln_f", h))


def _t5(w: _Walker) -> None:
    """T5 / mT5: encoder (source length, plus prompt tokens) and decoder (target length); the
    cross-attention's keys / values come from the encoder output."""
    spec, s, plan = w.spec, w.settings, w.plan
    src = s.seq_len + plan.virtual_tokens
    tgt = s.target_len or s.seq_len
    drop = w.cfg("dropout_rate", 0.1)
    gc = s.gradient_checkpointing
    gated = w.has("encoder.block.0.layer.1.DenseReluDense.wi_0")

    def stack(name: str, h: bool, layers: int, q_len: int, enc: bool | None) -> bool:
        rows = w.batch * q_len
        h = w.dropout(drop, h)
        rel = f"{name}.block.0.layer.0.SelfAttention.relative_attention_bias"
        self_bias = w.trains(rel, "weight")  # computed by block 0, reused by every block
        cross_bias = gc  # a zeros tensor that requires grad under gradient checkpointing

        def ff(h: bool, p: str) -> bool:
            x = w.norm(f"{p}.layer_norm", h)
            d = f"{p}.DenseReluDense"
            if gated:  # gelu(wi_0(x)) * wi_1(x)
                g = w.act(w.linear(f"{d}.wi_0", rows, x))
                u = w.linear(f"{d}.wi_1", rows, x)
                w.mark(g or u)
                m = w.dropout(drop, g or u)
            else:
                m = w.dropout(drop, w.act(w.linear(f"{d}.wi", rows, x)))
            return h | w.dropout(drop, w.linear(f"{d}.wo", rows, m))

        def block(h: bool, n: int) -> bool:
            p = f"{name}.block.{n}.layer"
            x = w.norm(f"{p}.0.layer_norm", h)
            a = f"{p}.0.SelfAttention"
            q, k, v = (w.linear(f"{a}.{m}", rows, x) for m in "qkv")
            o = w.attention(q, k, v, q_len=q_len, kv_len=q_len, kernel=w.kernel(bias_rg=self_bias), bias_rg=self_bias)
            h = h | w.dropout(drop, w.linear(f"{a}.o", rows, o))
            if enc is not None:
                x = w.norm(f"{p}.1.layer_norm", h)
                a = f"{p}.1.EncDecAttention"
                q = w.linear(f"{a}.q", rows, x)
                k, v = (w.linear(f"{a}.{m}", w.batch * src, enc) for m in "kv")
                o = w.attention(q, k, v, q_len=q_len, kv_len=src, kernel=w.kernel(bias_rg=cross_bias),
                                bias_rg=cross_bias)
                h = h | w.dropout(drop, w.linear(f"{a}.o", rows, o))
            return ff(h, f"{p}.{2 if enc is not None else 1}")

        for n in range(layers):
            h = w.block(block, h, n)
        return w.dropout(drop, w.norm(f"{name}.final_layer_norm", h))

    w.prompt_encoder()
    emb = w.embedding("shared", w.batch * s.seq_len) or w.hook()
    enc = stack("encoder", emb or plan.virtual_tokens > 0, spec.num_encoder_layers, src, None)
    dec_emb = w.embedding("shared", w.batch * tgt) or w.hook()
    dec = stack("decoder", dec_emb, spec.num_layers, tgt, enc)
    w.lm_head(w.batch * tgt, dec)


def _bert(w: _Walker) -> None:
    spec = w.spec
    base = spec.model_type
    rows, seq = w.batch * w.settings.seq_len, w.settings.seq_len
    drop = w.cfg("hidden_dropout_prob", 0.1)
    e = f"{base}.embeddings"
    h = w.embedding(f"{e}.word_embeddings", rows) or w.hook() or w.trains(f"{e}.position_embeddings", "weight") \
        or w.trains(f"{e}.token_type_embeddings", "weight")
    h = w.dropout(drop, w.norm(f"{e}.LayerNorm", h))

    def layer(h: bool, n: int) -> bool:
        p = f"{base}.encoder.layer.{n}"
        a = f"{p}.attention.self"
        q, k, v = (w.linear(f"{a}.{m}", rows, h) for m in ("query", "key", "value"))
        o = w.attention(q, k, v, q_len=seq, kv_len=seq, kernel=w.kernel())
        o = w.dropout(drop, w.linear(f"{p}.attention.output.dense", rows, o))
        h = w.norm(f"{p}.attention.output.LayerNorm", h or o)
        m = w.dropout(drop, w.mlp(f"{p}.intermediate.dense", f"{p}.output.dense", rows, h))
        return w.norm(f"{p}.output.LayerNorm", h or m)

    for n in range(spec.num_layers):
        h = w.block(layer, h, n)
    head = "cls.predictions" if base == "bert" else "lm_head"
    dense = f"{head}.transform.dense" if base == "bert" else f"{head}.dense"
    ln = f"{head}.transform.LayerNorm" if base == "bert" else f"{head}.layer_norm"
    t = w.norm(ln, w.act(w.linear(dense, rows, h, part="lm_head")))
    w.lm_head(rows, t, f"{head}.decoder")


_WALKERS: dict[str, Callable[[_Walker], None]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "mixtral"), _llama),
    "gpt2": _gpt2, "phi": _phi, "gpt_neox": _gpt_neox, "opt": _opt, "bloom": _bloom, "falcon": _falcon,
    "t5": _t5, "mt5": _t5, "bert": _bert, "roberta": _bert,
}


# ----- entry points --------------------------------------------------------------------------------


def step_flops(spec: ModelSpec, plan: MethodPlan, settings: TrainingSettings, *, cpu_kernels: bool = False) -> StepFlops:
    """Matmul FLOPs of one training step of ``spec`` under ``plan`` and ``settings``.

    ``cpu_kernels``: count the attention kernel a CPU run takes where it differs from CUDA (T5's
    grad-requiring position bias takes SDPA's math path on the CPU, the memory-efficient kernel on
    CUDA); for validating against CPU measurements. Raises :class:`FlopsNotModelledError` (field
    ``method`` / ``model_type``) where :func:`unsupported_reason` gives a reason.
    """
    reason = unsupported_reason(spec, plan, settings)
    if reason is not None:
        field_name = "model_type" if spec.model_type not in _WALKERS else "method"
        raise FlopsNotModelledError(reason, field=field_name)
    w = _Walker(spec, plan, settings, cpu_kernels=cpu_kernels)
    _WALKERS[spec.model_type](w)
    notes = []
    if plan.adapted and settings.adapter_dtype == "float32" and settings.dtype != "float32" \
            and not settings.mixed_precision:
        notes.append("adapter matmuls run in float32 (PEFT's autocast_adapter_dtype): see parts['adapter']")
    return w.result(settings.batch_size * settings.seq_len, notes)


def estimate_flops(spec: ModelSpec, plan: MethodPlan, settings: TrainingSettings) -> StepFlops | None:
    """:func:`step_flops`, or None where the case is not counted (see :func:`unsupported_reason`)."""
    if unsupported_reason(spec, plan, settings) is not None:
        return None
    return step_flops(spec, plan, settings)
