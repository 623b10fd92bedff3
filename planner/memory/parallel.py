"""Per-GPU memory under data parallelism: DDP, DeepSpeed ZeRO-1/2/3, FSDP (full shard / shard grad op).

One object per replay (:func:`make_parallel`) owns what differs from a single-GPU step on the
*busiest rank* (rank 0: with uneven shards it holds the padded ones):

- the resident bytes (``base``): full or sharded parameters, optimizer state (sharded, in the
  framework's dtype, or on the host when offloaded), persistent communication buffers;
- events the replay raises (``root_pre_forward``, per decoder layer ``pre_forward`` /
  ``post_forward`` / ``pre_backward`` / ``post_backward``, ``backward_start`` / ``backward_end``,
  ``on_param_grad``, ``optimizer_step``), at which it allocates and frees what the framework
  allocates and frees: all-gather buffers, unsharded parameters of the current wrap unit (a decoder
  layer; the root unit holds everything outside the layers), the prefetched next unit,
  reduce-scatter buffers, sharded gradients, gradient buckets.

The families' programs raise the per-layer events through
:func:`planner.memory.programs._decoder.run_block`; the parameters' gradients the replay allocates
(``Sim.param_grad``) are the unsharded gradients autograd produces. So a sharded step is still the
op-by-op replay of the single-GPU step, with the framework's own allocations interleaved where
they happen, not a division of totals. The rules and their sources are in docs/memory-model.md
("Multi-GPU"); validated against 2-process CPU runs (``executors.distributed``) for DDP and FSDP2.

Reference stacks (what the numbers mean):

- ``ddp``: ``torch.nn.parallel.DistributedDataParallel`` defaults (``bucket_cap_mb=25``, first
  bucket 1 MiB, ``gradient_as_bucket_view=False``): the single-GPU step plus flat gradient buckets
  as large as the trainable parameters (the reducer copies each gradient into its bucket view,
  all-reduces the bucket, copies it back).
- ``fsdp_full_shard`` / ``fsdp_shard_grad_op``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on
  every decoder layer and on the root, ``reshard_after_forward`` True / False passed explicitly as
  accelerate does (so the root unit is resharded after forward too under full shard), no mixed
  precision policy (parameters, gradients and AdamW state in the parameter dtype).
- ``zero1`` / ``zero2`` / ``zero3``: DeepSpeed ZeRO stages as ``transformers.Trainer`` configures
  them with ``"auto"`` values (``reduce_bucket_size = hidden^2``, ``stage3_prefetch_bucket_size =
  0.9 hidden^2``, ``stage3_param_persistence_threshold = 10 hidden``) and DeepSpeed's defaults
  (``contiguous_gradients=True``, ``overlap_comm`` False for stages 1-2, True for 3): fp32 master
  weights and fp32 optimizer state on the rank's partition, 16-bit (model dtype) parameters and
  gradients. Not validated by a measurement here (DeepSpeed needs an accelerator); ZeRO-3's
  gathering is modelled at decoder-layer granularity (DeepSpeed fetches per submodule, so this is
  an upper bound on its gathered parameters: one layer + the next layer's prefetch bucket).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.constants import (
    DDP_BUCKET_CAP_BYTES, DDP_FIRST_BUCKET_BYTES, DEEPSPEED_MAX_REUSE_DISTANCE, DEEPSPEED_PREFETCH_BUCKET_PER_HIDDEN2,
    DEEPSPEED_PERSISTENCE_THRESHOLD_PER_HIDDEN, DEEPSPEED_REDUCE_BUCKET_PER_HIDDEN2, DTYPE_BYTES,
)
from planner.memory.optimizer import TrainableTensor, optimizer_bytes
from planner.memory.sim import round_alloc

SHARDINGS = ("ddp", "zero1", "zero2", "zero3", "fsdp_full_shard", "fsdp_shard_grad_op")
#: Strategies whose parameters are sharded (gathered per decoder layer during the step).
PARAM_SHARDED = ("zero3", "fsdp_full_shard", "fsdp_shard_grad_op")
OFFLOADS = ("optimizer", "optimizer+params")
#: Optimizers DeepSpeed / FSDP plans are modelled for (bitsandbytes' 8-bit / paged states are not
#: sharded the way torch optimizers are).
SHARDED_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd", "adafactor")

ROOT = -1  # the root wrap unit: everything outside the decoder layers


@dataclass(frozen=True)
class ParamInfo:
    key: str
    numel: int
    shape: tuple[int, ...]
    dtype: str
    trainable: bool
    unit: int  # decoder layer index, or ROOT

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]


def fsdp_shard_numel(shape: tuple[int, ...], numel: int, n: int) -> int:
    """FSDP2's padded shard (``_fsdp_param.py``: ``torch.chunk`` on dim 0, every rank's storage
    padded to the first chunk): ``ceil(dim0 / n) x prod(other dims)``."""
    if not shape:
        return numel
    rest = numel // shape[0] if shape[0] else 0
    return -(-shape[0] // n) * rest


def zero_partition_numel(numel: int, n: int) -> int:
    """DeepSpeed ZeRO-3's per-parameter partition (``partition_parameters.py``: ``ds_tensor`` of
    ``ceil(numel / world_size)`` elements, padded)."""
    return -(-numel // n)


def param_infos(ctx) -> list[ParamInfo]:
    """Every resident parameter of the (unquantized) model with the method applied, in the order
    and dtypes of :func:`planner.memory.model._static`, each assigned to its wrap unit."""
    spec, plan, settings = ctx.spec, ctx.plan, ctx.settings
    by_path = spec.inventory.by_path

    def unit_of(entry) -> int:
        return entry.layer if entry is not None and entry.layer is not None else ROOT

    out: list[ParamInfo] = []
    for m in spec.inventory:
        for p in m.params:
            if p.tied_to is not None:
                continue
            key = f"{m.path}.{p.name}"
            out.append(ParamInfo(key, p.numel, tuple(p.shape), ctx.param_dtype(m.path, p.name), key in ctx.trainable,
                                 unit_of(m)))
    for t in plan.new_tensors:
        dtype = {"adapter": settings.adapter_dtype, "base": settings.dtype}.get(t.dtype, t.dtype)
        out.append(ParamInfo(f"{t.module}.{t.name}", t.numel, tuple(t.shape), dtype, t.trainable,
                             unit_of(by_path.get(t.module))))
    for m in plan.copied_modules:
        for p in m.params:
            out.append(ParamInfo(f"{m.path}.copy.{p.name}", p.numel, tuple(p.shape), settings.dtype, True, unit_of(m)))
    return out


def ddp_bucket_bytes(trainable: list[TrainableTensor]) -> int:
    """DDP's flat gradient buckets (``torch/nn/parallel/distributed.py``,
    ``dist._compute_bucket_assignment_by_size``): trainable parameters in reverse order, one bucket
    chain per dtype, the first bucket closed at 1 MiB, the others at ``bucket_cap_mb=25`` MiB; each
    bucket one allocation of its parameters' elements."""
    total = 0
    open_: dict[str, list[int]] = {}  # dtype -> [bytes in the open bucket, buckets closed so far]
    for t in reversed(trainable):
        b = t.numel * DTYPE_BYTES[t.dtype]
        acc = open_.setdefault(t.dtype, [0, 0])
        acc[0] += b
        limit = DDP_FIRST_BUCKET_BYTES if acc[1] == 0 else DDP_BUCKET_CAP_BYTES
        if acc[0] >= limit:
            total += round_alloc(acc[0])
            acc[0], acc[1] = 0, acc[1] + 1
    return total + sum(round_alloc(a[0]) for a in open_.values() if a[0])


