"""OFT (Qiu et al., 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning",
arXiv:2306.07280) and BOFT (Liu et al., 2024, "Parameter-Efficient Orthogonal Finetuning via
Butterfly Factorization", arXiv:2311.06243), counted like ``peft.tuners.oft`` / ``peft.tuners.boft``
of PEFT 0.21.

OFT (``oft/layer.py``): the input of each adapted module is rotated by a block-diagonal orthogonal
matrix of ``r`` blocks of size ``oft_block_size`` (``r * oft_block_size == in_features``; for an
Embedding the rotated dimension is ``embedding_dim``). Each block is the Cayley transform of a
skew-symmetric matrix, stored packed: ``oft_R.weight`` is ``(r, b*(b-1)/2)`` (only the strict upper
triangle), ``(1, b*(b-1)/2)`` with ``block_share``. The ``rows`` / ``cols`` index buffers are not
saved. When ``in_features`` is not divisible, PEFT *adjusts* the block size (or r) to the nearest
divisor with a warning; the planner does the same and says so in the plan's notes.

BOFT (``boft/layer.py``): ``boft_R`` is ``(m, N, b, b)`` full blocks for ``m`` butterfly factors
(``boft_n_butterfly_factor``), ``N * b == in_features``, plus an output scale ``boft_s`` of
``(out_features, 1)``. Impossible sizes are errors in PEFT and here (with the values that work).
Each module also holds a dense, non-persistent permutation buffer ``boft_P`` of
``(m, in_features, in_features)`` float32 (not a parameter, not saved; in ``plan.extra``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from planner.architectures.base import ModuleEntry, ModuleKind
from planner.errors import MethodConfigError
from planner.methods import register
from planner.methods.base import (
    PEFT_PREFIX, MethodPlan, NewTensor, SavedBaseTensor, TargetingConfig, check_dropout, field_check, is_non_negative,
    modules_to_save_entries, peft_name, resolve_targets, saved_embedding_layers, select_modules,
)
from planner.methods.defaults import default_targets
from planner.methods.lora import trainable_biases

#: OFT wraps nn.Linear, nn.Conv2d and nn.Embedding (peft/tuners/oft/model.py ``_get_tuner_layer_class``);
#: transformers' Conv1D (GPT-2) is refused with a TypeError.
OFT_SUPPORTED = frozenset({ModuleKind.LINEAR, ModuleKind.EMBEDDING})
#: BOFT wraps nn.Linear and nn.Conv2d only (peft/tuners/boft/model.py).
BOFT_SUPPORTED = frozenset({ModuleKind.LINEAR})


def saved_wrapped_embeddings(targets: list[str] | str, cfg_targets: list[str] | str | None, inventory,
                             adapted: list[ModuleEntry]) -> tuple[SavedBaseTensor, ...]:
    """PEFT's ``save_embedding_layers="auto"`` (peft/utils/save_and_load.py): when ``embed_tokens`` /
    ``lm_head`` is named in (or matched by) ``target_modules``, ``save_pretrained`` writes the base
    weights of the input / output embedding layers *that were wrapped* (``has_valid_embedding_base_layer``),
    under ``<module>.base_layer.<param>``; an embedding layer left unwrapped is not saved."""
    wrapped = [f"{PEFT_PREFIX}{m.path}.base_layer." for m in adapted]
    return tuple(s for s in saved_embedding_layers(targets, cfg_targets, inventory)
                 if any(s.saved_name.startswith(w) for w in wrapped))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _show(values: list[int], limit: int = 16) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


# --- OFT ---------------------------------------------------------------------------------------


class OFTConfig(TargetingConfig):
    """``peft.OFTConfig`` fields that change what is counted, stored or computed.

    Exactly one of ``r`` and ``oft_block_size`` is non-zero (``r * oft_block_size == in_features``).
    PEFT's defaults are ``r=0, oft_block_size=32``; passing only ``r`` here sets
    ``oft_block_size=0`` for you (PEFT itself would refuse the pair r=8, oft_block_size=32).
    """

    peft_type = "OFT"

    r: int = 0
    """Number of orthogonal blocks per adapted module (0: derived from ``oft_block_size``)."""
    oft_block_size: int = 32
    """Size of each orthogonal block (0: derived from ``r``). Should divide every adapted
    module's ``in_features``; PEFT otherwise picks the nearest divisor (with a warning)."""
    module_dropout: float = 0.0
    """Multiplicative dropout: the probability of replacing a block by the identity during training
    (acts on the (r, b, b) rotation, not on activations)."""
    bias: Literal["none", "all", "oft_only"] = "none"
    """Which base biases train: none, every bias, or those of adapted modules."""
    coft: bool = False
    """Constrained OFT: project each block back within ``eps`` of the identity every step
    (compute only; same parameters)."""
    eps: float = 6e-5
    """COFT's control strength (freedom of rotation); used only with ``coft``."""
    block_share: bool = False
    """Share one block across all blocks of a module: ``oft_R`` becomes (1, b*(b-1)/2)."""
    use_cayley_neumann: bool = True
    """Approximate the Cayley transform's inverse by a Neumann series (PEFT default True); compute only."""
    num_cayley_neumann_terms: int = 5
    """Terms of the Neumann series (used with ``use_cayley_neumann``); compute only."""
    fan_in_fan_out: bool = False
    """Informational: OFT cannot wrap Conv1D (the only fan-in-fan-out layer), so it never changes counts."""

    @model_validator(mode="before")
    @classmethod
    def _infer_block_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("r") and "oft_block_size" not in data:
            data = {**data, "oft_block_size": 0}
        return data

    _non_negative = field_validator("r", "oft_block_size")(field_check(is_non_negative, "must be >= 0"))

    _dropout_range = field_validator("module_dropout")(check_dropout)

    _terms = field_validator("num_cayley_neumann_terms")(
        field_check(is_non_negative, "num_cayley_neumann_terms must be >= 0"))

    @model_validator(mode="after")
    def _one_of_r_and_block_size(self):
        if self.r == 0 and self.oft_block_size == 0:
            raise ValueError("r and oft_block_size are both 0; set exactly one of them (PEFT refuses both 0)")
        if self.r != 0 and self.oft_block_size != 0:
            raise ValueError(f"r ({self.r}) and oft_block_size ({self.oft_block_size}) are both set; set exactly one "
                             "(r x oft_block_size == in_features), e.g. oft_block_size=0 with r (PEFT refuses both)")
        return self


