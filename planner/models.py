"""Resolve what a user passes as ``model`` (catalog id, config.json path, dict, ModelSpec)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from planner import catalog
from planner.errors import ConfigError, UnknownModelError
from planner.spec import ModelSpec, read_config_file

ModelLike = str | Path | Mapping[str, Any] | ModelSpec


@lru_cache(maxsize=64)
def _catalog_spec(model_id: str) -> ModelSpec:
    e = catalog.entry(model_id)
    return ModelSpec.from_config(catalog.config(e.id), name=e.id, source=f"catalog: {e.config_source}")


def load_model(model: ModelLike) -> ModelSpec:
    """Catalog id, path to a config.json (or its folder), a config mapping, or a ModelSpec."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, Mapping):
        name = str(model.get("_name_or_path") or model.get("name") or "custom")
        return ModelSpec.from_config(model, name=name, source="dict")
    if isinstance(model, (str, Path)):
        text = str(model)
        path = Path(text)
        looks_like_path = isinstance(model, Path) or text.endswith(".json") or path.is_dir() or path.is_file()
        if looks_like_path:
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise ConfigError(f"no config.json at {str(path)!r}", field="model")
            return ModelSpec.from_config(read_config_file(path), name=path.parent.name or path.stem, source=str(path))
        try:
            return _catalog_spec(catalog.entry(text).id)
        except UnknownModelError:
            raise
    raise ConfigError(f"expected a catalog id, a config.json path or a dict, got {type(model).__name__}", field="model")