class DataParallel:
    """DDP, and the base of the others: the single-GPU step (replicated model) plus DDP's buckets."""

    per_layer = False  # needs the per-decoder-layer events

    def __init__(self, ctx, weights: int, quant: int, trainable: list[TrainableTensor], opt) -> None:
        s = ctx.settings
        self.ctx, self.n, self.offload = ctx, s.num_gpus, s.offload
        self.weights, self.quant, self.trainable, self.opt = weights, quant, trainable, opt
        self.host_bytes = 0
        self.notes: list[str] = []
        self.sim = None

    # resident bytes, by Sim category
    def base(self) -> dict[str, int]:
        return {"weights": self.weights, "quantization": self.quant, "optimizer": self.opt.state_bytes,
                "grad_buckets": ddp_bucket_bytes(self.trainable)}

    @property
    def persistent_bytes(self) -> int:
        return int(sum(self.base().values()))

    @property
    def paged_bytes(self) -> int:
        return self.opt.paged_bytes

    # events (no-ops unless a strategy needs them)
    def bind(self, sim) -> None:
        self.sim = sim

    def root_pre_forward(self) -> None: ...

    def root_post_forward(self) -> None: ...

    def layer(self, n: int, run, h):
        return run(h)

    def backward_start(self) -> None: ...

    def backward_end(self) -> None: ...

    def on_param_grad(self, key: str) -> None: ...

    def optimizer_begin(self) -> None:
        """Between backward and the optimizer phase (what ``step()`` frees before its peak; the state
        at its entry equals the end of backward, counted there)."""

    def optimizer_step(self) -> None:
        """The optimizer phase (gradients live, state resident): note its peak."""
        self.sim.note_peak(self.opt.step_temporary_bytes, "temporaries")

    def zero_grad(self) -> None: ...