def adjust_oft_parameter(in_features: int, value: int) -> int:
    """PEFT's ``OFTLayer.adjust_oft_parameters``: the divisor of ``in_features`` nearest ``value``
    (the lower one on a tie); ``in_features`` itself when ``value >= in_features``."""
    if value < in_features:
        higher = value
        while higher <= in_features and in_features % higher != 0:
            higher += 1
    else:
        return in_features
    lower = value
    while lower > 1 and in_features % lower != 0:
        lower -= 1
    return lower if (value - lower) <= (higher - value) else higher


def oft_blocks(cfg: OFTConfig, dim: int) -> tuple[int, int, int | None]:
    """(r, block size, the value PEFT replaced or None) for a module rotating ``dim`` features."""
    if cfg.r == 0:
        b = cfg.oft_block_size
        adjusted = None
        if dim % b != 0 or b > dim:
            adjusted, b = b, adjust_oft_parameter(dim, b)
        return dim // b, b, adjusted
    r = cfg.r
    adjusted = None
    if dim % r != 0 or r > dim:
        adjusted, r = r, adjust_oft_parameter(dim, r)
    return r, dim // r, adjusted


def _oft_dim(entry: ModuleEntry) -> int:
    # Embedding: PEFT rotates embedding_dim (the inventory's out_features); Linear: in_features
    return entry.out_features if entry.kind == ModuleKind.EMBEDDING else entry.in_features


@register("oft", category="reparameterization", config=OFTConfig,
          paper="Qiu et al. 2023, Controlling Text-to-Image Diffusion by Orthogonal Finetuning (arXiv:2306.07280)")
