"""The accelerator catalog (``catalog/gpus.json``) and user-described GPUs.

Conventions (also in the JSON's ``_about`` and in docs/gpus.md):

* ``memory_bytes`` is the nominal capacity in binary units ("80 GB" on a GPU is 80 GiB);
  ``reported_memory_bytes`` is what nvidia-smi reports where a public log confirmed it;
  :attr:`GPU.usable_memory_bytes` is what a plan should budget against.
* ``memory_bandwidth_bytes_per_s`` is decimal (GB/s = 1e9 B/s), as vendors quote it.
* ``peak_dense_tflops`` are dense (no 2:4 sparsity) peaks; bf16/fp16 are tensor-core rates with
  FP32 accumulate, fp32 is the non-tensor rate, ``None`` means no hardware support / no figure.

Everything is read from inside the package with ``importlib.resources`` and cached; nothing is fetched.
"""

from __future__ import annotations

import difflib
import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from planner.errors import PlannerError

Dtype = Literal["bf16", "fp16", "fp32", "tf32"]
DTYPES: tuple[str, ...] = ("bf16", "fp16", "fp32", "tf32")

_GIB = 2**30
_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


class UnknownGPUError(PlannerError):
    """A GPU name that is neither a catalog id nor a catalog name (the message lists the catalog)."""


class GPUSpecError(PlannerError):
    """A GPU description (``custom_gpu`` arguments or a catalog row) that is invalid."""