def _hidden(ctx) -> int:
    return int(ctx.spec.hidden_size)


class ZeroPartitioned(DataParallel):
    """DeepSpeed ZeRO-1 / ZeRO-2 (``deepspeed/runtime/zero/stage_1_and_2.py``): 16-bit parameters
    replicated; the trainable parameters flattened and partitioned ``ceil(P / N)`` per rank with an
    fp32 master copy (``single_partition_of_fp32_groups``) and the optimizer state on it (fp32);
    ``backward()`` allocates the contiguous-gradient IPG buffer (``reduce_bucket_size`` elements,
    model dtype; two with ``overlap_comm``). ZeRO-1 keeps full gradients until the step; ZeRO-2 copies
    each gradient into the bucket as it is produced and keeps only its partition
    (``grads_in_partition``). The step flattens the partition's gradients to fp32."""

    def __init__(self, ctx, weights, quant, trainable, opt, stage: int) -> None:
        super().__init__(ctx, weights, quant, trainable, opt)
        self.stage = stage
        s = ctx.settings
        self.dtype = s.dtype
        p = sum(t.numel for t in trainable)
        self.part = -(-p // self.n) if p else 0
        flat = [TrainableTensor("partition", self.part, "float32", (self.part,))] if self.part else []
        self.part_opt = optimizer_bytes(s.optimizer, flat)
        self.master = round_alloc(self.part * 4) if self.part else 0
        self.ipg = round_alloc(DEEPSPEED_REDUCE_BUCKET_PER_HIDDEN2 * _hidden(ctx) ** 2 * DTYPE_BYTES[self.dtype])
        self.grad_part = round_alloc(self.part * DTYPE_BYTES[self.dtype]) if self.part else 0
        self.fp32_grad_part = round_alloc(self.part * 4) if self.part else 0
        if self.offload:  # offload_optimizer: master, state, fp32 gradients on the host; CPU Adam
            self.host_bytes = self.master + self.part_opt.state_bytes + self.fp32_grad_part
        self._live: list = []
        self._grad_part = None

    def base(self) -> dict[str, int]:
        opt = 0 if self.offload else self.master + self.part_opt.state_bytes
        return {"weights": self.weights, "quantization": self.quant, "optimizer": opt}

    @property
    def paged_bytes(self) -> int:
        return 0

    def backward_start(self) -> None:
        self._live = [self.sim.tensor(self.ipg, "uint8", category="comm")]
        self._grad_part = None

    def on_param_grad(self, key: str) -> None:
        if self.stage == 2:  # copied into the IPG bucket, reduced, its partition kept
            sim = self.sim
            if self._grad_part is None and self.grad_part and not self.offload:
                # grads_in_partition: allocated at the first reduction (bounded here by the first gradient)
                self._grad_part = sim.tensor(self.grad_part, "uint8", category="gradients")
            sim.param_grads.pop(key, None)

    def backward_end(self) -> None:
        self._live = []

    def optimizer_begin(self) -> None:
        if self.stage == 1:  # step(): gradients outside the partition are freed, the partition's kept
            sim = self.sim
            sim.param_grads.clear()
            if not self.offload and self.grad_part:
                self._grad_part = sim.tensor(self.grad_part, "uint8", category="gradients")

    def optimizer_step(self) -> None:
        sim = self.sim
        if self.offload:  # CPU Adam on the host; the updated partition is copied into the 16-bit params
            sim.note_peak()
            return
        fp32 = sim.tensor(self.fp32_grad_part, "uint8", category="gradients") if self.fp32_grad_part else None
        sim.note_peak(self.part_opt.step_temporary_bytes, "temporaries")
        del fp32

    def zero_grad(self) -> None:
        self._grad_part = None


class Sharded(DataParallel):
    """Parameters sharded and gathered per wrap unit (FSDP2 full shard / shard grad op, ZeRO-3).

    FSDP2 (``torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py``, ``_fsdp_collectives.py``),
    per unit: ``unshard`` allocates one flat all-gather output (``N x`` the unit's padded shards);
    ``wait_for_unshard`` allocates each parameter's unsharded tensor and copies out; in forward the
    flat output is kept (``all_gather_state``) until the next unit's copy-out has finished, in
    backward it is freed right after the copy-out; ``pre_backward`` prefetches the unit that ran
    forward before it; ``post_backward`` reshards, frees the oldest reduce-scatter input, allocates
    this unit's reduce-scatter input (``N x`` padded shards of the gradients), frees the unsharded
    gradients and allocates the flat reduce-scatter output the sharded ``.grad`` views live in.
    The root's ``post_forward`` frees the last all-gather output; its ``post_backward`` (and that of
    any unit whose forward input needed no gradient) runs in the final backward callback, which also
    frees the last reduce-scatter input.

    ZeRO-3 (``deepspeed/runtime/zero/stage3.py``, ``partitioned_param_coordinator.py``): gathered
    parameters are allocated whole (no separate flat output); the next unit is prefetched up to
    ``stage3_prefetch_bucket_size`` elements; gradients are copied into the persistent IPG buffer as
    they are produced and reduced into the persistent partitioned-gradient buffer; parameters below
    ``stage3_param_persistence_threshold`` elements stay unpartitioned on every rank."""

    per_layer = True
    #: No extrapolation from short replays (model.EXTRAPOLATE_FROM_LAYERS): with per-block gathering
    #: the phase peak can move with the depth (e.g. shard_grad_op: from the end of backward, where the
    #: root's full gradients sit, to its start, where every block is still unsharded), so it is the max
    #: of two affine functions of the depth, not one. All blocks are replayed (~0.1-0.3 s at 80 blocks).
    extrapolates = False

    def __init__(self, ctx, weights, quant, trainable, opt, kind: str) -> None:
        super().__init__(ctx, weights, quant, trainable, opt)
        s = ctx.settings
        self.kind = kind
        self.fsdp = kind.startswith("fsdp")
        self.reshard_after_forward = kind != "fsdp_shard_grad_op"
        n = self.n
        infos = param_infos(ctx)
        self.buffers = ctx.program.buffer_bytes(ctx)
        persist = DEEPSPEED_PERSISTENCE_THRESHOLD_PER_HIDDEN * _hidden(ctx)
        self.units: dict[int, list[ParamInfo]] = {}
        sharded_bytes = persistent_bytes = 0
        shard_tensors: list[TrainableTensor] = []
        self.shard_numel: dict[str, int] = {}
        self.persistent: set[str] = set()
        for p in infos:
            if not self.fsdp and p.numel <= persist:  # ZeRO-3 keeps small parameters whole
                self.persistent.add(p.key)
                persistent_bytes += round_alloc(p.nbytes)
                if p.trainable:  # its optimizer partition is still 1/N
                    k = zero_partition_numel(p.numel, n)
                    shard_tensors.append(TrainableTensor(p.key, k, p.dtype, (k,)))
                continue
            k = fsdp_shard_numel(p.shape, p.numel, n) if self.fsdp else zero_partition_numel(p.numel, n)
            self.shard_numel[p.key] = k
            self.units.setdefault(p.unit, []).append(p)
            sharded_bytes += round_alloc(k * DTYPE_BYTES[p.dtype])
            if p.trainable:  # FSDP2's local shard keeps the parameter's rank (dim 0 chunked)
                shape = ((k // (p.numel // p.shape[0]) if p.shape and p.shape[0] and p.numel else k),
                         *p.shape[1:]) if self.fsdp and p.shape else (k,)
                shard_tensors.append(TrainableTensor(p.key, k, p.dtype, tuple(shape)))
        self.trainable_keys = {p.key for p in infos if p.trainable}
        self.sharded_params = sharded_bytes
        self.persistent_params = persistent_bytes
        if self.fsdp:  # FSDP2: the optimizer runs on the sharded parameters, in their dtype
            self.shard_opt = optimizer_bytes(s.optimizer, shard_tensors)
            opt_state, self.step_temp = self.shard_opt.state_bytes, self.shard_opt.step_temporary_bytes
            self.ds_resident = 0
            self.fp32_grad = 0
        else:  # DeepSpeed: fp32 master + fp32 state on the flat partition
            part = sum(t.numel for t in shard_tensors)
            po = optimizer_bytes(s.optimizer, [TrainableTensor("partition", part, "float32", (part,))]) if part \
                else optimizer_bytes(s.optimizer, [])
            master = round_alloc(part * 4) if part else 0
            opt_state, self.step_temp = master + po.state_bytes, po.step_temporary_bytes
            self.fp32_grad = round_alloc(part * 4) if part else 0
            grad_flat = round_alloc(part * DTYPE_BYTES[s.dtype]) if part else 0
            self.ipg = round_alloc(DEEPSPEED_REDUCE_BUCKET_PER_HIDDEN2 * _hidden(ctx) ** 2 * DTYPE_BYTES[s.dtype])
            self.prefetch_cap = int(DEEPSPEED_PREFETCH_BUCKET_PER_HIDDEN2 * _hidden(ctx) ** 2)
            self.ds_resident = self.ipg + (0 if self.offload else grad_flat)
            if self.offload:
                self.host_bytes += grad_flat
        self.opt_state = opt_state
        self.keep_after_forward: set[int] = set()
        if not self.fsdp:
            # stage3_max_reuse_distance / stage3_max_live_parameters: a parameter reused within that many
            # elements is not released; the last blocks' parameters are reused first in backward
            acc = 0
            for u in sorted((u for u in self.units if u != ROOT), reverse=True):
                acc += sum(p.numel for p in self.units[u])
                if acc > DEEPSPEED_MAX_REUSE_DISTANCE:
                    break
                self.keep_after_forward.add(u)
        if self.offload:  # optimizer state (and its step) on the host; params too with optimizer+params
            self.host_bytes += opt_state + (self.fp32_grad if not self.fsdp else 0)
            if self.offload == "optimizer+params":
                self.host_bytes += self.sharded_params
                if self.fsdp:  # FSDP2 CPUOffloadPolicy: sharded gradients land on the host too
                    self.host_bytes += sum(round_alloc(self._shard_bytes(u, grads=True)) for u in self.units)
        self._reset()

    # -- sizes ---------------------------------------------------------------------------------
    def _shard_bytes(self, unit: int, grads: bool = False) -> int:
        ps = [p for p in self.units.get(unit, ()) if p.trainable or not grads]
        return sum(self.shard_numel[p.key] * DTYPE_BYTES[p.dtype] for p in ps)

    def _gathered(self, unit: int) -> list[int]:
        """Bytes of each parameter's gathered tensor (FSDP2: ``N x`` the padded shard)."""
        if self.fsdp:
            return [round_alloc(self.shard_numel[p.key] * self.n * DTYPE_BYTES[p.dtype])
                    for p in self.units.get(unit, ())]
        return [round_alloc(p.nbytes) for p in self.units.get(unit, ())]

    def base(self) -> dict[str, int]:
        params_on_device = 0 if self.offload == "optimizer+params" else self.sharded_params
        return {"weights": params_on_device + self.persistent_params + self.buffers, "quantization": 0,
                "optimizer": 0 if self.offload else self.opt_state, "grad_buckets": self.ds_resident}

    @property
    def paged_bytes(self) -> int:
        return 0

    # -- replay state --------------------------------------------------------------------------
    def _reset(self) -> None:
        self.unsharded: dict[int, list] = {}
        self.pending: dict[int, Any] = {}
        self.ag_state = None
        self.rs_states: list = []
        self.grad_shards: list = []
        self.fw_order: list[int] = []
        self.bw_done: set[int] = set()
        self.prefetched = None

    def bind(self, sim) -> None:
        super().bind(sim)
        self._reset()

    def _alloc(self, nbytes: int, category: str):
        return self.sim.tensor(nbytes, "uint8", category=category) if nbytes else None

    def _unshard(self, unit: int) -> None:
        if unit in self.unsharded or unit in self.pending or unit not in self.units:
            return
        if self.fsdp:
            flat = round_alloc(sum(self.shard_numel[p.key] * self.n * DTYPE_BYTES[p.dtype] for p in self.units[unit]))
            if self.offload == "optimizer+params":  # each host shard copied to the device first
                tmp = [self._alloc(round_alloc(self.shard_numel[p.key] * DTYPE_BYTES[p.dtype]), "comm")
                       for p in self.units[unit]]
                self.pending[unit] = self._alloc(flat, "comm")
                del tmp
            else:  # world size 1: no all-gather, the unsharded tensors are filled by a copy
                self.pending[unit] = self._alloc(flat, "comm") if self.n > 1 else None
        else:
            self.pending[unit] = [self._alloc(b, "weights_gathered") for b in self._gathered(unit)]

    def _wait(self, unit: int, forward: bool) -> None:
        if unit not in self.pending:
            return
        flat = self.pending.pop(unit)
        if not self.fsdp:
            self.unsharded[unit] = flat
            return
        prev = self.ag_state if forward else None  # freed when wait_for_unshard returns
        self.unsharded[unit] = [self._alloc(b, "weights_gathered") for b in self._gathered(unit)]
        if forward and self.n > 1:
            self.ag_state = flat
        del flat, prev

    def _reshard(self, unit: int) -> None:
        self.unsharded.pop(unit, None)

    # -- events ----------------------------------------------------------------------------------
    def _pre_forward(self, unit: int) -> None:
        if not self.fsdp and self.prefetched is not None:
            self.prefetched = None  # the prefetch bucket becomes the gathered unit
        self._unshard(unit)
        self._wait(unit, forward=True)
        if not self.fsdp:  # the coordinator prefetches ahead, up to the prefetch bucket
            self._prefetch(self._next_unit(unit))

    def _prefetch(self, unit: int | None) -> None:
        if unit is None or unit in self.unsharded:
            return
        if self.fsdp:
            self._unshard(unit)
            return
        cap = round_alloc(self.prefetch_cap * DTYPE_BYTES[self.ctx.settings.dtype])
        self.prefetched = self._alloc(min(sum(self._gathered(unit)), cap), "comm")

    def _post_forward(self, unit: int) -> None:
        if self.reshard_after_forward and unit not in self.keep_after_forward:
            self._reshard(unit)
        self.fw_order.append(unit)

    def _next_unit(self, unit: int) -> int | None:
        layers = [n for n in self.ctx.layer_indices if n in self.units]
        if unit == ROOT:
            return layers[0] if layers else None
        i = layers.index(unit) if unit in layers else -1
        return layers[i + 1] if 0 <= i < len(layers) - 1 else None

    def _pre_backward(self, unit: int) -> None:
        self.prefetched = None
        self._unshard(unit)
        self._wait(unit, forward=False)
        if unit in self.fw_order:
            i = len(self.fw_order) - 1 - self.fw_order[::-1].index(unit)
            if i > 0:
                self._prefetch(self.fw_order[i - 1])

    def _post_backward(self, unit: int) -> None:
        if unit in self.bw_done:
            return
        self.bw_done.add(unit)
        sim = self.sim
        keys = [p.key for p in self.units.get(unit, ()) if p.trainable]
        grads = [sim.param_grads.pop(k) for k in keys if k in sim.param_grads]
        self._reshard(unit)
        if not self.fsdp:
            return
        if self.rs_states:
            self.rs_states.pop(0)
        if not grads:
            return
        rs = self._alloc(round_alloc(sum(self.shard_numel[k] * self.n * DTYPE_BYTES[g.dtype]
                                         for k, g in zip(keys, grads))), "comm")
        grads.clear()
        out = self._alloc(round_alloc(self._shard_bytes(unit, grads=True)), "grad_shards")
        if self.offload == "optimizer+params":
            out = None  # copied to the host (``.to("cpu")``); the device output dies with foreach_reduce
        if out is not None:
            self.grad_shards.append(out)
        self.rs_states.append(rs)

    def root_pre_forward(self) -> None:
        self._pre_forward(ROOT)

    def root_post_forward(self) -> None:
        self._post_forward(ROOT)
        self.ag_state = None

    def layer(self, n: int, run, h):
        from planner.memory.programs._ops_extra import View

        sim = self.sim
        self._pre_forward(n)
        x = h
        if h.rg:  # RegisterPostBackwardFunction on the block's inputs that require grad
            x = View(sim, h, h.numel)
            hk = h.key
            sim.node([], lambda outs, n=n: (self._post_backward(n), {hk: outs[0]})[1], [x], inputs=[h])
        del h
        out = run(x)
        del x
        self._post_forward(n)
        if not out.rg:
            return out
        y = View(sim, out, out.numel)  # the pre-backward hook on the block's outputs
        ok = out.key
        sim.node([], lambda outs, n=n: (self._pre_backward(n), {ok: outs[0]})[1], [y], inputs=[out])
        return y

    def backward_start(self) -> None:
        self._pre_backward(ROOT)

    def on_param_grad(self, key: str) -> None:
        if not self.fsdp:  # ZeRO-3: into the IPG bucket, then reduced into the partitioned buffer
            self.sim.param_grads.pop(key, None)

    def backward_end(self) -> None:
        # _root_post_backward_final_callback: units whose post-backward autograd did not fire
        # (the root, whose input ids need no gradient; a block whose input needed none)
        for unit in [ROOT] + sorted(u for u in set(self.fw_order) if u != ROOT):
            self._post_backward(unit)
        self.rs_states.clear()
        self.pending.clear()
        self.prefetched = None

    def optimizer_step(self) -> None:
        sim = self.sim
        if self.offload:
            sim.note_peak()
            return
        fp32 = self._alloc(self.fp32_grad, "gradients") if not self.fsdp else None
        sim.note_peak(self.step_temp, "temporaries")
        del fp32

    def zero_grad(self) -> None:
        self.grad_shards.clear()
        self.unsharded.clear()


def make_parallel(ctx, weights: int, quant: int, trainable: list[TrainableTensor], opt) -> DataParallel | None:
    """The strategy object for ``ctx.settings`` (None on a single GPU without a strategy)."""
    s = ctx.settings
    if s.sharding is None:
        return None
    if s.sharding == "ddp":
        return DataParallel(ctx, weights, quant, trainable, opt)
    if s.sharding in ("zero1", "zero2"):
        return ZeroPartitioned(ctx, weights, quant, trainable, opt, stage=int(s.sharding[-1]))
    return Sharded(ctx, weights, quant, trainable, opt, s.sharding)


def unsupported_reason(spec, plan, settings) -> str | None:
    """Why the multi-GPU budget of this case is not modelled (None: it is)."""
    if settings.sharding is None:
        return None
    if settings.sharding != "ddp" and settings.optimizer not in SHARDED_OPTIMIZERS:
        return (f"memory of optimizer {settings.optimizer!r} under {settings.sharding} is not modelled (bitsandbytes "
                f"states are not sharded like torch optimizers); modelled: {', '.join(SHARDED_OPTIMIZERS)}")
    if settings.sharding in PARAM_SHARDED:
        if settings.quantization:
            return (f"memory of quantized base weights under {settings.sharding} (sharded 4-bit parameters) is not "
                    "modelled yet; QLoRA is modelled with ddp / zero1 / zero2 (frozen base replicated)")
        if spec.is_encoder_decoder:
            return (f"memory of encoder-decoder models under {settings.sharding} (per-layer gathering) is not "
                    "modelled yet")
    return None


def notes(settings) -> list[str]:
    s = settings
    if s.sharding is None:
        return []
    out = [f"per-GPU memory of rank 0 of {s.num_gpus} GPU(s) under {s.sharding}"
           + (f" with {s.offload} offloaded to the host" if s.offload else "")]
    if s.sharding in ("zero1", "zero2", "zero3"):
        out.append("DeepSpeed ZeRO modelled from its source with transformers' 'auto' bucket sizes (fp32 master "
                   "weights and optimizer state on each rank's partition); not validated by a measurement")
    if s.num_gpus > 1:
        out.append("NCCL's communication buffers live outside PyTorch's allocator and are not included")
    if s.gradient_accumulation_steps > 1:
        out.append(f"gradient accumulation under {s.sharding} is not modelled: the budget is one micro-step's "
                   "(DDP's / FSDP's no_sync keeps the accumulated gradients, unsharded under FSDP, between "
                   "micro-steps)")
    return out

