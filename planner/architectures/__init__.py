"""Architecture registry: ``model_type`` -> the module that parses its config and lists its tensors.

Each family module defines ``MODEL_TYPES``, ``parse(config) -> dict`` (the normalised
:class:`~planner.spec.ModelSpec` fields) and ``inventory(spec) -> list[ModuleEntry]``. Families
that share a shape share a module (llama covers mistral, qwen2, qwen3, gemma, gemma2, mixtral).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from planner.architectures import bert, bloom, falcon, gpt2, gpt_neox, llama, opt, phi, phi3, t5
from planner.architectures.base import Inventory
from planner.errors import UnsupportedModelError

_FAMILIES: tuple[ModuleType, ...] = (llama, phi, phi3, gpt2, gpt_neox, opt, bloom, falcon, t5, bert)

REGISTRY: dict[str, ModuleType] = {mt: fam for fam in _FAMILIES for mt in fam.MODEL_TYPES}


def supported_model_types() -> list[str]:
    return sorted(REGISTRY)


def family_of(model_type: str) -> ModuleType:
    try:
        return REGISTRY[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}",
            field="model_type",
        ) from None


def parse_config(config: dict[str, Any]) -> dict[str, Any]:
    from planner.architectures._config import require

    model_type = require(config, "model_type", str)
    return family_of(model_type).parse(config)


def build_inventory(spec) -> Inventory:
    return Inventory(tuple(family_of(spec.model_type).inventory(spec)))
