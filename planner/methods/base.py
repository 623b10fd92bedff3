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
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Iterable, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from planner.architectures.base import Inventory, ModuleEntry, ModuleKind
from planner.errors import MethodConfigError, TargetModulesError

Category = Literal["full", "additive", "reparameterization", "selective", "hybrid"]
#: "adapter" / "base": the adapter / model dtype of the plan; any other value is that dtype itself
#: (integer ones for tensors PEFT saves as indices, e.g. VB-LoRA's top-k).
TensorDtype = Literal["adapter", "base", "float32", "int64", "int32", "int16", "uint8"]

#: The string PEFT expands to every Linear / Conv1D except the output layer
#: (peft/utils/constants.py INCLUDE_LINEAR_LAYERS_SHORTHAND).
ALL_LINEAR = "all-linear"
#: Module names whose presence in ``target_modules`` makes ``save_pretrained`` also save the
#: input / output embedding layers that the tuner wrapped (peft/utils/constants.py
#: EMBEDDING_LAYER_NAMES, save_embedding_layers="auto" in peft/utils/save_and_load.py).
EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")
#: Prefix of tuner-injected parameter names in ``PeftModel.named_parameters()``.
PEFT_PREFIX = "base_model.model."
#: The adapter name PEFT gives a single adapter; removed from saved keys (``_remove_adapter_name_from_state_dict_key``).
ADAPTER_NAME = "default"


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
    """A tensor ``save_pretrained`` writes into the adapter file that is no :class:`NewTensor`: a
    base-model tensor (in base dtype: trained biases, wrapped embedding layers) or one PEFT derives
    at save time (VeRA's projections, VB-LoRA's top-k indices and weights)."""

    saved_name: str
    shape: tuple[int, ...]
    dtype: TensorDtype = "base"


@dataclass(frozen=True, slots=True)
class CopiedModule(ModuleEntry):
    """A parameter-owning module inside the trainable copy of a ``ModulesToSaveWrapper``.

    ``wrapper`` is the path PEFT wrapped (this module, or a container above it). Parameters tied to
    a tensor outside the wrapped module are untied: ``copy.deepcopy`` gives them their own storage
    (ties inside it survive); ``freezes`` lists those outside tensors' canonical names, which the
    wrapper freezes with its ``original_module``. ``nested``: the extra copy PEFT makes when another
    ``modules_to_save`` match sits directly inside an already wrapped module (see
    :func:`modules_to_save_entries`); :class:`MethodPlan` counts it in the total, never as trainable.
    """

    wrapper: str = ""
    nested: bool = False
    freezes: tuple[str, ...] = ()


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

    def __post_init__(self) -> None:
        if self.copied_modules:
            _apply_modules_to_save_wrappers(self)


def field_check(ok: Callable[[Any], bool], message: str) -> Callable[[Any, ValidationInfo], Any]:
    """A reusable field-validator body, used as ``_name = field_validator(*fields)(field_check(ok, message))``:
    raises ``ValueError(message)`` unless ``ok(value)``; ``{field}`` in ``message`` becomes the field's name."""

    def check(v: Any, info: ValidationInfo) -> Any:
        if not ok(v):
            raise ValueError(message.format(field=info.field_name))
        return v

    return check


def is_positive(v: float) -> bool:
    return v > 0


def is_non_negative(v: float) -> bool:
    return v >= 0


def is_dropout(v: float) -> bool:
    """A dropout probability: in [0, 1)."""
    return 0.0 <= v < 1.0


#: ``r`` of the low-rank tuners (LoRA, VeRA, LoHa / LoKr).
check_rank = field_check(is_positive, "rank r must be a positive integer")
#: A ``<name>_dropout`` field: its message names the field.
check_dropout = field_check(is_dropout, "{field} must be in [0, 1)")


def check_rank_pattern(v: dict[str, int], info: ValidationInfo) -> dict[str, int]:
    """Per-module rank overrides (``rank_pattern``): every rank positive."""
    for key, rank in v.items():
        if rank <= 0:
            raise ValueError(f"{info.field_name}[{key!r}] must be a positive integer")
    return v


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
    names = targets if isinstance(targets, (set, frozenset)) else frozenset(targets)
    if key in names:
        return True
    # any(key.endswith("." + t)): t is one of the key's dot-suffixes (a set lookup each, not a scan)
    parts = key.split(".")
    found = any(".".join(parts[i:]) in names for i in range(1, len(parts)))
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
    lookup = targets if isinstance(targets, str) else frozenset(targets)
    for key in inventory.all_paths:
        if not is_target(cfg, key, lookup):
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


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(f"{root}.")


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _is_module_list(path: str, all_paths: frozenset[str] | set[str]) -> bool:
    """A container whose children are numbered (``model.layers``, T5's ``block.0.layer``): in every
    supported architecture that is an ``nn.ModuleList`` (no ``nn.Sequential`` owns parameters)."""
    return f"{path}.0" in all_paths


