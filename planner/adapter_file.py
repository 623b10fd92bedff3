"""Exact size of a safetensors file as written by ``safetensors.torch.save_file`` (what PEFT's
``save_pretrained`` writes as ``adapter_model.safetensors``), computed from names, shapes and
dtypes without writing anything.

Layout (safetensors/src/tensor.rs): an 8-byte little-endian header length, a compact JSON header
``{"__metadata__": {...}, "<name>": {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}, ...}``
with tensors ordered by dtype (descending enum order) then name, padded with spaces to a multiple
of 8 bytes, then the raw tensor data in that order.
"""

from __future__ import annotations

import json
import math
from typing import Iterable

from planner.constants import (
    DTYPE_BYTES, PEFT_SAFETENSORS_METADATA, SAFETENSORS_DTYPE_ORDER, SAFETENSORS_HEADER_ALIGN,
    SAFETENSORS_LENGTH_PREFIX_BYTES, SAFETENSORS_TAG,
)


def safetensors_layout(tensors: Iterable[tuple[str, tuple[int, ...], str]],
                       metadata: dict[str, str] | None = PEFT_SAFETENSORS_METADATA) -> tuple[int, int]:
    """(header bytes incl. length prefix and padding, data bytes) for ``(name, shape, dtype)`` items."""
    items = [(name, tuple(shape), dtype) for name, shape, dtype in tensors]
    items.sort(key=lambda t: (-SAFETENSORS_DTYPE_ORDER.index(SAFETENSORS_TAG[t[2]]), t[0]))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, shape, dtype in items:
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": SAFETENSORS_TAG[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    padded = len(text) + (-len(text)) % SAFETENSORS_HEADER_ALIGN
    return SAFETENSORS_LENGTH_PREFIX_BYTES + padded, offset


def safetensors_file_bytes(tensors: Iterable[tuple[str, tuple[int, ...], str]],
                           metadata: dict[str, str] | None = PEFT_SAFETENSORS_METADATA) -> int:
    header, data = safetensors_layout(tensors, metadata)
    return header + data
