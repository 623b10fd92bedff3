"""executors.measure: one training step's peak memory (cpu / fake / cuda)."""

from __future__ import annotations

import pytest
import torch

from executors.measure import BREAKDOWN_KEYS, measure_step
from planner import catalog

LORA_QV = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.1}


@pytest.mark.parametrize(
    "settings",
    [
        {"peft_config": LORA_QV},
        {},  # full fine-tuning, AdamW foreach
        {"peft_config": LORA_QV, "gradient_checkpointing": True, "optimizer": "adamw_torch_fused"},
    ],
    ids=["lora", "full", "lora-gc-fused"],
)
def test_fake_mode_equals_cpu_mode_on_a_tiny_llama(llama_tiny, settings) -> None:
    cpu = measure_step(llama_tiny, mode="cpu", batch_size=2, seq_len=64, **settings)
    fake = measure_step(llama_tiny, mode="fake", batch_size=2, seq_len=64, **settings)
    assert cpu.ok and fake.ok, (cpu.error, fake.error)
    assert fake.peak_bytes == cpu.peak_bytes
    assert fake.details == cpu.details  # every phase of every step, every category
    assert set(fake.breakdown) == set(BREAKDOWN_KEYS)
    assert fake.peak_bytes == max(fake.phase_peaks.values()) == max(fake.step_peaks)


def test_result_shape_and_categories(llama_tiny) -> None:
    m = measure_step(llama_tiny, mode="fake", batch_size=1, seq_len=32, peft_config=LORA_QV)
    assert m.ok and m.mode == "fake"
    assert m.trainable_params == 4096
    assert m.peak_phase in ("forward", "backward", "optimizer") and m.peak_step in (1, 2)
    assert len(m.step_peaks) == 2 and set(m.phase_peaks) == {"forward", "backward", "optimizer"}
    assert m.breakdown["weights"] > 0 and m.breakdown["activations"] > 0
    assert all(v % 512 == 0 for v in m.breakdown.values())  # CUDA allocator rounding emulated
    assert sum(m.breakdown.values()) == m.peak_bytes
    assert m.to_dict()["peak_bytes"] == m.peak_bytes


def test_full_finetuning_peaks_in_step_one_optimizer(llama_tiny) -> None:
    m = measure_step(llama_tiny, mode="fake", batch_size=1, seq_len=16)
    assert m.peak_step == 1 and m.peak_phase == "optimizer"
    assert m.breakdown["optimizer"] >= 2 * m.breakdown["weights"]  # AdamW: exp_avg + exp_avg_sq


def test_unsupported_combination_is_a_result_not_a_crash(llama_tiny) -> None:
    m = measure_step(llama_tiny, mode="fake", batch_size=1, seq_len=16, optimizer="adamw_bnb_8bit")
    assert not m.ok and "bitsandbytes" in (m.error or "")
    real = measure_step(llama_tiny, mode="cpu", batch_size=1, seq_len=16, optimizer="adamw_bnb_8bit")
    assert real.ok, real.error


def test_qlora_on_cpu(llama_tiny) -> None:
    q4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
          "bnb_4bit_compute_dtype": "bfloat16"}
    m = measure_step(llama_tiny, mode="cpu", batch_size=1, seq_len=32, quantization=q4,
                     peft_config={"peft_type": "LORA", "r": 8, "target_modules": "all-linear"})
    assert m.ok, m.error
    assert m.breakdown["weights"] > 0


@pytest.mark.slow
def test_fake_llama2_7b_lora_step() -> None:
    lora = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.05,
            "task_type": "CAUSAL_LM"}
    m = measure_step(catalog.config("meta-llama/Llama-2-7b-hf"), mode="fake", batch_size=1, seq_len=512,
                     peft_config=lora)
    assert m.ok, m.error
    assert m.trainable_params == 4_194_304
    weights = 6_738_415_616 * 2 + 4_194_304 * 4  # bf16 base + fp32 adapters
    assert weights <= m.breakdown["weights"] < weights * 1.001
    assert 13.0 * 2**30 < m.peak_bytes < 20 * 2**30
    # wall time is a benchmark (benchmarks/executors_fake_7b.py, docs/validation/README.md), not a test


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tiny_llama_lora(llama_tiny) -> None:
    m = measure_step(llama_tiny, mode="cuda", batch_size=2, seq_len=64, peft_config=LORA_QV)
    assert m.ok, m.error
    assert m.peak_bytes > 0 and m.reserved_peak_bytes >= m.peak_bytes


def test_step_s_is_the_median_after_the_warm_up_step() -> None:
    from executors.measure import Measurement

    def m(seconds):
        return Measurement(mode="cuda", peak_bytes=1, peak_phase="forward", peak_step=1, phase_peaks={}, step_peaks=(),
                           breakdown={}, trainable_params=1, total_params=1, wall_s=1.0, settings={},
                           step_seconds=tuple(seconds))

    assert m(()).step_s is None and m((5.0,)).step_s is None  # the first step is warm-up only
    assert m((5.0, 0.2)).step_s == 0.2
    assert m((5.0, 0.3, 0.1, 0.2)).step_s == pytest.approx(0.2)
    assert "step_seconds" in m((1.0,)).to_dict()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_time(llama_tiny) -> None:
    m = measure_step(llama_tiny, mode="cuda", batch_size=2, seq_len=64, peft_config=LORA_QV, steps=3)
    assert m.ok, m.error
    assert len(m.step_seconds) == 3 and all(s > 0 for s in m.step_seconds)
    assert m.step_s is not None and m.step_s > 0
