"""The ``Plan``: what ``planner.estimate`` returns and the CLI / UI show."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Plan(BaseModel):
    """Everything planned for one (model, method, settings). Counts are exact, in parameters."""

    model_config = ConfigDict(frozen=True)

    model: str
    model_type: str
    method: str  # the name asked for (e.g. "qlora")
    method_family: str  # the registered method (e.g. "lora")
    peft_type: str | None
    category: str  # full | additive | reparameterization | selective | hybrid
    trainable_params: int
    total_params: int  # as PeftModel.get_nb_trainable_parameters() reports: base + added
    base_params: int  # the model alone
    added_params: int  # tensors the method adds (adapters, prompt encoders, copies)
    trainable_percent: float
    adapted_modules: list[str]
    num_adapted_modules: int
    adapter_file_bytes: int  # adapter_model.safetensors written by save_pretrained (full FT: model.safetensors)
    dtype: str
    adapter_dtype: str
    peft_config: dict[str, Any] | None
    notes: list[str] = []
    ignored_options: list[str] = []
    memory: Any = None  # filled by the memory model

    def summary_rows(self) -> list[tuple[str, str]]:
        from planner.format import human_bytes

        return [
            ("model", self.model),
            ("method", self.method + (f" (peft_type {self.peft_type})" if self.peft_type else "")),
            ("trainable parameters", f"{self.trainable_params:,}"),
            ("total parameters", f"{self.total_params:,}"),
            ("trainable %", f"{self.trainable_percent:.4f}%"),
            ("adapted modules", str(self.num_adapted_modules)),
            ("adapter file", human_bytes(self.adapter_file_bytes)),
        ]
