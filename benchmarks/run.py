"""Wall time of one ``planner.estimate()`` call, warm cache, for a few catalog models and methods.

    python -m benchmarks.run                 # 200 calls per case (fewer for slow cases), writes docs/benchmarks.md
    python -m benchmarks.run --calls 50 --no-write

Each case is called once to warm the caches (catalog spec, inventory), then timed call by call
with ``time.perf_counter``; the table shows the median and the 90th percentile. A case slower than
``--max-seconds`` in total stops early (at least ``MIN_CALLS`` calls), and the table says how many
calls were timed. The stage columns time the parts of ``estimate`` separately (method plan,
counts + adapter file size, memory model) so a slow case shows where its time goes; the slowest
case is also profiled with cProfile (top functions by cumulative time, in the doc).

A benchmark, not a test: nothing here fails on a slow result. Target: under 1 ms per call.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import planner

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
TARGET_MS = 1.0
MIN_CALLS = 10

#: (model, method, options): small to large models, the common methods, default and all-linear targets.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("openai-community/gpt2", "lora", {}),
    ("google-bert/bert-base-uncased", "lora", {}),
    ("google-t5/t5-base", "lora", {}),
    ("meta-llama/Llama-2-7b-hf", "lora", {"r": 8, "target_modules": ["q_proj", "v_proj"]}),
    ("meta-llama/Llama-2-7b-hf", "qlora", {"r": 64, "target_modules": "all-linear"}),
    ("meta-llama/Llama-2-7b-hf", "full", {}),
    ("meta-llama/Llama-2-7b-hf", "ia3", {}),
    ("meta-llama/Llama-2-7b-hf", "prefix_tuning", {"num_virtual_tokens": 20}),
    ("meta-llama/Llama-2-7b-hf", "prompt_tuning", {"num_virtual_tokens": 20}),
    ("meta-llama/Llama-3.1-8B", "lora", {"r": 16, "target_modules": "all-linear"}),
    ("mistralai/Mixtral-8x7B-v0.1", "lora", {"r": 8, "target_modules": "all-linear"}),
    ("meta-llama/Llama-3.1-70B", "lora", {"r": 16, "target_modules": "all-linear"}),
]


@dataclass
class Result:
    model: str
    method: str
    options: dict[str, Any]
    times: list[float]  # the same call repeated (memoised: planner.memo)
    stages: dict[str, float] = field(default_factory=dict)  # stage -> median seconds (uncached internals)
    fresh_times: list[float] = field(default_factory=list)  # a new batch size each call: the memory replay runs

    @property
    def fresh_median_ms(self) -> float:
        return statistics.median(self.fresh_times) * 1e3 if self.fresh_times else float("nan")

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1e3

    @property
    def p90_ms(self) -> float:
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3


def _time_calls(fn: Callable[[], Any], calls: int, max_seconds: float) -> list[float]:
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= MIN_CALLS and time.perf_counter() - start > max_seconds:
            break
    return times


def _stages(model: str, method: str, options: dict[str, Any], calls: int) -> dict[str, float]:
    """Median seconds of each stage of ``estimate`` (internal functions: skipped if they moved)."""
    try:
        from planner.api import SETTING_KEYS, _plan_method as plan_method, adapter_file_bytes, count
        from planner.memory import estimate_memory
        from planner.memory.settings import TrainingSettings
    except ImportError:
        return {}
    spec = planner.load_model(model)
    opts = {k: v for k, v in options.items() if k not in SETTING_KEYS}
    settings = TrainingSettings.from_options({k: v for k, v in options.items() if k in SETTING_KEYS})
    mplan = plan_method(spec, method, **opts)[0]
    if method == "qlora":  # estimate() turns on NF4 for qlora; the stage timing follows it
        settings = planner.estimate(model, method=method, **options).settings
    out: dict[str, float] = {}
    for name, fn in (
        ("plan", lambda: plan_method(spec, method, **opts)),
        ("counts", lambda: (count(mplan, spec), adapter_file_bytes(mplan, spec, settings.dtype, settings.adapter_dtype))),
        ("memory", lambda: estimate_memory(spec, mplan, settings)),
    ):
        fn()
        out[name] = statistics.median(_time_calls(fn, calls, 5.0))
    return out


def run(calls: int = 200, max_seconds: float = 10.0, stage_calls: int = 20) -> list[Result]:
    results = []
    for model, method, options in CASES:
        planner.estimate(model, method=method, **options)  # warm: catalog spec, inventory, defaults
        times = _time_calls(lambda: planner.estimate(model, method=method, **options), calls, max_seconds)
        sizes = iter(range(10_000, 10_000 + 100 * calls))  # never asked before: no memoised budget to reuse
        fresh = _time_calls(lambda: planner.estimate(model, method=method, **{**options, "batch_size": next(sizes)}),
                            min(calls, 50), max_seconds)
        result = Result(model, method, options, times, _stages(model, method, options, stage_calls), fresh)
        results.append(result)
        print(f"  {model} {method}: {result.median_ms:.3f} ms ({len(times)} calls)", file=sys.stderr)
    return results


def profile(model: str, method: str, options: dict[str, Any], calls: int = 3, top: int = 15) -> str:
    """cProfile of ``calls`` warm calls: the top functions by cumulative time, planner's own first."""
    planner.estimate(model, method=method, **options)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        planner.estimate(model, method=method, **options)
    prof.disable()
    stream = io.StringIO()
    stats = pstats.Stats(prof, stream=stream)
    stats.sort_stats("cumulative").print_stats(r"planner[/\\]", top)
    lines = [ln.rstrip() for ln in stream.getvalue().splitlines()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    rows = [ln.replace(str(ROOT) + os.sep, "") for ln in lines[start:] if ln.strip()]
    return "\n".join(rows)


def _options_text(options: dict[str, Any]) -> str:
    if not options:
        return "defaults"
    return ", ".join(f"{k}={v!r}" for k, v in options.items()).replace("|", "\\|")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(results: list[Result]) -> str:
    has_stages = any(r.stages for r in results)
    head = "| model | method | options | calls | median ms | p90 ms | < 1 ms | new batch size: median ms |"
    sep = "|---|---|---|---:|---:|---:|:---:|---:|"
    if has_stages:
        head += " plan ms | counts + file ms | memory ms |"
        sep += "---:|---:|---:|"
    rows = [head, sep]
    for r in results:
        row = (f"| {r.model} | {r.method} | {_options_text(r.options)} | {len(r.times)} | {r.median_ms:.3f} | "
               f"{r.p90_ms:.3f} | {'yes' if r.median_ms < TARGET_MS else 'no'} | {r.fresh_median_ms:.3f} |")
        if has_stages:
            row += "".join(f" {r.stages[s] * 1e3:.3f} |" if s in r.stages else " n/a |" for s in ("plan", "counts", "memory"))
        rows.append(row)
    return "\n".join(rows)


#: The case profiled besides the slowest one: the seed's LoRA on a 7B model, the most common question.
TYPICAL = 3


def _profile_section(title: str, r: Result) -> str:
    return f"""## Where the time goes: {title}

`{r.model}`, `{r.method}` ({_options_text(r.options)}): cProfile of 3 warm calls, planner functions
by cumulative time.

```
{profile(r.model, r.method, r.options)}
```
"""


#: The memory sweep benchmark (issue: 10,000 configurations in under 2 s): a 100 x 100 grid of
#: batch sizes and sequence lengths, one vectorised replay per (model, method).
SWEEP_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("meta-llama/Llama-3.1-8B", "lora", {"r": 16, "target_modules": "all-linear"}),
    ("meta-llama/Llama-2-7b-hf", "qlora", {"r": 64, "target_modules": "all-linear", "gradient_checkpointing": True}),
    ("meta-llama/Llama-3.1-70B", "full", {}),
]
SWEEP_TARGET_S = 2.0


