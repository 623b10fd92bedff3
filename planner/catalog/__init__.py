"""Bundled data: model configs (``models/*.json`` + ``models.json`` index with sources).

Everything here is read from inside the package (``importlib.resources``); nothing is fetched
and nothing outside the package is read.
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict

from planner.errors import UnknownModelError


class CatalogModel(BaseModel):
    """One catalog entry: where its config and its verified parameter count came from."""

    model_config = ConfigDict(frozen=True)

    id: str
    file: str
    model_type: str
    head_class: str
    params_from_config: int
    published_params: int | None
    published_basis: str
    match: str
    published_source: str
    config_source: str


@lru_cache(maxsize=1)
def _index() -> dict[str, CatalogModel]:
    raw = json.loads(resources.files("planner.catalog").joinpath("models.json").read_text(encoding="utf-8"))
    return {row["id"]: CatalogModel(**row) for row in raw["models"]}


def model_ids() -> list[str]:
    return list(_index())


def catalog_entries() -> list[CatalogModel]:
    return list(_index().values())


def entry(model_id: str) -> CatalogModel:
    index = _index()
    if model_id in index:
        return index[model_id]
    lowered = {k.lower(): k for k in index}
    if model_id.lower() in lowered:
        return index[lowered[model_id.lower()]]
    close = difflib.get_close_matches(model_id, list(index), n=5, cutoff=0.4)
    hint = f"; did you mean: {', '.join(close)}" if close else ""
    raise UnknownModelError(
        f"{model_id!r} is not in the bundled catalog ({len(index)} models{hint}). "
        "Pass a path to a config.json or a config dict for other models; `python -m planner models` lists the catalog.",
        field="model",
    )


@lru_cache(maxsize=None)
def _config_text(file: str) -> str:
    return resources.files("planner.catalog").joinpath("models", file).read_text(encoding="utf-8")


def config(model_id: str) -> dict[str, Any]:
    """A fresh copy of the bundled config.json for a catalog id."""
    return json.loads(_config_text(entry(model_id).file))
