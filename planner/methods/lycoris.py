"""LyCORIS-style reparameterizations counted like PEFT 0.21 (``peft/tuners/loha``, ``peft/tuners/lokr``,
``peft/tuners/lycoris_utils.py``): LoHa and LoKr. Both adapt ``torch.nn.Linear`` (and Conv1d /
Conv2d, which transformer LMs do not have); transformers' GPT-2 ``Conv1D`` is *not* supported
(PEFT raises ``TypeError``), nor are embeddings.

- LoHa (Hyeon-Woo et al., 2022, "FedPara: Low-Rank Hadamard Product for Communication-Efficient
  Federated Learning", arXiv:2108.06098): for a Linear (in -> out) of rank r,
  ``hada_w1_a`` (out, r), ``hada_w1_b`` (r, in), ``hada_w2_a`` (out, r), ``hada_w2_b`` (r, in);
  the update is (w1_a w1_b) * (w2_a w2_b) (Hadamard product).
- LoKr (Yeh et al., 2024, "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to
  Model Evaluation", arXiv:2309.14859): the update is kron(w1, w2). ``factorization`` splits
  out = a*b and in = c*d (with the default ``decompose_factor=-1``: a <= b and c <= d, near the
  square root); ``w1`` is (a, c) stored whole (``lokr_w1``) unless
  ``decompose_both`` and r < max(a, c)/2, then ``lokr_w1_a`` (a, r) + ``lokr_w1_b`` (r, c);
  ``w2`` is (b, d) stored whole (``lokr_w2``) when r >= max(b, d)/2, else ``lokr_w2_a`` (b, r) +
  ``lokr_w2_b`` (r, d).

``rank_pattern`` / ``alpha_pattern`` use PEFT's ``get_pattern_key`` (first key k with
``re.match(rf"(.*\\.)?({k})$", module_path)``). ``rank_dropout``, ``module_dropout``,
``rank_dropout_scale``, ``init_weights`` and ``use_effective_conv2d`` (Conv layers only) do not
change what is counted. Adapter tensors are saved as ``<module>.<name>`` (adapter name removed).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from planner.architectures.base import ModuleEntry, ModuleKind
from planner.methods import register
from planner.methods.base import (
    MethodPlan, NewTensor, TargetingConfig, check_rank, check_rank_pattern, field_check, is_dropout, modules_to_save_entries,
    peft_name, resolve_targets, select_modules,
)
from planner.methods.defaults import default_targets
from planner.methods.lora import pattern_value

#: PEFT's ``layers_mapping`` (Linear, Conv1d, Conv2d); of those, transformer LMs only have Linear.
LYCORIS_SUPPORTED = frozenset({ModuleKind.LINEAR})


class _LycorisConfig(TargetingConfig):
    """Fields PEFT's ``LoHaConfig`` and ``LoKrConfig`` share (``LycorisConfig`` + targeting)."""

    r: int = 8
    """Rank of each low-rank factor (PEFT default 8)."""
    alpha: float = 8
    """Scale numerator: the update is scaled by alpha / r. Does not change counts."""
    rank_dropout: float = 0.0
    """Dropout on the rank dimension during training (applied to the built delta weight)."""
    module_dropout: float = 0.0
    """Probability of skipping the whole adapter for a step during training."""
    use_effective_conv2d: bool = False
    """FedPara "Proposition 3" decomposition for Conv1d/Conv2d with kernel > 1; linears ignore it."""
    rank_pattern: dict[str, int] = {}
    """Per-module rank overrides: key is a regex matched against the end of the module path."""
    alpha_pattern: dict[str, float] = {}
    """Per-module alpha overrides (same matching); does not change counts."""

    _rank_positive = field_validator("r")(check_rank)
    _dropout_range = field_validator("rank_dropout", "module_dropout")(
        field_check(is_dropout, "dropout probabilities must be in [0, 1)"))
    _ranks_positive = field_validator("rank_pattern")(check_rank_pattern)


class LoHaConfig(_LycorisConfig):
    """``peft.LoHaConfig`` fields that change what is counted, stored or computed."""

    peft_type = "LOHA"

    init_weights: bool = True
    """PEFT's default init (w2_b zero, so the adapter starts as identity); does not change counts."""


