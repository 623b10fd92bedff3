"""What every method module shares: the typed config base, the MethodPlan it returns, and
module targeting with PEFT's exact matching rules.

A method reads the model's :class:`~planner.architectures.base.Inventory` and its own config and
returns a :class:`MethodPlan`: which modules are adapted, the new tensors (trainable or not, saved
or not), which base parameters become trainable, which modules are copied
(``modules_to_save``), and the PEFT config mapping the executors hand to PEFT. Counting, the
adapter file size and the memory model all read this one object.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from planner.architectures.base import Inventory, ModuleEntry, ModuleKind
from planner.errors import MethodConfigError, TargetModulesError

Category = Literal["full", "additive", "reparameterization", "selective", "hybrid"]
TensorDtype = Literal["adapter", "base", "float32", "int64"]

#: The string PEFT expands to every Linear / Conv1D except the output layer
#: (peft/utils/constants.py INCLUDE_LINEAR_LAYERS_SHORTHAND).
ALL_LINEAR = "all-linear"
#: Module names whose presence in ``target_modules`` makes ``save_pretrained`` also save the
#: input and output embeddings (peft/utils/constants.py EMBEDDING_LAYER_NAMES,
#: save_embedding_layers="auto" in peft/utils/save_and_load.py).
EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")
#: Prefix of tuner-injected parameter names in ``PeftModel.named_parameters()``.
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True, slots=True)
class NewTensor:
    """A tensor the method adds to the model.

    ``dtype``: "adapter" = the adapter dtype (float32 under PEFT's default
    ``autocast_adapter_dtype=True``), "base" = the model's dtype. ``saved_name`` is the key in
    ``adapter_model.safetensors`` (None: not saved); ``saved_shape`` differs from ``shape`` where
    PEFT saves a derived tensor (prompt-learning methods save the prompt embeddings they produce).
    """

    module: str  # the adapted module path ("" for prompt encoders)
    name: str  # e.g. "lora_A.default.weight"
    shape: tuple[int, ...]
    trainable: bool = True
    dtype: TensorDtype = "adapter"
    saved_name: str | None = None
    saved_shape: tuple[int, ...] | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class SavedBaseTensor:
    """A base-model tensor that ``save_pretrained`` writes into the adapter file (in base dtype)."""

    saved_name: str
    shape: tuple[int, ...]
    dtype: TensorDtype = "base"


@dataclass(frozen=True)
class MethodPlan:
    """The result of applying a method to a model, before any memory is computed."""

    method: str
    peft_type: str | None
    category: Category
    adapted: tuple[ModuleEntry, ...]  # modules wrapped / modified by the method
    new_tensors: tuple[NewTensor, ...]
    trainable_base: tuple[str, ...]  # full names of base parameters that train
    copied_modules: tuple[ModuleEntry, ...] = ()  # modules_to_save: a trainable full copy each
    saved_base: tuple[SavedBaseTensor, ...] = ()  # base tensors written to the adapter file
    quantized_modules: tuple[ModuleEntry, ...] = ()  # base linears stored in 4/8 bit
    virtual_tokens: int = 0  # tokens prepended to the sequence (prompt tuning / p-tuning)
    prefix_tokens: int = 0  # key/value positions prepended per layer (prefix tuning)
    peft_config: dict[str, Any] | None = None  # what executors hand to PEFT
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific facts (e.g. dropout)

    @property
    def adapted_paths(self) -> tuple[str, ...]:
        return tuple(m.path for m in self.adapted)


class MethodConfig(BaseModel):
    """Base of every method's typed config. Field names are PEFT's own."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    #: PEFT's ``peft_type`` for this method (None for methods PEFT does not implement).
    peft_type: ClassVar[str | None] = None
    #: Keys of a PEFT config mapping that never change what is counted (bookkeeping); dropped
    #: silently when the config comes from an adapter_config.json.
    _BOOKKEEPING: ClassVar[frozenset[str]] = frozenset({
        "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping",
        "peft_version", "_name_or_path",
    })

    @classmethod
    def from_options(cls, options: dict[str, Any], *, from_peft_mapping: bool) -> tuple["MethodConfig", list[str]]:
        """Validate options. Unknown keys are an error for keyword options; for a PEFT mapping
        (adapter_config.json) they are dropped and reported, since PEFT configs carry many fields
        that do not change counts (init schemes, runtime flags)."""
        known = set(cls.model_fields)
        ignored: list[str] = []
        clean: dict[str, Any] = {}
        for key, value in options.items():
            if key in known:
                clean[key] = value
            elif from_peft_mapping or key in cls._BOOKKEEPING:
                ignored.append(key)
            else:
                raise MethodConfigError(
                    f"unknown option for {cls.method_name()}: allowed options are {', '.join(sorted(known))}", field=key)
        try:
            return cls(**clean), ignored
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or None
            msg = err["msg"].removeprefix("Value error, ")
            if loc is None and msg.split(" ", 1)[0] in known:  # model-level check: its message starts with the field
                loc = msg.split(" ", 1)[0]
            raise MethodConfigError(f"{msg} (got {err.get('input')!r})", field=loc) from None

    @classmethod
    def method_name(cls) -> str:
        return cls.__name__.removesuffix("Config").lower()


