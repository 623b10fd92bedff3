"""ModelSpec: a model's geometry read from a Hugging Face ``config.json``, without torch.

``ModelSpec`` holds the normalised shape fields every later stage needs (hidden size, layers,
heads, KV heads, head_dim, intermediate size, vocabulary, tying, MoE) plus the raw config, and
owns the :class:`~planner.architectures.base.Inventory` of every parameter tensor, built once by
the architecture module registered for its ``model_type``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, PrivateAttr

from planner.errors import ConfigError

TaskKind = Literal["causal_lm", "seq2seq_lm", "masked_lm"]

#: Largest config.json accepted from a file or upload (real ones are a few kB).
MAX_CONFIG_FILE_BYTES = 1 << 20


class ModelSpec(BaseModel):
    """Normalised geometry of one model. Build with :func:`load_model` or :meth:`from_config`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    model_type: str
    architecture: str
    task: TaskKind
    hidden_size: int
    num_layers: int  # transformer blocks (decoder blocks for encoder-decoder models)
    num_encoder_layers: int = 0  # encoder blocks of an encoder-decoder model
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int | None = None
    tie_word_embeddings: bool
    num_experts: int = 0
    num_experts_per_tok: int = 0
    hidden_act: str = ""
    torch_dtype: str | None = None
    source: str | None = None  # where the config came from (catalog source or file path)
    config: dict[str, Any]  # the config as given (validated keys only are trusted)

    _inventory: Any = PrivateAttr(default=None)
    _memo: Any = PrivateAttr(default=None)  # planner.memo: results derived from this (immutable) spec

    @property
    def is_encoder_decoder(self) -> bool:
        return self.task == "seq2seq_lm"

    @property
    def inventory(self):  # -> Inventory (import cycle otherwise)
        if self._inventory is None:
            from planner.architectures import build_inventory

            object.__setattr__(self, "_inventory", build_inventory(self))
        return self._inventory

    def memo_caches(self) -> dict:
        """The per-spec caches of :mod:`planner.memo`."""
        if self._memo is None:
            object.__setattr__(self, "_memo", {})
        return self._memo

    @property
    def total_params(self) -> int:
        """``sum(p.numel() for p in model.parameters())`` of the model transformers builds."""
        return self.inventory.total_params

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, name: str = "custom", source: str | None = None) -> "ModelSpec":
        from planner.architectures import parse_config

        if not isinstance(config, Mapping):
            raise ConfigError(f"expected a JSON object (mapping), got {type(config).__name__}", field="config")
        fields = parse_config(dict(config))
        spec = cls(name=name, source=source, config=dict(config), **fields)
        spec.inventory  # build now so shape errors surface at load time  # noqa: B018
        return spec

    def summary(self) -> dict[str, Any]:
        """The architecture facts a person wants to see first."""
        return {
            "name": self.name,
            "model_type": self.model_type,
            "architecture": self.architecture,
            "layers": self.num_layers,
            "encoder_layers": self.num_encoder_layers,
            "hidden_size": self.hidden_size,
            "attention_heads": self.num_attention_heads,
            "kv_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "experts": self.num_experts,
            "tied_embeddings": self.tie_word_embeddings,
            "total_params": self.total_params,
        }


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a config.json as data (never executed), with a size limit and clear errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no such file: {str(p)!r}", field="config")
    size = p.stat().st_size
    if size > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(f"{str(p)!r} is {size} bytes; a config.json over {MAX_CONFIG_FILE_BYTES} bytes is refused", field="config")
    return parse_config_text(p.read_text(encoding="utf-8", errors="replace"), origin=str(p))


def parse_config_text(text: str, *, origin: str = "config.json") -> dict[str, Any]:
    if len(text.encode("utf-8", errors="replace")) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(f"{origin} is larger than {MAX_CONFIG_FILE_BYTES} bytes", field="config")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{origin} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", field="config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must hold a JSON object, found {type(data).__name__}", field="config")
    return data
