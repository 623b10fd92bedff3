"""The types a recommendation carries (kept apart from :mod:`planner.recommend` so that
:class:`planner.plan.Plan` can hold one without an import cycle)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Reason(BaseModel):
    """One reason behind a recommendation: a code (stable, for translations), the values it
    mentions, and the sources it cites (keys of ``planner/catalog/guide.json`` ``sources``)."""

    model_config = ConfigDict(frozen=True)

    code: str
    params: dict[str, Any] = {}
    sources: list[str] = []

    def text(self, lang: str = "en") -> str:
        from planner.recommend import reason_text

        return reason_text(self, lang)


class Recommendation(BaseModel):
    """Why and how a plan is recommended: its rank, the hardware it was verified on, the training
    settings chosen to fit, the time it takes, and the reasons."""

    model_config = ConfigDict(frozen=True)

    rank: int  # 1 = best for the priority asked
    priority: str
    task: str
    gpu: str  # catalog id (or the custom GPU's id)
    num_gpus: int
    sharding: str | None = None
    micro_batch_size: int
    gradient_accumulation_steps: int
    effective_batch_size: int  # micro batch x accumulation x GPUs
    gradient_checkpointing: bool
    device_bytes: int  # per GPU, what nvidia-smi would show
    usable_memory_bytes: int  # per GPU, what the plan was checked against
    quality_tier: float  # higher = better expected quality (seed 6.2 ordering, adjusted by the cited rules)
    training_hours: float | None = None
    cost_usd: float | None = None
    inference_overhead: Reason
    reasons: list[Reason] = []

    @property
    def margin_bytes(self) -> int:
        return self.usable_memory_bytes - self.device_bytes