def _check_positive_finite(value: float | int | None, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")


class PeakTflops(BaseModel):
    """Dense peak throughput in TFLOPS per number format; ``None`` = unsupported or unpublished."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bf16: float | None = None
    fp16: float | None = None
    fp32: float | None = None
    tf32: float | None = None

    @field_validator("bf16", "fp16", "fp32", "tf32")
    @classmethod
    def _positive(cls, v: float | None, info: Any) -> float | None:
        _check_positive_finite(v, f"peak_dense_tflops.{info.field_name}")
        return v


class Source(BaseModel):
    """The vendor document a catalog entry's numbers come from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    title: str = Field(min_length=1)
    url: str = ""


class GPU(BaseModel):
    """One accelerator: memory, bandwidth, dense peak throughput and where the numbers came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    vendor: str = ""
    memory_bytes: int
    memory_note: str = ""
    reported_memory_bytes: int | None = None
    memory_bandwidth_bytes_per_s: int | None = None
    peak_dense_tflops: PeakTflops = PeakTflops()
    tdp_watts: float | None = None
    form_factor: str = ""
    unified_memory: bool = False
    usable_memory_fraction: float | None = None
    source: Source | None = None
    notes: str = ""
    unconfirmed: tuple[str, ...] = ()

    @field_validator("memory_bytes", "reported_memory_bytes", "memory_bandwidth_bytes_per_s", "tdp_watts")
    @classmethod
    def _positive(cls, v: float | int | None, info: Any) -> float | int | None:
        _check_positive_finite(v, info.field_name)
        return v

    @field_validator("usable_memory_fraction")
    @classmethod
    def _fraction(cls, v: float | None) -> float | None:
        if v is not None and not (0 < v <= 1):
            raise ValueError(f"usable_memory_fraction must be in (0, 1], got {v!r}")
        return v

    @model_validator(mode="after")
    def _reported_not_above_physical(self) -> GPU:
        if self.reported_memory_bytes is not None and self.reported_memory_bytes > self.memory_bytes:
            raise ValueError(
                f"reported_memory_bytes ({self.reported_memory_bytes}) exceeds memory_bytes ({self.memory_bytes})"
            )
        return self

    # ----- derived quantities -------------------------------------------------------------------

    @property
    def memory_gib(self) -> float:
        """Nominal memory in GiB (2^30 bytes)."""
        return self.memory_bytes / _GIB

    @property
    def usable_memory_bytes(self) -> int:
        """What a plan should budget against: the reported total if known, else nominal x usable fraction."""
        if self.reported_memory_bytes is not None:
            return self.reported_memory_bytes
        if self.usable_memory_fraction is not None:
            return int(self.memory_bytes * self.usable_memory_fraction)
        return self.memory_bytes

    @property
    def usable_memory_gib(self) -> float:
        return self.usable_memory_bytes / _GIB

    @property
    def memory_bandwidth_gb_per_s(self) -> float | None:
        b = self.memory_bandwidth_bytes_per_s
        return None if b is None else b / 1e9

    def peak_tflops(self, dtype: str) -> float | None:
        """Dense peak TFLOPS for ``bf16``/``fp16``/``fp32``/``tf32`` (``None`` if unsupported/unknown)."""
        key = str(dtype).lower().removeprefix("torch.")
        key = _DTYPE_ALIASES.get(key, key)
        if key not in DTYPES:
            raise GPUSpecError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}", field="dtype")
        return getattr(self.peak_dense_tflops, key)

    def peak_flops(self, dtype: str) -> float | None:
        """Dense peak FLOP/s (TFLOPS x 1e12) for a dtype, or ``None``."""
        t = self.peak_tflops(dtype)
        return None if t is None else t * 1e12


# ----- the catalog ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _raw_catalog() -> dict[str, Any]:
    text = resources.files("planner.catalog").joinpath("gpus.json").read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def _catalog() -> dict[str, GPU]:
    out: dict[str, GPU] = {}
    for row in _raw_catalog()["gpus"]:
        try:
            g = GPU(**row)
        except ValidationError as exc:  # a broken bundled file is a bug; say which row
            raise GPUSpecError(f"catalog entry {row.get('id')!r} is invalid: {exc}", field="gpus.json") from exc
        if g.id in out:
            raise GPUSpecError(f"duplicate catalog id {g.id!r}", field="gpus.json")
        out[g.id] = g
    return out


def catalog_conventions() -> dict[str, str]:
    """The ``_about`` block of the catalog (units and conventions), as a fresh dict."""
    return dict(_raw_catalog().get("_about", {}))


def gpu_ids() -> list[str]:
    return list(_catalog())


def gpus() -> list[GPU]:
    """Every catalog GPU, in catalog order."""
    return list(_catalog().values())


def gpu(name: str | GPU) -> GPU:
    """Look up a catalog GPU by id (case-insensitive) or by name (exact, then case-insensitive).

    A :class:`GPU` passes through unchanged. Unknown names raise :class:`UnknownGPUError` listing
    the catalog ids and the closest matches.
    """
    if isinstance(name, GPU):
        return name
    if not isinstance(name, str):
        raise UnknownGPUError(f"expected a GPU id or name, got {type(name).__name__}", field="gpu")
    cat = _catalog()
    key = name.strip()
    if key in cat:
        return cat[key]
    by_id = {k.lower(): v for k, v in cat.items()}
    if key.lower() in by_id:
        return by_id[key.lower()]
    for g in cat.values():
        if g.name == key:
            return g
    by_name = {g.name.lower(): g for g in cat.values()}
    if key.lower() in by_name:
        return by_name[key.lower()]

    candidates = {k.lower(): k for k in cat} | {g.name.lower(): g.id for g in cat.values()}
    lowered = key.lower()
    contains = [c for c in candidates if lowered and lowered in c]
    close_keys = contains + difflib.get_close_matches(lowered, list(candidates), n=8, cutoff=0.4)
    close: list[str] = []
    for c in close_keys:
        if candidates[c] not in close:
            close.append(candidates[c])
    hint = f" Did you mean: {', '.join(close[:5])}?" if close else ""
    raise UnknownGPUError(
        f"{name!r} is not in the GPU catalog.{hint} Catalog ids: {', '.join(cat)}. "
        "For other hardware use custom_gpu(memory_gib=..., bf16_tflops=...).",
        field="gpu",
    )


def custom_gpu(
    memory_gib: float,
    name: str = "custom",
    bf16_tflops: float | None = None,
    fp16_tflops: float | None = None,
    fp32_tflops: float | None = None,
    tf32_tflops: float | None = None,
    memory_bandwidth_gb_per_s: float | None = None,
    tdp_watts: float | None = None,
    usable_memory_fraction: float | None = None,
    notes: str = "",
) -> GPU:
    """A GPU the catalog does not have. ``memory_gib`` is in GiB (2^30 bytes), bandwidth in GB/s (1e9).

    Invalid values raise :class:`GPUSpecError` whose ``field`` names the offending argument.
    """
    checks: dict[str, float | None] = {
        "memory_gib": memory_gib,
        "bf16_tflops": bf16_tflops,
        "fp16_tflops": fp16_tflops,
        "fp32_tflops": fp32_tflops,
        "tf32_tflops": tf32_tflops,
        "memory_bandwidth_gb_per_s": memory_bandwidth_gb_per_s,
        "tdp_watts": tdp_watts,
    }
    if memory_gib is None:
        raise GPUSpecError("is required (GPU memory in GiB, e.g. 24)", field="memory_gib")
    for arg, value in checks.items():
        try:
            _check_positive_finite(value, arg)
        except ValueError:
            raise GPUSpecError(f"must be a finite number > 0, got {value!r}", field=arg) from None
    if usable_memory_fraction is not None and (
        isinstance(usable_memory_fraction, bool)
        or not isinstance(usable_memory_fraction, (int, float))
        or not (0 < usable_memory_fraction <= 1)
    ):
        raise GPUSpecError(f"must be in (0, 1], got {usable_memory_fraction!r}", field="usable_memory_fraction")
    if not isinstance(name, str) or not name.strip():
        raise GPUSpecError("must be a non-empty string", field="name")

    memory_bytes = int(round(memory_gib * _GIB))
    if memory_bytes <= 0:
        raise GPUSpecError(f"is too small to be a GPU ({memory_gib!r} GiB)", field="memory_gib")
    try:
        return GPU(
            id=name.strip().lower().replace(" ", "-"),
            name=name.strip(),
            vendor="custom",
            memory_bytes=memory_bytes,
            memory_note=f"user-specified: {memory_gib} GiB",
            memory_bandwidth_bytes_per_s=(
                None if memory_bandwidth_gb_per_s is None else int(round(memory_bandwidth_gb_per_s * 1e9))
            ),
            peak_dense_tflops=PeakTflops(bf16=bf16_tflops, fp16=fp16_tflops, fp32=fp32_tflops, tf32=tf32_tflops),
            tdp_watts=tdp_watts,
            form_factor="custom",
            usable_memory_fraction=usable_memory_fraction,
            source=None,
            notes=notes or "user-specified GPU",
        )
    except ValidationError as exc:  # pragma: no cover - the checks above should catch everything
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or None
        raise GPUSpecError(err.get("msg", str(exc)), field=field) from exc
