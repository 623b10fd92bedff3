"""Trainable tokens (PEFT ``TRAINABLE_TOKENS``): only the embedding rows of chosen token ids train,
e.g. for new special tokens, instead of the whole embedding matrix.

Counted like PEFT 0.21.2 ``peft/tuners/trainable_tokens``:

- ``TrainableTokensLayer.update_layer`` (layer.py) adds one parameter per targeted module,
  ``trainable_tokens_delta[adapter]`` of shape (len(token_indices), embed_dim), initialised from
  the selected rows (embed_dim = ``embedding_dim`` for an Embedding, ``in_features`` for a
  Linear such as an LM head); ``token_indices`` is used as given (duplicates are rows too). A
  buffer ``trainable_tokens_original`` of the same shape (model dtype) keeps the original rows:
  not a parameter and not saved.
- ``autocast_adapter_dtype=True`` casts the delta to float32 over a 16-bit model (BaseTuner
  ``_cast_adapter_dtype``), so it is an adapter-dtype tensor.
- ``target_modules`` None: the model's input embedding (``_get_input_embeddings_name``), as a
  string, i.e. a full-match regex on its path.
- Tied weights (model.py ``inject_adapter``): when ``tie_word_embeddings`` is true and the input
  embedding is adapted, every module whose weight is tied to it (transformers'
  ``_tied_weights_keys``: the LM head, T5's encoder/decoder ``embed_tokens``, BERT's
  ``cls.predictions.decoder``) is wrapped by a layer *tied* to the embedding's: it shares the
  same delta, so no parameter is added, but ``save_pretrained`` writes a copy of the delta under
  each tied module's name (aliases are cloned before ``safe_save_file``, peft_model.py). A tied
  module that is itself targeted keeps its own delta: ``_get_module_names_tied_with_embedding``
  then names its ``base_layer`` (the weight is found as ``<module>.base_layer.weight``), so the
  tied layer wraps that base layer and is saved as ``<module>.base_layer.trainable_tokens_delta``
  (observed with peft 0.21.2 / transformers 5.24).
- Saved keys: ``base_model.model.<module>.trainable_tokens_delta``; the embedding matrix itself
  is not saved (``save_embedding_layers="auto"`` skips it for trainable tokens).

Category "additive" (as in this planner's taxonomy): the rows train through a new delta tensor,
the base embedding stays frozen.
"""

from __future__ import annotations

from dataclasses import replace

from typing import Any

from pydantic import field_validator

from planner.architectures.base import ModuleKind
from planner.errors import MethodConfigError
from planner.methods import register
from planner.methods.base import (
    ALL_LINEAR, MethodConfig, MethodPlan, NewTensor, SavedBaseTensor, TargetingConfig, _check_regex, peft_name,
    select_modules,
)

TRAINABLE_TOKENS_SUPPORTED = frozenset({ModuleKind.EMBEDDING, ModuleKind.LINEAR})


