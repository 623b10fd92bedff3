"""The app's logic (ui/planning.py) gives exactly what planner.estimate gives for the same inputs."""

from __future__ import annotations

import ast
import json

import pytest

import planner
from planner.gpus import gpu as catalog_gpu
from ui import planning
from ui.planning import catalog_ref, estimate_for, verdict
from ui.state import DEFAULTS

MODEL = "meta-llama/Llama-3.1-8B"
SMALL = "HuggingFaceTB/SmolLM2-135M"


def test_default_inputs_are_the_bundled_example():
    out = estimate_for(DEFAULTS, catalog_ref(MODEL))
    assert out.ok
    expected = planner.estimate(MODEL, "lora", r=16, batch_size=1, seq_len=512, gradient_checkpointing=True)
    assert out.plan.trainable_params == expected.trainable_params == 6_815_744
    assert out.plan.adapter_file_bytes == expected.adapter_file_bytes
    assert out.plan.memory == expected.memory


def test_settings_reach_the_planner():
    inputs = DEFAULTS.with_(method="qlora", options={"r": 64}, targets="all-linear", batch_size=2, seq_len=1024,
                            gradient_checkpointing=False, optimizer="paged_adamw_8bit", attn_implementation="eager",
                            quantization="fp4", double_quant=False, gradient_accumulation_steps=4)
    out = estimate_for(inputs, catalog_ref(MODEL))
    assert out.ok, out.error
    expected = planner.estimate(MODEL, "qlora", r=64, target_modules="all-linear", batch_size=2, seq_len=1024,
                                gradient_checkpointing=False, optimizer="paged_adamw_8bit", attn_implementation="eager",
                                gradient_accumulation_steps=4,
                                quantization={"load_in_4bit": True, "bnb_4bit_quant_type": "fp4",
                                              "bnb_4bit_use_double_quant": False, "bnb_4bit_compute_dtype": "bfloat16"})
    assert out.plan.trainable_params == expected.trainable_params
    assert out.plan.memory == expected.memory
    assert out.plan.settings == expected.settings


def test_options_equal_to_peft_defaults_are_not_sent():
    method, options = planning.method_arg(DEFAULTS.with_(options={"r": 16, "lora_alpha": 8.0, "lora_dropout": 0.0}))
    assert method == "lora" and options == {"r": 16}


def test_quantization_only_for_adapter_methods():
    assert planning.quantization_kwargs(DEFAULTS.with_(method="full", quantization="nf4"), "full") is None
    assert planning.quantization_kwargs(DEFAULTS.with_(quantization="int8"), "reparameterization") == {"load_in_8bit": True}
    q = planning.quantization_kwargs(DEFAULTS.with_(method="qlora", quantization="none"), "reparameterization")
    assert q["load_in_4bit"] and q["bnb_4bit_quant_type"] == "nf4"
    q = planning.quantization_kwargs(DEFAULTS.with_(dtype="float32", mixed_precision="fp16", quantization="nf4"),
                                     "reparameterization")
    assert q["bnb_4bit_compute_dtype"] == "float16"


def test_errors_are_values_with_their_field():
    out = estimate_for(DEFAULTS.with_(options={"r": 2048}), catalog_ref(MODEL))
    assert not out.ok and out.error.field == "r" and out.error.kind == "MethodConfigError"
    assert "1024" in out.error.message  # k_proj's output width limits the rank
    out = estimate_for(DEFAULTS.with_(targets=["nope"]), catalog_ref(MODEL))
    assert not out.ok and out.error.field == "target_modules" and "q_proj" in out.error.message
    out = estimate_for(DEFAULTS.with_(method="full", options={}), catalog_ref(MODEL), dtype="float16", mixed_precision="bf16")
    assert not out.ok and out.error.field in ("mixed_precision", "settings")  # both shown under Training


