"""Every named constant the planner uses, with its source. Nothing numeric hides elsewhere."""

from __future__ import annotations

#: Bytes per element of the dtypes the planner handles (IEEE / PyTorch definitions).
DTYPE_BYTES: dict[str, int] = {
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1,
    "bool": 1,
}
#: Aliases accepted for dtype names (PyTorch / transformers spellings).
DTYPE_ALIASES: dict[str, str] = {
    "fp32": "float32", "float": "float32", "torch.float32": "float32",
    "fp16": "float16", "half": "float16", "torch.float16": "float16",
    "bf16": "bfloat16", "torch.bfloat16": "bfloat16",
}
#: safetensors dtype tags (safetensors/src/tensor.rs ``Dtype``), and their order in that enum:
#: ``serialize`` sorts tensors by dtype (descending enum order), then by name, which fixes the
#: data offsets written in the header.
SAFETENSORS_TAG: dict[str, str] = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "float16": "F16", "bfloat16": "BF16", "int32": "I32",
    "float32": "F32", "float64": "F64", "int64": "I64",
}
SAFETENSORS_DTYPE_ORDER: tuple[str, ...] = (
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16",
    "I32", "U32", "F32", "C64", "F64", "I64", "U64",
)
#: safetensors pads the JSON header with spaces to a multiple of this (safetensors/src/tensor.rs ``prepare``).
SAFETENSORS_HEADER_ALIGN = 8
#: Bytes of the little-endian u64 header length that starts every safetensors file.
SAFETENSORS_LENGTH_PREFIX_BYTES = 8
#: Metadata PEFT writes into adapter_model.safetensors (peft/utils/save_and_load.py / peft_model.py
#: ``safe_save_file(..., metadata={"format": "pt"})``).
PEFT_SAFETENSORS_METADATA: dict[str, str] = {"format": "pt"}

#: Binary prefixes.
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def normalise_dtype(name: str, field: str = "dtype") -> str:
    from planner.errors import PlannerError

    key = str(name).strip().lower()
    key = DTYPE_ALIASES.get(key, key)
    if key not in ("float32", "float16", "bfloat16"):
        raise PlannerError(f"unsupported dtype {name!r}; use one of float32, bfloat16, float16 (or fp32, bf16, fp16)",
                           field=field)
    return key

# --- memory model -----------------------------------------------------------------------------
#: CUDA caching allocator block size: every allocation is rounded up to a multiple of 512 bytes
#: (``kMinBlockSize`` in c10/cuda/CUDACachingAllocator.cpp).
CUDA_ALLOCATION_ROUNDING_BYTES = 512
#: Extra reserved memory over allocated, as a fraction of the transient (non-resident) bytes:
#: the caching allocator keeps freed blocks of activations and gradients and cannot always reuse
#: them for differently sized requests. PEFT's published memory benchmarks (L40S) show reserved
#: 5-10% above allocated for LoRA runs (shared/notes/measuring-memory-on-cpu.md); 10% of the
#: transient part reproduces the upper end. Uncertain until measured on a GPU (error band).
RESERVED_FRAGMENTATION = 0.10
#: Device memory the CUDA context and kernels take outside PyTorch's allocator, as nvidia-smi
#: shows it: ~300-600 MiB with lazy module loading (CUDA >= 11.7, PyTorch 2.x; PyTorch docs
#: "CUDA semantics: memory management"); 512 MiB assumed.
CUDA_CONTEXT_BYTES = 512 * MIB
#: Relative error band claimed for ``attn_implementation="flash_attention_2"``, which is modelled
#: (transformers 5.24 ``integrations/flash_attention.py``: no mask, keys / values at their KV-head
#: count, flash-attn 2's ``FlashAttnFunc`` saving q, k, v, out, an fp32 log-sum-exp and its RNG
#: state) but measured nowhere: fake / CPU mode has no flash-attn, and no GPU run is committed.
#: The replay around the kernel is the validated SDPA one (band 2%); on top, flash-attn's backward
#: workspaces are not replayed (``mha_bwd``: an fp32 dq accumulator, 4 x B x L x heads x head_dim
#: bytes, and with GQA the key / value gradients at the full head count before the group sum:
#: 257 MiB, 0.25% of the 99 GiB peak, for Llama-3.1-8B LoRA all-linear at 1 x 8192 tokens), nor
#: differences between flash-attn builds. 5% covers both with margin; it narrows once a GPU run
#: measures it.
FLASH_ATTENTION_2_ERROR_BAND = 0.05