class TargetingConfig(MethodConfig):
    """Fields shared by PEFT tuners that wrap modules chosen by name."""

    target_modules: list[str] | str | None = None
    """Module names (suffix match after a dot, or exact path), a regex (full match) when a
    string, or "all-linear". None uses PEFT's default for the model type."""
    exclude_modules: list[str] | str | None = None
    """Same matching rules; matched modules are never adapted."""
    layers_to_transform: list[int] | int | None = None
    """Only adapt modules in these block indices (PEFT matches the first ``.<name>.<idx>.``)."""
    layers_pattern: list[str] | str | None = None
    """The name of the block list (``layers``, ``h``, ``block``) that ``layers_to_transform`` indexes."""
    modules_to_save: list[str] | None = None
    """Modules trained in full alongside the adapter (PEFT keeps a trainable copy of each)."""

    @field_validator("target_modules", "exclude_modules")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and any(not isinstance(x, str) or not x for x in v):
            raise ValueError("must be non-empty strings")
        if isinstance(v, list):
            return sorted(set(v), key=v.index)
        return v

    @model_validator(mode="after")
    def _layers_need_list_targets(self):
        if self.layers_to_transform is not None and isinstance(self.target_modules, str):
            raise ValueError("layers_to_transform cannot be used when target_modules is a string (regex or "
                             "'all-linear'); PEFT refuses it: list the module names instead")
        if self.layers_pattern is not None and self.layers_to_transform is None:
            raise ValueError("layers_pattern needs layers_to_transform")
        return self

    @field_validator("layers_to_transform")
    @classmethod
    def _layers_non_negative(cls, v):
        items = [v] if isinstance(v, int) else (v or [])
        if any(i < 0 for i in items):
            raise ValueError("layer indices must be >= 0")
        return v


# --- targeting -------------------------------------------------------------------------------


def _matches(spec: str | Iterable[str], key: str) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, key) is not None
    spec = list(spec)
    return key in spec or any(key.endswith(f".{t}") for t in spec)


def _layer_index(key: str, layers_pattern: list[str] | str | None) -> int | None:
    if not layers_pattern:
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        m = None
        for pattern in patterns:
            m = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if m:
                break
    return int(m.group("idx")) if m else None


def _check_regex(value: str, field_name: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise MethodConfigError(f"not a valid regular expression: {exc}", field=field_name) from None


def is_target(cfg: TargetingConfig, key: str, targets: list[str] | str) -> bool:
    """PEFT's ``check_target_module_exists`` (peft/tuners/tuners_utils.py), without torch."""
    if cfg.exclude_modules and _matches(cfg.exclude_modules, key):
        return False
    if cfg.modules_to_save and any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in cfg.modules_to_save):
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    if key in targets:
        return True
    found = any(key.endswith(f".{t}") for t in targets)
    layers = cfg.layers_to_transform
    using_layers = layers is not None and (len(layers) != 0 if isinstance(layers, list) else True)
    if using_layers and found:
        idx = _layer_index(key, cfg.layers_pattern)
        if idx is None:
            return False
        return idx == layers if isinstance(layers, int) else idx in layers
    return found


