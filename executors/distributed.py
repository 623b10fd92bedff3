"""Measure the per-rank memory of a data-parallel training step: a real multi-process run on the CPU.

``measure_distributed`` starts ``world_size`` processes (``torch.multiprocessing`` spawn, ``gloo``
backend, CPU tensors, one thread each), builds the same small model in every rank from a config
mapping (random weights, :func:`executors.build.build_model`), wraps it, and runs the reference
training step ``steps`` times:

    loss = model(input_ids=<B x L>, labels=<same>).loss    # phase "forward"
    loss.backward()                                       # phase "backward"
    optimizer.step(); optimizer.zero_grad(set_to_none=True)  # phase "optimizer"

Wrappings (``sharding``), as the planner names them:

- ``"ddp"``: ``torch.nn.parallel.DistributedDataParallel(model)`` with its defaults
  (``bucket_cap_mb=25``, ``gradient_as_bucket_view=False``, ``broadcast_buffers=True``);
- ``"fsdp_full_shard"``: FSDP2, ``torch.distributed.fsdp.fully_shard`` on every decoder layer, then on
  the root (the PEFT model or the transformers model): ``reshard_after_forward=True``;
- ``"fsdp_shard_grad_op"``: the same with ``reshard_after_forward=False`` (ZeRO-2-like: parameters
  stay unsharded from their forward to their backward).

The optimizer is built over the (sharded) trainable parameters after wrapping, with
``foreach=True`` (CUDA's default). FSDP2 runs on CPU/gloo in torch 2.13 (all-gather into a flat
buffer, per-parameter copy-out, reduce-scatter of a flat gradient buffer; checked before writing
this module), so the measured code path is the one a GPU run takes, except for the streams:
on CPU every "stream" is the one host thread, and FSDP2's memory behaviour is governed by Python
references (``all_gather_state``, ``reduce_scatter_states``), not by stream timing.

What is measured, per rank: the bytes of every live tensor storage, each rounded up to the CUDA
caching allocator's 512-byte block, with a ``TorchDispatchMode`` of our own
(:class:`LiveStorageTracker`) that is active from before the model is built to the end: every
storage an op creates in the rank's thread is registered (tensor subclasses such as FSDP2's
``DTensor`` are flattened to their local tensors), freed when Python drops its last reference
(weakref callbacks), and resized when FSDP2 frees or re-allocates unsharded parameters with
``UntypedStorage.resize_`` (patched while tracking). This is ``torch.cuda.max_memory_allocated``
as a CUDA run of the same step would report it, minus what no tracker sees (kernel workspaces,
NCCL's own buffers; gloo's work buffers are allocated on gloo's threads and are not counted
either). DDP's gradient buckets, allocated by the C++ reducer when the wrapper is built, are seen
because the tracker is active then. Peak per phase = the largest live total reached inside it.

Known differences from CUDA that are accounted for by the caller (tests, docs): foreach AdamW keeps
its ``step`` counters as host scalars on CUDA, counted here (one 512-byte block per trainable
tensor, per rank).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch

SHARDINGS = ("ddp", "fsdp_full_shard", "fsdp_shard_grad_op")
PHASES = ("forward", "backward", "optimizer")
#: ``torch.distributed`` collectives FSDP2 calls from Python; their internal buffers are not counted.
COLLECTIVES = ("all_gather_single", "all_gather_into_tensor", "reduce_scatter_single", "reduce_scatter_tensor",
               "all_reduce")
#: CUDA caching allocator block size (c10/cuda/CUDACachingAllocator.cpp ``kMinBlockSize``).
CUDA_ALLOCATION_ROUNDING_BYTES = 512


def _round(n: int) -> int:
    r = CUDA_ALLOCATION_ROUNDING_BYTES
    return -(-n // r) * r


class LiveStorageTracker(torch.utils._python_dispatch.TorchDispatchMode):
    """Live tensor storages of this thread, rounded to 512 B, with a running and a phase peak.

    Every allocation is tagged with ``self.tag`` (set by the driver); :meth:`retag` re-tags known
    resident storages (parameters, gradients, optimizer state) at a phase start, so the peak
    snapshot says what the bytes were."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[weakref.ref, int, str]] = {}
        self.total = 0
        self.by_tag: dict[str, int] = {}
        self.peak = 0
        self.peak_by_tag: dict[str, int] = {}
        self.tag = "setup"
        self._orig_resize = None
        self._in_backend = 0
        self._orig_collectives: dict[str, Any] = {}

    # -- bookkeeping ---------------------------------------------------------------------------
    def _free(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is None:
            return
        _, n, tag = entry
        self.total -= n
        self.by_tag[tag] -= n

    def _register(self, st: torch.UntypedStorage, tag: str | None = None) -> None:
        if self._in_backend and tag is None:
            return  # a collective's own work buffer (see __enter__)
        key = id(st)
        n = _round(st.nbytes()) if st.nbytes() else 0
        entry = self._live.get(key)
        if entry is not None and entry[0]() is st:
            if entry[1] != n or (tag is not None and tag != entry[2]):
                self._free(key)
            else:
                return
        elif entry is not None:  # a dead storage's id reused before its callback ran
            self._free(key)
        t = tag or self.tag
        ref = weakref.ref(st, lambda _r, key=key: self._free_if(key, _r))
        self._live[key] = (ref, n, t)
        self.total += n
        self.by_tag[t] = self.by_tag.get(t, 0) + n
        if self.total > self.peak:
            self.peak = self.total
            self.peak_by_tag = dict(self.by_tag)

    def _free_if(self, key: int, ref: weakref.ref) -> None:
        entry = self._live.get(key)
        if entry is not None and entry[0] is ref:
            self._free(key)

    def track(self, t: Any, tag: str | None = None) -> None:
        from torch.distributed._tools.common_utils import get_untyped_storages

        if isinstance(t, torch.Tensor):
            for st in get_untyped_storages(t):
                self._register(st, tag)

    def retag(self, tensors: list[torch.Tensor], tag: str) -> None:
        for t in tensors:
            self.track(t, tag)

    def restart_peak(self) -> None:
        self.peak = self.total
        self.peak_by_tag = dict(self.by_tag)

    # -- dispatch ------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        torch.utils._pytree.tree_map_only(torch.Tensor, self.track, out)
        if getattr(func, "_schema", None) is not None and func._schema.is_mutable:
            # in-place ops may resize their outputs (``resize_``, ``set_``): re-read the args' sizes
            for a in list(args) + list((kwargs or {}).values()):
                torch.utils._pytree.tree_map_only(torch.Tensor, self.track, a)
        return out

    def __enter__(self):
        self._orig_resize = torch.UntypedStorage.resize_
        tracker, orig = self, self._orig_resize

        def resize_(st, size):
            out = orig(st, size)
            tracker._register(st)
            return out

        torch.UntypedStorage.resize_ = resize_  # FSDP2's alloc_storage / free_storage
        # Storages a collective allocates for itself are gloo's, not what NCCL would allocate: gloo's
        # reduce_scatter works on a full-size copy of its input (freed by gloo's worker thread at a
        # moment that varies run to run); NCCL writes into the output. The collectives' inputs and
        # outputs are allocated by FSDP / DDP before the call and stay counted.
        import torch.distributed as dist

        for name in COLLECTIVES:
            collective = getattr(dist, name)
            self._orig_collectives[name] = collective

            def wrapped(*args, _orig=collective, **kwargs):
                tracker._in_backend += 1
                try:
                    return _orig(*args, **kwargs)
                finally:
                    tracker._in_backend -= 1

            setattr(dist, name, wrapped)
        return super().__enter__()

    def __exit__(self, *exc):
        import torch.distributed as dist

        torch.UntypedStorage.resize_ = self._orig_resize
        for name, orig in self._orig_collectives.items():
            setattr(dist, name, orig)
        return super().__exit__(*exc)


@dataclass(frozen=True)
class RankMeasurement:
    """One rank's measurement: peak per phase (max over steps) and per (step, phase)."""

    rank: int
    peak_bytes: int
    peak_phase: str
    phase_peaks: dict[str, int]
    details: list[dict[str, Any]]  # {step, phase, peak_bytes, breakdown}
    trainable_tensors: int  # trainable parameters (one foreach-AdamW host step counter each)
    resident_bytes: dict[str, int]  # after the last step: tag -> bytes


@dataclass(frozen=True)
class DistributedMeasurement:
    sharding: str
    world_size: int
    ranks: list[RankMeasurement]
    settings: dict[str, Any]
    wall_s: float
    notes: list[str] = field(default_factory=list)

    def rank(self, r: int) -> RankMeasurement:
        return self.ranks[r]

    @property
    def max_rank_peak(self) -> int:
        return max(r.peak_bytes for r in self.ranks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise NotImplementedError(f"no decoder layers found on {type(model).__name__} (expected model.model.layers)")
    return list(layers)


def _worker(rank: int, world_size: int, init_file: str, out_dir: str, jobs: list[dict[str, Any]]) -> None:
    import gc

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        for i, job in enumerate(jobs):
            result = _run_rank(rank, world_size, job)
            with open(os.path.join(out_dir, f"job{i}_rank{rank}.json"), "w") as f:
                json.dump(result, f)
            gc.collect()
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _run_rank(rank: int, world_size: int, job: dict[str, Any]) -> dict[str, Any]:
    from executors.build import build_model
    from executors.measure import CudaEmulation, _cuda_behaviour, make_batch, make_optimizer

    sharding = job["sharding"]
    tracker = LiveStorageTracker()
    with tracker:
        built = build_model(job["config"], device="cpu", peft_config=job["peft_config"],
                            trainable_base_params=job["trainable_base_params"], dtype=job["dtype"],
                            attn_implementation=job["attn_implementation"],
                            gradient_checkpointing=job["gradient_checkpointing"], seed=job["seed"])
        root = built.peft_model_or_model
        if sharding == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(root)
        else:
            from torch.distributed.fsdp import fully_shard

            reshard = sharding == "fsdp_full_shard"
            for layer in _decoder_layers(built.model):
                fully_shard(layer, reshard_after_forward=reshard)
            fully_shard(root, reshard_after_forward=reshard)
            model = root
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(job["optimizer"], params, foreach=True)
        gen = torch.Generator().manual_seed(job["seed"])  # same batch on every rank: same shapes
        batch = make_batch(built, job["batch_size"], job["seq_len"], None, "cpu", gen)
        details = []
        with _cuda_behaviour(CudaEmulation(allocator_rounding=False)):
            loss = None
            for step in range(1, job["steps"] + 1):
                for phase in PHASES:
                    tracker.retag([p for p in model.parameters()] + [b for b in model.buffers()], "weights")
                    tracker.retag([p.grad for p in model.parameters() if p.grad is not None], "gradients")
                    tracker.retag([t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)],
                                  "optimizer")
                    tracker.tag = phase
                    tracker.restart_peak()
                    if phase == "forward":
                        loss = model(**batch).loss
                    elif phase == "backward":
                        loss.backward()
                        loss = None
                    else:
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                    details.append({"step": step, "phase": phase, "peak_bytes": tracker.peak,
                                    "breakdown": dict(tracker.peak_by_tag)})
        tracker.retag([p for p in model.parameters()] + [b for b in model.buffers()], "weights")
        tracker.retag([t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)], "optimizer")
        resident = {k: v for k, v in tracker.by_tag.items() if v}
    phase_peaks = {ph: max(d["peak_bytes"] for d in details if d["phase"] == ph) for ph in PHASES}
    best = max(details, key=lambda d: d["peak_bytes"])
    return {"rank": rank, "peak_bytes": best["peak_bytes"], "peak_phase": best["phase"], "phase_peaks": phase_peaks,
            "details": details, "trainable_tensors": len(params), "resident_bytes": resident}


