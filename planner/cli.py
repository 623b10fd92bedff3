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
from planner.locale import LANGUAGES, t
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
    t = e.add_argument_group("training settings (memory)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--seq-len", type=int)
    t.add_argument("--target-len", type=int, help="encoder-decoder target length (default: --seq-len)")
    t.add_argument("--gradient-checkpointing", action="store_true", default=None)
    t.add_argument("--attn-implementation", choices=("sdpa", "eager", "flash_attention_2"))
    t.add_argument("--optimizer", help="TrainingArguments.optim name, e.g. adamw_torch, adamw_bnb_8bit, sgd")
    t.add_argument("--mixed-precision", choices=("bf16", "fp16"))
    t.add_argument("--quantization", choices=("nf4", "fp4"), help="4-bit base weights (QLoRA)")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other PEFT option, e.g. --option use_dora=true --option bias=all")
    e.add_argument("--json", action="store_true", help="print the Plan as JSON (language-neutral)")
    e.add_argument("--lang", choices=LANGUAGES, default="en", help="language of the readable output: en or ko")
    for name, help_text in (("models", "list the bundled model catalog"), ("methods", "list the methods")):
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("--json", action="store_true")
        sp.add_argument("--lang", choices=LANGUAGES, default="en")
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
    for name in ("batch_size", "seq_len", "target_len", "gradient_checkpointing", "attn_implementation", "optimizer",
                 "mixed_precision"):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    if args.quantization:
        opts["quantization"] = {"load_in_4bit": True, "bnb_4bit_quant_type": args.quantization,
                                "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": args.dtype or "bfloat16"}
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
                    print(f"{names:<36} {t('cat.' + m.category, args.lang):<19} {m.paper}")
            return 0
        model: Any = read_config_file(args.config) if args.config else args.model
        method: Any = args.method
        if args.peft_config:
            method = read_config_file(args.peft_config)
        plan = estimate(model, method=method, **_options(args))
        if args.json:
            print(plan.model_dump_json(indent=1))
        else:
            _print_table(plan.summary_rows(args.lang))
            for note in plan.notes:
                print(f"{t('note', args.lang)}: {note}")
        return 0
    except PlannerError as exc:
        print(f"{t('error', getattr(args, 'lang', 'en'))}: {exc}", file=sys.stderr)
        return 2
