"""planner.memo: memoised results are the same as fresh ones, cannot be corrupted through a
returned Plan, and never cross from one model or setting to another."""

from __future__ import annotations

import planner
from planner.memo import MAX_ENTRIES_PER_SPEC, memoised, options_key
from planner.models import load_model

MODEL = "openai-community/gpt2"


def test_repeated_call_equals_a_fresh_spec():
    cached = planner.estimate(MODEL, "lora", r=8, batch_size=2, seq_len=256)
    again = planner.estimate(MODEL, "lora", r=8, batch_size=2, seq_len=256)
    fresh = planner.estimate(planner.catalog.config(MODEL), "lora", r=8, batch_size=2, seq_len=256)  # a dict: new spec
    assert cached == again
    assert fresh.model_dump(exclude={"model"}) == cached.model_dump(exclude={"model"})


def test_mutating_a_returned_plan_does_not_leak_into_the_next():
    plan = planner.estimate(MODEL, "lora", r=4)
    n = len(plan.adapted_modules)
    plan.adapted_modules.clear()
    plan.ignored_options.append("junk")
    again = planner.estimate(MODEL, "lora", r=4)
    assert len(again.adapted_modules) == n and "junk" not in again.ignored_options


def test_settings_and_options_are_part_of_the_key():
    a = planner.estimate(MODEL, "lora", r=4, batch_size=1)
    b = planner.estimate(MODEL, "lora", r=4, batch_size=2)
    c = planner.estimate(MODEL, "lora", r=8, batch_size=1)
    assert a.memory.peak_bytes < b.memory.peak_bytes
    assert a.trainable_params < c.trainable_params
    # dict order and list / tuple spelling do not matter
    assert options_key("lora", {"r": 4, "lora_alpha": 8}) == options_key("lora", {"lora_alpha": 8, "r": 4})


def test_unkeyable_arguments_are_computed_not_cached():
    class Opaque:
        pass

    assert options_key("lora", {"x": Opaque()}) is None
    assert options_key("lora", {"rank_pattern": {1: 4}}) is None  # would collide with {"1": 4}
    calls = []
    spec = load_model(MODEL)
    for _ in range(2):
        memoised(spec, "test", None, lambda: calls.append(1))
    assert len(calls) == 2


def test_errors_are_not_cached():
    import pytest

    for _ in range(2):
        with pytest.raises(planner.MethodConfigError):
            planner.estimate(MODEL, "lora", r=0)


def test_cache_is_bounded():
    spec = load_model(MODEL)
    for i in range(MAX_ENTRIES_PER_SPEC + 10):
        memoised(spec, "bounded-test", i, lambda: i)
    assert len(spec.memo_caches()["bounded-test"]) == MAX_ENTRIES_PER_SPEC
    assert 0 not in spec.memo_caches()["bounded-test"]