def test_unexpected_exceptions_become_internal_errors(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kaput")

    monkeypatch.setattr(planner, "estimate", boom)
    out = planning.run_estimate(catalog_ref(MODEL), "lora", {}, {})
    assert out.error.kind == "internal" and "kaput" in out.error.message


def test_uploaded_config_is_data_only():
    cfg = planner.load_model(SMALL).config
    ref = planning.upload_ref(json.dumps(cfg))
    assert ref.uploaded and ref.key.startswith("upload:")
    out = estimate_for(DEFAULTS, ref)
    expected = planner.estimate(dict(cfg), "lora", r=16, batch_size=1, seq_len=512, gradient_checkpointing=True)
    assert out.ok and out.plan.trainable_params == expected.trainable_params
    for bad in ("{", "[1, 2]", json.dumps({"model_type": "nonsense"}), "x" * (2 << 20)):
        with pytest.raises(planner.PlannerError):
            planning.upload_ref(bad)


def test_verdict_compares_device_memory_with_usable_memory():
    gpu = catalog_gpu("rtx-4090")
    plan = estimate_for(DEFAULTS, catalog_ref(MODEL)).plan
    v = verdict(plan, gpu)
    assert v.used_bytes == plan.memory.device_bytes and v.capacity_bytes == gpu.usable_memory_bytes
    assert v.margin_bytes == gpu.usable_memory_bytes - plan.memory.device_bytes
    assert v.status == "fits"
    big = estimate_for(DEFAULTS.with_(method="full", options={}), catalog_ref(MODEL)).plan
    assert verdict(big, gpu).status == "no_fit"
    assert verdict(plan.model_copy(update={"memory": None}), gpu).status == "unknown"


def test_tight_when_margin_within_error_band():
    gpu = catalog_gpu("rtx-4090")
    mem = estimate_for(DEFAULTS, catalog_ref(MODEL)).plan.memory
    plan = estimate_for(DEFAULTS, catalog_ref(MODEL)).plan
    squeezed = mem.model_copy(update={"device_bytes": gpu.usable_memory_bytes - 1, "error_band": 0.05})
    assert verdict(plan.model_copy(update={"memory": squeezed}), gpu).status == "tight"


def test_memory_segments_add_up_to_device_memory():
    mem = estimate_for(DEFAULTS, catalog_ref(MODEL)).plan.memory
    segs = dict(planning.memory_segments(mem))
    assert sum(segs.values()) == mem.device_bytes
    assert sum(v for k, v in segs.items() if k not in ("reserve", "context")) == mem.peak_bytes


def test_compare_rows_equal_estimate():
    gpu = catalog_gpu("rtx-4090")
    rows = planning.compare(DEFAULTS, catalog_ref(MODEL), gpu, choices=["lora", "qlora", "ia3", "full", "bitfit"])
    by = {r.key: r for r in rows}
    settings = dict(batch_size=1, seq_len=512, gradient_checkpointing=True)
    assert by["lora"].outcome.plan == planner.estimate(MODEL, "lora", r=16, **settings)
    assert by["qlora"].outcome.plan == planner.estimate(MODEL, "qlora", r=16, **settings)
    assert by["ia3"].outcome.plan == planner.estimate(MODEL, "ia3", **settings)
    assert by["full"].outcome.plan == planner.estimate(MODEL, "full", **settings)
    assert not by["bitfit"].outcome.ok  # Llama has no biases: an error row, not an exception


def test_seed_table_rows():
    rows = planning.seed_table(DEFAULTS, catalog_ref("meta-llama/Llama-2-7b-hf"), catalog_gpu("a100-80gb"))
    by = {r.key: r.outcome.plan for r in rows}
    assert by["lora_r8"].trainable_params == 4_194_304  # the seed's exercise 1: q_proj + v_proj, r=8
    assert by["lora_r64"].trainable_params == 33_554_432
    assert by["qlora_r64"].trainable_params == 33_554_432
    assert by["full"].trainable_params == by["full"].total_params
    assert by["prompt"].trainable_params == 20 * 4096


def test_sweep_marks_the_largest_value_that_fits():
    gpu = catalog_gpu("rtx-4090")
    model = catalog_ref(MODEL)
    s = planning.sweep(DEFAULTS, model, gpu, "seq_len", values=[512, 1024, 2048, 4096, 8192])
    assert [x for x, _ in s.points] == [512, 1024, 2048, 4096, 8192]
    assert s.best is not None and 512 <= s.best < 8192
    at_best = planner.estimate(MODEL, "lora", r=16, batch_size=1, seq_len=s.best, gradient_checkpointing=True)
    above = planner.estimate(MODEL, "lora", r=16, batch_size=1, seq_len=s.best + 1, gradient_checkpointing=True)
    assert at_best.memory.device_bytes <= gpu.usable_memory_bytes < above.memory.device_bytes
    for x, o in s.points:
        assert o.plan.memory == planner.estimate(MODEL, "lora", r=16, batch_size=1, seq_len=x,
                                                 gradient_checkpointing=True).memory


def test_sweep_over_rank_and_when_nothing_fits():
    gpu = planner.custom_gpu(memory_gib=4)
    s = planning.sweep(DEFAULTS, catalog_ref(MODEL), gpu, "r", values=[1, 8, 64])
    assert s.best is None
    assert [o.plan.trainable_params for _, o in s.points] == [
        planner.estimate(MODEL, "lora", r=r).trainable_params for r in (1, 8, 64)]


@pytest.mark.parametrize("inputs", [
    DEFAULTS,
    DEFAULTS.with_(method="qlora", options={"r": 64, "lora_dropout": 0.05}, targets="all-linear"),
    DEFAULTS.with_(method="dora", targets=["q_proj", "v_proj"], gradient_checkpointing=False),
    DEFAULTS.with_(method="ia3", options={}),
    DEFAULTS.with_(method="prefix_tuning", options={"num_virtual_tokens": 30}, gradient_checkpointing=False),
    DEFAULTS.with_(method="full", options={}, dtype="float32", mixed_precision="bf16"),
    DEFAULTS.with_(method="partial", options={"last_k_layers": 2}),
    DEFAULTS.with_(adapter_config={"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"], "lora_alpha": 16}),
])
def test_python_snippet_is_valid_code_with_these_choices(inputs):
    plan = estimate_for(inputs, catalog_ref(MODEL)).plan
    code = planning.python_snippet(inputs, catalog_ref(MODEL), plan)
    ast.parse(code)
    assert f"model_id = {MODEL!r}" in code
    assert f"per_device_train_batch_size={inputs.batch_size}" in code and f"optim={inputs.optimizer!r}" in code
    if plan.peft_config:
        assert "get_peft_model(model, peft_config)" in code
        if plan.peft_type == "LORA":
            assert "LoraConfig(" in code and f"r={plan.peft_config['r']}," in code
    if inputs.method == "qlora":
        assert "BitsAndBytesConfig(" in code and "bnb_4bit_quant_type='nf4'" in code
        assert "prepare_model_for_kbit_training" in code
    if inputs.gradient_checkpointing:
        assert "gradient_checkpointing_enable" in code
    if inputs.method == "partial":
        assert "model.layers.30." in code and "model.layers.31." in code


