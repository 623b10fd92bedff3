"""Plotly figures as pure functions of plans (no streamlit): memory breakdown, comparisons, sweeps,
measured vs estimated. Every title and axis label comes through the translator ``t``; sizes are
plotted in GiB (2^30 bytes), as GPU memory is quoted.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import plotly.graph_objects as go

from ui.i18n import fmt_bytes, fmt_flops, fmt_gib, fmt_int
from ui.planning import Row, Sweep, memory_segments

GIB = 2**30
T = Callable[..., str]

COLORS = {
    "weights": "#4C78A8", "quantization": "#9ECAE9", "gradients": "#F58518", "optimizer": "#E45756",
    "activations": "#54A24B", "logits": "#88D27A", "temporaries": "#B279A2", "reserve": "#BAB0AC", "context": "#79706E",
    "inputs": "#FF9DA6", "other": "#9D755D",
}
CAPACITY_COLOR = "#D62728"
LAYOUT = dict(margin=dict(l=10, r=10, t=60, b=10), legend=dict(orientation="h", yanchor="top", y=-0.25, x=0, traceorder="normal"),
              hovermode="closest")


def component_label(t: T, key: str) -> str:
    return t.get(f"component.{key}", key) if hasattr(t, "get") else t(f"component.{key}")


def breakdown_bar(memory: Any, capacity_bytes: int, gpu_name: str, t: T) -> go.Figure:
    """One horizontal bar: the breakdown at the peak, allocator reserve and CUDA context stacked,
    against a vertical line at the GPU's usable memory."""
    fig = go.Figure()
    y = [t("chart.breakdown.bar")]
    for key, n in memory_segments(memory):
        fig.add_trace(go.Bar(
            y=y, x=[n / GIB], name=component_label(t, key), orientation="h", marker_color=COLORS.get(key),
            customdata=[[fmt_bytes(n)]], hovertemplate="%{fullData.name}: %{customdata[0]}<extra></extra>"))
    fig.add_vline(x=capacity_bytes / GIB, line_color=CAPACITY_COLOR, line_width=3, line_dash="dash",
                  annotation_text=t("chart.capacity", gpu=gpu_name, size=fmt_gib(capacity_bytes)),
                  annotation_position="top")
    top = max(capacity_bytes, memory.device_bytes) / GIB
    fig.update_layout(barmode="stack", title=t("chart.breakdown.title"), xaxis_title=t("chart.axis.gib"),
                      xaxis_range=[0, top * 1.08], height=300, **LAYOUT)
    return fig


FLOP_COLORS = {"forward": "#4C78A8", "backward": "#F58518", "recompute": "#B279A2"}


def flops_bar(split: Sequence[tuple[str, int]], t: T) -> go.Figure:
    """One horizontal bar: the FLOPs of one training step split into forward, backward and the
    recomputation of gradient checkpointing (TFLOP, 10^12)."""
    fig = go.Figure()
    y = [t("chart.flops.bar")]
    for phase, n in split:
        fig.add_trace(go.Bar(
            y=y, x=[n / 1e12], name=t(f"time.phase.{phase}"), orientation="h", marker_color=FLOP_COLORS.get(phase),
            customdata=[[fmt_flops(n)]], hovertemplate="%{fullData.name}: %{customdata[0]}<extra></extra>"))
    fig.update_layout(barmode="stack", title=t("chart.flops.title"), xaxis_title=t("chart.axis.tflop"), height=250,
                      **LAYOUT)
    fig.update_layout(legend_y=-0.6)  # below the axis title of this short chart
    return fig


def compare_bar(rows: Sequence[Row], capacity_bytes: int, labels: dict[str, str], t: T) -> go.Figure:
    """Grouped bars per method: peak allocated, reserved, device memory; a line at GPU capacity."""
    ok = [r for r in rows if r.outcome.ok and r.outcome.plan.memory is not None]
    x = [labels.get(r.key, r.key) for r in ok]
    fig = go.Figure()
    for attr, key in (("peak_bytes", "peak"), ("reserved_bytes", "reserved"), ("device_bytes", "device")):
        vals = [getattr(r.outcome.plan.memory, attr) for r in ok]
        fig.add_trace(go.Bar(x=x, y=[v / GIB for v in vals], name=t(f"metric.{key}"),
                             customdata=[[fmt_bytes(v)] for v in vals],
                             hovertemplate="%{x}: %{customdata[0]}<extra>%{fullData.name}</extra>"))
    fig.add_hline(y=capacity_bytes / GIB, line_color=CAPACITY_COLOR, line_dash="dash", line_width=2,
                  annotation_text=t("chart.capacity.short", size=fmt_gib(capacity_bytes)), annotation_position="top left")
    fig.update_layout(barmode="group", title=t("chart.compare.title"), yaxis_title=t("chart.axis.gib"),
                      xaxis_title=t("chart.axis.method"), height=420, **LAYOUT)
    return fig