def resolve_targets(cfg: TargetingConfig, inventory: Inventory, defaults: dict[str, list[str]], model_type: str,
                    method: str) -> list[str] | str:
    """``target_modules`` as PEFT would use it: the default for the model type when None,
    ``all-linear`` expanded to every Linear/Conv1D path except the output layer."""
    targets = cfg.target_modules
    if targets is None:
        if model_type not in defaults:
            raise TargetModulesError(
                f"{method} has no default target modules for model_type {model_type!r}; pass target_modules "
                f"(module names in this model: {', '.join(linear_leaf_names(inventory))})", field="target_modules")
        return list(defaults[model_type])
    if isinstance(targets, str):
        if targets.lower() == ALL_LINEAR:
            return [m.path for m in inventory if m.kind in (ModuleKind.LINEAR, ModuleKind.CONV1D) and m.role != "lm_head"]
        _check_regex(targets, "target_modules")
    if isinstance(cfg.exclude_modules, str):
        _check_regex(cfg.exclude_modules, "exclude_modules")
    return targets


def linear_leaf_names(inventory: Inventory) -> list[str]:
    return list(dict.fromkeys(m.leaf_name for m in inventory if m.kind not in (ModuleKind.LAYER_NORM, ModuleKind.RMS_NORM)))


def select_modules(cfg: TargetingConfig, inventory: Inventory, targets: list[str] | str, *,
                   supported: frozenset[ModuleKind], method: str, field_name: str = "target_modules") -> list[ModuleEntry]:
    """Every module PEFT would wrap, in ``named_modules()`` order; errors like PEFT's, but with
    the module names the model does have."""
    chosen: list[ModuleEntry] = []
    for key in inventory.all_paths:
        if not is_target(cfg, key, targets):
            continue
        entry = inventory.by_path.get(key)
        if entry is None or entry.kind not in supported:
            kind = "a container module" if entry is None else f"a {entry.kind.value} module"
            raise TargetModulesError(
                f"{key!r} matched but is {kind}; {method} can adapt only "
                f"{', '.join(sorted(k.value for k in supported))} modules. Name the leaf modules instead "
                f"(this model has: {', '.join(linear_leaf_names(inventory))})", field=field_name)
        chosen.append(entry)
    if not chosen:
        shown = targets if isinstance(targets, str) else ", ".join(targets)
        where = ""
        if cfg.layers_to_transform is not None:
            where = f" within layers {cfg.layers_to_transform}"
        raise TargetModulesError(
            f"{shown!s} matched no module{where} of this model; module names it has: "
            f"{', '.join(linear_leaf_names(inventory))}", field=field_name)
    return chosen


def modules_to_save_entries(cfg: TargetingConfig, inventory: Inventory, extra: Iterable[str] = ()) -> list[ModuleEntry]:
    """Modules PEFT wraps in ``ModulesToSaveWrapper`` (suffix match, like ``_set_trainable``)."""
    names = list(dict.fromkeys([*(cfg.modules_to_save or []), *extra]))
    if not names:
        return []
    out = [m for m in inventory if any(m.path == n or m.path.endswith(f".{n}") for n in names)]
    found = {n for n in names if any(m.path == n or m.path.endswith(f".{n}") for m in out)}
    missing = [n for n in names if n not in found]
    if missing:
        raise TargetModulesError(
            f"{', '.join(missing)} matched no module with parameters; module names: {', '.join(inventory.leaf_names)}",
            field="modules_to_save")
    return out


def peft_name(module: str, suffix: str) -> str:
    return f"{PEFT_PREFIX}{module}.{suffix}"


def saved_embedding_layers(targets: list[str] | str, cfg_targets: list[str] | str | None, inventory: Inventory,
                           *, trainable_tokens: bool = False) -> tuple[SavedBaseTensor, ...]:
    """PEFT's ``save_embedding_layers="auto"``: when ``embed_tokens`` or ``lm_head`` is named in
    ``target_modules`` (a list) or matched by its regex, ``save_pretrained`` also writes the
    input and output embedding weights of the base model."""
    if trainable_tokens or cfg_targets is None:
        return ()
    if isinstance(cfg_targets, str):
        if cfg_targets.lower() == ALL_LINEAR:
            return ()
        targeted = any(
            re.fullmatch(cfg_targets, m.path) and any(re.match(rf"(.*\.)?{e}$", m.path) for e in EMBEDDING_LAYER_NAMES)
            for m in inventory)
    else:
        targeted = any(k in cfg_targets for k in EMBEDDING_LAYER_NAMES)
    if not targeted:
        return ()
    out: list[SavedBaseTensor] = []
    for role in ("embed", "lm_head"):
        entry = next((m for m in inventory if m.role == role), None)
        if entry is None:
            continue
        for p in entry.params:
            out.append(SavedBaseTensor(f"{PEFT_PREFIX}{entry.path}.base_layer.{p.name}", p.shape))
    return tuple(out)