def test_validate_command():
    cmd = planning.validate_command(DEFAULTS.with_(batch_size=2, seq_len=1024), catalog_ref(MODEL))
    assert cmd == ("python -m executors.validate --model meta-llama/Llama-3.1-8B --method lora --r 16 --batch-size 2 "
                   "--seq-len 1024 --gradient-checkpointing --device cuda --json report.json")
    cmd = planning.validate_command(DEFAULTS.with_(method="qlora", options={"r": 64, "lora_alpha": 128.0, "use_rslora": True},
                                                   targets="all-linear", gradient_checkpointing=False,
                                                   optimizer="paged_adamw_8bit", quantization="fp4"), catalog_ref(MODEL))
    assert cmd == ("python -m executors.validate --model meta-llama/Llama-3.1-8B --method qlora --r 64 --lora-alpha 128 "
                   "--option use_rslora=true --target-modules all-linear --batch-size 1 --seq-len 512 "
                   "--optimizer paged_adamw_8bit --quantization fp4 --device cuda --json report.json")
    cmd = planning.validate_command(DEFAULTS.with_(method="ia3", options={}, targets="re:.*v_proj"), catalog_ref(MODEL))
    assert "--r" not in cmd and """--option 'target_modules=".*v_proj"'""" in cmd
    cmd = planning.validate_command(DEFAULTS.with_(adapter_config={"peft_type": "LORA"}), catalog_ref(MODEL))
    assert "--peft-config adapter_config.json" in cmd and "--method" not in cmd


def test_validate_command_parses_with_the_executors_cli():
    """The command is one the executors' own argument parser accepts, with the same values."""
    import shlex

    validate = pytest.importorskip("executors.validate")
    parser = getattr(validate, "build_parser", None) or getattr(validate, "_parser", None)
    if parser is None:
        pytest.skip("executors.validate exposes no argument parser")
    inputs = DEFAULTS.with_(method="dora", options={"r": 8, "lora_dropout": 0.05}, targets=["q_proj", "o_proj"],
                            batch_size=2, optimizer="sgd", attn_implementation="eager")
    args = parser().parse_args(shlex.split(planning.validate_command(inputs, catalog_ref(MODEL)))[3:])
    assert (args.model, args.method, args.r, args.batch_size, args.seq_len) == (MODEL, "dora", 8, 2, 512)
    assert args.target_modules == "q_proj,o_proj" and args.option == ["lora_dropout=0.05"]
    assert args.gradient_checkpointing and args.optimizer == "sgd" and args.attn_implementation == "eager"
    assert args.device == "cuda" and args.json == "report.json"


