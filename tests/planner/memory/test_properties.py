"""Invariants of the memory model that hold whatever the numbers (hypothesis over settings).

No golden values here: these are the physics a budget must obey (more tokens never need less
memory; 4-bit weights are smaller than 16-bit ones; checkpointing never keeps more activations),
and the bookkeeping identities (the breakdown sums to the peak; extrapolating identical blocks
equals replaying them all).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

import planner
from planner.memory import model as memory_model

MODELS = ["HuggingFaceTB/SmolLM2-135M", "Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B", "google/gemma-2b"]
METHODS = [("lora", dict(r=8, target_modules=["q_proj", "v_proj"])), ("lora", dict(r=16, target_modules="all-linear")),
           ("qlora", dict(r=16, target_modules="all-linear")), ("dora", dict(r=8, target_modules=["q_proj", "v_proj"])),
           ("full", {}), ("ia3", {})]
FAST = settings(max_examples=25, deadline=None, derandomize=True)

model_st = st.sampled_from(MODELS)
method_st = st.sampled_from(METHODS)
batch_st = st.integers(1, 8)
seq_st = st.sampled_from([64, 128, 256, 512, 1024])
flags_st = st.fixed_dictionaries({"gradient_checkpointing": st.booleans(), "attn_implementation": st.sampled_from(["sdpa", "eager"]),
                                  "optimizer": st.sampled_from(["adamw_torch", "adamw_torch_fused", "sgd", "adafactor"])})


def mem(model, method, options, **kw):
    return planner.estimate(model, method, **options, **kw).memory


@FAST
@given(model_st, method_st, batch_st, seq_st, flags_st)
def test_more_tokens_never_need_less_memory(model, method, batch, seq, flags):
    name, options = method
    base = mem(model, name, options, batch_size=batch, seq_len=seq, **flags)
    assert mem(model, name, options, batch_size=batch + 1, seq_len=seq, **flags).peak_bytes >= base.peak_bytes
    assert mem(model, name, options, batch_size=batch, seq_len=seq * 2, **flags).peak_bytes >= base.peak_bytes


@FAST
@given(model_st, st.sampled_from([1, 2, 4, 8, 16, 32]), batch_st, seq_st)
def test_larger_rank_never_needs_less_memory(model, r, batch, seq):
    small = mem(model, "lora", dict(r=r, target_modules="all-linear"), batch_size=batch, seq_len=seq)
    large = mem(model, "lora", dict(r=2 * r, target_modules="all-linear"), batch_size=batch, seq_len=seq)
    assert large.peak_bytes >= small.peak_bytes


@FAST
@given(model_st, batch_st, seq_st)
def test_more_target_modules_never_need_less_memory(model, batch, seq):
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    last = 0
    for n in range(1, len(targets) + 1):
        peak = mem(model, "lora", dict(r=8, target_modules=targets[:n]), batch_size=batch, seq_len=seq).peak_bytes
        assert peak >= last
        last = peak


@FAST
@given(model_st, batch_st, seq_st)
def test_weights_qlora_lt_bf16_lt_fp32(model, batch, seq):
    opts = dict(r=8, target_modules="all-linear")
    q = mem(model, "qlora", opts, batch_size=batch, seq_len=seq).breakdown
    b = mem(model, "lora", opts, batch_size=batch, seq_len=seq).breakdown
    f = mem(model, "lora", opts, batch_size=batch, seq_len=seq, dtype="float32").breakdown
    # QLoRA's resident model: packed 4-bit linears + their state + fp32 embeddings / norms / head
    assert q["weights"] + q["quantization"] < b["weights"] < f["weights"]


@FAST
@given(model_st, method_st, batch_st, seq_st)
def test_checkpointing_never_keeps_more_activations(model, method, batch, seq):
    name, options = method
    plain = planner.estimate(model, name, **options, batch_size=batch, seq_len=seq).memory
    ckpt = planner.estimate(model, name, **options, batch_size=batch, seq_len=seq, gradient_checkpointing=True).memory
    assert ckpt.phase_peaks["forward"] <= plain.phase_peaks["forward"]
    assert ckpt.peak_bytes <= plain.peak_bytes


@FAST
@given(model_st, method_st, batch_st, seq_st, flags_st)
def test_breakdown_sums_to_peak(model, method, batch, seq, flags):
    name, options = method
    m = mem(model, name, options, batch_size=batch, seq_len=seq, **flags)
    assert sum(m.breakdown.values()) == m.peak_bytes
    assert m.peak_bytes == max(m.phase_peaks.values()) == m.phase_peaks[m.peak_phase]
    assert m.peak_bytes <= m.reserved_bytes < m.device_bytes


@pytest.mark.parametrize("model", ["meta-llama/Llama-2-7b-hf", "Qwen/Qwen2.5-0.5B", "google/gemma-2b"])
@pytest.mark.parametrize("method,options,kw", [
    ("lora", dict(r=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1), dict(batch_size=2, seq_len=256)),
    ("full", {}, dict(batch_size=1, seq_len=128, gradient_checkpointing=True)),
    ("qlora", dict(r=16, target_modules="all-linear"), dict(batch_size=1, seq_len=256, attn_implementation="eager")),
    ("dora", dict(r=4, target_modules=["v_proj"]), dict(batch_size=1, seq_len=128)),
])
def test_extrapolating_identical_blocks_equals_full_replay(model, method, options, kw, monkeypatch):
    fast = mem(model, method, options, **kw)
    monkeypatch.setattr(memory_model, "EXTRAPOLATE_FROM_LAYERS", 10**6)
    full = mem(model, method, options, **kw)
    assert fast.phase_peaks == full.phase_peaks and fast.breakdown == full.breakdown
