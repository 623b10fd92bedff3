"""Inverse solving and the vectorised sweep.

Tightness is checked against the planner's own forward answer (value fits, value + 1 does not):
this tests the search, not the memory numbers (those are checked against executors in
tests/planner/memory/).
"""

from __future__ import annotations

import numpy as np
import pytest

import planner

CASES = [
    ("meta-llama/Llama-3.1-8B", "qlora", "batch_size", dict(r=16, target_modules="all-linear", seq_len=2048,
                                                             gradient_checkpointing=True), "rtx-4090"),
    ("meta-llama/Llama-3.1-8B", "qlora", "seq_len", dict(r=16, target_modules="all-linear"), "rtx-4090"),
    ("Qwen/Qwen2.5-0.5B", "full", "batch_size", dict(seq_len=1024), "t4"),
    ("meta-llama/Llama-2-7b-hf", "lora", "r", dict(target_modules=["q_proj", "v_proj"], batch_size=4, seq_len=1024), "a100-40gb"),
]


@pytest.mark.parametrize("model,method,parameter,options,gpu", CASES)
def test_solution_is_tight(model, method, parameter, options, gpu):
    v = planner.solve_max(model, method, gpu=gpu, parameter=parameter, **options)
    assert v >= 1
    assert planner.fits(planner.estimate(model, method, **{**options, parameter: v}), gpu)
    assert not planner.fits(planner.estimate(model, method, **{**options, parameter: v + 1}), gpu)


def test_nothing_fits_gives_zero():
    assert planner.solve_max("meta-llama/Llama-2-70b-hf", "full", gpu="rtx-3090", parameter="batch_size") == 0


def test_bad_parameter_and_gpu():
    with pytest.raises(planner.PlannerError, match="solvable"):
        planner.solve_max("meta-llama/Llama-2-7b-hf", "lora", gpu="rtx-4090", parameter="epochs")
    with pytest.raises(planner.PlannerError):
        planner.solve_max("meta-llama/Llama-2-7b-hf", "lora", gpu="no-such-gpu", parameter="batch_size")


def test_sweep_equals_pointwise_estimates():
    batch = np.array([1, 2, 3, 8, 16])
    seq = np.array([64, 512, 777, 2048, 4096])
    out = planner.sweep("meta-llama/Llama-3.2-1B", "lora", batch_size=batch, seq_len=seq, r=8, target_modules="all-linear",
                        lora_dropout=0.05)
    for i in range(len(batch)):
        m = planner.estimate("meta-llama/Llama-3.2-1B", "lora", r=8, target_modules="all-linear", lora_dropout=0.05,
                             batch_size=int(batch[i]), seq_len=int(seq[i])).memory
        assert (out["peak_bytes"][i], out["reserved_bytes"][i], out["device_bytes"][i]) == (
            m.peak_bytes, m.reserved_bytes, m.device_bytes)


@pytest.mark.parametrize("model,method", [("tiiuae/falcon-7b", "lora"), ("openai-community/gpt2", "full"),
                                          ("google-t5/t5-base", "lora"), ("EleutherAI/pythia-1b", "lora")])
def test_sweep_mixing_batch_one_with_larger_batches(model, method):
    # batch 1 runs different code in some programs (a reshape that is a view only when B == 1):
    # a sweep mixing it with larger batches must still equal each point's own estimate
    batch = np.arange(1, 6)
    out = planner.sweep(model, method, batch_size=batch, seq_len=256)
    for i, b in enumerate(batch):
        assert out["device_bytes"][i] == planner.estimate(model, method, batch_size=int(b), seq_len=256).memory.device_bytes