class LoKrConfig(_LycorisConfig):
    """``peft.LoKrConfig`` fields that change what is counted, stored or computed."""

    peft_type = "LOKR"

    decompose_both: bool = False
    """Also factor the left Kronecker matrix w1 into (a, r) x (r, c) when r < max(a, c) / 2."""
    decompose_factor: int = -1
    """Kronecker factorization divider: -1 splits each dimension near its square root; f > 0 makes
    one factor f when it divides the dimension (else the largest divisor pair with the smaller <= f)."""
    rank_dropout_scale: bool = False
    """Rescale after rank dropout; does not change counts."""
    init_weights: bool | Literal["lycoris"] = True
    """True (w1 zero), False (random) or "lycoris" (w2 zero); does not change counts."""

    @field_validator("decompose_factor")
    @classmethod
    def _factor(cls, v: int) -> int:
        if v != -1 and v <= 0:
            raise ValueError("decompose_factor must be -1 (near the square root) or a positive integer")
        return v


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """PEFT's ``peft/tuners/lokr/layer.py`` ``factorization``: (m, n) with m * n == dimension, m <= n."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor  # as PEFT: not reordered
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    if m > n:
        n, m = m, n
    return m, n


def loha_tensors(entry: ModuleEntry, r: int) -> list[NewTensor]:
    p, out_f, in_f = entry.path, entry.out_features, entry.in_features
    shapes = {"hada_w1_a": (out_f, r), "hada_w1_b": (r, in_f), "hada_w2_a": (out_f, r), "hada_w2_b": (r, in_f)}
    return [NewTensor(p, f"{name}.default", shape, saved_name=peft_name(p, name)) for name, shape in shapes.items()]


def lokr_tensors(entry: ModuleEntry, r: int, *, decompose_both: bool, decompose_factor: int) -> list[NewTensor]:
    p = entry.path
    in_m, in_n = factorization(entry.in_features, decompose_factor)
    out_l, out_k = factorization(entry.out_features, decompose_factor)
    # shape = ((out_l, out_k), (in_m, in_n)): out = out_l * out_k, in = in_m * in_n
    use_w1 = not (decompose_both and r < max(out_l, in_m) / 2)
    use_w2 = not (r < max(out_k, in_n) / 2)
    shapes: dict[str, tuple[int, int]] = {}
    if use_w1:
        shapes["lokr_w1"] = (out_l, in_m)
    else:
        shapes["lokr_w1_a"] = (out_l, r)
        shapes["lokr_w1_b"] = (r, in_m)
    if use_w2:
        shapes["lokr_w2"] = (out_k, in_n)
    else:
        shapes["lokr_w2_a"] = (out_k, r)
        shapes["lokr_w2_b"] = (r, in_n)
    return [NewTensor(p, f"{name}.default", shape, saved_name=peft_name(p, name)) for name, shape in shapes.items()]


def _plan(cfg: _LycorisConfig, spec, method: str) -> MethodPlan:
    inv = spec.inventory
    targets = resolve_targets(cfg, inv, default_targets(method), spec.model_type, method)
    adapted = select_modules(cfg, inv, targets, supported=LYCORIS_SUPPORTED, method=method)
    tensors: list[NewTensor] = []
    for entry in adapted:
        r = pattern_value(cfg.rank_pattern, entry.path, cfg.r)
        if isinstance(cfg, LoKrConfig):
            tensors += lokr_tensors(entry, r, decompose_both=cfg.decompose_both, decompose_factor=cfg.decompose_factor)
        else:
            tensors += loha_tensors(entry, r)
    peft_cfg: dict[str, Any] = cfg.model_dump(exclude_none=True) | {"peft_type": cfg.peft_type}
    if cfg.target_modules is None:  # make PEFT's per-model default explicit
        peft_cfg["target_modules"] = list(targets)
    notes = []
    if cfg.rank_dropout or cfg.module_dropout:
        notes.append(f"{method}: rank_dropout / module_dropout change activations only, not counts.")
    return MethodPlan(
        method=method, peft_type=cfg.peft_type, category="reparameterization", adapted=tuple(adapted),
        new_tensors=tuple(tensors), trainable_base=(), copied_modules=tuple(modules_to_save_entries(cfg, inv)),
        peft_config=peft_cfg, notes=tuple(notes),
        extra={"r": cfg.r, "alpha": cfg.alpha, "rank_dropout": cfg.rank_dropout, "module_dropout": cfg.module_dropout},
    )


@register("loha", category="reparameterization", config=LoHaConfig,
          paper="Hyeon-Woo et al. 2022, FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated "
                "Learning (arXiv:2108.06098)")
def build_loha(cfg: LoHaConfig, spec, method: str) -> MethodPlan:
    return _plan(cfg, spec, "loha")


@register("lokr", category="reparameterization", config=LoKrConfig,
          paper="Yeh et al. 2024, Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model "
                "Evaluation (arXiv:2309.14859)")
def build_lokr(cfg: LoKrConfig, spec, method: str) -> MethodPlan:
    return _plan(cfg, spec, "lokr")
