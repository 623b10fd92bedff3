"""The memory budget of one training step: what ``plan.memory`` holds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Phase = Literal["forward", "backward", "optimizer"]
#: Breakdown keys (bytes at the peak). ``weights``: frozen + trainable parameters (4-bit packed
#: weights included); ``quantization``: 4-bit state (absmax, double-quant tables); ``logits``:
#: logits, loss and their gradients; ``temporaries``: short-lived buffers of the peak op
#: (optimizer foreach temporaries, recomputed layer, attention workspace).
BREAKDOWN_KEYS = ("weights", "gradients", "optimizer", "activations", "logits", "quantization", "temporaries")


class MemoryBudget(BaseModel):
    """Predicted memory of one steady-state training step on one GPU, in bytes (with ``num_gpus > 1``:
    on one GPU, rank 0, of the data-parallel group)."""

    model_config = ConfigDict(frozen=True)

    peak_bytes: int
    """Predicted ``torch.cuda.max_memory_allocated`` (larger of steps 1 and 2)."""
    reserved_bytes: int
    """Predicted ``torch.cuda.max_memory_reserved`` (allocator segments and caching)."""
    device_bytes: int
    """What nvidia-smi shows: reserved + CUDA context."""
    peak_phase: Phase
    breakdown: dict[str, int]
    """Bytes per component at the peak (keys ``BREAKDOWN_KEYS``); sums to ``peak_bytes``."""
    phase_peaks: dict[str, int]
    """Peak allocated bytes inside each phase."""
    error_band: float
    """Relative uncertainty of ``peak_bytes`` the model claims (e.g. 0.02 = +-2%), from validation."""
    notes: list[str] = []
    host_bytes: int = 0
    """Host (CPU) memory per GPU for what is offloaded (``offload=``): fp32 master weights, optimizer
    state, offloaded parameter and gradient shards. 0 without offload. Not part of ``peak_bytes``."""

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30

    @property
    def reserved_gib(self) -> float:
        return self.reserved_bytes / 2**30
