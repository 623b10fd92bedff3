"""Multi-GPU memory (``num_gpus``, ``sharding``, ``offload``): properties of the per-GPU budget and
bad input. The numbers themselves are checked against 2-process CPU runs in
tests/executors/test_distributed.py (DDP and FSDP2); here: what must hold whatever the numbers.

Orderings and their limits (docs/memory-model.md, "Multi-GPU"): the ZeRO paper's
``ddp >= zero1 >= zero2 >= zero3`` holds for model states under one precision regime. The planner
models each framework as it runs, so the chain holds where its premises do (a 7B model, 4-16 GPUs,
short sequences) and is not asserted elsewhere: DeepSpeed keeps fp32 master weights and fp32 Adam
state (12 B per trained parameter / N) where DDP trains a bf16 model with bf16 AdamW state (4 B), so
ZeRO-1 exceeds DDP on 1-2 GPUs; ZeRO-3's ``stage3_max_reuse_distance`` (1e9 elements) keeps the last
blocks gathered into the backward, so on models of ~1B parameters ZeRO-3 holds about what ZeRO-2 does.
"""

from __future__ import annotations

import pytest

import planner
from planner import PlannerError
from planner.memory.parallel import SHARDINGS, fsdp_shard_numel

SMALL = "HuggingFaceTB/SmolLM2-135M"
LLAMA7 = "meta-llama/Llama-2-7b-hf"
LORA = dict(r=16, target_modules="all-linear")
SHARDED = ("zero1", "zero2", "zero3", "fsdp_full_shard", "fsdp_shard_grad_op")


def peak(model=SMALL, method="lora", **kw):
    opts = dict(LORA) if method == "lora" else {}
    kw.setdefault("batch_size", 1)
    kw.setdefault("seq_len", 256)
    return planner.estimate(model, method, **opts, **kw).memory


def test_one_gpu_is_the_single_gpu_plan():
    base = peak()
    for kw in (dict(num_gpus=1), dict(num_gpus=1, sharding=None)):
        m = peak(**kw)
        assert m.phase_peaks == base.phase_peaks and m.breakdown == base.breakdown and m.host_bytes == 0


def test_several_gpus_default_to_ddp():
    p = planner.estimate(SMALL, "lora", **LORA, num_gpus=4)
    assert p.settings.sharding == "ddp"
    assert p.memory.peak_bytes == planner.estimate(SMALL, "lora", **LORA, num_gpus=4, sharding="ddp").memory.peak_bytes


@pytest.mark.parametrize("method", ["full", "lora"])
def test_ddp_is_the_single_gpu_step_plus_buckets(method):
    """DDP replicates the step; its buckets (gradient_as_bucket_view=False) are as large as the trained
    parameters: the same at every GPU count."""
    single = peak(method=method)
    ddp = [peak(method=method, num_gpus=n, sharding="ddp") for n in (1, 2, 8)]
    assert len({m.peak_bytes for m in ddp}) == 1
    trained = planner.estimate(SMALL, method, **(LORA if method == "lora" else {})).trainable_params
    extra = ddp[0].peak_bytes - single.peak_bytes
    per = 2 if method == "full" else 4  # bf16 weights / fp32 adapters (PEFT's autocast_adapter_dtype)
    assert per * trained <= extra <= per * trained + 512 * 64  # + 512 B rounding per bucket
    assert ddp[0].breakdown["gradients"] >= extra


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("sharding", SHARDED)
def test_per_gpu_memory_never_grows_with_more_gpus(sharding, method):
    values = [peak(method=method, num_gpus=n, sharding=sharding).peak_bytes for n in (1, 2, 4, 8, 16)]
    assert all(a >= b for a, b in zip(values, values[1:])), values
    if method == "full":
        assert values[-1] < values[0]


@pytest.mark.parametrize("method,seq_len", [("full", 256), ("lora", 256)])
@pytest.mark.parametrize("n", [4, 8, 16])
def test_zero_paper_ordering_where_its_premises_hold(method, seq_len, n):
    """ddp >= zero1 >= zero2 >= zero3 and ddp >= fsdp_shard_grad_op >= fsdp_full_shard (full FT) on a 7B
    model with 4-16 GPUs and a short sequence (model states dominate)."""
    m = {s: peak(LLAMA7, method, num_gpus=n, sharding=s, seq_len=seq_len).peak_bytes for s in SHARDINGS}
    assert m["ddp"] >= m["zero1"] >= m["zero2"] >= m["zero3"], m
    assert m["fsdp_shard_grad_op"] >= m["fsdp_full_shard"], m
    if method == "full":
        assert m["ddp"] >= m["fsdp_shard_grad_op"], m


