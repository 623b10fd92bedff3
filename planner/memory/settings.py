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
#: Data-parallel strategies and offload choices (planner/memory/parallel.py models each).
SHARDINGS = ("ddp", "zero1", "zero2", "zero3", "fsdp_full_shard", "fsdp_shard_grad_op")
OFFLOADS = ("optimizer", "optimizer+params")

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
    num_gpus: int = 1
    """Data-parallel GPUs (ranks). ``plan.memory`` is then the memory of one GPU (rank 0, the busiest)."""
    sharding: Literal["ddp", "zero1", "zero2", "zero3", "fsdp_full_shard", "fsdp_shard_grad_op"] | None = None
    """Data-parallel strategy: ``ddp`` (DistributedDataParallel), DeepSpeed ``zero1`` / ``zero2`` / ``zero3``,
    FSDP2 ``fsdp_full_shard`` / ``fsdp_shard_grad_op``. None = single GPU; with ``num_gpus > 1`` None
    means ``ddp`` (what ``torchrun`` + ``Trainer`` runs without a DeepSpeed / FSDP config)."""
    offload: Literal["optimizer", "optimizer+params"] | None = None
    """What lives in host (CPU) memory: ``"optimizer"`` (DeepSpeed ``offload_optimizer``: fp32 master
    weights, optimizer state and step; zero1/2/3) or ``"optimizer+params"`` (also the parameter shards:
    DeepSpeed ``offload_param`` with zero3, FSDP2 ``CPUOffloadPolicy`` with fsdp_full_shard)."""

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

    @field_validator("num_gpus", mode="before")
    @classmethod
    def _gpus(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("num_gpus must be an integer number of GPUs (1 = a single GPU)")
        if v < 1:
            raise ValueError("num_gpus must be at least 1 (data-parallel GPUs; 1 = a single GPU)")
        return v

    @field_validator("sharding", mode="before")
    @classmethod
    def _sharding(cls, v: Any) -> Any:
        if v is not None and v not in SHARDINGS:
            raise ValueError(f"unknown sharding; allowed: {', '.join(SHARDINGS)} (or None for a single GPU)")
        return v

    @field_validator("offload", mode="before")
    @classmethod
    def _offload(cls, v: Any) -> Any:
        if v is not None and v not in OFFLOADS:
            raise ValueError(f"unknown offload; allowed: {', '.join(OFFLOADS)} (or None)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_sharding(cls, data: Any) -> Any:
        """Several GPUs without a strategy run DDP (``torchrun`` + ``Trainer``'s default)."""
        if isinstance(data, dict) and data.get("sharding") is None and isinstance(data.get("num_gpus"), int) \
                and not isinstance(data.get("num_gpus"), bool) and data["num_gpus"] > 1:
            data = {**data, "sharding": "ddp"}
        return data

    @field_validator("offload", mode="after")
    @classmethod
    def _offload_fits_sharding(cls, off: Any, info) -> Any:
        """Offload combinations the frameworks accept (DeepSpeed: ``offload_optimizer`` with stages
        1-3, ``offload_param`` with stage 3 only; FSDP2: ``CPUOffloadPolicy`` moves parameters,
        gradients and the optimizer together; DDP has no offload)."""
        sh = info.data.get("sharding")
        if off is None or "sharding" not in info.data:
            return off
        if sh is None:
            raise ValueError(f"offload={off!r} needs a sharding strategy: zero1 / zero2 / zero3 (offload='optimizer') "
                             "or zero3 / fsdp_full_shard (offload='optimizer+params'); one GPU works too "
                             "(e.g. sharding='zero2', num_gpus=1: ZeRO-Offload)")
        if sh == "ddp":
            raise ValueError(f"DDP has no offload (offload={off!r}); use sharding='zero1' / 'zero2' / 'zero3' with "
                             "offload='optimizer', or 'zero3' / 'fsdp_full_shard' with offload='optimizer+params'")
        if off == "optimizer" and sh.startswith("fsdp"):
            raise ValueError("FSDP cannot offload the optimizer alone: its CPUOffloadPolicy moves parameters, "
                             "gradients and optimizer state together; use offload='optimizer+params' with "
                             "sharding='fsdp_full_shard', or a DeepSpeed strategy (zero1 / zero2 / zero3)")
        if off == "optimizer+params" and sh not in ("zero3", "fsdp_full_shard"):
            raise ValueError(f"offload='optimizer+params' needs sharded parameters: sharding='zero3' (DeepSpeed "
                             f"offload_param is ZeRO-3 only) or 'fsdp_full_shard' (got sharding={sh!r}); "
                             "use offload='optimizer' with zero1 / zero2")
        return off

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
