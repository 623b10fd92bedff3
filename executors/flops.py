"""Count the matmul FLOPs of one real training step with ``torch.utils.flop_counter.FlopCounterMode``.

The reference for :mod:`planner.compute`: the model a plan describes is built with random weights
(:func:`executors.build.build_model`, CPU), and one step runs under two separate counters:

    with FlopCounterMode() as fwd:  loss = model(input_ids=ids, labels=labels).loss
    with FlopCounterMode() as bwd:  loss.backward()

so the backward count includes the forward recomputation of checkpointed layers (it runs inside
``backward``). FlopCounterMode counts ``mm`` / ``addmm`` / ``bmm`` / ``baddbmm`` as ``2 m n k`` and
the fused SDPA kernels with its own attention formulas (forward: ``q k^T`` and ``p v``; backward:
five products, the score recomputation included); elementwise work is not counted.

Two CPU kernels have no formula in torch 2.13's registry, so a CPU run would count them as zero
where a CUDA run counts them. :data:`CPU_FLOP_FORMULAS` gives them the formulas of their CUDA
counterparts:

- ``_scaled_dot_product_flash_attention_for_cpu`` (and its backward): the CPU flash kernel, counted
  like ``_scaled_dot_product_flash_attention`` (the same ``sdpa_flop_count`` /
  ``sdpa_backward_flop_count``);
- ``_grouped_mm`` (transformers' default MoE experts implementation): ``2 m k n`` over all groups,
  as for the ``mm`` it batches;
- ``bitsandbytes::gemm_4bit`` (the CPU forward of a 4-bit linear; on CUDA ``MatMul4Bit`` runs
  ``F.linear`` on the dequantized weight, an ``mm``): ``2 m k n``. Its backward is an ``mm`` on
  the dequantized weight on both devices.

The step runs with the CUDA behaviours of :class:`executors.measure.CudaEmulation` that change which
kernels run (dropout as ``native_dropout``, SDPA dropout inside the fused kernel), so that the CPU
takes the kernels a CUDA run takes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from executors.build import build_model
from executors.measure import CudaEmulation, _cuda_behaviour, make_batch

aten = torch.ops.aten


def _cpu_flash_forward(query, key, value, *args: Any, out_shape=None, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward(grad_out, query, key, value, *args: Any, out_shape=None, **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _grouped_mm(a, b, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """``_grouped_mm(a (M, K), b (G, K, N) or (K, N) with offsets)``: every row of ``a`` meets one
    group's K x N matrix (or every K-slice one group's output): ``2 M K N`` in total."""
    return 2 * a[-2] * a[-1] * b[-1]


def _gemm_4bit(a, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """``bitsandbytes::gemm_4bit(A (..., K), packed B, ...) -> (..., N)``: ``2 rows K N``."""
    rows = 1
    for d in a[:-1]:
        rows *= d
    return 2 * rows * a[-1] * out_shape[-1]


#: Formulas for CPU kernels torch's FlopCounterMode registry lacks (see the module docstring).
CPU_FLOP_FORMULAS: dict[Any, Any] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
    aten._grouped_mm: _grouped_mm,
}


def cpu_flop_formulas() -> dict[Any, Any]:
    """:data:`CPU_FLOP_FORMULAS`, plus bitsandbytes' CPU 4-bit matmul where bitsandbytes is installed
    (``gemm_4bit``, a custom op, where CUDA's ``MatMul4Bit`` runs ``F.linear`` on the dequantized weight)."""
    formulas = dict(CPU_FLOP_FORMULAS)
    try:
        import bitsandbytes  # noqa: F401  (registers torch.ops.bitsandbytes)

        formulas[torch.ops.bitsandbytes.gemm_4bit] = _gemm_4bit
    except (ImportError, AttributeError):
        pass
    return formulas

#: CUDA behaviours that decide which kernels a CPU step runs (memory-only emulations off).
KERNEL_EMULATION = CudaEmulation(allocator_rounding=False, dropout_bool_mask=True, sdpa_dropout_fused=True,
                                 foreach_optimizers=False)


@dataclass(frozen=True)
class MeasuredFlops:
    """FLOPs FlopCounterMode counted in one training step, per phase and per aten op."""

    forward_flops: int
    backward_flops: int  # backward, with the recomputation of checkpointed layers
    forward_by_op: dict[str, int] = field(default_factory=dict)
    backward_by_op: dict[str, int] = field(default_factory=dict)
    batch_size: int = 0
    seq_len: int = 0
    wall_s: float = 0.0

    @property
    def total_flops(self) -> int:
        return self.forward_flops + self.backward_flops


def _by_op(counter: FlopCounterMode) -> dict[str, int]:
    return {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}


def measure_flops(
    config: Mapping[str, Any],
    *,
    peft_config: Mapping[str, Any] | None = None,
    trainable_base_params: list[str] | None = None,
    quantization: Mapping[str, Any] | None = None,
    batch_size: int = 2,
    seq_len: int = 16,
    target_len: int | None = None,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> MeasuredFlops:
    """Build the model on the CPU and count one step's FLOPs (forward, then backward).

    Arguments as :func:`executors.measure.measure_step` (``config`` a config.json mapping, the
    PEFT config mapping a plan carries, the base parameters that train for selective methods).
    Small configs only: the step runs on real tensors.
    """
    t0 = time.perf_counter()
    built = build_model(config, device="cpu", peft_config=peft_config, trainable_base_params=trainable_base_params,
                        dtype=dtype, quantization=quantization, attn_implementation=attn_implementation,
                        gradient_checkpointing=gradient_checkpointing, seed=seed)
    batch = make_batch(built, batch_size, seq_len, target_len, "cpu", torch.Generator().manual_seed(seed))
    model = built.peft_model_or_model
    formulas = cpu_flop_formulas()
    with _cuda_behaviour(KERNEL_EMULATION):
        with FlopCounterMode(display=False, custom_mapping=formulas) as fwd:
            loss = model(**batch).loss
        with FlopCounterMode(display=False, custom_mapping=formulas) as bwd:
            loss.backward()
    return MeasuredFlops(forward_flops=int(fwd.get_total_flops()), backward_flops=int(bwd.get_total_flops()),
                         forward_by_op=_by_op(fwd), backward_by_op=_by_op(bwd), batch_size=batch_size,
                         seq_len=seq_len, wall_s=time.perf_counter() - t0)


def measure_step_time(
    config: Mapping[str, Any],
    *,
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
    warmup_steps: int = 2,
    steps: int = 5,
    seed: int = 0,
) -> float:
    """Seconds per training step (forward, backward, optimizer step) on CUDA, the mean over
    ``steps`` after ``warmup_steps``; what :func:`planner.training_time` takes as ``measured_step_s``."""
    if not torch.cuda.is_available():
        raise RuntimeError("measure_step_time needs a CUDA device")
    from executors.measure import make_optimizer, run_phase

    built = build_model(config, device="cuda", peft_config=peft_config, trainable_base_params=trainable_base_params,
                        dtype=dtype, quantization=quantization, attn_implementation=attn_implementation,
                        gradient_checkpointing=gradient_checkpointing, seed=seed)
    dev = torch.device("cuda")
    batch = make_batch(built, batch_size, seq_len, target_len, dev, torch.Generator(device=dev).manual_seed(seed))
    model = built.peft_model_or_model
    opt = make_optimizer(optimizer, built.trainable_parameters())

    def step() -> None:
        loss = None
        for phase in ("forward", "backward", "optimizer"):
            loss = run_phase(phase, model, batch, opt, loss)

    for _ in range(warmup_steps):
        step()
    torch.cuda.synchronize(dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize(dev)
    return start.elapsed_time(end) / 1000.0 / steps