@pytest.mark.parametrize("method", ["full", "lora"])
def test_full_shard_never_above_shard_grad_op(method):
    for n in (2, 8):
        assert peak(method=method, num_gpus=n, sharding="fsdp_full_shard").peak_bytes <= \
            peak(method=method, num_gpus=n, sharding="fsdp_shard_grad_op").peak_bytes


@pytest.mark.parametrize("sharding,offload", [("zero1", "optimizer"), ("zero2", "optimizer"), ("zero3", "optimizer"),
                                              ("zero3", "optimizer+params"), ("fsdp_full_shard", "optimizer+params")])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_offload_moves_bytes_to_the_host(sharding, offload, method):
    on = peak(LLAMA7, method, num_gpus=4, sharding=sharding)
    off = peak(LLAMA7, method, num_gpus=4, sharding=sharding, offload=offload)
    assert on.host_bytes == 0 and off.host_bytes > 0
    assert off.device_bytes < on.device_bytes
    assert off.breakdown["optimizer"] == 0
    if method == "full":  # the optimizer state (at least) went to the host
        assert off.host_bytes >= on.breakdown.get("optimizer", 0) or on.peak_phase != "optimizer"


def test_params_offload_below_optimizer_offload():
    opt = peak(LLAMA7, "full", num_gpus=4, sharding="zero3", offload="optimizer")
    both = peak(LLAMA7, "full", num_gpus=4, sharding="zero3", offload="optimizer+params")
    assert both.device_bytes < opt.device_bytes and both.host_bytes > opt.host_bytes


@pytest.mark.parametrize("sharding", SHARDINGS)
@pytest.mark.parametrize("method", ["full", "lora"])
def test_breakdown_sums_to_peak(sharding, method):
    m = peak(method=method, num_gpus=4, sharding=sharding)
    assert sum(m.breakdown.values()) == m.peak_bytes
    assert m.peak_bytes == max(m.phase_peaks.values()) and m.reserved_bytes >= m.peak_bytes
    assert any("rank 0" in n for n in m.notes)


