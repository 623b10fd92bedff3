"""Autograd saving rules of the ops transformers models use, on symbolic tensors.

Each function allocates its outputs on the :class:`~planner.memory.sim.Sim`, records a backward
node (only when an output requires grad, as autograd does), saves what PyTorch saves for that op
(``tools/autograd/derivatives.yaml`` in PyTorch 2.x; conditional saving: an operand is kept only
when the gradient that needs it will be computed) and, on backward, allocates the gradients PyTorch
allocates. Views (``view`` / ``reshape`` of contiguous tensors / ``transpose``) allocate nothing
and are not modelled: programs pass the same tensor on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.memory.sim import Sim, Tensor


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter as the replay sees it: its key, size and dtype, and whether it trains."""

    key: str
    numel: int
    dtype: str
    trainable: bool


def same_size(a, b) -> bool:
    """Element counts equal (ints, or numpy arrays of a vectorised sweep)."""
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(np.broadcast_to(a, np.shape(b)) if np.ndim(a) < np.ndim(b) else a, b))
    return a == b


def _grad(sim: Sim, t_numel, dtype: str):
    return sim.tensor(t_numel, dtype, category="gradients_act")


def linear(sim: Sim, x: Tensor, in_f: int, out_f: int, w: Param | None, b: Param | None = None,
           out_dtype: str | None = None) -> Tensor:
    """``F.linear`` (``addmm`` / ``mm``): saves the input only when the weight trains; the input's
    gradient needs only the weight (a parameter, not an activation). ``w`` None = a frozen weight
    the replay need not name (e.g. a 4-bit weight, handled by the caller)."""
    out_numel = x.numel // in_f * out_f
    w_tr = w is not None and w.trainable
    b_tr = b is not None and b.trainable
    rg = x.rg or w_tr or b_tr
    out = sim.tensor(out_numel, out_dtype or x.dtype, rg)
    if rg:
        xk, xn, xd, x_rg = x.key, x.numel, x.dtype, x.rg

        def bw(outs):
            res = {}
            if x_rg:
                res[xk] = _grad(sim, xn, xd)
            if w_tr:
                sim.param_grad(w.key, w.numel, w.dtype)
            if b_tr:
                sim.param_grad(b.key, b.numel, b.dtype)
            return res

        # addmm / mm save the weight (a parameter: no memory) for the input's gradient and the
        # input for the weight's
        sim.node([x] if w_tr else [], bw, [out], inputs=[x], holders=int(x_rg and w is not None) + int(w_tr))
    return out


def cast(sim: Sim, x: Tensor, dtype: str) -> Tensor:
    """``x.to(dtype)``: a copy when the dtype differs (no saved tensor; backward casts back)."""
    if x.dtype == dtype:
        return x
    out = sim.tensor(x.numel, dtype, x.rg)
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        sim.node([], lambda outs: {xk: _grad(sim, xn, xd)}, [out], inputs=[x])
    return out


def _promote(a: str, b: str) -> str:
    order = {"float16": 1, "bfloat16": 1, "float32": 2}
    if a == b:
        return a
    if order[a] == order[b]:
        return "float32"
    return a if order[a] > order[b] else b


def _grad_for(sim: Sim, g: Tensor, numel, dtype: str) -> Tensor:
    """The gradient an input receives: the incoming one itself when shape and dtype match
    (``add`` passes it through), else a new tensor (broadcast reduction or dtype cast)."""
    if g is not None and g.dtype == dtype and same_size(g.numel, numel):
        return g
    return _grad(sim, numel, dtype)


def add(sim: Sim, a: Tensor, b: Tensor) -> Tensor:
    """``a + b``: saves nothing; backward hands its gradient on (cast where the dtype differs)."""
    dtype = _promote(a.dtype, b.dtype)
    out = sim.tensor(a.numel, dtype, a.rg or b.rg)
    if out.rg:
        spec = [(t.key, t.numel, t.dtype) for t in (a, b) if t.rg]

        def bw(outs):
            g = outs[0]
            return {k: _grad_for(sim, g, n, d) for k, n, d in spec}

        sim.node([], bw, [out], inputs=[a, b])
    return out


