"""Ops the family programs beyond llama need, on the same symbolic tensors as
:mod:`planner.memory.ops` (same conventions: outputs allocated on the :class:`Sim`, a backward node
recorded only when an output requires grad, PyTorch's conditional saving rules).

Views matter here: GPT-2's fused ``c_attn`` output is split into three views, and the attention
kernel saves the query *view*, which keeps the whole fused tensor alive. A :class:`View` costs no
bytes and holds its base, as a real view holds its storage.
"""

from __future__ import annotations

import numpy as np

from planner.memory import ops
from planner.memory.ops import Param
from planner.memory.sim import Sim, Tensor


def View(sim: Sim, base: Tensor, numel, rg: bool | None = None) -> Tensor:
    """A view of ``base``: a new tensor on the same storage (no allocation; the storage lives while
    any view of it does)."""
    t = Tensor.__new__(Tensor)
    t.storage = base.storage
    t.numel = numel
    t.dtype = base.dtype
    t.rg = base.rg if rg is None else rg
    t.key = next(sim._ids)
    t.grad_fn = None
    return t


def _grad(sim: Sim, numel, dtype: str) -> Tensor:
    return sim.tensor(numel, dtype, category="gradients_act")


def split(sim: Sim, x: Tensor, sizes: list) -> list[Tensor]:
    """``x.split(...)`` / ``x.chunk(...)`` along the last dim: views. Backward
    (``split_with_sizes_backward``): zeros for the parts that got no gradient, then ``cat`` into a
    full-size gradient while the parts' gradients still live."""
    parts = [View(sim, x, n) for n in sizes]
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        part_sizes = list(sizes)

        def bw(outs):
            zeros = [_grad(sim, n, xd) for g, n in zip(outs, part_sizes) if g is None]
            g = _grad(sim, xn, xd)
            del zeros
            return {xk: g}

        sim.node([], bw, parts, inputs=[x])
    return parts


def view(sim: Sim, x: Tensor, numel=None) -> Tensor:
    """A view with a different shape (``narrow`` / ``select`` / slicing): no bytes; gradient
    handed on (a slice's gradient is a full-size zero tensor with the slice written in)."""
    n = x.numel if numel is None else numel
    out = View(sim, x, n)
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        same = n is xn or (not hasattr(n, "shape") and not hasattr(xn, "shape") and n == xn)

        def bw(outs):
            return {xk: outs[0] if same else _grad(sim, xn, xd)}

        sim.node([], bw, [out], inputs=[x])
    return out


def copy_passthrough(sim: Sim, x: Tensor) -> Tensor:
    """A copy whose backward hands the gradient on without allocating (``clone``,
    ``torch.cat([empty, x])`` in ``DynamicLayer.update``, a ``reshape`` that had to copy)."""
    out = sim.tensor(x.numel, x.dtype, x.rg)
    if x.rg:
        xk = x.key
        sim.node([], lambda outs: {xk: outs[0]}, [out], inputs=[x])
    return out


def scalar_mul(sim: Sim, x: Tensor) -> Tensor:
    """``c * x`` with a Python scalar: a new tensor, nothing saved, backward ``grad * c`` (new)."""
    return ops.mul(sim, x, None)


def add_scalar(sim: Sim, x: Tensor) -> Tensor:
    """``x + c`` / ``c + x``: a new tensor; the gradient is handed on."""
    return ops.add_scalar(sim, x)


def new_gelu(sim: Sim, x: Tensor) -> Tensor:
    """transformers' ``NewGELUActivation`` (``gelu_new``), the Python expression
    ``0.5 * x * (1.0 + torch.tanh(sqrt(2/pi) * (x + 0.044715 * torch.pow(x, 3.0))))`` op by op:
    ``0.5 * x`` (kept for the final product), ``pow`` (saves ``x``), three temporaries that die at
    once, ``tanh`` (saves its output), ``1 + t`` (kept), the product (saves both factors)."""
    half = scalar_mul(sim, x)
    p3 = ops.pow2(sim, x)  # pow(x, 3): saves x; backward grad * (3 * x.pow(2)): three temporaries
    c = scalar_mul(sim, p3)
    del p3
    inner = ops.add(sim, x, c)
    del c
    scaled = scalar_mul(sim, inner)
    del inner
    t = ops.unary(sim, scaled, saves="output")
    del scaled
    one_plus = add_scalar(sim, t)
    del t
    out = ops.mul(sim, half, one_plus)
    del half, one_plus
    return out


def gelu_python_exact(sim: Sim, x: Tensor) -> Tensor:
    """``F.gelu`` (one kernel; saves its input)."""
    return ops.unary(sim, x, saves="input")


def param_tensor(sim: Sim, p: Param, numel=None, dtype: str | None = None) -> Tensor | None:
    """A parameter used as an activation operand (no bytes of its own; its gradient goes to
    ``p.grad``). None when the parameter is frozen (callers then use the Param itself)."""
    if not p.trainable:
        return None
    t = sim.tensor(0, dtype or p.dtype, True)
    t.numel = p.numel if numel is None else numel
    sim.node([], lambda outs: (sim.param_grad(p.key, p.numel, p.dtype), {})[1], [t], inputs=[])
    return t