def sweep_benchmark(repeats: int = 5) -> list[tuple[str, str, int, float]]:
    import numpy as np

    batch = np.repeat(np.arange(1, 101), 100)
    seq = np.tile(np.arange(1, 101) * 64, 100)
    out = []
    for model, method, options in SWEEP_CASES:
        planner.sweep(model, method, batch_size=batch, seq_len=seq, **options)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            planner.sweep(model, method, batch_size=batch, seq_len=seq, **options)
            times.append(time.perf_counter() - t0)
        out.append((model, method, batch.size, statistics.median(times)))
        print(f"  sweep {model} {method}: {statistics.median(times):.3f} s for {batch.size} configurations", file=sys.stderr)
    return out


def sweep_table(rows: list[tuple[str, str, int, float]]) -> str:
    lines = ["| model | method | configurations | median s | < 2 s |", "|---|---|---:|---:|:---:|"]
    for model, method, n, sec in rows:
        lines.append(f"| {model} | {method} | {n:,} | {sec:.3f} | {'yes' if sec < SWEEP_TARGET_S else 'no'} |")
    return "\n".join(lines)


def document(results: list[Result], sweeps: list[tuple[str, str, int, float]] | None = None) -> str:
    slowest = max(results, key=lambda r: r.median_ms)
    sections = [_profile_section("slowest case", slowest)]
    if results[TYPICAL] is not slowest:
        sections.append(_profile_section("a typical case", results[TYPICAL]))
    under = sum(r.median_ms < TARGET_MS for r in results)
    return f"""# planner.estimate() benchmark

Generated by `python -m benchmarks.run` (`make bench`); rerun it to refresh. Wall time of one
`planner.estimate(model, method=..., **options)` call, timed call by call with
`time.perf_counter()`; up to 200 calls per case, fewer where a case runs longer than its time
budget. Target: under {TARGET_MS:g} ms per call.

- **median ms**: the same call again. `estimate` memoises what it derives on the (immutable) model
  spec (`planner/memo.py`: method plan, counts, adapter file, memory budget per settings), so a
  repeated question (a UI rerun, a notebook cell, `solve_max` / `recommend` probing a point again)
  costs only the argument validation and building the `Plan`.
- **new batch size**: every call asks a batch size never asked before, so the memory model replays
  the training step (two and three blocks, extrapolated); this is the cost of a new answer.
  Many new answers at once are what `planner.sweep` is for (below: 10,000 in one replay).
- Stage columns: the uncached parts of a new answer: the method plan (`_plan_method`: target
  matching, new tensors), counts and the adapter file size, and the memory model
  (`estimate_memory`: the replayed training step).

- Python {platform.python_version()} on {platform.system()} {platform.machine()}, {_cpu_name()}, {os.cpu_count()} logical CPUs
  (shared machine: absolute figures are indicative, ratios between cases are what to read)
- peft-planner {planner.__version__}, measured {time.strftime("%Y-%m-%d")}
- {under} of {len(results)} cases under {TARGET_MS:g} ms (median)

{table(results)}

## Memory sweep: 10,000 configurations

`planner.sweep(model, method, batch_size=<array>, seq_len=<array>)` replays the step once on
arrays (batch 1-100 x sequence 64-6400, 10,000 points); each element equals `estimate()` at that
point (tests/planner/test_solve.py). Target: under {SWEEP_TARGET_S:g} s.

{sweep_table(sweeps or [])}

""" + "\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per case (default 200)")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="time budget per case (default 10 s)")
    parser.add_argument("--no-write", action="store_true", help=f"print only; do not write {DOC.relative_to(ROOT)}")
    parser.add_argument("--output", type=Path, default=DOC)
    args = parser.parse_args(argv)
    results = run(args.calls, args.max_seconds)
    text = document(results, sweep_benchmark())
    print(table(results))
    if not args.no_write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"\nwrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
