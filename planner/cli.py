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
from planner.format import human_bytes, human_count
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
    e = sub.add_parser("estimate", help="trainable parameters, adapter size and memory for a model and method")
    _plan_arguments(e)
    f = sub.add_parser("fit", help="does the plan fit a GPU; the largest batch / sequence / rank that does; the smallest GPU")
    _plan_arguments(f)
    f.add_argument("--gpu", required=True, help="catalog GPU id, e.g. rtx-4090 (see `gpus`)")
    f.add_argument("--solve", action="append", choices=("batch_size", "seq_len", "r"), default=None,
                   help="also solve for the largest value that fits (repeatable; default: batch_size and seq_len)")
    r = sub.add_parser("recommend", help="ranked plans for a model, your GPUs, a task and a dataset size")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--model", default="meta-llama/Llama-2-7b-hf", help="catalog id (see `models`)")
    src.add_argument("--config", type=Path, help="path to a Hugging Face config.json")
    r.add_argument("--gpu", action="append", required=True, metavar="ID[xN]",
                   help="a GPU you have, e.g. rtx-4090 or rtx-4090x2 (repeatable)")
    r.add_argument("--task", required=True, help="classification, generation, qa, translation, summarization, style, code, instruction")
    r.add_argument("--num-examples", type=int, required=True)
    r.add_argument("--priority", choices=("quality", "memory", "speed"), default="quality")
    r.add_argument("--seq-len", type=int, default=512)
    r.add_argument("--epochs", type=float, default=1)
    r.add_argument("--effective-batch-size", type=int, default=None)
    r.add_argument("--price-per-gpu-hour", type=float, default=None, help="USD per GPU-hour, for the cost")
    r.add_argument("--max-results", type=int, default=5)
    r.add_argument("--dtype", default=None)
    r.add_argument("--optimizer", default=None)
    r.add_argument("--json", action="store_true", help="print the plans as JSON (language-neutral)")
    r.add_argument("--lang", choices=LANGUAGES, default="en")
    g = sub.add_parser("gpus", help="list the GPU catalog")
    g.add_argument("--json", action="store_true")
    g.add_argument("--lang", choices=LANGUAGES, default="en")
    for name, help_text in (("models", "list the bundled model catalog"), ("methods", "list the methods")):
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("--json", action="store_true")
        sp.add_argument("--lang", choices=LANGUAGES, default="en")
    return p


def _plan_arguments(e: argparse.ArgumentParser) -> None:
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
    t.add_argument("--gradient-accumulation-steps", type=int)
    t.add_argument("--num-gpus", type=int, help="GPUs training together (memory is per GPU)")
    t.add_argument("--sharding", choices=("ddp", "zero1", "zero2", "zero3", "fsdp_full_shard", "fsdp_shard_grad_op"))
    t.add_argument("--offload", choices=("optimizer", "optimizer+params"), help="CPU offload (ZeRO / FSDP)")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other PEFT option, e.g. --option use_dora=true --option bias=all")
    e.add_argument("--json", action="store_true", help="print the Plan as JSON (language-neutral)")
    e.add_argument("--lang", choices=LANGUAGES, default="en", help="language of the readable output: en or ko")


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
                 "mixed_precision", "gradient_accumulation_steps", "num_gpus", "sharding", "offload"):
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


def _gpus(args: argparse.Namespace) -> int:
    from planner.gpus import gpus

    entries = gpus()
    if args.json:
        print(json.dumps([g.model_dump(mode="json") for g in entries], indent=1))
        return 0
    for g in entries:
        bf16 = g.peak_tflops("bf16")
        print(f"{g.id:<22} {g.name:<34} {human_bytes(g.memory_bytes):>11}  "
              f"{t('usable', args.lang)} {human_bytes(g.usable_memory_bytes):>11}  bf16 {bf16 or '-':>6} TFLOPS")
    return 0