def slices(sim: Sim, x: Tensor, sizes: list) -> list[Tensor]:
    """``x[..., a:b]`` for consecutive ranges: views, each with its own ``SliceBackward`` node,
    whose backward (``slice_backward``) allocates a zero tensor of ``x``'s full size and writes the
    part's gradient in; the parts' full-size gradients then accumulate into ``x``'s."""
    parts = [View(sim, x, n) for n in sizes]
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        for part in parts:
            sim.node([], lambda outs: {xk: _grad(sim, xn, xd)}, [part], inputs=[x])
    return parts


def cat(sim: Sim, parts: list[Tensor]) -> Tensor:
    """``torch.cat(parts)``: a new tensor; backward hands each part a view of the gradient."""
    numel = sum(p.numel for p in parts)
    rg = any(p.rg for p in parts)
    out = sim.tensor(numel, parts[0].dtype, rg)
    if rg:
        spec = [(p.key, p.numel) for p in parts if p.rg]

        def bw(outs):
            g = outs[0]
            return {k: View(sim, g, n) for k, n in spec}

        sim.node([], bw, [out], inputs=list(parts))
    return out


def neg(sim: Sim, x: Tensor) -> Tensor:
    """``-x``: a new tensor, nothing saved; backward negates (a new tensor)."""
    return ops.unary(sim, x, saves="none")


def sdpa(sim: Sim, q: Tensor, k: Tensor, v: Tensor, *, batch, heads: int, q_len, head_dim: int,
         bias: Tensor | None = None) -> Tensor:
    """``F.scaled_dot_product_attention`` through a fused kernel: saves q, k, v, the output, the
    fp32 log-sum-exp and, with an explicit mask, the additive float mask it was converted to
    (``bias``; the memory-efficient kernel's ``attn_bias``); fresh gradients for q, k, v."""
    if bias is None:
        return ops.sdpa(sim, q, k, v, batch=batch, heads=heads, q_len=q_len, head_dim=head_dim)
    rg = q.rg or k.rg or v.rg
    out = sim.tensor(q.numel, q.dtype, rg)
    if rg:
        lse = sim.tensor(batch * heads * q_len, "float32")
        spec = [(t.key, t.numel, t.dtype) for t in (q, k, v) if t.rg]
        sim.node([q, k, v, out, lse, bias], lambda outs: {kk: _grad(sim, n, d) for kk, n, d in spec}, [out],
                 inputs=[q, k, v])
        del lse
    return out


def flash_attention_2(sim: Sim, q: Tensor, k: Tensor, v: Tensor, *, batch, heads: int, q_len, head_dim: int,
                      target_dtype: str) -> Tensor:
    """transformers' ``flash_attention_forward`` (integrations/flash_attention.py) into flash-attn 2:
    ``transpose(1, 2)`` of q, k, v (views: the kernel needs only a unit last stride);
    ``fa_peft_integration_check`` casts fp32 q, k, v to ``target_dtype`` (the fp32 residual stream of
    4-bit loading); no mask (causal and sliding windows are kernel arguments), keys / values at their
    KV-head count; ``FlashAttnFunc`` saves q, k, v, the output, the fp32 log-sum-exp (B, heads, L)
    and an int64 RNG state; backward returns fresh dq, dk, dv (cast back where the inputs were cast).
    The output (B, L, heads, head_dim) reshapes to the o_proj input without a copy."""
    if q.dtype == "float32" and target_dtype != "float32":
        q, k, v = (ops.cast(sim, t, target_dtype) for t in (q, k, v))
    out = ops.sdpa(sim, q, k, v, batch=batch, heads=heads, q_len=q_len, head_dim=head_dim)
    if out.grad_fn is not None:
        rng_state = sim.tensor(2, "int64")
        sim.save_more(out.grad_fn, rng_state)
        del rng_state
    return out


def add_inplace(sim: Sim, a: Tensor, b: Tensor) -> Tensor:
    """``a += b``: no allocation (the result is ``a``'s storage); the gradient is handed to both."""
    out = View(sim, a, a.numel, rg=a.rg or b.rg)
    if out.rg:
        spec = [(t.key, t.numel, t.dtype) for t in (a, b) if t.rg]

        def bw(outs):
            g = outs[0]
            return {k: ops._grad_for(sim, g, n, d) for k, n, d in spec}

        sim.node([], bw, [out], inputs=[a, b])
    return out


def index_copy(sim: Sim, x: Tensor, numel) -> Tensor:
    """``x[..., [i], :]`` (advanced indexing): a copy of the selected part; backward
    (``index_put`` into zeros) allocates a gradient of ``x``'s full size."""
    index = sim.tensor(1, "int64")  # the Python list becomes a tensor (saved by IndexBackward)
    out = sim.tensor(numel, x.dtype, x.rg)
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        sim.node([index], lambda outs: {xk: _grad(sim, xn, xd)}, [out], inputs=[x])
    del index
    return out