def modules_to_save_entries(cfg: TargetingConfig, inventory: Inventory, extra: Iterable[str] = ()) -> list[ModuleEntry]:
    """The parameter-owning modules inside PEFT's ``ModulesToSaveWrapper`` copies
    (peft/utils/other.py ``_set_trainable``), as :class:`CopiedModule` entries.

    PEFT's rule, mirrored exactly: every module name ``key`` of ``named_modules()`` (in order,
    containers included) with ``key.endswith(name)`` for some name (a plain suffix: ``"norm"`` also
    matches ``input_layernorm``; ``"mlp"`` wraps the whole MLP container) is wrapped, and the names
    are read before any wrapping, so a match inside an already wrapped module P still happens,
    resolved through P's wrapper (which forwards attributes to its trainable copy):

    - directly under P (``P.q``): a second wrapper is attached to P's wrapper around the copy's
      ``q``; the copy's ``q`` freezes and a new trainable copy of ``q`` is made. Trainable count
      unchanged, total + ``q``; saved keys unchanged (``nested`` entries).
    - two levels under P (``P.a.q``): the grandparent is P's wrapper, so PEFT only re-activates it:
      nothing changes.
    - deeper: PEFT wraps inside P's copy, renaming saved keys; refused here (name one of the two).

    ModuleList / ModuleDict containers are refused like PEFT refuses them (TypeError).
    """
    names = list(dict.fromkeys([*(cfg.modules_to_save or []), *extra]))
    if not names:
        return []
    all_paths = inventory.all_paths
    path_set = frozenset(all_paths)
    wrapped: dict[str, bool] = {}  # path -> nested
    matched: set[str] = set()
    for key in all_paths:
        hits = [n for n in names if key.endswith(n)]
        if not hits:
            continue
        matched.update(hits)
        outer = next((w for w in wrapped if key.startswith(f"{w}.")), None)
        if outer is not None:
            if _parent(_parent(key)) in wrapped:
                continue  # PEFT: the grandparent is a ModulesToSaveWrapper -> update() only
            if _parent(key) not in wrapped:
                raise MethodConfigError(
                    f"{hits[0]!r} matches {key!r}, deep inside {outer!r}, which modules_to_save already wraps: "
                    "PEFT would wrap it again inside the trainable copy (a second, partly frozen copy under "
                    "other saved names); keep only one of the two names", field="modules_to_save")
        if _is_module_list(key, path_set):
            raise MethodConfigError(
                f"{hits[0]!r} matches {key!r}, a ModuleList: PEFT cannot wrap it (TypeError); name its "
                f"entries (e.g. {key.rsplit('.', 1)[-1]}.0) or the modules inside", field="modules_to_save")
        wrapped[key] = outer is not None
    missing = [n for n in names if n not in matched]
    if missing:
        raise TargetModulesError(
            f"{', '.join(missing)} matched no module with parameters; module names: {', '.join(inventory.leaf_names)}",
            field="modules_to_save")
    out: list[ModuleEntry] = []
    for root, nested in wrapped.items():
        for m in inventory:
            if not _under(m.path, root):
                continue
            outside = {p.name: p.tied_to for p in m.params
                       if p.tied_to is not None and not _under(p.tied_to.rpartition(".")[0], root)}
            params = tuple(replace(p, tied_to=None) if p.name in outside else p for p in m.params)
            out.append(CopiedModule(m.path, m.kind, params, m.in_features, m.out_features, m.layer, m.stack, m.role,
                                    wrapper=root, nested=nested, freezes=tuple(outside.values())))
    return out


def remove_adapter_name(key: str, adapter: str = ADAPTER_NAME) -> str:
    """PEFT's ``_remove_adapter_name_from_state_dict_key``: drop the adapter name where it is the
    last or second-to-last component (``x.modules_to_save.default.bias`` -> ``x.modules_to_save.bias``;
    ``x.modules_to_save.default.sub.bias`` keeps it)."""
    if "." not in key:
        return key
    if key.endswith(f".{adapter}"):
        return key.removesuffix(f".{adapter}")
    head, _, suffix = key.rpartition(".")
    return f"{re.sub(re.escape(f'.{adapter}') + '$', '', head)}.{suffix}"


