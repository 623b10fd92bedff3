"""The ``Plan``: what ``planner.estimate`` returns and the CLI / UI show."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from planner.compute import StepFlops
from planner.memory.budget import MemoryBudget
from planner.memory.settings import TrainingSettings
from planner.recommendation import Recommendation


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
    settings: TrainingSettings | None = None
    memory: MemoryBudget | None = None  # None where the memory model does not cover the case (see notes)
    flops: StepFlops | None = None  # matmul FLOPs of one step (planner.compute); None where not counted
    memory_unavailable_reason: str | None = None  # why memory is None (also in notes)
    flops_unavailable_reason: str | None = None  # why flops is None (also in notes)
    recommendation: Recommendation | None = None  # set on the plans planner.recommend returns

    def summary_rows(self, lang: str = "en") -> list[tuple[str, str]]:
        from planner.format import human_bytes
        from planner.locale import t

        return [
            (t("model", lang), self.model),
            (t("method", lang), self.method + (f" (peft_type {self.peft_type})" if self.peft_type else "")),
            (t("trainable", lang), f"{self.trainable_params:,}"),
            (t("total", lang), f"{self.total_params:,}"),
            (t("trainable_percent", lang), f"{self.trainable_percent:.4f}%"),
            (t("adapted", lang), str(self.num_adapted_modules)),
            (t("adapter_file", lang), human_bytes(self.adapter_file_bytes)),
        ] + self.memory_rows(lang)

    def memory_rows(self, lang: str = "en") -> list[tuple[str, str]]:
        from planner.format import human_bytes
        from planner.locale import t

        m = self.memory
        if m is None:
            return [(t("memory", lang), t("memory_missing", lang))]
        st = self.settings
        rows = [(t("step", lang), t("step_desc", lang, batch=st.batch_size, seq=st.seq_len, dtype=st.dtype,
                                      optimizer=st.optimizer, ckpt=t("ckpt", lang) if st.gradient_checkpointing else "",
                                      attn=st.attn_implementation)),
                (t("peak", lang), t("peak_desc", lang, value=human_bytes(m.peak_bytes), band=f"{m.error_band:.0%}",
                                      phase=t(f"phase.{m.peak_phase}", lang))),
                (t("reserved", lang), human_bytes(m.reserved_bytes)),
                (t("device", lang), human_bytes(m.device_bytes))]
        if st.num_gpus > 1:
            rows.insert(1, (t("gpus", lang), t("gpus_desc", lang, n=st.num_gpus, sharding=st.sharding or "ddp",
                                                 offload=f", offload {st.offload}" if st.offload else "")))
        if m.host_bytes:
            rows.append((t("host", lang), human_bytes(m.host_bytes)))
        rows += [(f"  {t('part.' + k, lang)}", human_bytes(v)) for k, v in m.breakdown.items() if v]
        return rows
