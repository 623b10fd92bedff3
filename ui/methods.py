"""What the method picker offers, read from the planner's method registry (no streamlit here).

Choices are every registered method plus the LoRA variants people pick by name (QLoRA, DoRA,
rsLoRA). Options are the fields of each method's pydantic config class: simple fields (bool, int,
float, a fixed set of values) get a widget of their own, everything else (lists, patterns,
mappings) a JSON text box under "advanced". Methods other agents register later appear without
any change here.
"""

from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import planner
from planner.methods import MethodInfo, get_method
from planner.methods.base import TargetingConfig

#: Aliases that are methods in their own right (not spellings): shown as separate choices.
VARIANTS: dict[str, tuple[str, ...]] = {"lora": ("qlora", "dora", "rslora")}
#: Options the UI starts from where it differs from PEFT's default (the bundled example: LoRA r=16).
UI_DEFAULTS: dict[str, dict[str, Any]] = {m: {"r": 16} for m in ("lora", "qlora", "dora", "rslora")}
#: Fields with their own widget (the target-module picker) for configs built on TargetingConfig.
HIDDEN_FIELDS = frozenset({"target_modules"})
#: Fields a variant implies (DoRA is LoRA with use_dora): not offered for that choice.
IMPLIED_FIELDS: dict[str, frozenset[str]] = {"dora": frozenset({"use_dora"}), "rslora": frozenset({"use_rslora"})}
#: Simple fields that rarely matter for planning: shown under "advanced".
ADVANCED_FIELDS = frozenset({
    "fan_in_fan_out", "eps", "init_weights", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight",
    "projection_prng_key", "random_loc_seed", "num_cayley_neumann_terms", "use_cayley_neumann", "use_effective_conv2d",
    "rank_dropout_scale", "decompose_both", "decompose_factor", "encoder_num_layers", "total_step", "coft",
    "block_share", "task_type", "num_transformer_submodules", "lora_bias",
    "original_ln_before", "original_ln_after", "residual_before_ln", "adapter_residual_before_ln", "ln_before",
    "ln_after", "cross_adapter", "use_gating", "phm_layer", "inv_adapter",
})

Kind = Literal["bool", "int", "float", "choice", "json"]


@dataclass(frozen=True)
class OptionField:
    """One option of a method, as the form shows it."""

    name: str
    kind: Kind
    default: Any  # the config class's default (what PEFT uses when the option is not given)
    ui_default: Any  # what the form starts from
    optional: bool  # None is allowed (int | None); for a choice, None means "the method decides"
    choices: tuple[Any, ...] = ()
    advanced: bool = False
    annotation: str = ""


def choices() -> list[str]:
    """Method choices in registry order, each variant right after its base method."""
    out: list[str] = []
    for info in planner.methods():
        out.append(info.name)
        out.extend(a for a in VARIANTS.get(info.name, ()) if a in info.aliases)
    return out


def info(choice: str) -> MethodInfo:
    return get_method(choice)[0]


def category(choice: str) -> str:
    return info(choice).category


def is_targeting(choice: str) -> bool:
    return issubclass(info(choice).config, TargetingConfig)


def arxiv_id(paper: str) -> str | None:
    m = re.search(r"arXiv:\s*([0-9]{4}\.[0-9]{4,5})", paper or "")
    return m.group(1) if m else None


def _default(f: Any) -> Any:
    if f.is_required():
        return None  # no default: the planner says so if it stays unset
    if f.default_factory is not None:
        return f.default_factory()
    return f.default


def _kind(annotation: Any) -> tuple[Kind, bool, tuple[Any, ...]]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    optional = False
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) == 1:
            annotation, origin, args = rest[0], typing.get_origin(rest[0]), typing.get_args(rest[0])
        else:
            return "json", optional, ()
    if origin is Literal:
        return "choice", optional, ((None,) if optional else ()) + tuple(args)
    if annotation is bool:
        return ("choice", True, (None, True, False)) if optional else ("bool", False, ())
    if annotation is int:
        return "int", optional, ()
    if annotation is float:
        return "float", optional, ()
    return "json", optional, ()


def fields(choice: str) -> list[OptionField]:
    """The options of a method choice, in the config class's order."""
    cfg = info(choice).config
    ui = UI_DEFAULTS.get(choice, {})
    out = []
    for name, f in cfg.model_fields.items():
        if (name in HIDDEN_FIELDS and issubclass(cfg, TargetingConfig)) or name in IMPLIED_FIELDS.get(choice, ()):
            continue
        kind, optional, values = _kind(f.annotation)
        default = _default(f)
        out.append(OptionField(
            name=name, kind=kind, default=default, ui_default=ui.get(name, default), optional=optional, choices=values,
            advanced=kind == "json" or name in ADVANCED_FIELDS, annotation=str(f.annotation).replace("typing.", ""),
        ))
    return out


def field_map(choice: str) -> dict[str, OptionField]:
    return {f.name: f for f in fields(choice)}


# ----- option values <-> text (URL parameters, JSON boxes) ------------------------------------------


def to_text(value: Any) -> str:
    """An option value as text: strings plain (unless they would read back as something else),
    lists of two or more strings comma-separated, everything else JSON."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
        return json.dumps(value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, dict)):
        return json.dumps(value)
    if isinstance(value, list) and len(value) > 1 and all(isinstance(v, str) and v and "," not in v for v in value):
        return ",".join(value)
    return json.dumps(value)


def _item(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def from_text(text: str, field: OptionField | None = None) -> Any:
    """Inverse of :func:`to_text`. Raises ``ValueError`` for text that cannot be the field's type."""
    text = str(text).strip()
    try:
        value = json.loads(text)
    except ValueError:
        value = text
        if field is not None and ((text and text[0] in "{[") or field.annotation.startswith("dict")):
            raise ValueError(text) from None  # meant as JSON, but is not
        if field is not None and field.kind == "json" and field.annotation.startswith("list["):
            takes_str = "| str |" in field.annotation or field.annotation.endswith("| str")
            if "," in text or not takes_str:
                value = [_item(v.strip()) for v in text.split(",") if v.strip()]
    if field is None:
        return value
    if field.kind == "bool":
        if isinstance(value, bool):
            return value
        if text.lower() in ("1", "0", "yes", "no", "on", "off"):
            return text.lower() in ("1", "yes", "on")
        raise ValueError(text)
    if field.kind == "int":
        if value is None and field.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(text)
        return int(value)
    if field.kind == "float":
        if value is None and field.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(text)
        return float(value)
    if field.kind == "choice":
        if value is None and None not in field.choices:
            raise ValueError(text)
        if value not in field.choices and text in field.choices:
            value = text
        if value not in field.choices:
            raise ValueError(text)
        return value
    return value


def linear_names(spec: planner.ModelSpec) -> list[str]:
    """The model's own module names a tuner can target, from its inventory (lm_head and norms aside)."""
    from planner.methods.base import linear_leaf_names

    return [n for n in linear_leaf_names(spec.inventory) if n != "lm_head"]


def default_targets(choice: str, spec: planner.ModelSpec) -> list[str]:
    """PEFT's default target modules of this method for the model type (empty when PEFT has none)."""
    from planner.methods.defaults import default_targets as table

    family = info(choice).name
    try:
        return list(table(family).get(spec.model_type, []))
    except KeyError:
        return []