def test_plan_document_is_json():
    inputs, model, gpu = DEFAULTS, catalog_ref(MODEL), catalog_gpu("rtx-4090")
    plan = estimate_for(inputs, model).plan
    doc = planning.plan_document(inputs, model, plan, gpu, verdict(plan, gpu))
    back = json.loads(json.dumps(doc))
    assert back["plan"]["trainable_params"] == plan.trainable_params
    assert back["estimate_args"]["r"] == 16 and back["estimate_args"]["batch_size"] == 1
    assert back["verdict"]["status"] == "fits" and back["gpu"]["id"] == "rtx-4090"


REPORT = {"model": MODEL, "method": "lora",
          "measured": {"peak_bytes": 17_000_000_000, "reserved_peak_bytes": 17_200_000_000,
                       "breakdown": {"weights": 16_000_000_000, "activations": 1_000_000_000}},
          "estimated": {"peak_bytes": 17_073_196_544, "reserved_bytes": 17_166_285_312,
                        "breakdown": {"weights": 16_087_786_496, "activations": 142_878_720, "logits": 262_668_800}}}


def test_parse_report_single_and_list():
    rows = planning.parse_report(json.dumps(REPORT).encode())
    assert len(rows) == 1 and rows[0].measured_peak == 17_000_000_000 and rows[0].estimated_peak == 17_073_196_544
    assert rows[0].error == pytest.approx(73_196_544 / 17_000_000_000)
    assert rows[0].label == f"{MODEL} · lora"
    matrix = {"summary": {"cases": 2}, "cases": [dict(REPORT, id="a", inputs={"model": MODEL, "method": "lora"}),
                                                  dict(REPORT, id="b", measured={"peak_bytes": None})]}
    rows = planning.parse_report(json.dumps(matrix))
    assert [r.label for r in rows] == [f"a: {MODEL} · lora"]  # a case without a measurement is left out
    assert len(planning.parse_report(json.dumps({"results": [REPORT, REPORT]}))) == 2
    assert len(planning.parse_report(json.dumps([REPORT, {"junk": 1}]))) == 1


@pytest.mark.parametrize("raw", [b"{", b"[]", json.dumps({"measured": {}, "estimated": {}}).encode(), b"x" * (9 << 20)])
def test_parse_report_errors(raw):
    with pytest.raises(planning.ReportError) as info:
        planning.parse_report(raw)
    assert info.value.field == "report" and info.value.key.startswith("error.")


# ----- recommend ------------------------------------------------------------------------------------------


def test_recommend_for_is_planner_recommend():
    inputs = DEFAULTS.with_(model="openai-community/gpt2", gpu="t4", task="qa", num_examples=500, priority="memory",
                            seq_len=256, optimizer="adamw_bnb_8bit", batch_size=7, gradient_checkpointing=False)
    out = planning.recommend_for(inputs, catalog_ref("openai-community/gpt2"))
    assert out.ok, out.error
    want = planner.recommend("openai-community/gpt2", ["t4"], task="qa", num_examples=500, priority="memory", seq_len=256,
                             optimizer="adamw_bnb_8bit")
    assert [p.recommendation for p in out.plans] == [p.recommendation for p in want]
    assert list(out.rejected) == list(want.rejected)
    kw = planning.recommend_kwargs(inputs, planner.load_model("openai-community/gpt2"))
    assert not {"batch_size", "gradient_checkpointing", "gradient_accumulation_steps", "quantization"} & set(kw)
    assert kw["seq_len"] == 256 and kw["optimizer"] == "adamw_bnb_8bit" and kw["price_per_gpu_hour"] is None


def test_gpus_argument():
    assert planning.gpus_arg({"id": "t4"}, 1) == ["t4"]
    assert planning.gpus_arg({"id": "t4"}, 4) == {"t4": 4}
    (g, n), = planning.gpus_arg({"custom_gib": 12.0}, 2).items()
    assert n == 2 and g.memory_bytes == 12 * 2**30
    assert planning.gpu_descriptor(DEFAULTS.with_(gpu="custom", gpu_memory_gib=40.0)) == {"custom_gib": 40.0}


