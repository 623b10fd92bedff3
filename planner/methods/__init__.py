"""The method registry: one module per method, each registered here under its name and aliases.

``get_method(name)`` returns a :class:`MethodInfo` (config class, builder, category, paper);
``methods()`` lists them. A PEFT config mapping selects its method through ``peft_type``
(``PEFT_TYPES``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from planner.errors import MethodConfigError


@dataclass(frozen=True)
class MethodInfo:
    name: str
    aliases: tuple[str, ...]
    category: str  # full | additive | reparameterization | selective | hybrid
    config: type
    build: Callable  # (config, spec, method_name) -> MethodPlan
    paper: str
    peft_type: str | None


_REGISTRY: dict[str, MethodInfo] = {}
_ALIASES: dict[str, str] = {}
PEFT_TYPES: dict[str, str] = {}


def register(name: str, *, aliases: tuple[str, ...] = (), category: str, config: type, paper: str,
             peft_type: str | None = "__from_config__"):
    def wrap(fn: Callable) -> Callable:
        ptype = config.peft_type if peft_type == "__from_config__" else peft_type
        info = MethodInfo(name, aliases, category, config, fn, paper, ptype)
        _REGISTRY[name] = info
        for key in (name, *aliases):
            _ALIASES[key] = name
        if ptype and ptype not in PEFT_TYPES:
            PEFT_TYPES[ptype] = name
        return fn

    return wrap


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def get_method(name: str) -> tuple[MethodInfo, str]:
    """The method info and the canonical alias used (e.g. ``("lora", "qlora")``)."""
    key = _normalise(name)
    key = {"ia³": "ia3", "full_finetuning": "full", "full_fine_tuning": "full", "prefix": "prefix_tuning",
           "prompt": "prompt_tuning"}.get(key, key)
    if key not in _ALIASES:
        raise MethodConfigError(f"unknown method {name!r}; known methods: {', '.join(sorted(_ALIASES))}", field="method")
    return _REGISTRY[_ALIASES[key]], key


def method_for_peft_type(peft_type: str) -> MethodInfo:
    key = str(peft_type).upper()
    if key not in PEFT_TYPES:
        raise MethodConfigError(f"peft_type {peft_type!r} is not supported; supported: {', '.join(sorted(PEFT_TYPES))}",
                                field="peft_type")
    return _REGISTRY[PEFT_TYPES[key]]


def methods() -> list[MethodInfo]:
    return list(_REGISTRY.values())


def method_names() -> list[str]:
    """Every accepted method name (canonical names and aliases)."""
    return sorted(_ALIASES)


# Import the method modules so they register themselves (order = display order).
from planner.methods import full, lora, ia3, prompt_learning, selective  # noqa: E402,F401
from planner.methods import oft, fourierft, vblora  # noqa: E402,F401
from planner.methods import adalora, lycoris, vera  # noqa: E402,F401
from planner.methods import ln_tuning, trainable_tokens, adaption_prompt, bottleneck  # noqa: E402,F401