def mul(sim: Sim, a: Tensor, b: Tensor | Param | None, out_numel=None) -> Tensor:
    """``a * b`` (``b`` a tensor, a parameter, or None for a Python scalar): saves ``b`` when ``a``
    needs a gradient and ``a`` when ``b`` does. Backward (``mul_tensor_backward``, self first):
    ``grad * other`` in the output dtype, cast to the operand's dtype; an operand smaller than the
    output (broadcast: a norm's ``rsqrt``, a weight) gets ``(grad * self).sum_to(...)``, whose
    full-size product is a temporary."""
    numel = out_numel if out_numel is not None else a.numel
    if b is None:  # scalar
        out = sim.tensor(numel, a.dtype, a.rg)
        if a.rg:
            ak, an, ad = a.key, a.numel, a.dtype
            # MulBackward0 saves ``other``, the Python number wrapped as a 0-dim CPU tensor
            sim.node([], lambda outs: {ak: _grad(sim, an, ad)}, [out], inputs=[a], holders=1)
        return out
    b_rg = b.trainable if isinstance(b, Param) else b.rg
    dtype = _promote(a.dtype, b.dtype)
    out = sim.tensor(numel, dtype, a.rg or b_rg)
    if out.rg:
        saved = []
        if a.rg and isinstance(b, Tensor):
            saved.append(b)
        if b_rg:
            saved.append(a)
        specs = [(a.key, a.numel, a.dtype, a.rg, False), (b.key, b.numel, b.dtype, b_rg, isinstance(b, Param))]

        def bw(outs):
            res = {}
            for key, n, d, rg, is_param in specs:
                if not rg:
                    continue
                full = sim.tensor(numel, dtype, category="gradients_act")
                if is_param:
                    del full
                    sim.param_grad(key, n, d)
                    continue
                if same_size(n, numel):
                    g = full if d == dtype else _grad(sim, n, d)
                else:  # broadcast operand: reduce the full product
                    g = _grad(sim, n, d)
                del full
                res[key] = g
            return res

        sim.node(saved, bw, [out], inputs=[a] + ([b] if isinstance(b, Tensor) else []),
                 holders=int(a.rg) + int(b_rg))  # a parameter operand is saved too (no memory)
    return out


def pow2(sim: Sim, x: Tensor) -> Tensor:
    """``x.pow(2)``: saves ``x``; backward ``grad * (2 * x.pow(1))`` holds three full temporaries
    (``pow_backward``: the C++ expression's temporaries live to its end)."""
    out = sim.tensor(x.numel, x.dtype, x.rg)
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype

        def bw(outs):
            t1 = sim.tensor(xn, xd, category="gradients_act")
            t2 = sim.tensor(xn, xd, category="gradients_act")
            g = sim.tensor(xn, xd, category="gradients_act")
            sim.note_peak()
            del t1, t2
            return {xk: g}

        sim.node([x], bw, [out], inputs=[x])
    return out