def _apply_modules_to_save_wrappers(plan: "MethodPlan") -> None:
    """What ``ModulesToSaveWrapper`` does to the rest of a plan, for every method alike
    (peft/utils/other.py ``ModulesToSaveWrapper.update``, tuners_utils ``inject_adapter``):

    - a module the adapter wraps cannot also be copied: PEFT raises TypeError when the match is the
      adapted module itself, and deep-copies the adapter layer (freezing the original adapter) when
      it is a container above it; both refused.
    - base parameters under a copy never train: ``bias`` marking runs first, then the wrapper
      freezes ``original_module`` (the copy trains and is counted as copied) -- and with it any tensor
      outside that an original parameter is tied to (BERT's ``cls.predictions.bias`` when
      ``decoder`` is copied).
    - a base tensor under a copy that the adapter file holds (``bias="all"`` picks every state-dict
      key ending in ``.bias``) is saved as ``<wrapped>.original_module.<rel>`` and
      ``<wrapped>.modules_to_save.<rel>`` (adapter name removed as PEFT removes it); the plain
      ``<wrapped>.<rel>`` key comes from the copy itself.
    - a ``nested`` copy counts in the total but never trains (see :func:`modules_to_save_entries`).
    """
    roots: dict[str, bool] = {}
    for m in plan.copied_modules:
        roots.setdefault(getattr(m, "wrapper", "") or m.path, getattr(m, "nested", False))
    for a in plan.adapted:
        root = next((r for r in roots if _under(a.path, r)), None)
        if root is None:
            continue
        how = ("it is the adapted module itself (PEFT raises TypeError)" if a.path == root else
               f"it contains the adapted module {a.path!r}: PEFT would deep-copy the adapter into the trained copy "
               "and freeze the original adapter")
        raise MethodConfigError(f"modules_to_save wraps {root!r}, but {how}; name modules the adapter does not target "
                                "(modules_to_save matches any module name ending with the given text)",
                                field="modules_to_save")
    tops = [r for r, nested in roots.items() if not nested]
    nested_roots = [r for r, nested in roots.items() if nested]
    frozen = {n for m in plan.copied_modules if not getattr(m, "nested", False) for n in getattr(m, "freezes", ())}
    trainable_base = tuple(n for n in plan.trainable_base
                           if n not in frozen and not any(_under(n.rpartition(".")[0], r) for r in tops))
    copied_paths = {m.path for m in plan.copied_modules}
    saved: list[SavedBaseTensor] = []
    for s in plan.saved_base:
        name = s.saved_name.removeprefix(PEFT_PREFIX)
        root = None
        if s.saved_name.startswith(PEFT_PREFIX) and name.rpartition(".")[0] in copied_paths:  # a base tensor's own key
            root = next((r for r in tops if name.startswith(f"{r}.")), None)
        if root is None:
            saved.append(s)
            continue
        for wrapper in (root, *(q for q in nested_roots if name.startswith(f"{q}.") and _under(q, root))):
            rel = name.removeprefix(f"{wrapper}.")
            for part in ("original_module", f"modules_to_save.{ADAPTER_NAME}"):
                saved.append(replace(s, saved_name=remove_adapter_name(f"{PEFT_PREFIX}{wrapper}.{part}.{rel}")))
    extra = tuple(NewTensor(m.path, f"modules_to_save.{ADAPTER_NAME}.{p.name}", p.shape, trainable=False, dtype="base")
                  for m in plan.copied_modules if getattr(m, "nested", False) for p in m.params)
    # MethodPlan is frozen: these run once, from its __post_init__
    object.__setattr__(plan, "trainable_base", trainable_base)
    object.__setattr__(plan, "saved_base", tuple(saved))
    if extra:
        kept = tuple(m for m in plan.copied_modules if not getattr(m, "nested", False))
        object.__setattr__(plan, "copied_modules", kept)
        object.__setattr__(plan, "new_tensors", plan.new_tensors + extra)


def peft_name(module: str, suffix: str) -> str:
    return f"{PEFT_PREFIX}{module}.{suffix}"


def saved_embedding_layers(targets: list[str] | str, cfg_targets: list[str] | str | None, inventory: Inventory,
                           *, adapted: Iterable[ModuleEntry] | None = None,
                           trainable_tokens: bool = False) -> tuple[SavedBaseTensor, ...]:
    """PEFT's ``save_embedding_layers="auto"`` (peft/utils/save_and_load.py ``get_peft_model_state_dict``).

    When ``embed_tokens`` or ``lm_head`` is an entry of ``target_modules`` (a list; exact string,
    so ``model.embed_tokens`` does not count) or its regex matches a module whose name ends with one
    of them, ``save_pretrained`` writes the base weights of ``get_input_embeddings()`` and
    ``get_output_embeddings()`` -- but only of those the tuner wrapped
    (``has_valid_embedding_base_layer``), under ``<module>.base_layer.<param>`` (tied parameters
    included: the state dict lists them under every name). ``adapted``: the modules the method
    wraps; without it, the modules ``targets`` names are assumed wrapped.
    """
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
    if adapted is None:
        wrapped = {m.path for m in inventory if _matches(targets, m.path)}
    else:
        wrapped = {m.path for m in adapted}
    out: list[SavedBaseTensor] = []
    for role in ("embed", "lm_head"):  # get_input_embeddings(), get_output_embeddings()
        entry = next((m for m in inventory if m.role == role), None)
        if entry is None or entry.path not in wrapped or entry.kind not in (ModuleKind.LINEAR, ModuleKind.EMBEDDING):
            continue
        for p in entry.params:
            out.append(SavedBaseTensor(f"{PEFT_PREFIX}{entry.path}.base_layer.{p.name}", p.shape))
    return tuple(out)
