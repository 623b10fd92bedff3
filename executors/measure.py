"""Measure the peak memory of one training step of a real model.

What is measured: for steps 1 and 2 (the larger wins; full fine-tuning peaks in step 1 when the
optimizer state appears, PEFT usually in step 2), the bytes held by live tensors while running

    loss = model(input_ids=<B x L random ids>, labels=<same>).loss   # phase "forward"
    loss.backward()                                                 # phase "backward"
    optimizer.step(); optimizer.zero_grad(set_to_none=True)         # phase "optimizer"

on a full-length batch without padding and without ``attention_mask``. Three modes:

- ``"cpu"``: real tensors on the CPU under ``torch.distributed._tools.mem_tracker.MemTracker``
  (small models only);
- ``"fake"``: the same under ``FakeTensorMode`` (no data, any size; a 7B step in seconds);
- ``"cuda"``: the CUDA caching allocator's own counters (``max_memory_allocated`` /
  ``max_memory_reserved``), with the MemTracker breakdown on top.

By default the CPU modes emulate CUDA where the CPU kernels differ (see ``CudaEmulation``): the
caching allocator's 512-byte rounding, dropout saving a bool mask, SDPA with dropout taking a
fused kernel, and ``foreach`` optimizers. See ``shared/notes/measuring-memory-on-cpu.md``.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Literal, Mapping

import torch
from torch import nn

from executors.build import BuiltModel, build_model, count, resolve_dtype

Mode = Literal["cpu", "fake", "cuda"]
Phase = Literal["forward", "backward", "optimizer"]
PHASES: tuple[Phase, ...] = ("forward", "backward", "optimizer")

#: Breakdown keys, shared with the planner's memory model.
BREAKDOWN_KEYS = ("weights", "gradients", "optimizer", "activations", "temporaries", "inputs", "other")

OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "sgd", "adafactor",
    "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit",
)

#: ``transformers.TrainingArguments.learning_rate`` default; memory does not depend on it.
TRAINER_DEFAULT_LR = 5e-5

#: CUDA caching allocator block size: every allocation is rounded up to a multiple of 512 bytes
#: (``kMinBlockSize`` in c10/cuda/CUDACachingAllocator.cpp; also ``_PYTORCH_MIN_ALLOCATE`` in
#: torch/distributed/_tools/mem_tracker.py).
CUDA_ALLOCATION_ROUNDING_BYTES = 512

#: MemTracker reference types -> breakdown keys. Only the batch is registered as "external".
_REFTYPE_TO_KEY = {
    "Parameter": "weights",
    "Buffer": "other",
    "Gradient": "gradients",
    "Optstate": "optimizer",
    "Activation": "activations",
    "Temp": "temporaries",
    "Other": "inputs",
}


@dataclass(frozen=True)
class CudaEmulation:
    """Which CUDA behaviours to reproduce when measuring on the CPU (all on by default)."""

    allocator_rounding: bool = True  # round every tensor to 512 bytes, as the caching allocator does
    dropout_bool_mask: bool = True  # CUDA's fused dropout saves a bool mask, the CPU a noise tensor
    sdpa_dropout_fused: bool = True  # CPU SDPA with dropout>0 takes the math path (B*H*L^2)
    foreach_optimizers: bool = True  # torch optimizers default to foreach on CUDA, a loop on CPU


NO_EMULATION = CudaEmulation(False, False, False, False)


@dataclass(frozen=True)
class PhasePeak:
    """Peak bytes inside one phase of one step and the breakdown at that moment."""

    step: int
    phase: Phase
    peak_bytes: int
    breakdown: dict[str, int]


@dataclass(frozen=True)
class Measurement:
    """Result of :func:`measure_step`. ``error`` / ``oom`` set means the step did not complete."""

    mode: Mode
    peak_bytes: int
    peak_phase: Phase | None
    peak_step: int | None
    phase_peaks: dict[str, int]  # max over steps, per phase
    step_peaks: tuple[int, ...]  # max over phases, per step
    breakdown: dict[str, int]  # at the overall peak, keys BREAKDOWN_KEYS
    trainable_params: int
    total_params: int
    wall_s: float
    settings: dict[str, Any]
    details: tuple[PhasePeak, ...] = ()
    reserved_peak_bytes: int | None = None  # cuda mode only (max_memory_reserved)
    oom: bool = False
    error: str | None = None
    failed_phase: str | None = None
    notes: tuple[str, ...] = ()
    #: cuda mode only: wall seconds of each completed step (all its micro-steps' forward + backward, then
    #: the optimizer step and zero_grad), read after ``torch.cuda.synchronize()``; empty otherwise.
    step_seconds: tuple[float, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None and not self.oom

    @property
    def step_s(self) -> float | None:
        """Seconds per training step on the GPU: the median of :attr:`step_seconds` after the first
        (warm-up: CUDA context, kernel selection, the optimizer state's allocation); None with fewer
        than 2 completed steps or outside cuda mode. It includes the per-phase synchronisation and peak
        counter reads of the memory measurement (microseconds a phase), so it slightly overstates a
        free-running step."""
        timed = self.step_seconds[1:]
        return float(statistics.median(timed)) if timed else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# MemTracker, adapted


MixedPrecision = Literal["bf16", "fp16"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Autocast:
    """Mixed precision as ``Trainer(bf16=True)`` / ``fp16=True`` runs it: fp32 weights, the forward
    and the loss under ``torch.autocast(device_type, dtype)`` (weight-cast cache on, the default),
    backward and optimizer outside; fp16 adds a ``GradScaler`` (scaled loss, ``unscale_`` then
    ``step`` / ``update``)."""

    device_type: str
    dtype: torch.dtype
    scaler: Any = None


def make_autocast(mixed_precision: "MixedPrecision | None", device_type: str) -> Autocast | None:
    if mixed_precision is None:
        return None
    if mixed_precision not in AUTOCAST_DTYPES:
        raise ValueError(f"mixed_precision must be 'bf16', 'fp16' or None, got {mixed_precision!r}")
    scaler = torch.amp.GradScaler(device_type) if mixed_precision == "fp16" else None
    return Autocast(device_type, AUTOCAST_DTYPES[mixed_precision], scaler)


def run_phase(phase: str, model, batch: dict, optimizer, loss, autocast: Autocast | None = None):
    """One phase of the reference training step; returns the loss still alive after it (dropping
    the reference after backward frees the graph, as ``del loss`` would)."""
    if phase == "forward":
        if autocast is None:
            return model(**batch).loss
        with torch.autocast(autocast.device_type, dtype=autocast.dtype):
            return model(**batch).loss
    if phase == "backward":
        if autocast is not None and autocast.scaler is not None:
            autocast.scaler.scale(loss).backward()
        else:
            loss.backward()
        return None
    if autocast is not None and autocast.scaler is not None:
        autocast.scaler.unscale_(optimizer)
        autocast.scaler.step(optimizer)
        autocast.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return None


class _NoHandle:
    def remove(self) -> None:
        pass


def _no_multi_grad_hook(tensors: Any, fn: Any, *, mode: str = "all") -> _NoHandle:
    return _NoHandle()


def _make_tracker_class() -> type:
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class PhaseMemTracker(MemTracker):
        """MemTracker that (1) hooks only parameters that require grad (stock MemTracker calls
        ``register_hook`` on every parameter and raises on frozen ones), (2) updates only the
        global peak per op (the stock per-module walk is ~80 % of the wall time at 7B and is not
        used here), (3) can restart the peak at a phase boundary."""

        def __enter__(self) -> "PhaseMemTracker":
            # ModTracker registers multi-grad hooks on every module's inputs and outputs to follow
            # modules in backward (per-module stats, not used here). The "all" hook's closure holds
            # the inputs' grad_fns, and the grad_fn holds the hook: a reference cycle. A graph branch
            # that backward never visits (DoRA's detached lora_B @ lora_A weight, for one) then
            # stays alive with its saved tensors until Python's cyclic GC happens to run, at a
            # moment that differs between real and fake tensors. Without a tracker (a real run)
            # it is freed as soon as its last reference drops; not registering the hooks gives
            # exactly that.
            from torch.distributed._tools import mod_tracker

            self._saved_register_multi_grad_hook = mod_tracker.register_multi_grad_hook
            mod_tracker.register_multi_grad_hook = _no_multi_grad_hook
            try:
                return super().__enter__()
            except BaseException:
                mod_tracker.register_multi_grad_hook = self._saved_register_multi_grad_hook
                raise

        def __exit__(self, *args: Any) -> None:
            from torch.distributed._tools import mod_tracker

            try:
                super().__exit__(*args)
            finally:
                mod_tracker.register_multi_grad_hook = self._saved_register_multi_grad_hook
                self._mod_tracker._post_bw_callbacks_to_enqueue.clear()

        def _track_module_params_and_buffers(self, module: nn.Module, install_grad_hooks: bool = True):
            def _grad_hook(grad: torch.Tensor) -> None:
                self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

            param_memory = 0
            for param in module.parameters():
                winfos = self._update_and_maybe_create_winfos(param, _MemRefType.PARAM)
                param_memory += sum(w.mem_consumed for w in winfos)
                if param.grad is not None:
                    self._update_and_maybe_create_winfos(param.grad, _MemRefType.GRAD)
                if install_grad_hooks and param.requires_grad and self._param_to_grad_hook_handles.get(param) is None:
                    self._param_to_grad_hook_handles[param] = (
                        param.register_hook(_grad_hook),
                        param.register_post_accumulate_grad_hook(lambda p: _grad_hook(p.grad)),
                    )
            buffer_memory = 0
            for buffer in module.buffers():
                winfos = self._update_and_maybe_create_winfos(buffer, _MemRefType.BUFFER)
                buffer_memory += sum(w.mem_consumed for w in winfos)
            return param_memory, buffer_memory

        def _update_peak_stats(self, peak_state: Any) -> None:
            for dev, dev_snap in self._curr_mem_snap.items():
                total = dev_snap["Total"]
                if self._peak_mem.get(dev, 0) < total:
                    self._peak_mem[dev] = total
                    self._peak_mem_snap[dev] = dict(dev_snap)

        def track_as_weights(self, tensors: list[torch.Tensor]) -> None:
            for t in tensors:
                self._update_and_maybe_create_winfos(t, _MemRefType.PARAM)

        def restart_peak(self) -> None:
            self._peak_mem_snap = {d: dict(s) for d, s in self._curr_mem_snap.items()}
            self._peak_mem = {d: s["Total"] for d, s in self._peak_mem_snap.items()}

        def phase_peak(self) -> tuple[int, dict[str, int]]:
            total, snap = 0, dict.fromkeys(BREAKDOWN_KEYS, 0)
            for dev_snap in self._peak_mem_snap.values():
                total += dev_snap["Total"]
                for reftype, nbytes in dev_snap.items():
                    key = _REFTYPE_TO_KEY.get(getattr(reftype, "value", str(reftype)))
                    if key is not None:
                        snap[key] += nbytes
            return total, snap

    return PhaseMemTracker


@contextlib.contextmanager
def _allocator_rounding(enabled: bool) -> Iterator[None]:
    """Count every tensor storage rounded up to 512 bytes, on any device (CUDA's allocator)."""
    from torch.distributed._tools import mem_tracker

    if not enabled:
        yield
        return
    cls = mem_tracker._WeakRefInfo
    original = cls._calculate_mem_consumed

    def rounded(self: Any) -> int:
        mem = self.size * self.element_size
        return math.ceil(mem / CUDA_ALLOCATION_ROUNDING_BYTES) * CUDA_ALLOCATION_ROUNDING_BYTES

    cls._calculate_mem_consumed = rounded  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls._calculate_mem_consumed = original  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------------
# CPU -> CUDA behaviour patches (active only while measuring)


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


def _no_packed_sequences(position_ids: torch.Tensor) -> None:
    """``transformers.masking_utils.find_packed_sequence_indices`` for an unpacked batch.

    transformers treats FakeTensors as tracing and then keeps a packed-sequence mask, which builds
    an explicit (B, 1, L, L) mask that a real CUDA run never builds. This does the same tensor work
    as the original on an unpacked batch and answers "not packed".
    """
    first_dummy_value = position_ids[:, :1] - 1
    position_diff = torch.diff(position_ids, prepend=first_dummy_value, dim=-1)
    packed_sequence_mask = (position_diff != 1).cumsum(-1)
    (packed_sequence_mask[:, -1] == 0).all()
    return None


def _cuda_like_dropout(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        # aten::dropout uses the fused native_dropout (bool mask) on CUDA when 0 < p < 1.
        if training and 0.0 < p < 1.0 and not inplace and input.numel() > 0:
            return torch.native_dropout(input, p, True)[0]
        return original(input, p, training, inplace)

    return dropout


def _fused_sdpa(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def scaled_dot_product_attention(*args: Any, **kwargs: Any) -> torch.Tensor:
        # CUDA's flash / memory-efficient kernels apply dropout inside the kernel and keep only
        # the RNG state, so their footprint is that of dropout_p=0; the CPU would take the math
        # path and save B x H x L^2 probabilities and masks.
        if "dropout_p" in kwargs:
            kwargs["dropout_p"] = 0.0
        elif len(args) > 4:
            args = (*args[:4], 0.0, *args[5:])
        return original(*args, **kwargs)

    return scaled_dot_product_attention


@contextlib.contextmanager
def _cuda_behaviour(emulation: CudaEmulation) -> Iterator[None]:
    import transformers.masking_utils as masking_utils

    F = torch.nn.functional
    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(masking_utils, "find_packed_sequence_indices", _no_packed_sequences))
        if emulation.dropout_bool_mask:
            stack.enter_context(_patched(F, "dropout", _cuda_like_dropout(F.dropout)))
        if emulation.sdpa_dropout_fused:
            stack.enter_context(_patched(F, "scaled_dot_product_attention", _fused_sdpa(F.scaled_dot_product_attention)))
        stack.enter_context(_allocator_rounding(emulation.allocator_rounding))
        yield


# --------------------------------------------------------------------------------------------
# Optimizers (names as transformers.TrainingArguments.optim)


def make_optimizer(name: str, params: list[nn.Parameter], *, foreach: bool | None = None,
                   lr: float = TRAINER_DEFAULT_LR) -> torch.optim.Optimizer:
    """The optimizer ``Trainer`` builds for ``optim=name`` over ``params`` (one param group)."""
    if name == "adamw_torch":
        return torch.optim.AdamW(params, lr=lr, foreach=foreach)
    if name == "adamw_torch_fused":
        return torch.optim.AdamW(params, lr=lr, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, foreach=foreach)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # Trainer passes scale_parameter=False, relative_step=False for optim="adafactor".
        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False)
    if name in ("adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit"):
        import bitsandbytes as bnb

        bits = 32 if name.endswith("32bit") else 8
        return bnb.optim.AdamW(params, lr=lr, optim_bits=bits, is_paged=name.startswith("paged"))
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


# --------------------------------------------------------------------------------------------
# Inputs


def make_batch(built: BuiltModel, batch_size: int, seq_len: int, target_len: int | None, device: str | torch.device,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Random token ids, no padding, no attention mask; labels = the ids (T5: a target batch)."""
    vocab = int(built.config.vocab_size)
    ids = torch.randint(0, vocab, (batch_size, seq_len), device=device, generator=generator)
    if built.model_type in ("t5", "mt5"):
        labels = torch.randint(0, vocab, (batch_size, target_len or seq_len), device=device, generator=generator)
    else:
        labels = ids.clone()
    return {"input_ids": ids, "labels": labels}


# --------------------------------------------------------------------------------------------
# Fake materialisation


def materialise_fake(module: nn.Module) -> None:
    """Replace every meta parameter / buffer / tensor attribute by a fake CPU tensor, in place.

    Must run inside the FakeTensorMode. Tied parameters stay tied (memo by identity).
    """
    memo: dict[int, torch.Tensor] = {}

    def fake_like(t: torch.Tensor) -> torch.Tensor:
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")

    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if id(p) not in memo:
                new = nn.Parameter(fake_like(p), requires_grad=p.requires_grad)
                for attr in ("quant_state", "quant_type", "blocksize"):
                    if hasattr(p, attr):
                        setattr(new, attr, getattr(p, attr))
                memo[id(p)] = new
            sub._parameters[name] = memo[id(p)]
        for name, b in list(sub._buffers.items()):
            if b is None or not b.is_meta:
                continue
            if id(b) not in memo:
                memo[id(b)] = fake_like(b)
            sub._buffers[name] = memo[id(b)]
        for name, value in list(vars(sub).items()):
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.is_meta:
                setattr(sub, name, memo.setdefault(id(value), fake_like(value)))
            elif isinstance(value, dict) and not name.startswith("_"):
                for k, v in list(value.items()):
                    if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter) and v.is_meta:
                        value[k] = memo.setdefault(id(v), fake_like(v))


def _quant_state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Tensors that quantized weights hold outside parameters: 4-bit quant state (absmax, code,
    offset, nested state), int8 row scales (``Int8Params.SCB``)."""
    out: list[torch.Tensor] = []
    for m in model.modules():
        # Linear8bitLt moves the weight's SCB to ``module.state`` at its first forward
        for holder in (getattr(m, "weight", None), getattr(m, "state", None)):
            scb = getattr(holder, "SCB", None)
            if isinstance(scb, torch.Tensor):
                out.append(scb)
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        while qs is not None:
            out += [t for t in (getattr(qs, "absmax", None), getattr(qs, "code", None), getattr(qs, "offset", None))
                    if isinstance(t, torch.Tensor)]
            qs = getattr(qs, "state2", None)
    return out


def _warm_bnb_code_tables(model: nn.Module) -> None:
    """Run one tiny real 4-bit quantization per layer flavour outside the fake mode.

    bitsandbytes builds its double-quantization code table (``create_dynamic_map``) with
    ``.tolist()``, which has no value under FakeTensorMode; it is cached in ``name2qmap`` once built.
    """
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbF

    seen: set[tuple] = set()
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            w = m.weight
            key = (w.blocksize, w.compress_statistics, w.quant_type, w.quant_storage)
            if key not in seen:
                seen.add(key)
                bnbF.quantize_4bit(torch.zeros(4, w.blocksize or 64, dtype=torch.float32), blocksize=w.blocksize,
                                   compress_statistics=w.compress_statistics, quant_type=w.quant_type,
                                   quant_storage=w.quant_storage)


def materialise_fake_4bit(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Give every meta ``Linear4bit`` a fake packed weight quantized the way ``Params4bit`` does.

    Must run inside ``FakeTensorMode(allow_non_fake_inputs=True)``. A dense fake weight of the
    ``dtype`` (the dtype the model was loaded in, which ``Params4bit`` quantizes from and
    dequantizes back to) goes through
    ``bitsandbytes.functional.quantize_4bit`` with the parameter's own settings; ``Params4bit``
    cannot wrap a FakeTensor, so the packed weight becomes a plain frozen ``nn.Parameter`` carrying
    the same attributes (``quant_state``, ``quant_type``, ``blocksize`` ...). The quantization
    state's tensors (absmax, double-quant absmax / code / offset) are the ones a real run holds;
    the measurement tracks them as weights.
    """
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbF

    done = 0
    for m in model.modules():
        if not isinstance(m, bnb.nn.Linear4bit) or not m.weight.is_meta:
            continue
        w = m.weight
        dense = torch.empty(m.out_features, m.in_features, dtype=dtype, device="cpu")
        packed, state = bnbF.quantize_4bit(dense, blocksize=w.blocksize, compress_statistics=w.compress_statistics,
                                           quant_type=w.quant_type, quant_storage=w.quant_storage)
        del dense
        new = nn.Parameter(packed, requires_grad=False)
        for attr in ("blocksize", "compress_statistics", "quant_type", "quant_storage", "bnb_quantized", "module"):
            if hasattr(w, attr):
                setattr(new, attr, getattr(w, attr))
        new.quant_state = state
        m.weight = new
        m.quant_state = state
        done += 1
    return done


@contextlib.contextmanager
def _fake_mode_patches(seed: int) -> Iterator[None]:
    """Data-dependent Python branches in PEFT tuners, answered without reading fake values.

    - LoHa / LoKr ``module_dropout``: ``torch.rand(1) > p`` decides whether the adapter runs;
      ``torch.rand(1)`` is served as a fake *constant* from a seeded Python RNG (same allocation).
    - VB-LoRA checks ``logits_A[0, 0].isinf().any()`` while training (resumed top-k checkpoints):
      the same tensors are computed, the answer is "no infinity" (fresh logits are finite).
    """
    import random

    rng = random.Random(seed)
    original_rand = torch.rand

    def rand(*size: Any, **kwargs: Any) -> torch.Tensor:
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        if tuple(shape) == (1,) and not kwargs:
            return torch.tensor([rng.random()])
        return original_rand(*size, **kwargs)

    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(torch, "rand", rand))
        try:
            from peft.tuners.vblora.layer import Linear as VBLoRALayer
        except ImportError:  # pragma: no cover - older peft
            VBLoRALayer = None
        if VBLoRALayer is not None:
            original_get = VBLoRALayer._get_lora_matrices

            def _get_lora_matrices(self: Any, adapter: str, cast_to_fp32: bool = False) -> Any:
                if not self.training:
                    return original_get(self, adapter, cast_to_fp32)
                self.vblora_logits_A[adapter][0, 0].isinf().any()  # the check's tensors, value not read
                self.training = False
                try:
                    return original_get(self, adapter, cast_to_fp32)
                finally:
                    self.training = True

            stack.enter_context(_patched(VBLoRALayer, "_get_lora_matrices", _get_lora_matrices))
        yield


# --------------------------------------------------------------------------------------------
# The step


def schedule(accumulation: int = 1) -> list[str]:
    """The phases of one optimizer step: ``accumulation`` micro-steps (forward + backward; ``.grad``
    accumulates across them), then the optimizer step and ``zero_grad(set_to_none=True)``."""
    return ["forward", "backward"] * accumulation + ["optimizer"]


def _run_steps(built: BuiltModel, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], steps: int,
               on_phase: Callable[[int, Phase, Any], None] | None = None, accumulation: int = 1,
               autocast: Autocast | None = None) -> list[PhasePeak]:
    """Run ``steps`` training steps (each ``accumulation`` micro-steps) under a fresh PhaseMemTracker
    each; return per-phase peaks."""
    tracker_cls = _make_tracker_class()
    model = built.peft_model_or_model
    results: list[PhasePeak] = []
    for step in range(1, steps + 1):
        tracker = tracker_cls()
        tracker.track_external(model, optimizer, batch)
        tracker.track_as_weights(_quant_state_tensors(model))
        with tracker:
            loss = None
            forwards = 0
            for phase in schedule(accumulation):
                if phase == "forward":
                    if forwards:  # MemTracker keeps per-module stats of one forward; clear them between micro-steps
                        tracker.reset_mod_stats()
                    forwards += 1
                tracker.restart_peak()
                if on_phase is not None:
                    on_phase(step, phase, None)
                loss = run_phase(phase, model, batch, optimizer, loss, autocast)
                peak, snap = tracker.phase_peak()
                results.append(PhasePeak(step=step, phase=phase, peak_bytes=peak, breakdown=snap))
    return results


def _summarise(mode: Mode, details: list[PhasePeak], built: BuiltModel, wall_s: float, settings: dict[str, Any],
               notes: list[str], counts: tuple[int, int] | None = None, **extra: Any) -> Measurement:
    trainable, total = counts if counts is not None else count(built)
    if details:
        best = max(details, key=lambda d: d.peak_bytes)
        phase_peaks = {p: max(d.peak_bytes for d in details if d.phase == p) for p in PHASES if any(
            d.phase == p for d in details)}
        steps = sorted({d.step for d in details})
        step_peaks = tuple(max(d.peak_bytes for d in details if d.step == s) for s in steps)
        return Measurement(mode=mode, peak_bytes=best.peak_bytes, peak_phase=best.phase, peak_step=best.step,
                           phase_peaks=phase_peaks, step_peaks=step_peaks, breakdown=dict(best.breakdown),
                           trainable_params=trainable, total_params=total, wall_s=wall_s, settings=settings,
                           details=tuple(details), notes=tuple(notes), **extra)
    return Measurement(mode=mode, peak_bytes=0, peak_phase=None, peak_step=None, phase_peaks={}, step_peaks=(),
                       breakdown=dict.fromkeys(BREAKDOWN_KEYS, 0), trainable_params=trainable, total_params=total,
                       wall_s=wall_s, settings=settings, notes=tuple(notes), **extra)


def _settings_notes(built: BuiltModel, optimizer: str, emulation: CudaEmulation, mode: Mode,
                    attn_implementation: str) -> list[str]:
    notes = list(built.notes)
    cfg = built.config
    attn_p = max(float(getattr(cfg, k, 0.0) or 0.0) for k in ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob"))
    if attn_p > 0 and attn_implementation == "sdpa" and mode != "cuda":
        notes.append("SDPA with attention dropout %.3g: " % attn_p + (
            "measured as CUDA's fused kernel (dropout inside the kernel)" if emulation.sdpa_dropout_fused
            else "CPU math path: not representative of CUDA (B x H x L^2 saved)"))
    if optimizer.startswith("paged") and mode != "cuda":
        notes.append("paged optimizer: on CUDA bitsandbytes keeps the states in unified memory, outside PyTorch's "
                     "allocator (not in max_memory_allocated); counted here as optimizer memory")
    return notes


def measure_step(
    config: Mapping[str, Any],
    *,
    mode: Mode = "fake",
    peft_config: Mapping[str, Any] | None = None,
    trainable_base_params: list[str] | None = None,
    quantization: Mapping[str, Any] | None = None,
    batch_size: int = 1,
    seq_len: int = 512,
    target_len: int | None = None,
    dtype: str = "bfloat16",
    gradient_checkpointing: bool = False,
    attn_implementation: str = "sdpa",
    optimizer: str = "adamw_torch",
    steps: int = 2,
    seed: int = 0,
    emulation: CudaEmulation = CudaEmulation(),
    gradient_accumulation_steps: int = 1,
    mixed_precision: MixedPrecision | None = None,
) -> Measurement:
    """Peak memory of ``steps`` training steps (forward+labels, backward, optimizer step, zero_grad).

    ``config`` is a config.json mapping; the other arguments are those of
    :func:`executors.build.build_model` plus the batch (``batch_size`` x ``seq_len``; T5: source
    ``seq_len`` and target ``target_len``, default equal) and the optimizer (TrainingArguments.optim
    name). ``mixed_precision`` ("bf16" / "fp16", with ``dtype="float32"`` weights) runs the forward
    under autocast as the Trainer does (see :class:`Autocast`); the CPU modes use CPU autocast, whose
    casts match CUDA's for the llama ops (checked once with fake CUDA tensors; see the report of
    issue 4). Errors and out-of-memory come back in the result, never as exceptions.
    """
    if mixed_precision is not None:
        if mixed_precision not in AUTOCAST_DTYPES:
            raise ValueError(f"mixed_precision must be 'bf16', 'fp16' or None, got {mixed_precision!r}")
        if resolve_dtype(dtype) != torch.float32:
            raise ValueError("mixed_precision needs fp32 weights (dtype='float32')")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
    resolve_dtype(dtype)
    settings = dict(batch_size=batch_size, seq_len=seq_len, target_len=target_len or seq_len, dtype=dtype,
                    gradient_checkpointing=gradient_checkpointing, attn_implementation=attn_implementation,
                    optimizer=optimizer, steps=steps, seed=seed, emulation=asdict(emulation),
                    gradient_accumulation_steps=gradient_accumulation_steps, mixed_precision=mixed_precision,
                    peft_type=(dict(peft_config).get("peft_type") if peft_config else None),
                    quantization=dict(quantization) if quantization else None)
    settings["peft_type"] = str(getattr(settings["peft_type"], "value", settings["peft_type"])) if settings[
        "peft_type"] else None
    build_kwargs = dict(peft_config=peft_config, trainable_base_params=trainable_base_params, dtype=dtype,
                        quantization=quantization, attn_implementation=attn_implementation,
                        gradient_checkpointing=gradient_checkpointing, seed=seed)
    if mode == "cpu":
        return _measure_cpu(config, build_kwargs, batch_size, seq_len, target_len, optimizer, steps, seed, emulation,
                            settings)
    if mode == "fake":
        return _measure_fake(config, build_kwargs, batch_size, seq_len, target_len, optimizer, steps, seed, emulation,
                             settings)
    if mode == "cuda":
        return _measure_cuda(config, build_kwargs, batch_size, seq_len, target_len, optimizer, steps, seed, settings)
    raise ValueError(f"mode must be 'cpu', 'fake' or 'cuda', got {mode!r}")


def _measure_cpu(config, build_kwargs, batch_size, seq_len, target_len, optimizer, steps, seed, emulation,
                 settings) -> Measurement:
    t0 = time.perf_counter()
    built = build_model(config, device="cpu", **build_kwargs)
    notes = _settings_notes(built, optimizer, emulation, "cpu", build_kwargs["attn_implementation"])
    gen = torch.Generator().manual_seed(seed)
    batch = make_batch(built, batch_size, seq_len, target_len, "cpu", gen)
    details: list[PhasePeak] = []
    error = failed = None
    phase_now: list[str] = []
    try:
        opt = make_optimizer(optimizer, built.trainable_parameters(),
                             foreach=True if emulation.foreach_optimizers else None)
        with _cuda_behaviour(emulation):
            details = _run_steps(built, opt, batch, steps,
                                 on_phase=lambda step, phase, _: phase_now.append(f"step {step} {phase}"),
                                 accumulation=settings["gradient_accumulation_steps"],
                                 autocast=make_autocast(settings["mixed_precision"], "cpu"))
    except Exception as exc:  # a failed step is a result
        error = f"{type(exc).__name__}: {exc}"
        failed = phase_now[-1] if phase_now else "setup"
    return _summarise("cpu", details, built, time.perf_counter() - t0, settings, notes, error=error,
                      failed_phase=failed)


def _measure_fake(config, build_kwargs, batch_size, seq_len, target_len, optimizer, steps, seed, emulation,
                  settings) -> Measurement:
    from torch._subclasses.fake_tensor import FakeTensorMode

    t0 = time.perf_counter()
    built = build_model(config, device="meta", **build_kwargs)
    counts = count(built)  # before materialising: PEFT counts Params4bit by class (numel * 2)
    notes = _settings_notes(built, optimizer, emulation, "fake", build_kwargs["attn_implementation"])
    if settings["mixed_precision"] == "fp16":
        return _summarise("fake", [], built, time.perf_counter() - t0, settings, notes, counts,
                          error="NotImplementedError: fp16's GradScaler reads found_inf in step() (data-dependent "
                                "under FakeTensorMode); use mode='cpu' on a small config")
    if optimizer in ("adamw_bnb_8bit", "paged_adamw_8bit"):
        return _summarise("fake", [], built, time.perf_counter() - t0, settings, notes, counts,
                          error="NotImplementedError: bitsandbytes 8-bit optimizers read tensor values in step() "
                                "(data-dependent under FakeTensorMode); use mode='cpu' on a small config")
    details: list[PhasePeak] = []
    error = failed = None
    phase_now: list[str] = []
    try:
        if built.quantized:
            _warm_bnb_code_tables(built.peft_model_or_model)
        with FakeTensorMode(allow_non_fake_inputs=True), _fake_mode_patches(seed):
            phase_now.append("materialise")
            if built.quantized:
                materialise_fake_4bit(built.peft_model_or_model, built.dtype)
            materialise_fake(built.peft_model_or_model)
            torch.manual_seed(seed)
            batch = make_batch(built, batch_size, seq_len, target_len, "cpu")
            opt = make_optimizer(optimizer, built.trainable_parameters(),
                                 foreach=True if emulation.foreach_optimizers else None)
            with _cuda_behaviour(emulation):
                details = _run_steps(built, opt, batch, steps,
                                     on_phase=lambda step, phase, _: phase_now.append(f"step {step} {phase}"),
                                     accumulation=settings["gradient_accumulation_steps"],
                                     autocast=make_autocast(settings["mixed_precision"], "cpu"))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        failed = phase_now[-1] if phase_now else "build"
    return _summarise("fake", details, built, time.perf_counter() - t0, settings, notes, counts, error=error,
                      failed_phase=failed)


def _measure_cuda(config, build_kwargs, batch_size, seq_len, target_len, optimizer, steps, seed,
                  settings) -> Measurement:
    """Real CUDA run: peaks from the caching allocator, per phase and step (reset between phases)."""
    if not torch.cuda.is_available():
        raise RuntimeError("mode='cuda' needs a CUDA device")
    dev = torch.device("cuda")
    if torch.cuda.memory_allocated(dev) != 0:
        raise RuntimeError(f"{torch.cuda.memory_allocated(dev)} bytes already allocated on {dev}; "
                           "measure in a fresh process")
    t0 = time.perf_counter()
    built = build_model(config, device="cuda", **build_kwargs)  # type: ignore[arg-type]
    notes = list(built.notes)
    gen = torch.Generator(device=dev).manual_seed(seed)
    batch = make_batch(built, batch_size, seq_len, target_len, dev, gen)
    opt = make_optimizer(optimizer, built.trainable_parameters())
    model = built.peft_model_or_model
    autocast = make_autocast(settings["mixed_precision"], "cuda")
    details: list[PhasePeak] = []
    step_seconds: list[float] = []
    reserved = 0
    error, oom, failed = None, False, None
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    try:
        loss = None
        for step in range(1, steps + 1):
            torch.cuda.synchronize(dev)
            step_t0 = time.perf_counter()
            for phase in schedule(settings["gradient_accumulation_steps"]):
                failed = f"step {step} {phase}"
                torch.cuda.reset_peak_memory_stats(dev)
                loss = run_phase(phase, model, batch, opt, loss, autocast)
                torch.cuda.synchronize(dev)
                peak = torch.cuda.max_memory_allocated(dev)
                reserved = max(reserved, torch.cuda.max_memory_reserved(dev))
                details.append(PhasePeak(step=step, phase=phase, peak_bytes=peak,
                                         breakdown={**dict.fromkeys(BREAKDOWN_KEYS, 0), "other": peak}))
            torch.cuda.synchronize(dev)
            step_seconds.append(time.perf_counter() - step_t0)
        failed = None
    except torch.cuda.OutOfMemoryError as exc:
        oom = True
        error = (f"does not fit: out of memory at {failed} after "
                 f"{torch.cuda.max_memory_allocated(dev)} bytes allocated ({str(exc).splitlines()[0]})")
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    notes.append("cuda mode: no per-category breakdown; the allocator peak is reported under 'other'")
    return _summarise("cuda", details, built, time.perf_counter() - t0, settings, notes, reserved_peak_bytes=reserved,
                      oom=oom, error=error, failed_phase=failed, step_seconds=tuple(step_seconds))
