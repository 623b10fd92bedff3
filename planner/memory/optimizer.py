"""Optimizer state (resident from the first step on) and the temporaries of ``optimizer.step()``.

Each optimizer as ``transformers.Trainer`` builds it for ``TrainingArguments.optim``:

- ``adamw_torch``: ``torch.optim.AdamW`` defaults, which on CUDA take the *foreach* path
  (torch/optim/adam.py ``_multi_tensor_adam``): ``exp_avg`` and ``exp_avg_sq`` per parameter in
  its dtype; ``step`` is a CPU scalar (not capturable). Per dtype group the step allocates
  ``scaled_device_grads = _foreach_mul(grads, 1 - beta2)`` (deleted after ``addcmul_``) and then
  ``exp_avg_sq_sqrt = _foreach_sqrt(exp_avg_sqs)``, which is still bound when the next group's
  temporaries appear: the peak temporary is max over groups of (previous group + this group).
- ``adamw_torch_fused``: same state, ``step`` a device fp32 scalar per parameter, no temporaries.
- ``sgd``: ``torch.optim.SGD`` with Trainer's defaults (momentum 0): no state, in-place update.
- ``adafactor``: transformers' ``Adafactor(scale_parameter=False, relative_step=False)``:
  factored fp32 second moments (row and column vectors) for >= 2-D parameters, a full fp32
  vector for 1-D ones; the per-parameter loop upcasts 16-bit grads and parameters to fp32 and
  holds two full fp32 updates at once (``update = grad**2 + eps`` then ``_approx_sq_grad``;
  ``p.add_(-update)``).
- ``adamw_bnb_8bit`` / ``paged_adamw_8bit`` / ``paged_adamw_32bit``: bitsandbytes ``AdamW``:
  8-bit blockwise states (uint8 + one fp32 absmax per 256 values) for parameters with at least
  ``min_8bit_size`` = 4096 elements, fp32 states below; paged variants allocate the states in CUDA
  unified memory, outside PyTorch's allocator (not in ``max_memory_allocated``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.constants import DTYPE_BYTES
from planner.memory.sim import round_alloc

#: bitsandbytes Optimizer8bit ``min_8bit_size`` default (bitsandbytes/optim/optimizer.py).
BNB_MIN_8BIT_SIZE = 4096
#: bitsandbytes blockwise 8-bit optimizer block size (``blocksize=256`` in optimizer.py init_state).
BNB_OPTIM_BLOCKSIZE = 256
#: bitsandbytes' dynamic quantization maps (``qmap1``/``qmap2``): 256 fp32 values each, shared.
BNB_QMAP_VALUES = 256


@dataclass(frozen=True)
class TrainableTensor:
    key: str
    numel: int
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class OptimizerBytes:
    state_bytes: int  # in PyTorch's allocator (max_memory_allocated)
    paged_bytes: int  # in CUDA unified memory (bitsandbytes paged optimizers)
    step_temporary_bytes: int  # extra peak inside optimizer.step()


def _nbytes(numel: int, dtype: str) -> int:
    return round_alloc(numel * DTYPE_BYTES[dtype])


def optimizer_bytes(name: str, tensors: list[TrainableTensor]) -> OptimizerBytes:
    if name == "sgd":
        return OptimizerBytes(0, 0, 0)
    if name in ("adamw_torch", "adamw_torch_fused"):
        state = sum(2 * _nbytes(t.numel, t.dtype) for t in tensors)
        if name == "adamw_torch_fused":
            state += len(tensors) * _nbytes(1, "float32")
            return OptimizerBytes(state, 0, 0)
        groups: dict[str, int] = {}
        for t in tensors:  # Optimizer._group_tensors_by_device_and_dtype keeps first-seen order
            groups[t.dtype] = groups.get(t.dtype, 0) + _nbytes(t.numel, t.dtype)
        sizes = list(groups.values())
        temp = max((sizes[i] + (sizes[i - 1] if i else 0) for i in range(len(sizes))), default=0)
        return OptimizerBytes(state, 0, temp)
    if name == "adafactor":
        state, temp = 0, 0
        for t in tensors:
            if len(t.shape) >= 2:
                rows = math.prod(t.shape[:-1])
                cols = math.prod(t.shape[:-2]) * t.shape[-1]
                state += _nbytes(rows, "float32") + _nbytes(cols, "float32")
            else:
                state += _nbytes(t.numel, "float32")
            state += _nbytes(1, "float32")  # state["RMS"] = self._rms(p_data_fp32), a 0-dim tensor
            copies = 2 if t.dtype != "float32" else 0  # grad.float(), p.float()
            temp = max(temp, (copies + 2) * _nbytes(t.numel, "float32"))
        return OptimizerBytes(state, 0, temp)
    if name in ("adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit"):
        eight = name != "paged_adamw_32bit"
        state = 0
        for t in tensors:
            if eight and t.numel >= BNB_MIN_8BIT_SIZE:
                blocks = -(-t.numel // BNB_OPTIM_BLOCKSIZE)
                state += 2 * _nbytes(t.numel, "uint8") + 2 * _nbytes(blocks, "float32")
            else:
                state += 2 * _nbytes(t.numel, "float32")
        qmaps = 2 * _nbytes(BNB_QMAP_VALUES, "float32") if eight else 0
        if name.startswith("paged"):
            return OptimizerBytes(qmaps, state, 0)
        return OptimizerBytes(state + qmaps, 0, 0)
    raise ValueError(f"unknown optimizer {name!r}")