@pytest.mark.parametrize("model,gpu,task,n", [
    ("openai-community/gpt2", "t4", "qa", 500),
    ("HuggingFaceTB/SmolLM2-135M", "l4", "code", 200),
    ("HuggingFaceTB/SmolLM2-135M", "t4", "generation", 50000),
])
def test_applied_plan_is_the_recommended_plan(model, gpu, task, n):
    """Applying a recommendation to the sidebar's inputs plans exactly the recommended plan."""
    inputs = DEFAULTS.with_(model=model, gpu=gpu, task=task, num_examples=n, method="ia3", options={}, batch_size=3)
    ref = catalog_ref(model)
    out = planning.recommend_for(inputs, ref)
    assert out.ok and out.plans
    for plan in out.plans:
        new = planning.applied_inputs(plan, inputs, ref.spec())
        assert new is not None and new.view == "plan" and new.task == task
        got = estimate_for(new, ref)
        assert got.ok, (plan.method, got.error)
        assert got.plan.trainable_params == plan.trainable_params, plan.method
        assert got.plan.memory.device_bytes == plan.recommendation.device_bytes, plan.method
        # the recommended Plan was estimated without accumulation (it does not change memory); the sidebar gets it
        assert got.plan.settings.gradient_accumulation_steps == plan.recommendation.gradient_accumulation_steps
        assert got.plan.settings.model_copy(update={"gradient_accumulation_steps": 1}) == plan.settings.model_copy(
            update={"gradient_accumulation_steps": 1}), plan.method
        values = planning.applied_widget_values(new, ref.spec())
        assert values["method"] == new.method and values["use_adapter_json"] is False
        assert "model" not in values and "lang" not in values


# ----- several GPUs --------------------------------------------------------------------------------------------


def test_multi_gpu_settings_reach_the_planner():
    inputs = DEFAULTS.with_(gpu_count=4, sharding="zero3", offload="optimizer+params")
    out = estimate_for(inputs, catalog_ref(MODEL))
    assert out.ok, out.error
    expected = planner.estimate(MODEL, "lora", r=16, batch_size=1, seq_len=512, gradient_checkpointing=True,
                                num_gpus=4, sharding="zero3", offload="optimizer+params")
    assert out.plan.memory == expected.memory and out.plan.memory.host_bytes > 0
    assert out.plan.settings.num_gpus == 4 and out.plan.settings.sharding == "zero3"
    spec = planner.load_model(MODEL)
    assert planning.settings_kwargs(DEFAULTS.with_(sharding="zero3", offload="optimizer"), spec, "reparameterization").keys() \
        == planning.settings_kwargs(DEFAULTS, spec, "reparameterization").keys()  # one GPU: no strategy sent
    kw = planning.settings_kwargs(DEFAULTS.with_(gpu_count=2), spec, "reparameterization")
    assert (kw["num_gpus"], kw["sharding"], kw["offload"]) == (2, "ddp", None)


def test_multi_gpu_errors_name_their_field():
    out = planning.run_estimate(catalog_ref(MODEL), "lora", {}, {"num_gpus": 2, "sharding": "ddp", "offload": "optimizer"})
    assert not out.ok and out.error.field == "offload"
    out = planning.run_estimate(catalog_ref(MODEL), "lora", {}, {"num_gpus": 0})
    assert not out.ok and out.error.field == "num_gpus"
    from ui.sidebar import section_for

    assert section_for("offload") == section_for("sharding") == section_for("num_gpus") == "gpu"


def test_unmodelled_strategy_keeps_its_reason():
    plan = estimate_for(DEFAULTS.with_(method="qlora", quantization="nf4", gpu_count=2, sharding="zero3"),
                        catalog_ref(MODEL)).plan
    assert plan.memory is None and "not modelled" in planning.memory_reason(plan)
    assert planning.verdict(plan, catalog_gpu("rtx-4090")).status == "unknown" and planning.host_bytes(plan) == 0
    assert planning.memory_reason(estimate_for(DEFAULTS, catalog_ref(MODEL)).plan) is None


def test_compare_and_sweep_with_sharding():
    inputs = DEFAULTS.with_(gpu_count=2, sharding="fsdp_full_shard")
    gpu = catalog_gpu("rtx-4090")
    settings = dict(batch_size=1, seq_len=512, gradient_checkpointing=True, num_gpus=2, sharding="fsdp_full_shard")
    rows = {r.key: r for r in planning.compare(inputs, catalog_ref(MODEL), gpu, choices=["lora", "full"])}
    assert rows["full"].outcome.plan.memory == planner.estimate(MODEL, "full", **settings).memory
    s = planning.sweep(inputs, catalog_ref(MODEL), gpu, "seq_len", values=[256, 512, 1024])
    swept = planner.sweep(MODEL, "lora", r=16, batch_size=1, seq_len=[256, 512, 1024], gradient_checkpointing=True,
                          num_gpus=2, sharding="fsdp_full_shard")
    assert [o.plan.memory.device_bytes for _, o in s.points] == [int(x) for x in swept["device_bytes"]]