def build_oft(cfg: OFTConfig, spec, method: str) -> MethodPlan:
    inv = spec.inventory
    targets = resolve_targets(cfg, inv, default_targets("oft"), spec.model_type, "oft")
    adapted = select_modules(cfg, inv, targets, supported=OFT_SUPPORTED, method="oft")
    tensors: list[NewTensor] = []
    adjusted: dict[tuple[int, int, int], list[str]] = {}
    blocks: dict[str, tuple[int, int]] = {}
    for m in adapted:
        dim = _oft_dim(m)
        r, b, old = oft_blocks(cfg, dim)
        if old is not None:
            adjusted.setdefault((dim, old, r if cfg.r else b), []).append(m.path)
        blocks[m.path] = (r, b)
        n_elements = b * (b - 1) // 2
        attr = "oft_embedding_R" if m.kind == ModuleKind.EMBEDDING else "oft_R"
        tensors.append(NewTensor(m.path, f"{attr}.default.weight", (1 if cfg.block_share else r, n_elements),
                                 saved_name=peft_name(m.path, f"{attr}.weight")))
    notes = []
    what = "r" if cfg.r else "oft_block_size"
    for (dim, old, new), paths in adjusted.items():
        notes.append(f"{what}={old} does not divide {dim} (in_features of {paths[0]}"
                     f"{f' and {len(paths) - 1} more' if len(paths) > 1 else ''}); PEFT adjusts it to {new} there "
                     f"(divisors of {dim}: {_show(_divisors(dim))}) and so does this plan")
    trainable_base, bias_saved = trainable_biases(cfg.bias, inv, adapted)
    peft_cfg: dict[str, Any] = cfg.model_dump(exclude_none=True) | {"peft_type": "OFT"}
    if cfg.target_modules is None:
        peft_cfg["target_modules"] = list(targets)
    return MethodPlan(
        method="oft", peft_type="OFT", category="reparameterization", adapted=tuple(adapted), new_tensors=tuple(tensors),
        trainable_base=tuple(trainable_base), copied_modules=tuple(modules_to_save_entries(cfg, inv)),
        saved_base=saved_wrapped_embeddings(targets, cfg.target_modules, inv, adapted) + bias_saved, peft_config=peft_cfg,
        notes=tuple(notes),
        extra={"blocks": blocks, "module_dropout": cfg.module_dropout, "block_share": cfg.block_share, "coft": cfg.coft,
               "use_cayley_neumann": cfg.use_cayley_neumann, "num_cayley_neumann_terms": cfg.num_cayley_neumann_terms},
    )


# --- BOFT --------------------------------------------------------------------------------------


class BOFTConfig(TargetingConfig):
    """``peft.BOFTConfig`` fields that change what is counted, stored or computed.

    Exactly one of ``boft_block_size`` and ``boft_block_num`` is non-zero
    (``boft_block_size * boft_block_num == in_features``). PEFT's defaults are
    ``boft_block_size=4, boft_block_num=0``; passing only ``boft_block_num`` here sets
    ``boft_block_size=0`` for you.
    """

    peft_type = "BOFT"

    boft_block_size: int = 4
    """Size b of each orthogonal block (0: derived from ``boft_block_num``); must divide in_features."""
    boft_block_num: int = 0
    """Number N of blocks per butterfly factor (0: derived from ``boft_block_size``); must divide in_features."""
    boft_n_butterfly_factor: int = 1
    """Number of butterfly factors m (1 = plain OFT with full blocks). Counts assume PEFT's fbd_cuda
    extension loads; without it (no CUDA toolkit / ninja) PEFT silently uses 1."""
    boft_dropout: float = 0.0
    """Multiplicative dropout: the probability of replacing a block by the identity during training."""
    bias: Literal["none", "all", "boft_only"] = "none"
    """Which base biases train: none, every bias, or those of adapted modules."""
    fan_in_fan_out: bool = False
    """Informational: BOFT cannot wrap Conv1D, so it never changes counts."""

    @model_validator(mode="before")
    @classmethod
    def _infer_block_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("boft_block_num") and "boft_block_size" not in data:
            data = {**data, "boft_block_size": 0}
        return data

    _non_negative = field_validator("boft_block_size", "boft_block_num")(field_check(is_non_negative, "must be >= 0"))

    @field_validator("boft_n_butterfly_factor")
    @classmethod
    def _factor_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("boft_n_butterfly_factor must be a positive integer (1 = no butterfly)")
        return v

    _dropout_range = field_validator("boft_dropout")(check_dropout)

    @model_validator(mode="after")
    def _one_of_size_and_num(self):
        if self.boft_block_size == 0 and self.boft_block_num == 0:
            raise ValueError("boft_block_size and boft_block_num are both 0; set exactly one of them")
        if self.boft_block_size != 0 and self.boft_block_num != 0:
            raise ValueError(f"boft_block_size ({self.boft_block_size}) and boft_block_num ({self.boft_block_num}) are "
                             "both set; set exactly one (boft_block_size x boft_block_num == in_features), e.g. "
                             "boft_block_size=0 with boft_block_num (PEFT refuses both)")
        return self