def sdpa_math(sim: Sim, q: Tensor, k: Tensor, v: Tensor, *, batch, heads: int, kv_heads: int, q_len,
              mask_bias: bool, q_bmm_copy: bool, k_bmm_copy: bool, v_bmm_copy: bool, bias: Tensor | None = None,
              kv_len=None) -> Tensor:
    """``F.scaled_dot_product_attention`` on its math path (taken when no fused kernel accepts the
    inputs, e.g. fewer key/value heads than query heads without ``enable_gqa``):
    ``_scaled_dot_product_attention_math`` upcasts 16-bit q / k / v to fp32, scales q and k^T by
    sqrt(scale), ``matmul`` (broadcast key/value heads are expanded into copies, strided operands
    copied for the 3-D ``bmm``), adds the (converted) mask out of place, ``_safe_softmax`` (saved),
    a 16-bit copy of the probabilities (returned, unused), ``matmul`` with v, cast back."""
    dtype = q.dtype
    n_scores = batch * heads * q_len * (q_len if kv_len is None else kv_len)
    if mask_bias:
        bias = sim.tensor(n_scores // heads, dtype)  # bool mask -> additive
    q32 = ops.cast(sim, q, "float32")
    k32 = ops.cast(sim, k, "float32")
    v32 = ops.cast(sim, v, "float32")
    qs = ops.mul(sim, q32, None)
    kts = ops.mul(sim, k32, None)
    factor = heads // kv_heads
    qb = bmm_operand(sim, qs, batch) if q_bmm_copy else qs
    kb = broadcast_operand(sim, kts, factor, batch) if factor > 1 else (bmm_operand(sim, kts, batch) if k_bmm_copy else kts)
    attn = ops.matmul(sim, qb, kb, n_scores)
    del qb, kb, kts
    if bias is not None:
        a2 = ops.add(sim, attn, bias)
        del attn
        attn = a2
        del a2
    sm = ops.softmax(sim, attn, "float32")
    del attn
    w16 = sim.tensor(n_scores, dtype) if dtype != "float32" else None
    vb = broadcast_operand(sim, v32, factor, batch) if factor > 1 else (bmm_operand(sim, v32, batch) if v_bmm_copy else v32)
    o32 = ops.matmul(sim, sm, vb, q.numel)
    del vb, sm
    out = ops.cast(sim, o32, dtype)
    del o32, qs, v32, k32, q32, w16, bias
    return out


def softmax_to(sim: Sim, x: Tensor, dtype: str) -> Tensor:
    """``F.softmax(x, dim, dtype=dtype)``: ATen converts the input first (``x.to(dtype)``, a copy
    freed after the kernel) except for CUDA's fused half -> float path; ``_softmax`` saves its
    output."""
    if x.dtype == dtype or (x.dtype == "float16" and dtype == "float32"):
        return ops.softmax(sim, x, dtype)
    c = ops.cast(sim, x, dtype)
    out = ops.softmax(sim, c, dtype)
    del c
    return out


def single_batch(batch) -> bool:
    """True when every batch size of the replay is 1 (a vectorised replay sweeps arrays)."""
    return bool(np.all(np.asarray(batch) == 1))


def bmm_operand(sim: Sim, x: Tensor, batch) -> Tensor:
    """How ``matmul`` feeds a 4-D (B, H, L, D) operand laid out (B, L, H, D) (a transposed view) to
    ``bmm``: ``reshape(B * H, L, D)`` cannot merge B and H into one stride when B > 1, so it copies
    (the copy is what ``bmm`` saves); with B == 1 it is a view and the view (hence the tensor it
    views) is saved. A vectorised replay mixing B == 1 and B > 1 takes the copy."""
    if single_batch(batch):
        return x
    return copy_passthrough(sim, x)


def broadcast_operand(sim: Sim, x: Tensor, factor: int, batch) -> Tensor:
    """A key / value with fewer heads broadcast against the query's heads inside ``matmul``:
    ``expand(...).reshape(B * H, ...)`` copies when B > 1; with B == 1 the expanded view is used as
    it is (stride 0). Backward: the full-size gradient, summed back to ``x``'s size."""
    if factor == 1:
        return bmm_operand(sim, x, batch)
    if not single_batch(batch):
        return ops.expand_copy(sim, x, factor)
    out = View(sim, x, x.numel * factor)
    if x.rg:
        xk, xn, xd = x.key, x.numel, x.dtype
        sim.node([], lambda outs: {xk: _grad(sim, xn, xd)}, [out], inputs=[x])
    return out


def activation(sim: Sim, x: Tensor, name: str) -> Tensor:
    """``ACT2FN[name](x)``: ``gelu_new`` is a Python expression (:func:`new_gelu`); ReLU / tanh /
    sigmoid save their output; SiLU, GELU (erf / tanh kernels) and the rest save their input."""
    if name in ("gelu_new", "gelu_pytorch_tanh_python"):
        return new_gelu(sim, x)
    if name in ("relu", "tanh", "sigmoid"):
        return ops.unary(sim, x, saves="output")
    return ops.unary(sim, x, saves="input")