@pytest.mark.parametrize("inputs", [
    DEFAULTS.with_(gpu_count=2),
    DEFAULTS.with_(gpu_count=4, sharding="zero2", offload="optimizer"),
    DEFAULTS.with_(gpu_count=8, sharding="zero3", offload="optimizer+params", optimizer="sgd"),
    DEFAULTS.with_(method="full", options={}, gpu_count=8, sharding="fsdp_full_shard", offload="optimizer+params"),
    DEFAULTS.with_(gpu_count=2, sharding="fsdp_shard_grad_op", gradient_checkpointing=False),
    DEFAULTS.with_(method="qlora", options={"r": 64}, quantization="nf4", gpu_count=2, sharding="zero1"),
])
def test_python_snippet_with_several_gpus(inputs):
    plan = estimate_for(inputs, catalog_ref(MODEL)).plan
    code = planning.python_snippet(inputs, catalog_ref(MODEL), plan)
    tree = ast.parse(code)
    assert f"torchrun --nproc_per_node {inputs.gpu_count} train.py" in code
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "TrainingArguments")
    kw = {k.arg: k.value for k in call.keywords}
    if inputs.sharding.startswith("zero"):
        ds = next(n.value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "ds_config")
        cfg = ast.literal_eval(ds)
        assert cfg == planning.deepspeed_config(inputs.sharding, None if inputs.offload == "none" else inputs.offload,
                                                inputs.optimizer)
        zero = cfg["zero_optimization"]
        assert zero["stage"] == int(inputs.sharding[-1]) and ast.unparse(kw["deepspeed"]) == "ds_config"
        assert ("offload_optimizer" in zero) == (inputs.offload != "none")
        assert ("offload_param" in zero) == (inputs.offload == "optimizer+params")
        assert ast.literal_eval(kw["bf16"]) is True  # DeepSpeed's bf16 engine for a bf16 model
        if inputs.sharding == "zero3":  # ZeRO-3 partitions at load: TrainingArguments before from_pretrained
            assert code.index("args = TrainingArguments(") < code.index(".from_pretrained(")
    elif inputs.sharding.startswith("fsdp"):
        assert ast.literal_eval(kw["fsdp"]) is True
        fsdp = ast.literal_eval(kw["fsdp_config"])
        assert fsdp["version"] == 2 and fsdp["reshard_after_forward"] == (inputs.sharding == "fsdp_full_shard")
        assert fsdp.get("cpu_offload", False) == (inputs.offload != "none")
    else:
        assert "deepspeed" not in kw and "fsdp" not in kw
    if inputs.method == "qlora":  # each process loads its quantized copy onto its own GPU
        assert 'device_map={"": int(os.environ.get("LOCAL_RANK", 0))}' in code and "import os" in code


def test_python_snippet_for_one_gpu_has_no_strategy():
    code = planning.python_snippet(DEFAULTS, catalog_ref(MODEL), estimate_for(DEFAULTS, catalog_ref(MODEL)).plan)
    assert "torchrun" not in code and "deepspeed" not in code and "fsdp" not in code and "import os" not in code


def test_plan_document_with_sharding_and_time():
    inputs = DEFAULTS.with_(gpu_count=4, sharding="zero3", offload="optimizer+params", num_examples=10000, epochs=2.0,
                            price_per_gpu_hour=2.0, utilization=0.3)
    model, gpu = catalog_ref(MODEL), catalog_gpu("a100-80gb")
    plan = estimate_for(inputs, model).plan
    timed = planning.time_for_inputs(inputs, plan, gpu)
    doc = json.loads(json.dumps(planning.plan_document(inputs, model, plan, gpu, verdict(plan, gpu), timed)))
    assert doc["estimate_args"]["num_gpus"] == 4 and doc["estimate_args"]["sharding"] == "zero3"
    assert doc["estimate_args"]["offload"] == "optimizer+params"
    assert doc["gpu"]["count"] == 4 and doc["gpu"]["sharding"] == "zero3" and doc["gpu"]["offload"] == "optimizer+params"
    assert doc["verdict"]["host_bytes"] == plan.memory.host_bytes > 0
    assert doc["plan"]["memory"]["host_bytes"] == plan.memory.host_bytes
    expected = planner.training_time(plan, gpu, num_examples=10000, epochs=2.0, price_per_gpu_hour=2.0, utilization=0.3)
    assert doc["training_time"]["args"] == {"gpu": "a100-80gb", "num_examples": 10000, "epochs": 2.0,
                                            "price_per_gpu_hour": 2.0, "utilization": 0.3}
    assert doc["training_time"]["result"]["hours"] == expected.hours and doc["training_time"]["result"]["num_gpus"] == 4
    one = planning.plan_document(DEFAULTS, model, estimate_for(DEFAULTS, model).plan, gpu, None)
    assert one["gpu"]["sharding"] is None and one["training_time"] is None and "num_gpus" not in one["estimate_args"]