def boft_problem(in_features: int, block_size: int, block_num: int, factor: int) -> str | None:
    """PEFT's ``BOFTLayer.update_layer`` checks (``factor`` as configured, 1 = no butterfly):
    the reason this (block_size | block_num) cannot be used, or None."""
    f = factor - 1
    if block_size == 0:
        if in_features % block_num != 0:
            return f"in_features ({in_features}) must be divisible by boft_block_num ({block_num})"
        if f and block_num.bit_length() - 1 < f:
            return f"boft_n_butterfly_factor ({factor}) needs boft_block_num >= 2**{f}"
        if f and block_num % (2 ** f) != 0:
            return f"boft_block_num ({block_num}) must be a multiple of 2**(boft_n_butterfly_factor - 1) = {2 ** f}"
        block_size = in_features // block_num
    else:
        if in_features % block_size != 0:
            return f"in_features ({in_features}) must be divisible by boft_block_size ({block_size})"
        if f and in_features % (block_size * 2 ** f) != 0:
            return (f"in_features ({in_features}) must be a multiple of boft_block_size x 2**(boft_n_butterfly_factor - 1)"
                    f" = {block_size * 2 ** f}")
        block_num = in_features // block_size
    if f and block_num % 2:
        return f"boft_block_num ({block_num}) must be even with boft_n_butterfly_factor > 1"
    if f and block_size % 2:
        return f"boft_block_size ({block_size}) must be even with boft_n_butterfly_factor > 1"
    return None


@register("boft", category="reparameterization", config=BOFTConfig,
          paper="Liu et al. 2024, Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization (arXiv:2311.06243)")
def build_boft(cfg: BOFTConfig, spec, method: str) -> MethodPlan:
    inv = spec.inventory
    targets = resolve_targets(cfg, inv, default_targets("boft"), spec.model_type, "boft")
    adapted = select_modules(cfg, inv, targets, supported=BOFT_SUPPORTED, method="boft")
    field = "boft_block_size" if cfg.boft_block_size else "boft_block_num"
    value = cfg.boft_block_size or cfg.boft_block_num
    m_factors = cfg.boft_n_butterfly_factor
    tensors: list[NewTensor] = []
    blocks: dict[str, tuple[int, int]] = {}
    buffer_bytes = 0
    for m in adapted:
        d = m.in_features
        problem = boft_problem(d, cfg.boft_block_size, cfg.boft_block_num, m_factors)
        if problem:
            ok = [v for v in _divisors(d) if not boft_problem(d, v if field == "boft_block_size" else 0,
                                                              v if field == "boft_block_num" else 0, m_factors)]
            raise MethodConfigError(
                f"{field}={value} cannot be used for {m.path!r}: {problem} (PEFT raises ValueError). Values of {field} "
                f"that work for in_features {d} with boft_n_butterfly_factor={m_factors}: {_show(ok) or 'none'}",
                field=field)
        b = cfg.boft_block_size or d // cfg.boft_block_num
        n = d // b
        blocks[m.path] = (n, b)
        tensors.append(NewTensor(m.path, "boft_R.default", (m_factors, n, b, b), saved_name=peft_name(m.path, "boft_R")))
        tensors.append(NewTensor(m.path, "boft_s.default", (m.out_features, 1), saved_name=peft_name(m.path, "boft_s")))
        buffer_bytes += m_factors * d * d * 4
    notes = [f"each adapted module holds a dense float32 permutation buffer boft_P (boft_n_butterfly_factor x "
             f"in_features x in_features), {buffer_bytes:,} bytes in all: not parameters, not saved"]
    if m_factors > 1:
        notes.append(f"boft_n_butterfly_factor={m_factors} needs PEFT's fbd_cuda extension (built at first use with "
                     "CUDA and ninja); where it cannot be built PEFT silently uses 1 and the counts are those of "
                     "boft_n_butterfly_factor=1")
    trainable_base, bias_saved = trainable_biases(cfg.bias, inv, adapted)
    peft_cfg: dict[str, Any] = cfg.model_dump(exclude_none=True) | {"peft_type": "BOFT"}
    if cfg.target_modules is None:
        peft_cfg["target_modules"] = list(targets)
    return MethodPlan(
        method="boft", peft_type="BOFT", category="reparameterization", adapted=tuple(adapted), new_tensors=tuple(tensors),
        trainable_base=tuple(trainable_base), copied_modules=tuple(modules_to_save_entries(cfg, inv)),
        saved_base=saved_wrapped_embeddings(targets, cfg.target_modules, inv, adapted) + bias_saved, peft_config=peft_cfg,
        notes=tuple(notes),
        extra={"blocks": blocks, "boft_dropout": cfg.boft_dropout, "boft_n_butterfly_factor": m_factors,
               "buffer_bytes": buffer_bytes},
    )
