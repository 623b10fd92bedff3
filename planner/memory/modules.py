"""What the replay needs to know about each module once the method is applied: which of its
parameters train, which adapter wraps it, whether its weight is stored in 4 bit. Built once from
the :class:`~planner.methods.base.MethodPlan` and the settings, read by the family programs."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from planner.architectures.base import ModuleEntry, ModuleKind
from planner.memory import ops
from planner.memory.ops import Param
from planner.memory.settings import TrainingSettings
from planner.memory.sim import Sim, Tensor
from planner.methods.base import MethodPlan
from planner.spec import ModelSpec


@dataclass
class Adapter:
    """A LoRA-style low-rank adapter on a linear module (LoRA, rsLoRA, QLoRA's adapters)."""

    kind: str  # "lora" | "ia3_out" | "ia3_in"
    r: int = 0
    dropout: float = 0.0
    a: Param | None = None
    b: Param | None = None
    vec: Param | None = None
    magnitude: Param | None = None  # DoRA's lora_magnitude_vector


@dataclass
class Context:
    """Everything the family programs read, plus the simulation they write to."""

    spec: ModelSpec
    plan: MethodPlan
    settings: TrainingSettings
    sim: Sim
    trainable: set[str]
    adapters: dict[str, Adapter]
    quantized: set[str]
    compute_dtype: str  # dtype of the matmuls (the model dtype; bnb compute dtype for 4-bit linears)
    stream_dtype: str  # dtype of the residual stream (fp32 under prepare_model_for_kbit_training)
    unsupported: list[str] = field(default_factory=list)
    layer_indices: tuple[int, ...] = ()  # the blocks the replay runs (a prefix when extrapolating)
    parallel: Any = None  # the data-parallel strategy (planner.memory.parallel), None on one GPU
    autocast_dtype: str | None = None  # mixed_precision: the dtype autocast runs matmuls / SDPA in

    def param(self, module: str, name: str = "weight") -> Param | None:
        entry = self.spec.inventory.by_path.get(module)
        if entry is None:
            return None
        p = entry.param(name)
        if p is None:
            return None
        key = f"{module}.{name}" if p.tied_to is None else p.tied_to
        dtype = self.param_dtype(module, name)
        return Param(key, p.numel, dtype, key in self.trainable)

    def param_dtype(self, module: str, name: str) -> str:
        if self.settings.quantized_4bit and module not in self.quantized:
            return "float32"  # prepare_model_for_kbit_training upcasts every non-4-bit parameter
        return self.settings.dtype

    def linear(self, x: Tensor, module: str) -> Tensor:
        """A linear module with whatever the method did to it."""
        sim = self.sim
        entry = self.spec.inventory.by_path[module]
        in_f, out_f = entry.in_features, entry.out_features
        adapter = self.adapters.get(module)
        bias = self.param(module, "bias")
        if module in self.quantized:
            result = self._linear_4bit(x, entry, bias)
        else:
            xin = x
            if adapter is not None and adapter.kind.startswith("ia3"):
                # PEFT ia3.Linear: ia3_scaling = 1 * ia3_l.flatten() (a new tensor), then
                # feedforward: (x * scaling).to(x.dtype) -> base; else (base(x) * scaling).to(dtype)
                scaling = sim.tensor(adapter.vec.numel, adapter.vec.dtype, True)
                vec = adapter.vec
                sim.node([], lambda outs: (sim.param_grad(vec.key, vec.numel, vec.dtype), {})[1], [scaling], inputs=[])
                if adapter.kind == "ia3_in":
                    xa = ops.cast(sim, x, vec.dtype)
                    xin = ops.cast(sim, ops.mul(sim, xa, scaling, out_numel=x.numel), x.dtype)
                    del xa
            else:
                scaling = None
            if self.autocast_dtype is not None:
                result = self.linear_autocast(xin, in_f, out_f, self.param(module), bias)
            else:
                result = ops.linear(sim, xin, in_f, out_f, self.param(module), bias)
            del xin
            if scaling is not None and adapter.kind == "ia3_out":
                dtype = result.dtype
                result = ops.cast(sim, ops.mul(sim, result, scaling, out_numel=result.numel), dtype)
            del scaling
        if adapter is None or adapter.kind != "lora":
            return result
        out_dtype = result.dtype
        xa = ops.cast(sim, x, self.settings.adapter_dtype)
        if adapter.magnitude is not None:
            result = self._dora(xa, result, entry, adapter)
            del xa
            return ops.cast(sim, result, out_dtype)
        d = ops.dropout(sim, xa, adapter.dropout)
        lin = self.linear_autocast if self.autocast_dtype is not None else partial(ops.linear, sim)
        a = lin(d, in_f, adapter.r, adapter.a)
        del d
        b = lin(a, adapter.r, out_f, adapter.b)
        del a
        s = ops.mul(sim, b, None)
        del b
        result = ops.add(sim, result, s)
        del s, xa
        return ops.cast(sim, result, out_dtype)

    def autocast_cast(self, p: Param) -> Tensor:
        """A parameter as autocast hands it to a lower-precision op: a trainable fp32 leaf is cast
        once per autocast region (the cached copy, which the sim holds until the region exits; its
        ``ToCopyBackward`` casts the gradient back to fp32 into ``.grad``); a frozen one is cast
        afresh at every use (not recorded, alive while the op's saved tensors or the caller hold it)."""
        sim, dt = self.sim, self.autocast_dtype
        if not p.trainable:
            return sim.tensor(p.numel, dt, False, category="temporaries")
        t = sim.autocast_cache.get(p.key)
        if t is None:
            t = sim.tensor(p.numel, dt, True, category="temporaries")
            sim.node([], lambda outs: (sim.param_grad(p.key, p.numel, p.dtype), {})[1], [t], inputs=[])
            sim.autocast_cache[p.key] = t
        return t

    def linear_autocast(self, x: Tensor, in_f: int, out_f: int, w: Param, b: Param | None = None) -> Tensor:
        """``F.linear`` under autocast (lower-precision list): the weight cast (cached when it trains,
        else a fresh copy), the input cast (a ``_to_copy`` per call, even of the same input), the bias
        cast, then ``mm`` / ``addmm`` in the autocast dtype. ``mm`` saves the input copy when the
        weight trains and the weight copy when the input needs a gradient (a frozen weight's copy then
        lives until this matmul's backward); its gradients come out in the autocast dtype and the
        casts' backward nodes bring them back to fp32."""
        sim, dt = self.sim, self.autocast_dtype
        wc = self.autocast_cast(w)
        xc = ops.cast(sim, x, dt)
        bc = self.autocast_cast(b) if b is not None else None
        rg = xc.rg or wc.rg or (bc is not None and bc.rg)
        node = None
        if rg:
            # the inputs are packed into the node before the kernel runs (VariableType's order): a
            # checkpoint recomputation that stops at this node never allocates the output
            saved = ([xc] if wc.rg else []) + ([wc] if xc.rg else [])
            spec = [(t.key, t.numel, t.dtype) for t in (xc, wc, bc) if t is not None and t.rg]
            node = sim.node(saved, lambda outs: {k: ops._grad(sim, n, d) for k, n, d in spec}, [], inputs=[xc, wc, bc])
        out = sim.tensor(xc.numel // in_f * out_f, dt, rg)
        if node is not None:
            node.output_keys.append(out.key)
            out.grad_fn = node
        del wc, xc, bc
        return out

    def _dora(self, x: Tensor, result: Tensor, entry: ModuleEntry, adapter: Adapter) -> Tensor:
        """PEFT ``DoraLinearVariant.forward`` + ``DoraLinearLayer.forward`` (peft/tuners/lora/dora.py):
        ``lora_weight = lora_B(lora_A(eye(in))).T`` (autograd-tracked, an in x in identity and an
        in x out product as temporaries), the base weight cast to the adapter dtype, the weight
        norm of ``W + s * lora_weight`` (two more out x in temporaries), then
        ``(m/||W'|| - 1) * base_result + m/||W'|| * lora_B(lora_A(x)) * s``. With dropout, the base
        result is recomputed from the dropped input with the fp32 weight copy, which that matmul
        saves for its input gradient."""
        sim = self.sim
        in_f, out_f, r, ad = entry.in_features, entry.out_features, adapter.r, self.settings.adapter_dtype
        eye = sim.tensor(in_f * in_f, ad, category="temporaries")
        ae = ops.linear(sim, eye, in_f, r, adapter.a)
        del eye
        lora_weight = ops.linear(sim, ae, r, out_f, adapter.b)
        del ae
        w = self.spec.inventory.by_path[entry.path]
        weight = sim.tensor(out_f * in_f, ad, category="temporaries") if self.param_dtype(entry.path, "weight") != ad \
            or entry.path in self.quantized else None
        scaled = sim.tensor(out_f * in_f, ad, category="temporaries")
        summed = sim.tensor(out_f * in_f, ad, category="temporaries")
        del scaled
        norm = sim.tensor(out_f, ad)
        del summed
        m = adapter.magnitude
        mag_norm_scale = sim.tensor(out_f, ad, True)
        sim.node([norm], lambda outs: (sim.param_grad(m.key, m.numel, m.dtype), {})[1], [mag_norm_scale], inputs=[])
        del norm
        if adapter.dropout > 0:
            x = ops.dropout(sim, x, adapter.dropout)
            wcopy = weight if weight is not None else sim.tensor(out_f * in_f, ad, category="temporaries")
            base_result = ops.linear(sim, x, in_f, out_f, None)
            if x.rg and base_result.grad_fn is not None:
                sim.save_more(base_result.grad_fn, wcopy)  # the fp32 weight copy, needed for x's gradient
            del wcopy
        else:
            base_result = result
        del weight
        a = ops.linear(sim, x, in_f, r, adapter.a)
        lora_result = ops.linear(sim, a, r, out_f, adapter.b)
        del a
        minus_one = ops.add_scalar(sim, mag_norm_scale)
        t1 = ops.mul(sim, base_result, minus_one, out_numel=base_result.numel)
        del minus_one, base_result
        t2 = ops.mul(sim, lora_result, mag_norm_scale, out_numel=lora_result.numel)
        del lora_result, mag_norm_scale
        t3 = ops.mul(sim, t2, None)
        del t2
        dora = ops.add(sim, t1, t3)
        del t1, t3, lora_weight
        return ops.add(sim, result, dora)

    def _linear_4bit(self, x: Tensor, entry: ModuleEntry, bias: Param | None) -> Tensor:
        """bitsandbytes ``Linear4bit``: input cast to the compute dtype, weight dequantized into a
        temporary, ``F.linear``, output cast back to the input dtype (``MatMul4Bit`` keeps only the
        packed weight for backward and dequantizes it again there)."""
        sim = self.sim
        inp_dtype = x.dtype
        xc = ops.cast(sim, x, self.compute_dtype)
        deq = sim.tensor(entry.in_features * entry.out_features, self.compute_dtype, category="temporaries")
        out = sim.tensor(xc.numel // entry.in_features * entry.out_features, self.compute_dtype, xc.rg)
        del deq
        if xc.rg:
            xk, xn, xd = xc.key, xc.numel, xc.dtype
            wn = entry.in_features * entry.out_features
            cd = self.compute_dtype

            def bw(outs):
                tmp = sim.tensor(wn, cd, category="temporaries")
                g = sim.tensor(xn, xd, category="gradients_act")
                del tmp
                return {xk: g}

            sim.node([], bw, [out], inputs=[xc])
        del xc
        if bias is not None:
            out = ops.add(sim, out, sim.tensor(1, bias.dtype))
        return ops.cast(sim, out, inp_dtype)


def module_states(spec: ModelSpec, plan: MethodPlan, settings: TrainingSettings) -> tuple[set[str], dict[str, Adapter]]:
    """Trainable parameter keys and the adapter on each adapted module."""
    trainable = set(plan.trainable_base)
    adapters: dict[str, Adapter] = {}
    if plan.category == "full":
        trainable |= {n for n, p in spec.inventory.named_parameters() if p.tied_to is None}
    ad = settings.adapter_dtype
    by_module: dict[str, list] = {}
    for t in plan.new_tensors:
        by_module.setdefault(t.module, []).append(t)
    for module, tensors in by_module.items():
        names = {t.name: t for t in tensors}
        a = next((t for n, t in names.items() if n.startswith("lora_A.")), None)
        b = next((t for n, t in names.items() if n.startswith("lora_B.")), None)
        if a is not None and b is not None and len(a.shape) == 2:
            mag = names.get("lora_magnitude_vector.default.weight")
            adapters[module] = Adapter(
                "lora", magnitude=Param(f"{module}.{mag.name}", mag.numel, ad, mag.trainable) if mag else None, r=a.shape[0], dropout=float(plan.extra.get("lora_dropout", 0.0)),
                a=Param(f"{module}.{a.name}", a.numel, ad, a.trainable),
                b=Param(f"{module}.{b.name}", b.numel, ad, b.trainable))
        elif "ia3_l.default" in names:
            t = names["ia3_l.default"]
            kind = "ia3_in" if t.shape[0] == 1 and t.shape[-1] != 1 else "ia3_out"
            adapters[module] = Adapter(kind, vec=Param(f"{module}.{t.name}", t.numel, ad, t.trainable))
    return trainable, adapters


def quantized_modules(spec: ModelSpec, settings: TrainingSettings) -> set[str]:
    """Linears transformers replaces with ``Linear4bit`` when loading in 4 bit: every ``nn.Linear``
    except the output embedding (``get_keys_to_not_convert``) and ``llm_int8_skip_modules``."""
    if not settings.quantized_4bit:
        return set()
    skip = set((settings.quantization or {}).get("llm_int8_skip_modules") or [])
    out = set()
    for m in spec.inventory:
        if m.kind != ModuleKind.LINEAR or m.role == "lm_head":
            continue
        if any(m.path == s or m.path.endswith("." + s) or s in m.path.split(".") for s in skip):
            continue
        out.add(m.path)
    return out