def test_applied_multi_gpu_plan_keeps_its_strategy():
    recs = planner.recommend(MODEL, {"rtx-4090": 4}, task="classification", num_examples=5000, seq_len=512)
    ref = catalog_ref(MODEL)
    for plan in recs:
        new = planning.applied_inputs(plan, DEFAULTS.with_(gpu_count=4), ref.spec())
        assert (new.gpu_count, new.sharding, new.offload) == (4, plan.recommendation.sharding, "none")
        got = estimate_for(new, ref).plan
        assert got.memory.device_bytes == plan.recommendation.device_bytes, plan.method
        assert planning.applied_widget_values(new, ref.spec())["sharding"] == plan.recommendation.sharding


# ----- time and cost -------------------------------------------------------------------------------------------


def test_training_time_is_the_planners():
    plan = estimate_for(DEFAULTS, catalog_ref(MODEL)).plan
    gpu = catalog_gpu("rtx-4090")
    timed = planning.training_time_for(plan, gpu, num_examples=5000, epochs=1.0, price_per_gpu_hour=None,
                                       utilization=0.4)
    assert timed.ok and timed.time == planner.training_time(plan, gpu, num_examples=5000)
    assert timed.time.utilization_source != "given"  # the default goes as None: the source is the planner's
    given = planning.training_time_for(plan, gpu, num_examples=5000, epochs=2.0, price_per_gpu_hour=1.5, utilization=0.25)
    assert given.time.utilization_source == "given" and given.time.cost_usd == pytest.approx(given.time.gpu_hours * 1.5)
    split = dict(planning.flops_split(plan.flops))
    assert sum(split.values()) == plan.flops.total_flops
    parts = dict(planning.flops_parts(plan.flops))
    assert sum(p["total"] for p in parts.values()) == plan.flops.total_flops


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_examples=0), "num_examples"), (dict(epochs=0.0), "epochs"), (dict(utilization=0.0), "utilization"),
    (dict(utilization=1.5), "utilization"), (dict(price_per_gpu_hour=-1.0), "price_per_gpu_hour"),
])
def test_training_time_errors_are_values_with_their_field(kwargs, field):
    plan = estimate_for(DEFAULTS, catalog_ref(MODEL)).plan
    args = dict(num_examples=100, epochs=1.0, price_per_gpu_hour=None, utilization=0.4) | kwargs
    timed = planning.training_time_for(plan, catalog_gpu("rtx-4090"), **args)
    assert not timed.ok and timed.error.field == field and timed.error.kind == "TrainingTimeError"


def test_training_time_on_a_custom_gpu_or_without_flops():
    plan = estimate_for(DEFAULTS, catalog_ref(MODEL)).plan
    timed = planning.training_time_for(plan, planner.custom_gpu(memory_gib=24), num_examples=10, epochs=1.0,
                                       price_per_gpu_hour=None, utilization=0.4)
    assert not timed.ok and timed.error.field == "gpu"
    vera = DEFAULTS.with_(method="vera", options={})
    plan = estimate_for(vera, catalog_ref(MODEL)).plan
    assert plan.flops is None and "vera" in planning.flops_reason(vera, catalog_ref(MODEL), plan)


# ----- measured step time (cuda reports) ---------------------------------------------------------------


def _timed_report(inputs, step_s=0.5, **estimated):
    plan = estimate_for(inputs, catalog_ref(MODEL)).plan
    case = dict(planning.validate_case(inputs, catalog_ref(MODEL)), id="cli", notes="")
    return {"schema": "peft-planner/validation-report/1",
            "environment": {"device": {"kind": "cuda", "name": "NVIDIA A100-SXM4-80GB"}},
            "inputs": case,
            "measured": {"mode": "cuda", "peak_bytes": 17_000_000_000, "step_s": step_s, "step_seconds": [2.0, step_s]},
            "estimated": {"peak_bytes": plan.memory.peak_bytes, "trainable_params": plan.trainable_params,
                          "total_params": plan.total_params, **estimated}}, plan