def _job(config: Mapping[str, Any], sharding: str = "fsdp_full_shard", peft_config: Mapping[str, Any] | None = None,
         trainable_base_params: list[str] | None = None, batch_size: int = 1, seq_len: int = 64,
         dtype: str = "bfloat16", gradient_checkpointing: bool = False, attn_implementation: str = "sdpa",
         optimizer: str = "adamw_torch", steps: int = 3, seed: int = 0) -> dict[str, Any]:
    if sharding not in SHARDINGS:
        raise ValueError(f"unknown sharding {sharding!r}; measurable on CPU: {', '.join(SHARDINGS)}")
    job = dict(config=dict(config), sharding=sharding, peft_config=dict(peft_config) if peft_config else None,
               trainable_base_params=list(trainable_base_params) if trainable_base_params is not None else None,
               batch_size=batch_size, seq_len=seq_len, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
               attn_implementation=attn_implementation, optimizer=optimizer, steps=steps, seed=seed)
    if job["peft_config"] and "peft_type" in job["peft_config"]:
        job["peft_config"]["peft_type"] = str(getattr(job["peft_config"]["peft_type"], "value",
                                                      job["peft_config"]["peft_type"]))
    return job


def measure_distributed_many(cases: list[Mapping[str, Any]], *, world_size: int = 2) -> list[DistributedMeasurement]:
    """Several cases (each the keyword arguments of :func:`measure_distributed`, ``config``
    included) in one launch of ``world_size`` processes: the ~10 s of importing torch and
    transformers per process is paid once."""
    if world_size < 1:
        raise ValueError("world_size must be >= 1")
    import torch.multiprocessing as mp

    jobs = [_job(**dict(c)) for c in cases]
    t0 = time.perf_counter()
    out = []
    with tempfile.TemporaryDirectory(prefix="peft-planner-dist-") as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_worker, args=(world_size, init_file, tmp, jobs), nprocs=world_size, join=True)
        wall = time.perf_counter() - t0
        for i, job in enumerate(jobs):
            ranks = []
            for r in range(world_size):
                with open(os.path.join(tmp, f"job{i}_rank{r}.json")) as f:
                    ranks.append(RankMeasurement(**json.load(f)))
            settings = {k: v for k, v in job.items() if k != "config"}
            out.append(DistributedMeasurement(sharding=job["sharding"], world_size=world_size, ranks=ranks,
                                              settings=settings, wall_s=wall))
    return out


