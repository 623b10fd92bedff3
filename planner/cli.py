"""Command line: ``python -m planner estimate|models|methods``. Parses arguments and prints; all
logic lives in ``planner.api``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from planner import catalog
from planner.api import estimate
from planner.errors import PlannerError
from planner.format import human_count
from planner.methods import methods
from planner.spec import read_config_file


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m planner", description="Plan PEFT fine-tuning: exact counts and sizes.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("estimate", help="trainable parameters and adapter size for a model and method")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--model", default="meta-llama/Llama-2-7b-hf", help="catalog id (see `models`)")
    src.add_argument("--config", type=Path, help="path to a Hugging Face config.json")
    e.add_argument("--method", default="lora", help="method name (see `methods`)")
    e.add_argument("--peft-config", type=Path, help="an adapter_config.json; its peft_type selects the method")
    e.add_argument("--r", type=int, help="LoRA rank")
    e.add_argument("--lora-alpha", type=float)
    e.add_argument("--target", "--target-modules", dest="target", help="comma-separated module names, a regex, or all-linear")
    e.add_argument("--num-virtual-tokens", type=int)
    e.add_argument("--dtype", default=None, help="model dtype: bfloat16 (default), float16, float32")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other PEFT option, e.g. --option use_dora=true --option bias=all")
    e.add_argument("--json", action="store_true", help="print the Plan as JSON")
    sub.add_parser("models", help="list the bundled model catalog").add_argument("--json", action="store_true")
    sub.add_parser("methods", help="list the methods").add_argument("--json", action="store_true")
    return p


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if args.r is not None:
        opts["r"] = args.r
    if args.lora_alpha is not None:
        opts["lora_alpha"] = args.lora_alpha
    if args.num_virtual_tokens is not None:
        opts["num_virtual_tokens"] = args.num_virtual_tokens
    if args.target:
        t = args.target
        is_list = "," in t or t.replace("_", "").isalnum()
        opts["target_modules"] = [x.strip() for x in t.split(",") if x.strip()] if is_list and t.lower() != "all-linear" else t
    if args.dtype:
        opts["dtype"] = args.dtype
    for item in args.option:
        if "=" not in item:
            raise PlannerError(f"expected KEY=VALUE, got {item!r}", field="--option")
        key, value = item.split("=", 1)
        opts[key.strip()] = _number(value.strip())
    return opts


def _print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "models":
            entries = catalog.catalog_entries()
            if args.json:
                print(json.dumps([e.model_dump() for e in entries], indent=1))
            else:
                for e in entries:
                    print(f"{e.id:<40} {e.model_type:<9} {human_count(e.published_params or e.params_from_config):>10}")
            return 0
        if args.command == "methods":
            infos = methods()
            if args.json:
                print(json.dumps([{"name": m.name, "aliases": m.aliases, "category": m.category, "peft_type": m.peft_type,
                                   "paper": m.paper} for m in infos], indent=1))
            else:
                for m in infos:
                    names = ", ".join((m.name, *m.aliases))
                    print(f"{names:<36} {m.category:<19} {m.paper}")
            return 0
        model: Any = read_config_file(args.config) if args.config else args.model
        method: Any = args.method
        if args.peft_config:
            method = read_config_file(args.peft_config)
        plan = estimate(model, method=method, **_options(args))
        if args.json:
            print(plan.model_dump_json(indent=1))
        else:
            _print_table(plan.summary_rows())
            for note in plan.notes:
                print(f"note: {note}")
        return 0
    except PlannerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