def test_parse_report_reads_step_time_and_device():
    report, _ = _timed_report(DEFAULTS)
    (row,) = planning.parse_report(json.dumps(report))
    assert row.step_s == 0.5 and row.device == "NVIDIA A100-SXM4-80GB" and row.bad_step_s is None
    report["measured"]["device_name"] = "NVIDIA H100 80GB HBM3"
    assert planning.parse_report(json.dumps(report))[0].device == "NVIDIA H100 80GB HBM3"
    (old,) = planning.parse_report(json.dumps(REPORT))  # a report from before step times: nothing extra
    assert old.step_s is None and old.device is None and old.bad_step_s is None and old.inputs is None


@pytest.mark.parametrize("bad", ["fast", -1, 0, True, [0.5], {"s": 1}])
def test_parse_report_ignores_a_malformed_step_time(bad):
    report, _ = _timed_report(DEFAULTS)
    report["measured"]["step_s"] = bad
    (row,) = planning.parse_report(json.dumps(report))
    assert row.step_s is None and row.device is None and row.bad_step_s == json.dumps(bad)
    assert row.measured_peak == 17_000_000_000  # the rest of the row is read as before


def test_report_match_is_the_validate_command_case():
    model = catalog_ref(MODEL)
    report, plan = _timed_report(DEFAULTS)
    rows = planning.parse_report(json.dumps(report))
    assert planning.report_match(rows, DEFAULTS, model, plan) is rows[0]
    other = DEFAULTS.with_(batch_size=2)
    other_plan = estimate_for(other, model).plan
    assert planning.report_match(rows, other, model, other_plan) is None
    r8 = DEFAULTS.with_(options={**DEFAULTS.options, "r": 8})
    assert planning.report_match(rows, r8, model, estimate_for(r8, model).plan) is None
    for changed in (dict(gradient_accumulation_steps=4), dict(mixed_precision="bf16"), dict(gpu_count=2)):
        assert planning.report_match(rows, DEFAULTS.with_(**changed), model, plan) is None, changed
    shrunk = json.loads(json.dumps(report))
    shrunk["inputs"]["config_overrides"] = {"num_hidden_layers": 2}
    assert planning.report_match(planning.parse_report(json.dumps(shrunk)), DEFAULTS, model, plan) is None
    recount = json.loads(json.dumps(report))
    recount["estimated"]["trainable_params"] += 1
    assert planning.report_match(planning.parse_report(json.dumps(recount)), DEFAULTS, model, plan) is None
    # spelled as a matrix case would spell it (dtype alias, explicit "none" quantization): the same case
    matrix = json.loads(json.dumps(report))
    matrix["inputs"].update(dtype="bf16", quantization="none", id="a")
    matrix = {"environment": report["environment"], "cases": [matrix]}
    (row,) = planning.parse_report(json.dumps(matrix))
    assert planning.report_match([row], DEFAULTS, model, plan) is row and row.device == "NVIDIA A100-SXM4-80GB"


@pytest.mark.parametrize("inputs", [
    DEFAULTS,
    DEFAULTS.with_(method="dora", options={"r": 8, "lora_dropout": 0.05}, targets=["q_proj", "o_proj"], batch_size=2,
                   optimizer="sgd", attn_implementation="eager", dtype="float16"),
    DEFAULTS.with_(method="qlora", options={"r": 64, "lora_alpha": 128.0, "use_rslora": True}, targets="all-linear",
                   gradient_checkpointing=False, optimizer="paged_adamw_8bit", quantization="fp4"),
    DEFAULTS.with_(method="ia3", options={}, targets="re:.*v_proj"),
], ids=["default", "dora", "qlora-fp4", "ia3-regex"])
def test_validate_case_is_what_the_executors_record(inputs):
    """validate_case is Case.inputs() of the command's own arguments, as executors.validate writes it."""
    import shlex

    validate = pytest.importorskip("executors.validate")
    args = validate._parser().parse_args(shlex.split(planning.validate_command(inputs, catalog_ref(MODEL)))[3:])
    recorded = validate.case_from_args(args).inputs()
    want = planning.validate_case(inputs, catalog_ref(MODEL))
    assert {k: recorded[k] for k in want} == want