def measure_distributed(
    config: Mapping[str, Any],
    *,
    sharding: str = "fsdp_full_shard",
    world_size: int = 2,
    peft_config: Mapping[str, Any] | None = None,
    trainable_base_params: list[str] | None = None,
    batch_size: int = 1,
    seq_len: int = 64,
    dtype: str = "bfloat16",
    gradient_checkpointing: bool = False,
    attn_implementation: str = "sdpa",
    optimizer: str = "adamw_torch",
    steps: int = 3,
    seed: int = 0,
) -> DistributedMeasurement:
    """Run ``world_size`` CPU processes (gloo) of the reference step under ``sharding`` and return
    each rank's peak per phase (max over ``steps`` steps; step 1 creates the optimizer state, later
    steps are the steady state). Decoder-only models with ``model.model.layers`` (the llama family
    and its copies)."""
    return measure_distributed_many([dict(
        config=config, sharding=sharding, peft_config=peft_config, trainable_base_params=trainable_base_params,
        batch_size=batch_size, seq_len=seq_len, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
        attn_implementation=attn_implementation, optimizer=optimizer, steps=steps, seed=seed)],
        world_size=world_size)[0]


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - manual use
    import argparse

    ap = argparse.ArgumentParser(description="per-rank memory of a data-parallel step on CPU (gloo)")
    ap.add_argument("--config", required=True, help="config.json path or catalog id")
    ap.add_argument("--sharding", default="fsdp_full_shard", choices=SHARDINGS)
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=0, help="LoRA rank on q_proj,v_proj (0: full fine-tuning)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args(argv)
    if os.path.exists(a.config):
        with open(a.config) as f:
            config = json.load(f)
    else:
        from planner import catalog

        config = catalog.config(a.config)
    peft = dict(peft_type="LORA", r=a.lora_r, target_modules=["q_proj", "v_proj"]) if a.lora_r else None
    m = measure_distributed(config, sharding=a.sharding, world_size=a.world_size, peft_config=peft,
                            batch_size=a.batch_size, seq_len=a.seq_len, dtype=a.dtype)
    print(json.dumps(m.to_dict(), indent=1, default=str))


if __name__ == "__main__":  # pragma: no cover
    main()