def _fit(model: Any, method: Any, plan: Any, args: argparse.Namespace) -> int:
    from planner.gpus import gpu as lookup_gpu
    from planner.solve import fits, smallest_gpu, solve_max

    g = lookup_gpu(args.gpu)
    lang = args.lang
    if plan.memory is None:
        raise PlannerError(f"no memory budget for this plan: {'; '.join(plan.notes)}", field="method")
    ok = fits(plan, g)
    options = _options(args)
    solved = {}
    for parameter in args.solve or ["batch_size", "seq_len"]:
        if parameter == "r" and plan.method_family not in ("lora", "adalora"):
            raise PlannerError("--solve r needs a LoRA-family method", field="--solve")
        solved[parameter] = solve_max(model, method, gpu=g, parameter=parameter, **options)
    smallest = smallest_gpu(model, method, **options)
    if args.json:
        print(json.dumps({"gpu": g.id, "fits": ok, "device_bytes": plan.memory.device_bytes,
                          "usable_memory_bytes": g.usable_memory_bytes, "largest": solved,
                          "smallest_gpu": smallest.id if smallest else None, "plan": plan.model_dump(mode="json")}, indent=1))
        return 0 if ok else 1
    rows = plan.summary_rows(lang)
    verdict = t("fits_yes" if ok else "fits_no", lang, gpu=g.name, device=human_bytes(plan.memory.device_bytes),
                usable=human_bytes(g.usable_memory_bytes))
    rows.append((t("fit", lang), verdict))
    for parameter, value in solved.items():
        rows.append((t(f"largest.{parameter}", lang), str(value) if value else t("none_fits", lang)))
    rows.append((t("smallest_gpu", lang), f"{smallest.id} ({smallest.name})" if smallest else t("none_fits", lang)))
    _print_table(rows)
    return 0 if ok else 1


def _gpu_counts(items: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        name, n = item, 1
        head, sep, tail = item.rpartition("x")
        if sep and head and tail.isdigit():
            name, n = head, int(tail)
        counts[name] = counts.get(name, 0) + n
    return counts


def _recommend(model: Any, args: argparse.Namespace) -> int:
    from planner.recommend import DEFAULT_EFFECTIVE_BATCH_SIZE, recommend

    settings = {k: getattr(args, k) for k in ("dtype", "optimizer") if getattr(args, k)}
    recs = recommend(model, _gpu_counts(args.gpu), task=args.task, num_examples=args.num_examples,
                     priority=args.priority, seq_len=args.seq_len, epochs=args.epochs,
                     effective_batch_size=args.effective_batch_size or DEFAULT_EFFECTIVE_BATCH_SIZE,
                     price_per_gpu_hour=args.price_per_gpu_hour, max_results=args.max_results, **settings)
    lang = args.lang
    if args.json:
        print(json.dumps({"plans": [p.model_dump(mode="json") for p in recs],
                          "rejected": [{"method": m, "gpu": g, "reason": r.model_dump(mode="json"), "text": r.text("en")}
                                       for m, g, r in recs.rejected]}, indent=1))
        return 0 if recs else 1
    for p in recs:
        rec = p.recommendation
        head = f"{rec.rank}. {p.method}"
        if p.peft_config and p.peft_config.get("r"):
            head += f" r={p.peft_config['r']}"
        print(f"{head}  [{rec.num_gpus} x {rec.gpu}, {t('micro_batch', lang)} {rec.micro_batch_size} x "
              f"{rec.gradient_accumulation_steps}{', ' + t('ckpt', lang).strip(', ') if rec.gradient_checkpointing else ''}]  "
              f"{human_bytes(rec.device_bytes)} / {human_bytes(rec.usable_memory_bytes)}")
        for reason in rec.reasons:
            print(f"   - {reason.text(lang)}")
        print(f"   * {rec.inference_overhead.text(lang)}")
    if not recs:
        print(t("nothing_fits", lang))
    for m, g, reason in recs.rejected:
        print(f"{t('rejected', lang)}: {m} @ {g}: {reason.text(lang)}")
    return 0 if recs else 1


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
        if args.command == "gpus":
            return _gpus(args)
        model: Any = read_config_file(args.config) if args.config else args.model
        if args.command == "recommend":
            return _recommend(model, args)
        method: Any = args.method
        if args.peft_config:
            method = read_config_file(args.peft_config)
        plan = estimate(model, method=method, **_options(args))
        if args.command == "fit":
            return _fit(model, method, plan, args)
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
