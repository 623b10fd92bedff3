"""Shared fixtures for the executor tests: tiny configs derived from catalog configs."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from planner import catalog  # noqa: E402


def tiny_llama() -> dict[str, Any]:
    """Llama-2-7b's config shrunk to 2 layers x 64 hidden, vocab 512 (same code path)."""
    c = catalog.config("meta-llama/Llama-2-7b-hf")
    c.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, vocab_size=512, max_position_embeddings=256)
    return c


@pytest.fixture
def llama_tiny() -> dict[str, Any]:
    return tiny_llama()