@pytest.mark.parametrize("sharding", ["ddp", "zero1", "zero2"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_extrapolated_replay_equals_full_replay(sharding, method, monkeypatch):
    """Strategies without per-block events keep the 2-and-3-block extrapolation; it must equal
    replaying every block (per-block strategies always replay every block)."""
    from planner.api import plan_method
    from planner.memory import model
    from planner.memory.settings import TrainingSettings

    spec = planner.load_model(SMALL)
    mplan = plan_method(spec, method, **(LORA if method == "lora" else {}))[0]
    settings = TrainingSettings(num_gpus=4, sharding=sharding, batch_size=2, seq_len=128)
    short = model.estimate_memory(spec, mplan, settings)  # no memo: the replay itself
    monkeypatch.setattr(model, "EXTRAPOLATE_FROM_LAYERS", 10_000)
    full = model.estimate_memory(spec, mplan, settings)
    assert short.phase_peaks == full.phase_peaks


@pytest.mark.parametrize("model", [SMALL, "openai-community/gpt2", "bigscience/bloom-560m", "EleutherAI/pythia-1b",
                                   "facebook/opt-1.3b", "microsoft/phi-2", "microsoft/Phi-3-mini-4k-instruct",
                                   "google-bert/bert-base-uncased", "mistralai/Mixtral-8x7B-v0.1", "tiiuae/falcon-7b"])
def test_every_block_is_gathered_and_released(model):
    """Each family's program raises the per-block events: every block is gathered once in forward
    (and the root), and every unit's gradients are reduced before the optimizer step."""
    from planner.api import plan_method
    from planner.memory.model import _prepare, _replay
    from planner.memory.settings import TrainingSettings

    spec = planner.load_model(model)
    mplan = plan_method(spec, "full")[0]
    settings = TrainingSettings(num_gpus=4, sharding="fsdp_full_shard", batch_size=1, seq_len=32)
    from planner.memory.programs import effective_settings

    settings, _ = effective_settings(spec, settings)
    ctx, weights, quant, opt = _prepare(spec, mplan, settings)
    layers = tuple(range(min(spec.num_layers, 3)))
    _replay(ctx, weights, quant, opt, layers)
    par = ctx.parallel
    assert sorted(par.fw_order) == sorted([-1, *layers])
    assert par.bw_done == {-1, *layers}
    assert not par.unsharded and not par.pending and not par.rs_states


def test_fsdp_shard_is_padded_dim0_chunk():
    assert fsdp_shard_numel((1000, 256), 256_000, 2) == 500 * 256
    assert fsdp_shard_numel((1000, 256), 256_000, 3) == 334 * 256  # torch.chunk: ceil(1000 / 3) rows
    assert fsdp_shard_numel((256,), 256, 16) == 16


def test_sweep_matches_estimate_under_sharding():
    import numpy as np

    kw = dict(num_gpus=4, sharding="fsdp_full_shard")
    out = planner.sweep(SMALL, "lora", **LORA, batch_size=np.array([1, 2]), seq_len=np.array([128, 256]), **kw)
    for i, (b, s) in enumerate(((1, 128), (2, 256))):
        m = planner.estimate(SMALL, "lora", **LORA, batch_size=b, seq_len=s, **kw).memory
        assert out["peak_bytes"][i] == m.peak_bytes and out["device_bytes"][i] == m.device_bytes


# -- solve_gpus --------------------------------------------------------------------------------

def test_solve_gpus_finds_the_smallest_count():
    kw = dict(sharding="fsdp_full_shard", batch_size=1, seq_len=1024, gradient_checkpointing=True)
    n = planner.solve_gpus(LLAMA7, "full", gpu="rtx-4090", **kw)
    assert n > 1
    assert planner.fits(planner.estimate(LLAMA7, "full", num_gpus=n, **kw), "rtx-4090")
    assert not planner.fits(planner.estimate(LLAMA7, "full", num_gpus=n - 1, **kw), "rtx-4090")


def test_solve_gpus_one_when_one_fits():
    assert planner.solve_gpus(SMALL, "lora", gpu="h100-sxm", sharding="zero3", **LORA) == 1


def test_solve_gpus_replicated_never_fits_more():
    with pytest.raises(PlannerError) as err:
        planner.solve_gpus(LLAMA7, "full", gpu="rtx-4090", sharding="ddp", seq_len=512)
    assert err.value.field == "sharding" and "replicates" in str(err.value)


def test_solve_gpus_states_its_ceiling():
    with pytest.raises(PlannerError) as err:
        planner.solve_gpus("meta-llama/Llama-2-70b-hf", "full", gpu="rtx-4090", sharding="fsdp_full_shard",
                           max_gpus=4, seq_len=512)
    assert err.value.field == "num_gpus" and "up to 4 GPUs" in str(err.value)


def test_solve_gpus_refuses_num_gpus():
    with pytest.raises(PlannerError) as err:
        planner.solve_gpus(SMALL, "lora", gpu="rtx-4090", sharding="zero3", num_gpus=2)
    assert err.value.field == "num_gpus"


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("options,field,words", [
    (dict(num_gpus=0), "num_gpus", "at least 1"),
    (dict(num_gpus=-2), "num_gpus", "at least 1"),
    (dict(num_gpus=2.5), "num_gpus", "integer"),
    (dict(num_gpus=True), "num_gpus", "integer"),
    (dict(num_gpus=2, sharding="zero4"), "sharding", "fsdp_full_shard"),
    (dict(num_gpus=2, sharding="fsdp"), "sharding", "allowed"),
    (dict(num_gpus=2, sharding="zero3", offload="gpu"), "offload", "optimizer+params"),
    (dict(offload="optimizer"), "offload", "needs a sharding strategy"),
    (dict(num_gpus=2, offload="optimizer"), "offload", "DDP has no offload"),
    (dict(num_gpus=2, sharding="ddp", offload="optimizer+params"), "offload", "DDP has no offload"),
    (dict(num_gpus=2, sharding="fsdp_full_shard", offload="optimizer"), "offload", "CPUOffloadPolicy"),
    (dict(num_gpus=2, sharding="zero1", offload="optimizer+params"), "offload", "ZeRO-3 only"),
    (dict(num_gpus=2, sharding="zero2", offload="optimizer+params"), "offload", "ZeRO-3 only"),
    (dict(num_gpus=2, sharding="fsdp_shard_grad_op", offload="optimizer+params"), "offload", "fsdp_full_shard"),
])
def test_bad_multi_gpu_settings(options, field, words):
    with pytest.raises(PlannerError) as err:
        planner.estimate(SMALL, "lora", **options)
    assert err.value.field == field
    assert words in str(err.value)


@pytest.mark.parametrize("model,method,options,words", [
    ("google-t5/t5-base", "lora", dict(sharding="fsdp_full_shard"), "encoder-decoder"),
    (LLAMA7, "qlora", dict(sharding="zero3"), "quantized base weights"),
    (LLAMA7, "qlora", dict(sharding="fsdp_full_shard"), "quantized base weights"),
    (LLAMA7, "lora", dict(sharding="zero2", optimizer="paged_adamw_8bit"), "paged_adamw_8bit"),
])
def test_unmodelled_combinations_say_why(model, method, options, words):
    p = planner.estimate(model, method, num_gpus=2, **options)
    assert p.memory is None
    assert any(words in n for n in p.notes), p.notes


def test_qlora_with_replicated_base_is_modelled():
    for sharding in ("ddp", "zero1", "zero2"):
        m = planner.estimate(LLAMA7, "qlora", r=8, num_gpus=4, sharding=sharding).memory
        assert m is not None and m.breakdown["quantization"] > 0
