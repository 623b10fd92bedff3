"""Shared by ``test_programs_<family>.py``: the planner's replay against executors' measurement of
the same training step.

Reference: ``executors.measure.measure_step(mode="fake")`` (FakeTensorMode + MemTracker with CUDA
emulation: 512-byte blocks, bool dropout masks, fused SDPA dropout, foreach AdamW), run in the
test, with transformers 5.24 / peft 0.21.2 / torch 2.13 (constraints/cpu.txt). Golden values are
never computed with the planner.

Known differences, accounted for explicitly:

- AdamW's per-parameter ``step`` counter: a host scalar on CUDA (not in the planner), one 512-byte
  block per trainable tensor in a CPU / fake measurement (added to the prediction here).
- Shapes are chosen so that the CPU-only differences do not show: B x L <= 128 rows (CPU
  ``native_layer_norm`` keeps mean / rstd in the input dtype, CUDA in fp32: equal after the 512-byte
  rounding up to 128 rows), and peaks away from activation-gradient accumulations (under any
  ``TorchDispatchMode``, MemTracker included, autograd accumulates out of place; plain CUDA runs
  accumulate in place, as the planner does).
"""

from __future__ import annotations

import pytest

import planner
from planner.api import plan_method

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

SETTINGS_KEYS = ("batch_size", "seq_len", "target_len", "dtype", "gradient_checkpointing", "attn_implementation",
                 "optimizer")


def measure(config: dict, method: str, options: dict, settings: dict):
    """(plan, measurement, host step-counter bytes the measurement counts and CUDA does not)."""
    from executors.build import build_model
    from executors.measure import measure_step

    plan = planner.estimate(config, method, **options, **settings)
    kwargs = {k: v for k, v in settings.items() if k in SETTINGS_KEYS}
    if plan.peft_config is None and plan.category != "full":
        kwargs["trainable_base_params"] = list(plan_method(planner.load_model(config), method, **options)[0].trainable_base)
    m = measure_step(config, mode="fake", peft_config=plan.peft_config, **kwargs)
    assert m.error is None, m.error
    build = {k: v for k, v in kwargs.items() if k in ("trainable_base_params", "dtype", "attn_implementation")}
    built = build_model(config, device="meta", peft_config=plan.peft_config, **build)
    steps = 512 * len(built.trainable_parameters()) if settings.get("optimizer", "adamw_torch") == "adamw_torch" else 0
    return plan, m, steps


def assert_phase_peaks(plan, m, steps: int, tol: float) -> None:
    """Every phase peak within ``tol`` (relative) of the measurement, after the step counters."""
    assert plan.memory is not None, plan.notes
    for phase, measured in m.phase_peaks.items():
        predicted = plan.memory.phase_peaks[phase] + steps
        err = abs(predicted - measured) / measured
        assert err <= tol, f"{phase}: predicted {predicted:,} (incl. {steps:,} B step counters) vs measured {measured:,}"


def check(config: dict, method: str, options: dict, settings: dict, tol: float = 3e-3) -> None:
    plan, m, steps = measure(config, method, options, settings)
    assert_phase_peaks(plan, m, steps, tol)


def shrink(catalog_id: str, **fields) -> dict:
    """A catalog config with its sizes replaced (same code path in transformers, tiny tensors)."""
    config = planner.catalog.config(catalog_id)
    config.update(fields)
    return config
