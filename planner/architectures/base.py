"""The parameter inventory: every parameter tensor of a transformers model, without torch.

An architecture module turns a :class:`~planner.spec.ModelSpec` into a tuple of
:class:`ModuleEntry`, one per module that owns parameters, with the module path exactly as
transformers names it (``model.layers.3.self_attn.q_proj``), its kind, and its parameters'
shapes. The order follows ``model.named_modules()`` so that tied parameters resolve to the same
canonical name as ``model.named_parameters()`` (the first occurrence wins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Iterable, Iterator


class ModuleKind(StrEnum):
    """What kind of torch module owns the parameters (decides which PEFT tuners can wrap it)."""

    LINEAR = "linear"  # torch.nn.Linear (and subclasses such as FalconLinear); weight (out, in)
    CONV1D = "conv1d"  # transformers.pytorch_utils.Conv1D (GPT-2); weight (in, out)
    EMBEDDING = "embedding"  # torch.nn.Embedding (and scaled / learned-positional subclasses)
    LAYER_NORM = "layer_norm"  # torch.nn.LayerNorm
    RMS_NORM = "rms_norm"  # the family's RMSNorm / T5LayerNorm (weight only)
    EXPERTS = "experts"  # fused MoE experts holding 3-D parameters (transformers >= 5)
    ROUTER = "router"  # MoE router holding a plain weight (not an nn.Linear)
    OTHER = "other"  # any other module owning parameters (e.g. an LM head's own bias)


LINEAR_KINDS = frozenset({ModuleKind.LINEAR, ModuleKind.CONV1D})
NORM_KINDS = frozenset({ModuleKind.LAYER_NORM, ModuleKind.RMS_NORM})


@dataclass(frozen=True, slots=True)
class ParamEntry:
    """One parameter tensor. ``tied_to`` is the canonical full name when this one is shared."""

    name: str
    shape: tuple[int, ...]
    tied_to: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class ModuleEntry:
    """A module that owns parameters.

    ``in_features`` / ``out_features`` are set for linear-like modules (Linear, Conv1D,
    Embedding: ``num_embeddings`` / ``embedding_dim``); ``layer`` is the index of the transformer
    block it belongs to (``None`` outside the blocks); ``stack`` is ``"decoder"``, ``"encoder"``
    or ``""`` for modules outside a block stack; ``role`` names what the module does
    (``"q"``, ``"kv"``, ``"mlp_in"``, ``"lm_head"`` ...), used by methods such as IA3 and by the
    memory model.
    """

    path: str
    kind: ModuleKind
    params: tuple[ParamEntry, ...]
    in_features: int | None = None
    out_features: int | None = None
    layer: int | None = None
    stack: str = ""
    role: str = ""

    @property
    def leaf_name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    def param(self, name: str) -> ParamEntry | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def has_bias(self) -> bool:
        return self.param("bias") is not None

    @property
    def own_numel(self) -> int:
        """Parameters counted once (tied copies excluded)."""
        return sum(p.numel for p in self.params if p.tied_to is None)


@dataclass(frozen=True)
class Inventory:
    """Every parameter-owning module of a model, in ``named_modules()`` order."""

    modules: tuple[ModuleEntry, ...]
    # Module paths without parameters that PEFT may still see (containers are derived from
    # the paths of ``modules``); used for error messages and target matching.
    extra_paths: tuple[str, ...] = field(default=())

    def __iter__(self) -> Iterator[ModuleEntry]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)

    @cached_property
    def by_path(self) -> dict[str, ModuleEntry]:
        return {m.path: m for m in self.modules}

    @cached_property
    def total_params(self) -> int:
        """``sum(p.numel() for p in model.parameters())``: tied tensors counted once."""
        return sum(m.own_numel for m in self.modules)

    def named_parameters(self) -> Iterator[tuple[str, ParamEntry]]:
        """Like ``model.named_parameters()``: tied duplicates are skipped."""
        for m in self.modules:
            for p in m.params:
                if p.tied_to is None:
                    yield f"{m.path}.{p.name}", p

    @cached_property
    def all_paths(self) -> tuple[str, ...]:
        """Every module path PEFT iterates over (leaves and their containers), deduplicated."""
        seen: dict[str, None] = {}
        for path in (*(m.path for m in self.modules), *self.extra_paths):
            parts = path.split(".")
            for i in range(1, len(parts) + 1):
                seen.setdefault(".".join(parts[:i]), None)
        return tuple(seen)

    def of_kind(self, kinds: Iterable[ModuleKind]) -> tuple[ModuleEntry, ...]:
        kinds = frozenset(kinds)
        return tuple(m for m in self.modules if m.kind in kinds)

    @cached_property
    def leaf_names(self) -> tuple[str, ...]:
        """Distinct last path components of linear-like modules, in first-seen order."""
        return tuple(dict.fromkeys(m.leaf_name for m in self.modules))


# --- helpers that architecture modules use to write inventories compactly -------------------


def linear(path: str, in_f: int, out_f: int, bias: bool, *, layer: int | None = None,
           stack: str = "", role: str = "", kind: ModuleKind = ModuleKind.LINEAR) -> ModuleEntry:
    """An ``nn.Linear(in_f, out_f)``: weight (out, in)."""
    params = [ParamEntry("weight", (out_f, in_f))]
    if bias:
        params.append(ParamEntry("bias", (out_f,)))
    return ModuleEntry(path, kind, tuple(params), in_f, out_f, layer, stack, role)


def conv1d(path: str, in_f: int, out_f: int, *, layer: int | None = None, stack: str = "",
           role: str = "") -> ModuleEntry:
    """transformers' ``Conv1D(nf=out_f, nx=in_f)``: weight stored transposed, (in, out), with bias."""
    params = (ParamEntry("weight", (in_f, out_f)), ParamEntry("bias", (out_f,)))
    return ModuleEntry(path, ModuleKind.CONV1D, params, in_f, out_f, layer, stack, role)


def embedding(path: str, num: int, dim: int, *, tied_to: str | None = None, layer: int | None = None,
              stack: str = "", role: str = "embed") -> ModuleEntry:
    params = (ParamEntry("weight", (num, dim), tied_to),)
    return ModuleEntry(path, ModuleKind.EMBEDDING, params, num, dim, layer, stack, role)


def norm(path: str, dim: int, *, bias: bool, rms: bool, layer: int | None = None, stack: str = "",
         role: str = "norm") -> ModuleEntry:
    params = [ParamEntry("weight", (dim,))]
    if bias:
        params.append(ParamEntry("bias", (dim,)))
    kind = ModuleKind.RMS_NORM if rms else ModuleKind.LAYER_NORM
    return ModuleEntry(path, kind, tuple(params), None, None, layer, stack, role)


def lm_head(path: str, hidden: int, vocab: int, *, tied_to: str | None, bias: bool = False) -> ModuleEntry:
    """The output projection ``nn.Linear(hidden, vocab)``; its weight may be tied to the input embedding."""
    params = [ParamEntry("weight", (vocab, hidden), tied_to)]
    if bias:
        params.append(ParamEntry("bias", (vocab,)))
    return ModuleEntry(path, ModuleKind.LINEAR, tuple(params), hidden, vocab, None, "", "lm_head")
