"""Per-GPU memory under DDP and FSDP2: the planner against a real 2-process run on the CPU.

Reference: ``executors.distributed.measure_distributed_many`` (torch.multiprocessing spawn, gloo,
2 ranks, a 4-layer llama built from its config with random weights, bf16, batch 2 x 64, foreach
AdamW, 3 steps; per rank the live tensor storages rounded to 512 B, peak per phase over the steps).
Expected values come from that measurement only.

Accounted difference: foreach AdamW keeps one ``step`` counter per trained tensor on the host on
CUDA (torch/optim/adam.py), counted by the CPU measurement (512 B each, per rank); the prediction
gets them added, as in tests/planner/memory/test_against_executors.py.

Tolerance 0.5% per phase and rank (the issue asks for 5%): what remains is host-side bookkeeping the
CPU tracker sees and a CUDA run keeps off the device: FSDP2's ``DeviceMesh`` coordinate tensor (one
512-byte block per wrap unit) and a few KB of DDP / PEFT scalars; measured residuals are -0.13% to
0.00% (docs/memory-model.md, "Multi-GPU"). Each group of four cases runs in one launch (~25-40 s on
2 cores: most of it is importing torch and transformers in each process).
"""

from __future__ import annotations

import pytest

import planner

CFG = dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
           num_key_value_heads=2, vocab_size=1000, max_position_embeddings=2048, tie_word_embeddings=False)
UNEVEN = dict(CFG, vocab_size=1001)  # embedding / LM head rows split 501 / 500: rank 0 holds the padded shard
LORA = dict(r=8, target_modules=["q_proj", "v_proj"])
STEP = dict(batch_size=2, seq_len=64)
TOLERANCE = 5e-3

# (id, sharding, method, gradient checkpointing, config)
GROUP_A = [("fsdp_full_shard-full", "fsdp_full_shard", "full", False, CFG),
           ("fsdp_full_shard-lora", "fsdp_full_shard", "lora", False, CFG),
           ("ddp-full", "ddp", "full", False, CFG),
           ("ddp-lora", "ddp", "lora", False, CFG)]
GROUP_B = [("fsdp_shard_grad_op-full", "fsdp_shard_grad_op", "full", False, CFG),
           ("fsdp_shard_grad_op-lora", "fsdp_shard_grad_op", "lora", False, CFG),
           ("fsdp_full_shard-full-ckpt", "fsdp_full_shard", "full", True, CFG),
           ("fsdp_full_shard-lora-ckpt", "fsdp_full_shard", "lora", True, CFG),
           ("fsdp_full_shard-full-uneven", "fsdp_full_shard", "full", False, UNEVEN)]


def _plan(sharding, method, gc, config):
    return planner.estimate(config, method, **(LORA if method == "lora" else {}), **STEP, num_gpus=2,
                            sharding=sharding, gradient_checkpointing=gc)


def _measure(group):
    from executors.distributed import measure_distributed_many

    cases = [dict(config=cfg, sharding=sh, peft_config=_plan(sh, method, gc, cfg).peft_config,
                  gradient_checkpointing=gc, **STEP) for _, sh, method, gc, cfg in group]
    return {case[0]: m for case, m in zip(group, measure_distributed_many(cases, world_size=2))}


@pytest.fixture(scope="module")
def group_a():
    return _measure(GROUP_A)


@pytest.fixture(scope="module")
def group_b():
    return _measure(GROUP_B)


def _check(measured, sharding, method, gc, config):
    plan = _plan(sharding, method, gc, config)
    for rank in measured.ranks:
        host_steps = 512 * rank.trainable_tensors
        for phase, value in rank.phase_peaks.items():
            predicted = plan.memory.phase_peaks[phase] + host_steps
            err = abs(predicted - value) / value
            assert err <= TOLERANCE, (f"rank {rank.rank} {phase}: predicted {predicted:,} (incl. {host_steps:,} host "
                                      f"step counters) vs measured {value:,} ({err:.3%})")
        assert plan.memory.peak_phase == rank.peak_phase


@pytest.mark.slow
@pytest.mark.parametrize("case", GROUP_A, ids=[c[0] for c in GROUP_A])
def test_ddp_and_full_shard_match_two_rank_run(group_a, case):
    _check(group_a[case[0]], *case[1:])


@pytest.mark.slow
@pytest.mark.parametrize("case", GROUP_B, ids=[c[0] for c in GROUP_B])
def test_shard_grad_op_and_checkpointing_match_two_rank_run(group_b, case):
    _check(group_b[case[0]], *case[1:])


@pytest.mark.slow
def test_measured_sharding_saves_memory(group_a, group_b):
    """The measurement itself: sharding shrinks full fine-tuning per rank; ranks agree with even
    shards; with uneven ones rank 0 (the padded shard, what the planner predicts) is the larger."""
    full_shard = group_a["fsdp_full_shard-full"].max_rank_peak
    assert full_shard < group_b["fsdp_shard_grad_op-full"].max_rank_peak < group_a["ddp-full"].max_rank_peak
    for name, m in (*group_a.items(), *group_b.items()):
        if name.endswith("uneven"):
            assert m.ranks[0].peak_bytes > m.ranks[1].peak_bytes
        else:
            assert len({r.peak_bytes for r in m.ranks}) == 1


def test_live_storage_tracker_counts_storages_and_resizes():
    """The tracker behind the measurement, on one process: allocation, views, frees, ``resize_``."""
    import torch

    from executors.distributed import LiveStorageTracker

    with LiveStorageTracker() as t:
        t.restart_peak()
        start = t.total
        a = torch.empty(1000, dtype=torch.float32)  # 4000 B -> 4096
        v = a[10:20]  # a view: no new storage
        assert t.total - start == 4096
        b = torch.ones(100, dtype=torch.bfloat16)  # 200 B -> 512
        assert t.total - start == 4096 + 512
        del a
        assert t.total - start == 4096 + 512  # the view keeps the storage
        del v
        assert t.total - start == 512
        b.untyped_storage().resize_(0)  # FSDP2's free_storage
        assert t.total - start == 0
        b.untyped_storage().resize_(2048)  # alloc_storage
        assert t.total - start == 2048
        assert t.peak - start == 4096 + 512
