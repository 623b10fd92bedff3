"""PEFT's default target modules per model type, bundled as data (``peft_defaults.json``)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def _data() -> dict:
    return json.loads(resources.files("planner.methods").joinpath("peft_defaults.json").read_text(encoding="utf-8"))


def default_targets(tuner: str) -> dict[str, list[str]]:
    return _data()[tuner]["targets"]


def peft_version() -> str:
    return _data()["peft_version"]