# --- time and cost ----------------------------------------------------------------------------
#: Fraction of a GPU's dense peak (``catalog/gpus.json``) that a training step's matmuls sustain,
#: applied to the FLOPs the step executes (recomputation included). Large bf16 training runs
#: report 38-46% model FLOPs utilisation: PaLM 540B 46.2% on TPU v4 (57.8% counting
#: rematerialisation as hardware FLOPs; Chowdhery et al. 2022, arXiv:2204.02311, Table 3 and
#: section 4), Llama 3 405B 38-43% on H100 (Dubey et al. 2024, arXiv:2407.21783, Table 4).
#: 0.40 is the low end of that range. Single-GPU fine-tuning with small micro-batches and a
#: frozen-weight backward usually sustains less: measure (``executors.flops.measure_step_time``)
#: and pass ``utilization=``.
DEFAULT_UTILIZATION = 0.40
DEFAULT_UTILIZATION_SOURCE = ("default 0.40: low end of the 38-46% MFU large bf16 runs report (PaLM 540B 46.2%, "
                              "arXiv:2204.02311 Table 3; Llama 3 405B 38-43%, arXiv:2407.21783 Table 4)")
#: Seconds in an hour (GPU-hours and prices per GPU-hour).
SECONDS_PER_HOUR = 3600
#: FLOP/s in one TFLOPS (the catalog's unit: 10^12).
FLOPS_PER_TFLOPS = 10**12

# --- multi-GPU (planner/memory/parallel.py, docs/memory-model.md "Multi-GPU") ------------------
#: ``torch.nn.parallel.DistributedDataParallel(bucket_cap_mb=25)`` default: gradient buckets are
#: closed at 25 MiB (torch/nn/parallel/distributed.py ``bucket_cap_mb``).
DDP_BUCKET_CAP_BYTES = 25 * MIB
#: DDP's first bucket is closed at 1 MiB so the first all-reduce starts early
#: (``torch.distributed._DEFAULT_FIRST_BUCKET_BYTES``).
DDP_FIRST_BUCKET_BYTES = 1 * MIB
#: DeepSpeed's own default ``reduce_bucket_size`` / ``allgather_bucket_size`` (5e8 elements,
#: deepspeed/runtime/zero/config.py). Not used by the plans: transformers fills "auto" instead (below).
DEEPSPEED_DEFAULT_BUCKET_ELEMENTS = 500_000_000
#: transformers' "auto" ``zero_optimization.reduce_bucket_size`` = hidden_size^2 elements
#: (transformers/integrations/deepspeed.py ``HfTrainerDeepSpeedConfig.trainer_config_finalize``):
#: the size of the contiguous-gradient (IPG) buffer, in the model dtype.
DEEPSPEED_REDUCE_BUCKET_PER_HIDDEN2 = 1
#: transformers' "auto" ``stage3_prefetch_bucket_size`` = 0.9 x hidden_size^2 elements (same source).
DEEPSPEED_PREFETCH_BUCKET_PER_HIDDEN2 = 0.9
#: transformers' "auto" ``stage3_param_persistence_threshold`` = 10 x hidden_size elements (same
#: source): ZeRO-3 keeps parameters this small unpartitioned on every rank (norms, biases).
DEEPSPEED_PERSISTENCE_THRESHOLD_PER_HIDDEN = 10
#: DeepSpeed's ``stage3_max_reuse_distance`` and ``stage3_max_live_parameters`` defaults (1e9
#: elements, deepspeed/runtime/zero/config.py; transformers leaves them): a gathered parameter that is
#: used again within that many elements is not released, so the last blocks of the forward stay
#: gathered into the backward.
DEEPSPEED_MAX_REUSE_DISTANCE = 1_000_000_000
#: Search ceiling of ``planner.solve_gpus`` (GPUs per data-parallel group).
MAX_NUM_GPUS = 1024
