"""Resident bytes of the model: parameters in their stored dtype, 4-bit packed weights and their
quantization state, the method's new tensors, buffers. Every tensor is its own allocation
(rounded to the allocator's 512-byte block)."""

from __future__ import annotations

from dataclasses import dataclass

from planner.constants import DTYPE_BYTES
from planner.memory.sim import round_alloc

#: bitsandbytes ``Params4bit`` default block size: one absmax per 64 weights
#: (bitsandbytes/nn/modules.py ``Params4bit(blocksize=64)``; QLoRA paper section 3).
BNB_4BIT_BLOCKSIZE = 64
#: Double quantization quantizes the absmax values in blocks of 256 (bitsandbytes/functional.py
#: ``quantize_4bit(compress_statistics=True)`` -> ``quantize_blockwise(absmax, blocksize=256)``).
BNB_DOUBLE_QUANT_BLOCKSIZE = 256
#: The 4-bit code table each ``QuantState`` carries (16 fp32 values, ``get_4bit_type``).
BNB_4BIT_CODE_VALUES = 16
#: The dynamic 8-bit map of the nested state (256 fp32 values), created once and shared.
BNB_DYNAMIC_MAP_VALUES = 256


def nbytes(numel: int, dtype: str) -> int:
    return round_alloc(numel * DTYPE_BYTES[dtype])


@dataclass(frozen=True)
class QuantizedLinearBytes:
    packed_weight_bytes: int  # the uint8 tensor holding two 4-bit weights per byte
    state_bytes: int  # absmax (+ nested state), code table


def linear_4bit_bytes(numel: int, double_quant: bool) -> QuantizedLinearBytes:
    """Storage of one ``Linear4bit`` weight (NF4 and FP4 pack the same way)."""
    packed = nbytes(-(-numel // 2), "uint8")
    blocks = -(-numel // BNB_4BIT_BLOCKSIZE)
    state = nbytes(BNB_4BIT_CODE_VALUES, "float32")
    if double_quant:
        state += nbytes(blocks, "uint8")  # quantized absmax
        state += nbytes(-(-blocks // BNB_DOUBLE_QUANT_BLOCKSIZE), "float32")  # state2.absmax
        state += nbytes(1, "float32")  # offset (absmax mean)
    else:
        state += nbytes(blocks, "float32")
    return QuantizedLinearBytes(packed, state)


def shared_quant_state_bytes(double_quant: bool) -> int:
    return nbytes(BNB_DYNAMIC_MAP_VALUES, "float32") if double_quant else 0
