"""Figures are pure functions of plans: right data, capacity line, translated titles."""

from __future__ import annotations

import pytest

from planner.gpus import gpu as catalog_gpu
from ui import charts, planning
from ui.i18n import Translator
from ui.planning import catalog_ref, estimate_for
from ui.state import DEFAULTS

MODEL = "meta-llama/Llama-3.1-8B"
GIB = 2**30


@pytest.fixture(scope="module")
def plan():
    return estimate_for(DEFAULTS, catalog_ref(MODEL)).plan


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_breakdown_bar(plan, lang):
    t = Translator(lang)
    gpu = catalog_gpu("rtx-4090")
    fig = charts.breakdown_bar(plan.memory, gpu.usable_memory_bytes, gpu.name, t)
    assert fig.layout.title.text == t("chart.breakdown.title")
    assert fig.layout.barmode == "stack"
    total = sum(tr.x[0] for tr in fig.data)
    assert total == pytest.approx(plan.memory.device_bytes / GIB)
    assert [tr.name for tr in fig.data][0] == t("component.weights")
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert lines and lines[0].x0 == pytest.approx(gpu.usable_memory_bytes / GIB)


def test_compare_and_params_bars(plan):
    t = Translator("ko")
    gpu = catalog_gpu("rtx-4090")
    rows = planning.compare(DEFAULTS, catalog_ref(MODEL), gpu, choices=["full", "lora", "ia3", "bitfit"])
    labels = {r.key: t(f"method.{r.key}.name") for r in rows}
    fig = charts.compare_bar(rows, gpu.usable_memory_bytes, labels, t)
    assert fig.layout.barmode == "group" and len(fig.data) == 3
    assert list(fig.data[2].x) == [labels["full"], labels["lora"], labels["ia3"]]  # bitfit failed: no bar
    assert fig.data[2].y[1] == pytest.approx(plan.memory.device_bytes / GIB)
    fig = charts.params_bar(rows, labels, t)
    assert fig.layout.yaxis.type == "log" and fig.data[0].y[1] == plan.trainable_params


def test_sweep_line_marks_best():
    gpu = catalog_gpu("rtx-4090")
    s = planning.sweep(DEFAULTS, catalog_ref(MODEL), gpu, "batch_size", values=[1, 2, 4, 8, 16, 32])
    t = Translator("en")
    fig = charts.sweep_line(s, t)
    assert fig.layout.xaxis.title.text == t("variable.batch_size")
    best = [tr for tr in fig.data if tr.name == t("chart.sweep.best")]
    assert best and best[0].x[0] == s.best


def test_report_bar_uses_union_of_components():
    t = Translator("en")
    fig = charts.report_bar({"weights": GIB, "inputs": 1}, {"weights": 2 * GIB, "logits": GIB}, t)
    assert list(fig.data[0].x) == [t("component.weights"), t("component.logits"), t("component.inputs")]
    assert list(fig.data[1].y) == [2, 1, 0]


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_flops_bar_splits_the_step(plan, lang):
    t = Translator(lang)
    fig = charts.flops_bar(planning.flops_split(plan.flops), t)
    assert fig.layout.title.text == t("chart.flops.title") and fig.layout.barmode == "stack"
    assert [tr.name for tr in fig.data] == [t(f"time.phase.{p}") for p in planning.FLOP_PHASES]
    assert sum(tr.x[0] for tr in fig.data) == pytest.approx(plan.flops.total_flops / 1e12)
    assert fig.data[2].x[0] == pytest.approx(plan.flops.recompute_flops / 1e12)  # checkpointing's recomputation
