"""FourierFT (Gao et al., 2024, "Parameter-Efficient Fine-Tuning with Discrete Fourier Transform",
arXiv:2405.03003), counted like ``peft.tuners.fourierft`` of PEFT 0.21.

Per adapted Linear / Conv1D (``fourierft/layer.py``): one trainable spectrum vector
``fourierft_spectrum`` of ``n_frequency`` coefficients (``n_frequency_pattern`` overrides it per
module), placed at fixed random positions of the (out, in) frequency grid; the update is
``ifft2(dense spectrum).real * scaling``. The positions (``indices``, int64 ``(2, n_frequency)``,
drawn from ``random_loc_seed``) live in a plain dict: they are neither parameters nor buffers and
are not saved, so the adapter file holds only the spectra (a loader re-draws them from the seed).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import field_validator

from planner.architectures.base import ModuleEntry, ModuleKind
from planner.errors import MethodConfigError
from planner.methods import register
from planner.methods.base import (
    MethodPlan, NewTensor, TargetingConfig, field_check, is_positive, modules_to_save_entries, peft_name, resolve_targets,
    select_modules,
)
from planner.methods.defaults import default_targets
from planner.methods.lora import trainable_biases
from planner.methods.oft import saved_wrapped_embeddings

#: FourierFT wraps nn.Linear and transformers' Conv1D (peft/tuners/fourierft/model.py).
FOURIERFT_SUPPORTED = frozenset({ModuleKind.LINEAR, ModuleKind.CONV1D})


class FourierFTConfig(TargetingConfig):
    """``peft.FourierFTConfig`` fields that change what is counted, stored or computed."""

    peft_type = "FOURIERFT"

    n_frequency: int = 1000
    """Learnable spectral coefficients per adapted module (trainable parameters per module);
    1 <= n_frequency <= in_features x out_features."""
    scaling: float = 150.0
    """Scale of the reconstructed update (like lora_alpha); does not change counts."""
    random_loc_seed: int | None = 777
    """Seed of the random frequency positions; does not change counts."""
    n_frequency_pattern: dict[str, int] = {}
    """Per-module n_frequency: a key matches a module path ending in ``.<key>`` (regex), first key wins."""
    bias: Literal["none", "all", "fourier_only"] = "none"
    """Which base biases train: none, every bias, or those of adapted modules."""
    fan_in_fan_out: bool = False
    """Informational: PEFT sets it for Conv1D (GPT-2) itself; it does not change counts."""

    _positive = field_validator("n_frequency")(field_check(is_positive, "n_frequency must be a positive integer"))

    @field_validator("n_frequency_pattern")
    @classmethod
    def _pattern_positive(cls, v: dict[str, int]) -> dict[str, int]:
        for key, n in v.items():
            try:
                re.compile(key)
            except re.error as exc:
                raise ValueError(f"n_frequency_pattern key {key!r} is not a valid regular expression: {exc}") from None
            if n <= 0:
                raise ValueError(f"n_frequency_pattern[{key!r}] must be a positive integer")
        return v


def n_frequency_for(cfg: FourierFTConfig, path: str) -> int:
    """PEFT's lookup in ``FourierFTModel._create_and_replace``: the first pattern key with
    ``re.match(rf".*\\.{key}$", path)``, else the module path itself as a key, else ``n_frequency``."""
    key = next((k for k in cfg.n_frequency_pattern if re.match(rf".*\.{k}$", path)), path)
    return cfg.n_frequency_pattern.get(key, cfg.n_frequency)


def _check(entry: ModuleEntry, n: int, field: str) -> None:
    limit = entry.in_features * entry.out_features
    if n > limit:
        raise MethodConfigError(
            f"{field}={n} exceeds in_features x out_features = {limit} of {entry.path!r} "
            f"({entry.in_features} -> {entry.out_features}); allowed: 1 ... {limit} (PEFT raises ValueError)", field=field)


@register("fourierft", aliases=("fourier_ft",), category="reparameterization", config=FourierFTConfig,
          paper="Gao et al. 2024, Parameter-Efficient Fine-Tuning with Discrete Fourier Transform (arXiv:2405.03003)")
def build(cfg: FourierFTConfig, spec, method: str) -> MethodPlan:
    inv = spec.inventory
    targets = resolve_targets(cfg, inv, default_targets("fourierft"), spec.model_type, "fourierft")
    adapted = select_modules(cfg, inv, targets, supported=FOURIERFT_SUPPORTED, method="fourierft")
    tensors: list[NewTensor] = []
    per_module: dict[str, int] = {}
    for m in adapted:
        n = n_frequency_for(cfg, m.path)
        _check(m, n, "n_frequency" if n == cfg.n_frequency else "n_frequency_pattern")
        per_module[m.path] = n
        tensors.append(NewTensor(m.path, "fourierft_spectrum.default", (n,), saved_name=peft_name(m.path, "fourierft_spectrum")))
    trainable_base, bias_saved = trainable_biases(cfg.bias, inv, adapted)
    peft_cfg: dict[str, Any] = cfg.model_dump(exclude_none=True) | {"peft_type": "FOURIERFT"}
    if cfg.target_modules is None:
        peft_cfg["target_modules"] = list(targets)
    index_bytes = sum(2 * n * 8 for n in per_module.values())
    return MethodPlan(
        method="fourierft", peft_type="FOURIERFT", category="reparameterization", adapted=tuple(adapted),
        new_tensors=tuple(tensors), trainable_base=tuple(trainable_base),
        copied_modules=tuple(modules_to_save_entries(cfg, inv)),
        saved_base=saved_wrapped_embeddings(targets, cfg.target_modules, inv, adapted) + bias_saved, peft_config=peft_cfg,
        notes=(f"frequency positions: int64 (2, n_frequency) per module, {index_bytes:,} bytes in all, kept outside "
               "the parameters and not saved (re-drawn from random_loc_seed); each forward builds a dense "
               "(out_features, in_features) float32 spectrum per module",),
        extra={"n_frequency": per_module, "scaling": cfg.scaling, "index_bytes": index_bytes},
    )