def mean_last(sim: Sim, x: Tensor, hidden: int) -> Tensor:
    """``x.mean(-1, keepdim=True)``: saves nothing; backward expands and divides (a full tensor)."""
    out = sim.tensor(x.numel // hidden, x.dtype, x.rg)
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        sim.node([], lambda outs: {xk: _grad(sim, xn, xd)}, [out], inputs=[x])
    return out


def add_scalar(sim: Sim, x: Tensor) -> Tensor:
    """``x + c``: a new tensor, gradient passed through."""
    out = sim.tensor(x.numel, x.dtype, x.rg)
    if x.rg:
        xk = x.key
        sim.node([], lambda outs: {xk: outs[0]}, [out], inputs=[x])
    return out


def unary(sim: Sim, x: Tensor, *, saves: str = "input", out_dtype: str | None = None, out_numel=None) -> Tensor:
    """Elementwise op saving its ``input`` (silu, gelu, pow, tanh-free gelu), its ``output``
    (rsqrt, exp, tanh, sigmoid) or ``none`` (neg, mean)."""
    out = sim.tensor(out_numel if out_numel is not None else x.numel, out_dtype or x.dtype, x.rg)
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        saved = {"input": [x], "output": [out], "none": []}[saves]
        sim.node(saved, lambda outs: {xk: _grad(sim, xn, xd)}, [out], inputs=[x])
    return out


def dropout(sim: Sim, x: Tensor, p: float) -> Tensor:
    """``F.dropout``: identity for p == 0; on CUDA ``native_dropout`` returns the output and a
    bool mask (saved when a gradient is needed, a transient otherwise)."""
    if p <= 0.0:
        return x
    out = sim.tensor(x.numel, x.dtype, x.rg)
    mask = sim.tensor(x.numel, "bool")
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        sim.node([mask], lambda outs: {xk: _grad(sim, xn, xd)}, [out], inputs=[x])
    del mask
    return out


def embedding(sim: Sim, ids: Tensor, dim: int, w: Param, dtype: str) -> Tensor:
    """``F.embedding``: saves the indices when the weight trains; backward builds a dense
    vocab x dim gradient."""
    out = sim.tensor(ids.numel * dim, dtype, w.trainable)
    if w.trainable:
        sim.node([ids], lambda outs: (sim.param_grad(w.key, w.numel, w.dtype), {})[1], [out], inputs=[])
    return out


def rms_norm(sim: Sim, x: Tensor, hidden: int, w: Param, *, offset_one: bool = False) -> Tensor:
    """transformers' RMSNorm (LlamaRMSNorm and its copies): fp32 upcast, ``pow(2).mean``,
    ``rsqrt``, multiply, cast back, times the weight. Gemma: ``(1 + weight)`` in fp32 and the cast
    at the end (``offset_one``)."""
    dtype = x.dtype
    x32 = cast(sim, x, "float32")
    sq = pow2(sim, x32)
    var = mean_last(sim, sq, hidden)
    del sq
    var_eps = add_scalar(sim, var)
    del var
    rs = unary(sim, var_eps, saves="output")
    del var_eps
    normed = mul(sim, x32, rs)
    del x32, rs
    if offset_one:
        # Gemma: output * (1.0 + self.weight.float()), then .type_as(x)
        # ``self.weight.float()`` (a copy unless the weight is fp32) then ``1.0 + ...`` (a new fp32
        # tensor, which ``mul`` saves for the gradient of ``output``), trainable or not
        def weight_leaf(t: Tensor) -> Tensor:
            if w.trainable:
                sim.node([], lambda outs: (sim.param_grad(w.key, w.numel, w.dtype), {})[1], [t], inputs=[])
            return t

        if w.dtype != "float32":
            w32 = weight_leaf(sim.tensor(w.numel, "float32", w.trainable))
            one = add_scalar(sim, w32)
            del w32
        else:
            one = weight_leaf(sim.tensor(w.numel, "float32", w.trainable))
        out = mul(sim, normed, one)
        del one
        res = cast(sim, out, dtype)
        del normed, out
        return res
    # ``return self.weight * hidden_states.to(input_dtype)``: the fp32 ``hidden_states`` lives
    # until the expression ends
    h = cast(sim, normed, dtype)
    out = mul(sim, h, w)
    del normed, h
    return out


def layer_norm(sim: Sim, x: Tensor, hidden: int, w: Param | None, b: Param | None) -> Tensor:
    """``F.layer_norm`` (``native_layer_norm``): saves its input, the fp32 mean and rstd per row
    (and the weight, a parameter) whenever a gradient is needed."""
    w_tr = w is not None and w.trainable
    b_tr = b is not None and b.trainable
    rg = x.rg or w_tr or b_tr
    out = sim.tensor(x.numel, x.dtype, rg)
    if rg:
        rows = x.numel // hidden
        mean = sim.tensor(rows, "float32")
        rstd = sim.tensor(rows, "float32")
        xk, xn, xd, x_rg = x.key, x.numel, x.dtype, x.rg

        def bw(outs):
            res = {}
            if x_rg:
                res[xk] = _grad(sim, xn, xd)
            if w_tr:
                sim.param_grad(w.key, w.numel, w.dtype)
            if b_tr:
                sim.param_grad(b.key, b.numel, b.dtype)
            return res

        # native_layer_norm also saves its weight and bias (parameters)
        sim.node([x, mean, rstd], bw, [out], inputs=[x], holders=3 + int(w is not None) + int(b is not None))
        del mean, rstd
    return out


def sdpa(sim: Sim, q: Tensor, k: Tensor, v: Tensor, *, batch: int, heads: int, q_len, head_dim: int) -> Tensor:
    """``F.scaled_dot_product_attention`` through a fused kernel (flash / memory-efficient; no
    explicit mask): saves q, k, v, the output and the fp32 log-sum-exp (batch x heads x q_len);
    backward returns fresh gradients for q, k, v."""
    rg = q.rg or k.rg or v.rg
    out = sim.tensor(q.numel // head_dim * head_dim, q.dtype, rg)
    if rg:
        lse = sim.tensor(batch * heads * q_len, "float32")
        spec = [(t.key, t.numel, t.dtype) for t in (q, k, v) if t.rg]
        sim.node([q, k, v, out, lse], lambda outs: {kk: _grad(sim, n, d) for kk, n, d in spec}, [out], inputs=[q, k, v])
        del lse
    return out


def matmul(sim: Sim, a: Tensor, b: Tensor, out_numel) -> Tensor:
    """Batched ``a @ b`` of two activations: saves each operand the other's gradient needs."""
    out = sim.tensor(out_numel, a.dtype, a.rg or b.rg)
    if out.rg:
        saved = ([b] if a.rg else []) + ([a] if b.rg else [])
        spec = [(t.key, t.numel, t.dtype) for t in (a, b) if t.rg]
        sim.node(saved, lambda outs: {kk: _grad(sim, n, d) for kk, n, d in spec}, [out], inputs=[a, b])
    return out


def copy(sim: Sim, x: Tensor) -> Tensor:
    """``.contiguous()`` / ``reshape`` of a non-contiguous tensor / ``repeat``: a copy, nothing saved."""
    out = sim.tensor(x.numel, x.dtype, x.rg)
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        sim.node([], lambda outs: {xk: _grad(sim, xn, xd)}, [out], inputs=[x])
    return out


def expand_copy(sim: Sim, x: Tensor, factor: int) -> Tensor:
    """``repeat_kv``: expand + reshape = a copy ``factor`` times larger; backward sums back."""
    if factor == 1:
        return x
    out = sim.tensor(x.numel * factor, x.dtype, x.rg)
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        sim.node([], lambda outs: {xk: _grad(sim, xn, xd)}, [out], inputs=[x])
    return out


def softmax(sim: Sim, x: Tensor, out_dtype: str) -> Tensor:
    """``softmax(x, dtype=...)``: saves its output."""
    out = sim.tensor(x.numel, out_dtype, x.rg)
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        sim.node([out], lambda outs: {xk: _grad(sim, xn, xd)}, [out], inputs=[x])
    return out


def cross_entropy(sim: Sim, logits: Tensor, vocab: int, rows) -> Tensor:
    """``F.cross_entropy`` = ``log_softmax`` (saves its fp32 output) + ``nll_loss`` (saves the
    int64 targets and a scalar total weight). Backward: nll's gradient (rows x vocab), then
    log-softmax's, while the saved log-probabilities still live (the ~12 x rows x vocab bytes
    peak of fp32 logits)."""
    logp = unary(sim, logits, saves="output")
    target = sim.tensor(rows, "int64", category="inputs")
    weight = sim.tensor(1, "float32")
    loss = sim.tensor(1, "float32", logp.rg)
    if logp.rg:
        lk, ln, ld = logp.key, logp.numel, logp.dtype
        sim.node([target, weight], lambda outs: {lk: _grad(sim, ln, ld)}, [loss], inputs=[logp])
    del target, weight
    return loss


def cat(sim: Sim, parts: list[Tensor], numel, dtype: str) -> Tensor:
    """``torch.cat``: a new tensor; backward hands each input a slice (a view, no allocation)."""
    rg = any(t.rg for t in parts)
    out = sim.tensor(numel, dtype, rg)
    if rg:
        spec = [(t.key, t.numel, t.dtype) for t in parts if t.rg]
        sim.node([], lambda outs: {k: _grad_view(outs[0], n) for k, n, d in spec}, [out], inputs=list(parts))
    return out


def _grad_view(g: Tensor, numel=None) -> Tensor:
    """``grad.narrow(...)`` (``cat_tensors_backward``): a view of the incoming gradient with the
    input's size; it keeps the whole gradient's storage alive."""
    if numel is None or same_size(g.numel, numel):
        return g
    t = Tensor.__new__(Tensor)
    t.storage, t.numel, t.dtype, t.rg, t.key, t.grad_fn = g.storage, numel, g.dtype, False, -1, None
    return t
