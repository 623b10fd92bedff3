"""Wall time of a fake-mode measurement of a 7B LoRA training step (target: under 30 s).

    python -m benchmarks.executors_fake_7b            # 3 runs, prints a table
    python -m benchmarks.executors_fake_7b --runs 1 --json out.json

What is timed: ``executors.measure.measure_step`` on meta-llama/Llama-2-7b-hf (full size, 32
layers), LoRA r=8 on q_proj/v_proj, batch 1 x 512, bf16, AdamW, mode ``fake``: building the model
on meta, materialising fake weights, and two tracked training steps (forward, backward, optimizer).
The first run in a process also pays for imports and FakeTensor's dispatch cache warming; the
table shows each run's wall time and CPU time (``time.process_time``: this process's own CPU, the
number that does not depend on how busy the machine is) and the median.

A benchmark, not a test: nothing fails on a slow result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

MODEL = "meta-llama/Llama-2-7b-hf"
LORA = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
TARGET_S = 30.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.executors_fake_7b")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--json", help="write the timings here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")

    t_import = time.perf_counter()
    from executors.measure import measure_step
    from planner import catalog

    import_s = time.perf_counter() - t_import
    config = catalog.config(MODEL)
    runs = []
    for i in range(args.runs):
        w0, c0 = time.perf_counter(), time.process_time()
        m = measure_step(config, mode="fake", peft_config=LORA, batch_size=1, seq_len=args.seq_len)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if not m.ok:
            print(f"run {i + 1}: measurement failed: {m.error}", file=sys.stderr)
            return 1
        runs.append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_bytes": m.peak_bytes})
        print(f"run {i + 1}: wall {wall:6.1f} s  cpu {cpu:6.1f} s  peak {m.peak_bytes / 2**30:.2f} GiB", flush=True)
    med_wall = statistics.median(r["wall_s"] for r in runs)
    med_cpu = statistics.median(r["cpu_s"] for r in runs)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    print(f"median: wall {med_wall:.1f} s, cpu {med_cpu:.1f} s (target < {TARGET_S:.0f} s); imports {import_s:.1f} s; "
          f"{os.cpu_count()} CPUs, load average {load}")
    if args.json:
        import torch

        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": MODEL, "peft_config": LORA, "batch_size": 1, "seq_len": args.seq_len, "runs": runs,
                       "median_wall_s": med_wall, "median_cpu_s": med_cpu, "import_s": round(import_s, 2),
                       "target_s": TARGET_S, "cpus": os.cpu_count(), "load_average_1m": load,
                       "torch": torch.__version__, "python": platform.python_version(),
                       "machine": platform.platform()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
