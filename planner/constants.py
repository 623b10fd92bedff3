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