class TrainableTokensConfig(MethodConfig):
    """``peft.TrainableTokensConfig`` fields that change what is counted (``init_weights`` does not)."""

    peft_type = "TRAINABLE_TOKENS"

    token_indices: list[int]
    """Token ids whose embedding rows train (each id is one row of the delta)."""
    target_modules: list[str] | str | None = None
    """Embedding-like modules to adapt: names (exact path or suffix after a dot) or a regex (full
    match) when a string. None: the model's input embedding."""

    @field_validator("token_indices")
    @classmethod
    def _indices(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("token_indices must list at least one token id")
        if any(i < 0 for i in v):
            raise ValueError("token_indices must be >= 0 (token ids, not negative offsets)")
        return v

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and (not v or any(not isinstance(x, str) or not x for x in v)):
            raise ValueError("must be non-empty strings")
        if isinstance(v, str) and not v:
            raise ValueError("must not be empty")
        if isinstance(v, str) and v.lower() == ALL_LINEAR:
            raise ValueError("'all-linear' is not meaningful for trainable tokens: name the embedding (or LM head)")
        return sorted(set(v), key=v.index) if isinstance(v, list) else v

    @classmethod
    def method_name(cls) -> str:
        return "trainable_tokens"


def _input_embedding(inventory):
    return next((m for m in inventory if m.role == "embed" and m.kind == ModuleKind.EMBEDDING), None)


def _rows_and_dim(m) -> tuple[int, int]:
    """(rows the indices select, width of a row): Embedding (num, dim) / Linear weight (out, in)."""
    if m.kind == ModuleKind.EMBEDDING:
        return m.in_features, m.out_features
    return m.out_features, m.in_features


#: Model types whose transformers 5.24 config class sets ``tie_word_embeddings=True`` whatever the
#: file says (``T5Config(tie_word_embeddings=False).tie_word_embeddings`` is True; checked against
#: PEFT in tests/planner/test_property_counts.py).
CONFIG_FORCES_TIE = frozenset({"t5", "mt5"})
FORCED_TIE_HEAD = "lm_head"


def tied_module_paths(spec, embed, adapted_paths: set[str]) -> list[str]:
    """Paths of the layers PEFT ties to the embedding's adapter: every module whose weight is tied
    to the input embedding (``_get_module_names_tied_with_embedding``: none when
    ``tie_word_embeddings`` is false), matched like ``inject_adapter`` (``name.endswith(key)``);
    ``<module>.base_layer`` where the module is itself adapted."""
    forced = spec.model_type in CONFIG_FORCES_TIE
    if not spec.tie_word_embeddings and not forced:
        return []
    canonical = f"{embed.path}.weight"
    keys = [m.path for m in spec.inventory if m.path != embed.path and any(p.tied_to == canonical for p in m.params)]
    if forced and not spec.tie_word_embeddings:
        keys.append(FORCED_TIE_HEAD)  # untied in the checkpoint, tied in PEFT's eyes (config forced)
    paths = [p for p in spec.inventory.all_paths if any(p.endswith(k) for k in keys)]
    return [f"{p}.base_layer" if p in adapted_paths else p for p in paths]


@register("trainable_tokens", aliases=("trainable_token", "token_tuning"), category="additive",
          config=TrainableTokensConfig,
          paper="PEFT TrainableTokens (peft/tuners/trainable_tokens; no paper): train only selected embedding rows, "
                "e.g. new tokens")
def build(cfg: TrainableTokensConfig, spec, method: str) -> MethodPlan:
    inv = spec.inventory
    embed = _input_embedding(inv)
    targets: list[str] | str
    if cfg.target_modules is not None:
        targets = cfg.target_modules
        if isinstance(targets, str):
            _check_regex(targets, "target_modules")
    elif embed is not None:
        targets = embed.path
    else:
        raise MethodConfigError(f"{spec.name} has no input embedding; pass target_modules", field="target_modules")
    adapted = select_modules(TargetingConfig(target_modules=targets), inv, targets,
                             supported=TRAINABLE_TOKENS_SUPPORTED, method="trainable_tokens")
    n = len(cfg.token_indices)
    worst = max(cfg.token_indices)
    for m in adapted:
        rows, _ = _rows_and_dim(m)
        if worst >= rows:
            raise MethodConfigError(f"token index {worst} is out of range for {m.path} ({rows} rows)", field="token_indices")

    adapted_paths = {m.path for m in adapted}
    embed_adapted = embed is not None and embed.path in adapted_paths
    if embed_adapted and spec.model_type in CONFIG_FORCES_TIE and not spec.tie_word_embeddings:
        # PEFT wraps the (untied) head as a layer tied to the embedding's adapter even when it is
        # targeted itself: it shares the embedding's delta instead of getting its own (checked
        # against PEFT 0.21.2: one delta for target_modules=["lm_head", "shared"])
        adapted = [m for m in adapted if m.path != FORCED_TIE_HEAD]
        adapted_paths = {m.path for m in adapted}
    tied = tied_module_paths(spec, embed, adapted_paths) if embed_adapted else []
    tensors: list[NewTensor] = []
    for m in adapted:
        _, dim = _rows_and_dim(m)
        tensors.append(NewTensor(m.path, "trainable_tokens_delta.default", (n, dim),
                                 saved_name=peft_name(m.path, "trainable_tokens_delta")))
    saved_aliases: list[SavedBaseTensor] = []
    notes: list[str] = []
    if tied:
        _, dim = _rows_and_dim(embed)
        saved_aliases = [SavedBaseTensor(peft_name(p, "trainable_tokens_delta"), (n, dim), dtype="adapter") for p in tied]
        notes.append(f"{', '.join(tied)} share the embedding's trainable rows (tied weights): no extra parameters, "
                     "but save_pretrained writes a copy of the rows under each tied module.")
    if tied and spec.model_type in CONFIG_FORCES_TIE and not spec.tie_word_embeddings:
        notes.append(f"transformers 5 forces tie_word_embeddings=True on {spec.model_type} configs: PEFT treats the "
                     f"checkpoint's separate {FORCED_TIE_HEAD} as tied to the embedding and shares its rows.")
    if len(set(cfg.token_indices)) != n:
        notes.append("token_indices has duplicates; PEFT keeps one row per entry (counted as given).")
    wrapped = list(adapted) + [inv.by_path[p] for p in tied if p in inv.by_path]
    originals = [{"module": t.module, "shape": list(t.shape)} for t in tensors]
    peft_cfg: dict[str, Any] = {"peft_type": "TRAINABLE_TOKENS", "token_indices": list(cfg.token_indices),
                                "target_modules": targets if isinstance(targets, str) else list(targets)}
    return MethodPlan(method="trainable_tokens", peft_type="TRAINABLE_TOKENS", category="additive",
                      adapted=tuple(wrapped), new_tensors=tuple(tensors), trainable_base=(),
                      saved_base=tuple(saved_aliases), peft_config=peft_cfg, notes=tuple(notes),
                      extra={"trainable_tokens": {"num_tokens": n, "tied_modules": tied,
                                                  # buffers (model dtype), not parameters, not saved
                                                  "original_rows_buffers": originals}})
