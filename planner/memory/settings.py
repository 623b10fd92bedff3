"""Training settings that change memory: one validated, typed object.

Field names are the interface (``planner.estimate(..., batch_size=4, seq_len=2048, ...)``) and
follow transformers' ``TrainingArguments`` where one exists (``optim`` values for ``optimizer``,
``gradient_checkpointing``, ``gradient_accumulation_steps``) and ``BitsAndBytesConfig`` keyword
arguments for ``quantization``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from planner.constants import normalise_dtype
from planner.errors import PlannerError

#: Optimizers as named by ``transformers.TrainingArguments.optim``.
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd",
              "adafactor")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
MIXED_PRECISION = (None, "bf16", "fp16")

#: QLoRA's standard quantization (Dettmers et al. 2023, arXiv:2305.14314 section 3: NF4 with
#: double quantization, bf16 compute), as ``BitsAndBytesConfig`` keyword arguments.
QLORA_DEFAULT_QUANTIZATION: dict[str, Any] = {
    "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
}
#: ``BitsAndBytesConfig`` keys the memory model reads; others are accepted and ignored.
QUANTIZATION_KEYS = frozenset({
    "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype",
    "bnb_4bit_quant_storage", "llm_int8_skip_modules", "llm_int8_threshold", "llm_int8_has_fp16_weight",
    "bnb_4bit_quant_storage_dtype",
})


class TrainingSettings(BaseModel):
    """Everything about one training step that changes its memory (model and method aside)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = 1
    """Sequences per micro-batch (per GPU)."""
    seq_len: int = 512
    """Tokens per sequence (encoder-decoder: the source length)."""
    target_len: int | None = None
    """Encoder-decoder only: target (decoder) length; None = ``seq_len``."""
    dtype: str = "bfloat16"
    """dtype the model is loaded in (``torch_dtype``): float32, bfloat16, float16."""
    adapter_dtype: str = "float32"
    """dtype of the adapter weights: PEFT's ``autocast_adapter_dtype=True`` keeps them in float32."""
    mixed_precision: Literal["bf16", "fp16"] | None = None
    """Autocast over fp32 weights (``TrainingArguments(bf16=True)`` with an fp32 model)."""
    gradient_checkpointing: bool = False
    """``model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})``."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    optimizer: str = "adamw_torch"
    """``TrainingArguments.optim`` name."""
    quantization: dict[str, Any] | None = None
    """``BitsAndBytesConfig`` keyword arguments (4-bit or 8-bit base weights)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step: changes time per step, not peak memory (gradients accumulate in place)."""

    @field_validator("batch_size", "seq_len", "gradient_accumulation_steps")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be a positive integer")
        return v

    @field_validator("target_len")
    @classmethod
    def _positive_or_none(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError("must be a positive integer")
        return v

    @field_validator("dtype", "adapter_dtype")
    @classmethod
    def _dtype(cls, v: str, info) -> str:
        try:
            return normalise_dtype(v, field=info.field_name)
        except PlannerError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        if v not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer; allowed: {', '.join(OPTIMIZERS)}")
        return v

    @field_validator("quantization")
    @classmethod
    def _quantization(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return None
        unknown = set(v) - QUANTIZATION_KEYS
        if unknown:
            raise ValueError(f"unknown BitsAndBytesConfig keys {sorted(unknown)}; allowed: {sorted(QUANTIZATION_KEYS)}")
        if bool(v.get("load_in_4bit")) == bool(v.get("load_in_8bit")):
            raise ValueError("set exactly one of load_in_4bit / load_in_8bit")
        qt = v.get("bnb_4bit_quant_type", "fp4")
        if qt not in ("nf4", "fp4"):
            raise ValueError("bnb_4bit_quant_type must be 'nf4' or 'fp4'")
        return dict(v)

    @model_validator(mode="after")
    def _consistent(self):
        if self.mixed_precision is not None and self.dtype != "float32":
            raise ValueError("mixed_precision needs fp32 weights: set dtype='float32' (autocast runs the matmuls in "
                             f"{self.mixed_precision}) or drop mixed_precision to train in {self.dtype}")
        return self

    @property
    def quantized_4bit(self) -> bool:
        return bool(self.quantization and self.quantization.get("load_in_4bit"))

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "TrainingSettings":
        try:
            return cls(**options)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or None
            msg = err["msg"].removeprefix("Value error, ")
            raise PlannerError(f"{msg} (got {err.get('input')!r})", field=loc or "settings") from None


SETTING_KEYS = frozenset(TrainingSettings.model_fields)
