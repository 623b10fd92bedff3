"""The memory budget of one training step: resident bytes, then a replay of forward, backward and
the optimizer step (see :mod:`planner.memory.sim`), the peak of each phase, and the allocator on top.

Reference stack (what ``executors`` runs and what the numbers predict): transformers model in
``dtype``, PEFT with ``autocast_adapter_dtype=True``; QLoRA: bitsandbytes 4-bit loading then
``prepare_model_for_kbit_training(use_gradient_checkpointing=False)``; checkpointing via
``gradient_checkpointing_enable(use_reentrant=False)``; one step = forward with labels on a
full-length batch, ``loss.backward()``, ``optimizer.step()``, ``zero_grad(set_to_none=True)``.
Step 2 (optimizer state resident) is the larger for forward and backward; the optimizer phase
peaks the same in both steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from planner.constants import CUDA_CONTEXT_BYTES, RESERVED_FRAGMENTATION
from planner.memory.budget import BREAKDOWN_KEYS, MemoryBudget
from planner.memory.modules import Context, module_states, quantized_modules
from planner.memory.optimizer import TrainableTensor, optimizer_bytes
from planner.memory.programs import program_for
from planner.memory.settings import TrainingSettings
from planner.memory.sim import Sim, round_alloc
from planner.memory.weights import linear_4bit_bytes, nbytes, shared_quant_state_bytes
from planner.methods.base import MethodPlan
from planner.spec import ModelSpec

#: Relative error band the model claims for ``peak_bytes`` where its programs replay the model
#: op by op (validated against executors' fake-mode measurements, docs/validation/).
REPLAYED_ERROR_BAND = 0.02

#: Band claimed where a data-parallel strategy is modelled from its source but not measured
#: (DeepSpeed ZeRO-1/2/3, CPU offload): a stated uncertainty, not a measurement. DDP and FSDP2 are
#: measured per rank (tests/executors/test_distributed.py) and keep the replay's band.
UNMEASURED_PARALLEL_ERROR_BAND = 0.10


def _error_band(ctx: Context) -> float:
    band = ctx.program.error_band(ctx)
    st = ctx.settings
    if (st.sharding or "").startswith("zero") or st.offload:
        band = max(band, UNMEASURED_PARALLEL_ERROR_BAND)
    return band


#: Sim categories -> breakdown keys.
_CATEGORY_KEYS = {"activations": "activations", "logits": "logits", "gradients": "gradients",
                  "gradients_act": "temporaries", "temporaries": "temporaries", "inputs": "activations",
                  "weights": "weights", "optimizer": "optimizer", "quantization": "quantization",
                  # data-parallel strategies (planner/memory/parallel.py)
                  "weights_gathered": "weights", "grad_shards": "gradients", "grad_buckets": "gradients",
                  "comm": "temporaries"}


def _static(ctx: Context) -> tuple[int, int, list[TrainableTensor]]:
    """(weight bytes, quantization-state bytes, trainable tensors in optimizer order)."""
    spec, plan, settings = ctx.spec, ctx.plan, ctx.settings
    q = settings.quantization or {}
    double = bool(q.get("bnb_4bit_use_double_quant"))
    weights = quant = 0
    trainable: list[TrainableTensor] = []
    for m in spec.inventory:
        for p in m.params:
            if p.tied_to is not None:
                continue
            key = f"{m.path}.{p.name}"
            if m.path in ctx.quantized and p.name == "weight":
                qb = linear_4bit_bytes(p.numel, double)
                weights += qb.packed_weight_bytes
                quant += qb.state_bytes
                continue
            dtype = ctx.param_dtype(m.path, p.name)
            weights += nbytes(p.numel, dtype)
            if key in ctx.trainable:
                trainable.append(TrainableTensor(key, p.numel, dtype, p.shape))
    if ctx.quantized:
        quant += shared_quant_state_bytes(double)
    for t in plan.new_tensors:
        dtype = {"adapter": settings.adapter_dtype, "base": settings.dtype}.get(t.dtype, t.dtype)
        weights += nbytes(t.numel, dtype)
        if t.trainable:
            trainable.append(TrainableTensor(f"{t.module}.{t.name}", t.numel, dtype, t.shape))
    for m in plan.copied_modules:
        for p in m.params:
            weights += nbytes(p.numel, settings.dtype)
            trainable.append(TrainableTensor(f"{m.path}.copy.{p.name}", p.numel, settings.dtype, p.shape))
    weights += ctx.program.buffer_bytes(ctx)
    return weights, quant, trainable


def _snapshot(sim: Sim) -> dict[str, int]:
    out = dict.fromkeys(BREAKDOWN_KEYS, 0)
    for cat, v in sim.peak_snapshot.items():
        key = _CATEGORY_KEYS.get(cat, "temporaries")
        out[key] = out.get(key, 0) + v
    return out


#: Identical blocks replayed before extrapolating: every phase peak is affine in the number of
#: identical blocks (saved activations and gradients grow by the same bytes per block; the peak
#: sits at the loss, at a block boundary, or in the optimizer step), so replaying 2 and 3 blocks
#: gives the slope exactly (from the second block on: the first may differ, e.g. its input
#: needs no gradient under PEFT). Checked against full replays in tests/planner/memory/.
EXTRAPOLATE_FROM_LAYERS = 2


def layer_signatures(spec: ModelSpec, plan: MethodPlan, trainable: set[str], adapters: dict) -> list[tuple]:
    """What distinguishes one block from another for memory: which of its modules train or carry
    which adapter (by leaf path within the block)."""
    sigs: dict[int, list] = {n: [] for n in range(spec.num_layers)}
    for m in spec.inventory:
        if m.layer is None or m.stack not in ("decoder", "encoder", ""):
            continue
        key = m.path.split(f".{m.layer}.", 1)[-1]
        ad = adapters.get(m.path)
        sigs.setdefault(m.layer, []).append((m.stack, key, tuple(f"{m.path}.{p.name}" in trainable for p in m.params),
                                             None if ad is None else (ad.kind, ad.r, ad.dropout, ad.magnitude is not None)))
    return [tuple(sigs[n]) for n in sorted(sigs)]


def _replay(ctx: Context, weights: int, quant: int, opt, layers: tuple[int, ...], batch=None, seq=None):
    settings = ctx.settings
    batch = settings.batch_size if batch is None else batch
    seq = settings.seq_len if seq is None else seq
    ctx.sim = sim = Sim()
    ctx.layer_indices = layers
    par = ctx.parallel
    sim.set_base(par.base() if par is not None else {"weights": weights, "quantization": quant,
                                                       "optimizer": opt.state_bytes})
    if settings.gradient_accumulation_steps > 1 and par is None:
        # the steady micro-step (second on): last micro-step's .grad tensors are resident throughout
        sim.set_base({**sim.base, "gradients": ctx.resident_grad_bytes})
        sim.grads_resident = True
    if par is not None:
        par.bind(sim)
        sim.grad_hook = par.on_param_grad
    phase_peaks: dict[str, Any] = {}
    snaps: dict[str, dict[str, Any]] = {}
    sim.reset_peak()
    if par is not None:
        par.root_pre_forward()
    loss, inputs = ctx.program.forward(ctx, batch, seq)
    if par is not None:
        par.root_post_forward()
    phase_peaks["forward"], snaps["forward"] = sim.peak_total, _snapshot(sim)
    sim.reset_peak()
    if par is not None:
        par.backward_start()
    sim.backward(loss)
    del loss
    inputs.pop("graph", None)  # what only the graph kept (checkpointed layers' cos / sin) dies with it
    if par is not None:
        par.backward_end()  # the final backward callback (deferred reductions)
    phase_peaks["backward"], snaps["backward"] = sim.peak_total, _snapshot(sim)
    if par is not None:
        par.optimizer_begin()
    sim.reset_peak()
    if par is not None:
        par.optimizer_step()
    else:
        sim.note_peak(opt.step_temporary_bytes, "temporaries")
    phase_peaks["optimizer"], snaps["optimizer"] = sim.peak_total, _snapshot(sim)
    sim.param_grads.clear()
    if par is not None:
        par.zero_grad()
    del inputs
    return phase_peaks, snaps


def _prepare(spec: ModelSpec, plan: MethodPlan, settings: TrainingSettings):
    program = program_for(spec, plan, settings)
    if program is None:
        return None
    trainable, adapters = module_states(spec, plan, settings)
    quantized = quantized_modules(spec, settings)
    stream = "float32" if settings.quantized_4bit else settings.dtype
    compute = (settings.quantization or {}).get("bnb_4bit_compute_dtype") or "float32"
    ctx = Context(spec=spec, plan=plan, settings=settings, sim=Sim(), trainable=trainable, adapters=adapters,
                  quantized=quantized, compute_dtype=str(compute).replace("torch.", ""), stream_dtype=stream)
    ctx.program = program
    ctx.parallel = None
    ctx.autocast_dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(settings.mixed_precision)
    weights, quant, tensors = _static(ctx)
    ctx.resident_grad_bytes = sum(round_alloc(nbytes(t.numel, t.dtype)) for t in tensors)  # every trainable .grad
    opt = optimizer_bytes(settings.optimizer, tensors)
    if settings.sharding is not None:
        from planner.memory.parallel import make_parallel

        ctx.parallel = make_parallel(ctx, weights, quant, tensors, opt)
    return ctx, weights, quant, opt


def _phases(ctx: Context, weights: int, quant: int, opt, batch: Any, seq: Any):
    """Phase peaks and breakdowns (ints, or arrays over a sweep of batch / seq)."""
    spec = ctx.spec
    n_layers = spec.num_layers
    k = EXTRAPOLATE_FROM_LAYERS
    sigs = layer_signatures(spec, ctx.plan, ctx.trainable, ctx.adapters)
    if n_layers > k + 1 and len(set(sigs[1:])) == 1 and ctx.program.extrapolates(ctx) \
            and getattr(ctx.parallel, "extrapolates", True):
        p3, s3 = _replay(ctx, weights, quant, opt, tuple(range(k)), batch, seq)
        p4, s4 = _replay(ctx, weights, quant, opt, tuple(range(k + 1)), batch, seq)
        extra = n_layers - k
        phase_peaks = {ph: p3[ph] + extra * (p4[ph] - p3[ph]) for ph in p3}
        snaps = {ph: {c: s3[ph].get(c, 0) + extra * (s4[ph].get(c, 0) - s3[ph].get(c, 0)) for c in s3[ph]} for ph in s3}
        return phase_peaks, snaps
    return _replay(ctx, weights, quant, opt, tuple(range(n_layers)), batch, seq)


def _reserved(peak: Any, persistent: int) -> Any:
    transient = peak - persistent
    transient = np.maximum(transient, 0) if isinstance(transient, np.ndarray) else max(transient, 0)
    return round_alloc(peak + (RESERVED_FRAGMENTATION * transient).astype(np.int64) if isinstance(transient, np.ndarray)
                       else peak + int(RESERVED_FRAGMENTATION * transient))


def estimate_memory(spec: ModelSpec, plan: MethodPlan, settings: TrainingSettings) -> MemoryBudget | None:
    """The budget, or None (with the reason in ``Plan.notes`` upstream) where no program exists."""
    prepared = _prepare(spec, plan, settings)
    if prepared is None:
        return None
    ctx, weights, quant, opt = prepared
    phase_peaks, snaps = _phases(ctx, weights, quant, opt, settings.batch_size, settings.seq_len)
    phase = max(phase_peaks, key=lambda k: phase_peaks[k])
    peak = int(phase_peaks[phase])
    par = ctx.parallel
    persistent = par.persistent_bytes if par is not None else weights + quant + opt.state_bytes
    paged = par.paged_bytes if par is not None else opt.paged_bytes
    reserved = int(_reserved(peak, persistent))
    notes = list(ctx.program.notes(ctx))
    if par is not None:
        from planner.memory.parallel import notes as parallel_notes

        notes += parallel_notes(settings)
    if opt.paged_bytes:
        notes.append(f"paged optimizer state ({opt.paged_bytes / 2**30:.2f} GiB) lives in CUDA unified memory: not in "
                     "max_memory_allocated, but on the device while resident (counted in device_bytes)")
    return MemoryBudget(
        peak_bytes=peak, reserved_bytes=reserved, device_bytes=reserved + paged + CUDA_CONTEXT_BYTES,
        peak_phase=phase, breakdown={k: int(v) for k, v in snaps[phase].items()},
        phase_peaks={k: int(v) for k, v in phase_peaks.items()}, error_band=_error_band(ctx), notes=notes,
        host_bytes=int(par.host_bytes) if par is not None else 0,
    )


def sweep_memory(spec: ModelSpec, plan: MethodPlan, settings: TrainingSettings, batch_sizes: Any,
                 seq_lens: Any) -> dict[str, np.ndarray] | None:
    """Vectorised: one replay over arrays of batch sizes and sequence lengths (same shape).
    Returns ``peak_bytes``, ``reserved_bytes`` and ``device_bytes`` arrays."""
    prepared = _prepare(spec, plan, settings)
    if prepared is None:
        return None
    ctx, weights, quant, opt = prepared
    b = np.asarray(batch_sizes, dtype=np.int64)
    s = np.asarray(seq_lens, dtype=np.int64)
    b, s = np.broadcast_arrays(b, s)
    regime = ctx.program.regime(ctx, b, s)
    if regime is None or np.unique(regime).size <= 1:
        phase_peaks, _ = _phases(ctx, weights, quant, opt, b.copy(), s.copy())
        peak = np.maximum.reduce([np.broadcast_to(np.asarray(v, dtype=np.int64), b.shape) for v in phase_peaks.values()])
    else:  # points that run different code (e.g. a mask from some length on): one replay per regime
        peak = np.zeros(b.shape, dtype=np.int64)
        for r in np.unique(regime):
            sel = regime == r
            pp, _ = _phases(ctx, weights, quant, opt, b[sel].copy(), s[sel].copy())
            peak[sel] = np.maximum.reduce([np.broadcast_to(np.asarray(v, dtype=np.int64), b[sel].shape)
                                           for v in pp.values()])
    par = ctx.parallel
    reserved = _reserved(peak, par.persistent_bytes if par is not None else weights + quant + opt.state_bytes)
    return {"peak_bytes": peak, "reserved_bytes": reserved,
            "device_bytes": reserved + (par.paged_bytes if par is not None else opt.paged_bytes) + CUDA_CONTEXT_BYTES}