def params_bar(rows: Sequence[Row], labels: dict[str, str], t: T) -> go.Figure:
    """Trainable parameters per method on a log scale."""
    ok = [r for r in rows if r.outcome.ok]
    fig = go.Figure(go.Bar(
        x=[labels.get(r.key, r.key) for r in ok], y=[max(1, r.outcome.plan.trainable_params) for r in ok],
        customdata=[[fmt_int(r.outcome.plan.trainable_params), f"{r.outcome.plan.trainable_percent:.4f}%"] for r in ok],
        hovertemplate="%{x}: %{customdata[0]} (%{customdata[1]})<extra></extra>", marker_color=COLORS["weights"]))
    fig.update_layout(title=t("chart.params.title"), yaxis_type="log", yaxis_title=t("chart.axis.params"),
                      xaxis_title=t("chart.axis.method"), height=360, **LAYOUT)
    return fig


def sweep_line(s: Sweep, t: T) -> go.Figure:
    """Memory vs one variable with the capacity line and the largest value that fits marked."""
    pts = [(x, o.plan.memory) for x, o in s.points if o.ok and o.plan.memory is not None]
    xs = [x for x, _ in pts]
    fig = go.Figure()
    for attr, key, dash in (("device_bytes", "device", "solid"), ("peak_bytes", "peak", "dot")):
        ys = [getattr(m, attr) for _, m in pts]
        fig.add_trace(go.Scatter(x=xs, y=[v / GIB for v in ys], mode="lines+markers", name=t(f"metric.{key}"),
                                 line=dict(dash=dash), customdata=[[fmt_bytes(v)] for v in ys],
                                 hovertemplate="%{x}: %{customdata[0]}<extra>%{fullData.name}</extra>"))
    fig.add_hline(y=s.capacity_bytes / GIB, line_color=CAPACITY_COLOR, line_dash="dash", line_width=2,
                  annotation_text=t("chart.capacity.short", size=fmt_gib(s.capacity_bytes)), annotation_position="top left")
    if s.best is not None and s.best_outcome is not None and s.best_outcome.plan.memory is not None:
        y = s.best_outcome.plan.memory.device_bytes / GIB
        fig.add_trace(go.Scatter(x=[s.best], y=[y], mode="markers+text", name=t("chart.sweep.best"),
                                 marker=dict(size=14, symbol="star", color=CAPACITY_COLOR),
                                 text=[t("chart.sweep.best_label", value=fmt_int(s.best))], textposition="top center"))
    top = max([getattr(m, "device_bytes") for _, m in pts] or [0]) / GIB
    cap = s.capacity_bytes / GIB
    if top > 2.5 * cap:  # keep the capacity line readable; points far above it leave the plot
        fig.update_yaxes(range=[0, 2.5 * cap])
    fig.update_layout(title=t("chart.sweep.title", variable=t(f"variable.{s.variable}")),
                      xaxis_title=t(f"variable.{s.variable}"), yaxis_title=t("chart.axis.gib"), xaxis_type="log",
                      height=400, **LAYOUT)
    fig.update_xaxes(tickvals=xs, ticktext=[fmt_int(x) for x in xs])
    return fig


def report_bar(measured: dict[str, int], estimated: dict[str, int], t: T) -> go.Figure:
    """Measured vs estimated bytes per breakdown component (union of both key sets) and in total."""
    keys = [k for k in COLORS if k in measured or k in estimated]
    keys += sorted(k for k in set(measured) | set(estimated) if k not in keys)
    fig = go.Figure()
    for name, data in ((t("report.measured"), measured), (t("report.estimated"), estimated)):
        vals = [data.get(k, 0) for k in keys]
        fig.add_trace(go.Bar(x=[component_label(t, k) for k in keys], y=[v / GIB for v in vals], name=name,
                             customdata=[[fmt_bytes(v)] for v in vals],
                             hovertemplate="%{x}: %{customdata[0]}<extra>%{fullData.name}</extra>"))
    fig.update_layout(barmode="group", title=t("chart.report.title"), yaxis_title=t("chart.axis.gib"), height=380,
                      **LAYOUT)
    return fig
