"""executors.validate: the CLI, its report, its bad-input handling, the matrix and its committed results."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from executors import validate
from executors.measure import BREAKDOWN_KEYS, Measurement
from planner import catalog

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "executors" / "matrices" / "default.json"
CPU_MATRIX = ROOT / "executors" / "matrices" / "cpu-small.json"
DOCS = ROOT / "docs" / "validation"


@pytest.fixture
def tiny_config_file(tmp_path, llama_tiny) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(llama_tiny))
    return path


def run_cli(*args: str) -> int:
    return validate.main([str(a) for a in args])


# --------------------------------------------------------------------------------------------
# The matrix


def _family(case: validate.Case) -> str:
    cfg, _ = validate.model_config(case)
    return cfg["model_type"]


def test_default_matrix_covers_families_methods_and_settings() -> None:
    _, cases = validate.load_matrix(MATRIX)
    assert len(cases) >= 40
    assert all(isinstance(c.model, str) and c.model in catalog.model_ids() for c in cases)
    assert {"llama", "mistral", "qwen2", "gpt2", "t5", "phi3"} <= {_family(c) for c in cases}
    assert {"full", "lora", "dora", "qlora", "ia3", "prefix_tuning", "prompt_tuning"} <= {c.method_name() for c in cases}
    assert {"bfloat16", "float32", "float16"} <= {c.dtype for c in cases}
    assert min(c.batch_size for c in cases) == 1 and max(c.batch_size for c in cases) == 16
    assert min(c.seq_len for c in cases) <= 128 and max(c.seq_len for c in cases) >= 8192
    assert {c.gradient_checkpointing for c in cases} == {True, False}
    assert {"eager", "sdpa"} <= {c.attn_implementation for c in cases}
    full_7b_lora = [c for c in cases if c.model == "meta-llama/Llama-2-7b-hf" and c.method == "lora"
                    and not c.config_overrides]
    assert full_7b_lora, "the matrix needs a full-size 7B LoRA case"


@pytest.mark.parametrize("path", [MATRIX, CPU_MATRIX], ids=["default", "cpu-small"])
def test_matrix_cases_are_valid_inputs(path) -> None:
    _, cases = validate.load_matrix(path)
    for case in cases:
        validate._validate_case_inputs(case)
        cfg, planner_model = validate.model_config(case)
        planned = validate.plan_case(case, planner_model)
        assert planned.peft_config is not None or planned.category in ("full", "selective"), case.id


def test_committed_fake_report_matches_the_matrix() -> None:
    report = json.loads((DOCS / "fake.json").read_text())
    _, cases = validate.load_matrix(MATRIX)
    assert report["schema"] == validate.REPORT_SCHEMA
    assert [r["id"] for r in report["cases"]] == [c.id for c in cases]
    env = report["environment"]
    for key in ("torch", "transformers", "peft", "bitsandbytes", "date", "device"):
        assert env[key], key
    assert env["device"]["kind"] == "fake"
    assert not report["summary"]["failed"]
    for r in report["cases"]:
        assert r["status"] in ("ok", "not measurable"), (r["id"], r["message"])
        if r["status"] == "ok":
            assert r["measured"]["peak_bytes"] > 0
            assert r["trainable"]["match"] is not False, r["id"]
    assert (DOCS / "fake.md").read_text().startswith("# Validation")


# --------------------------------------------------------------------------------------------
# One case from the command line


def test_cli_fake_case_writes_a_report(tiny_config_file, tmp_path, capsys) -> None:
    out = tmp_path / "report.json"
    rc = run_cli("--model", tiny_config_file, "--method", "lora", "--r", "8", "--target-modules", "q_proj,v_proj",
                 "--batch-size", "2", "--seq-len", "32", "--device", "fake", "--json", out)
    assert rc == 0
    text = capsys.readouterr().out
    assert "total (peak)" in text and "trainable parameters" in text
    report = json.loads(out.read_text())
    assert report["schema"] == validate.REPORT_SCHEMA and report["status"] == "ok"
    assert report["measured"]["peak_bytes"] > 0
    assert set(report["measured"]["breakdown"]) == set(BREAKDOWN_KEYS)
    est = report["estimated"]
    assert ("peak_bytes" in est) and (est["available"] == (est["peak_bytes"] is not None))
    if est["available"]:
        assert sum(est["breakdown"].values()) == est["peak_bytes"]
    else:
        assert est["error"].startswith("estimate unavailable: ")
    assert report["trainable"] == {"planned": 4096, "measured_peft": 4096, "planned_total": report["trainable"][
        "planned_total"], "measured_total": report["trainable"]["measured_total"], "match": True}
    assert report["merge_check"]["status"] == "not checked"
    for key in ("torch", "transformers", "peft", "bitsandbytes", "date", "device"):
        assert report["environment"][key]


def test_cli_cpu_case_checks_the_merge_identity(tiny_config_file, tmp_path) -> None:
    out = tmp_path / "report.json"
    rc = run_cli("--model", tiny_config_file, "--method", "dora", "--r", "4", "--target-modules", "q_proj,v_proj",
                 "--batch-size", "1", "--seq-len", "16", "--device", "cpu", "--json", out)
    assert rc == 0
    report = json.loads(out.read_text())
    merge = report["merge_check"]
    assert merge["status"] == "pass"
    assert merge["by_dtype"]["float32"]["rel_max_diff"] < 1e-4
    assert merge["adapter_effect"] > 10 * merge["rel_max_diff"]


def test_peft_config_the_planner_cannot_estimate_is_still_measured(tiny_config_file, tmp_path) -> None:
    peft = tmp_path / "adapter_config.json"
    peft.write_text(json.dumps({"peft_type": "LOHA", "r": 4, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}))
    out = tmp_path / "report.json"
    rc = run_cli("--model", tiny_config_file, "--peft-config", peft, "--seq-len", "16", "--device", "fake",
                 "--json", out)
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["status"] == "ok" and report["measured"]["peak_bytes"] > 0
    if not report["estimated"]["available"]:
        assert report["estimated"]["error"].startswith("estimate unavailable: ")


def test_out_of_memory_is_a_result(monkeypatch, tiny_config_file, tmp_path, capsys) -> None:
    import executors.measure as measure

    def oom(config, **kwargs):
        return Measurement(mode="cuda", peak_bytes=0, peak_phase=None, peak_step=None, phase_peaks={}, step_peaks=(),
                           breakdown=dict.fromkeys(BREAKDOWN_KEYS, 0), trainable_params=2048, total_params=149_824,
                           wall_s=0.1, settings={}, oom=True, failed_phase="step 1 backward",
                           error="does not fit: out of memory at step 1 backward after 123456789 bytes allocated")

    monkeypatch.setattr(measure, "measure_step", oom)
    out = tmp_path / "report.json"
    rc = run_cli("--model", tiny_config_file, "--r", "8", "--target-modules", "q_proj", "--device", "fake",
                 "--json", out)
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["status"] == "does not fit"
    assert "step 1 backward" in report["message"] and "123456789" in report["message"]
    assert report["measured"]["peak_bytes"] is None


def test_fake_mode_limitation_is_reported(tiny_config_file, tmp_path) -> None:
    out = tmp_path / "report.json"
    rc = run_cli("--model", tiny_config_file, "--r", "8", "--target-modules", "q_proj", "--quantization", "int8",
                 "--device", "fake", "--json", out)
    assert rc == 1  # nothing was measured: not a success
    report = json.loads(out.read_text())
    assert report["status"] == "not measurable"
    assert report["message"].startswith("not measurable in fake mode: ")


# --------------------------------------------------------------------------------------------
# Bad input: a clear error, exit 2, no report


@pytest.mark.parametrize("args, message", [
    (["--method", "no_such_method"], "no_such_method"),
    (["--quantization", "nf4", "--method", "qlora", "--dtype", "fp8"], "dtype"),
    (["--optimizer", "adamw_nope"], "optimizer"),
], ids=["unknown-method", "unknown-dtype", "unknown-optimizer"])
def test_bad_input_exits_2_without_a_report(args, message, tiny_config_file, tmp_path, capsys) -> None:
    out = tmp_path / "report.json"
    rc = run_cli("--model", tiny_config_file, "--device", "fake", "--json", out, *args)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_model_the_executor_cannot_build(tmp_path, capsys) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "not_a_transformers_model", "hidden_size": 8}))
    out = tmp_path / "report.json"
    assert run_cli("--model", cfg, "--method", "full", "--device", "fake", "--json", out) == 2
    assert "not_a_transformers_model" in capsys.readouterr().err
    assert not out.exists()
    assert run_cli("--model", tmp_path / "missing.json", "--device", "fake", "--json", out) == 2
    assert run_cli("--model", "no-such/model", "--device", "fake", "--json", out) == 2
    assert not out.exists()


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch, tiny_config_file, tmp_path, capsys) -> None:
    real = validate.importlib.util.find_spec
    monkeypatch.setattr(validate.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    out = tmp_path / "report.json"
    rc = run_cli("--model", tiny_config_file, "--method", "qlora", "--device", "fake", "--json", out)
    assert rc == 2
    assert "bitsandbytes" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(tiny_config_file, tmp_path, capsys) -> None:
    out = tmp_path / "report.json"
    assert run_cli("--model", tiny_config_file, "--device", "cuda", "--json", out) == 2
    assert "CUDA" in capsys.readouterr().err
    assert not out.exists()


def test_bad_matrix_file(tmp_path, capsys) -> None:
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"cases": [{"id": "a", "model": "openai-community/gpt2", "batch": 3}]}))
    assert run_cli("--matrix", bad, "--device", "fake") == 2
    assert "unknown keys" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Comparison


def test_components_are_mapped_side_by_side() -> None:
    memory = SimpleNamespace(
        peak_bytes=1000, peak_phase="backward", error_band=0.02,
        breakdown={"weights": 500, "quantization": 20, "gradients": 0, "optimizer": 100, "activations": 200,
                   "logits": 100, "temporaries": 80},
        phase_peaks={"forward": 900, "backward": 1000, "optimizer": 700})
    measured = SimpleNamespace(
        peak_bytes=1010, peak_phase="backward",
        breakdown={"weights": 520, "gradients": 0, "optimizer": 100, "activations": 300, "temporaries": 80,
                   "inputs": 6, "other": 4},
        phase_peaks={"forward": 900, "backward": 1010, "optimizer": 700})
    comp = validate.compare(memory, measured)
    rows = {r["component"]: r for r in comp["rows"]}
    assert rows["weights (+4-bit state)"]["estimated"] == 520 and rows["weights (+4-bit state)"]["abs_error"] == 0
    assert rows["activations (+logits)"]["estimated"] == 300 and rows["activations (+logits)"]["measured"] == 300
    assert rows["inputs + buffers"]["estimated"] is None and rows["inputs + buffers"]["comparable"] == "no"
    assert rows["total (peak)"]["abs_error"] == -10 and rows["total (peak)"]["rel_error"] == pytest.approx(-10 / 1010)
    assert comp["within_error_band"] is True
    assert [p["phase"] for p in comp["phases"]] == ["forward", "backward", "optimizer"]
    no_estimate = validate.compare(None, measured)
    assert all(r["estimated"] is None for r in no_estimate["rows"])


# --------------------------------------------------------------------------------------------
# Matrix runs


def test_cpu_matrix_subset_runs_for_real(tmp_path) -> None:
    out, md = tmp_path / "cpu.json", tmp_path / "cpu.md"
    only = "llama-tiny-qlora-nf4,gpt2-tiny-lora-c_attn,t5-tiny-lora-qv,phi3-tiny-dora-all-linear,qwen2-tiny-bitfit"
    rc = run_cli("--matrix", CPU_MATRIX, "--only", only, "--device", "cpu", "--quiet", "--json", out, "--markdown", md)
    assert rc == 0
    report = json.loads(out.read_text())
    assert sorted(r["id"] for r in report["cases"]) == sorted(only.split(","))  # in the matrix's order
    for r in report["cases"]:
        assert r["status"] == "ok" and r["checks"]["passed"], (r["id"], r["checks"])
        assert r["trainable"]["match"] is True
    merges = {r["id"]: r["merge_check"]["status"] for r in report["cases"]}
    assert merges["gpt2-tiny-lora-c_attn"] == merges["t5-tiny-lora-qv"] == "pass"
    assert merges["llama-tiny-qlora-nf4"] == "not checked" and merges["qwen2-tiny-bitfit"] == "not applicable"
    assert "| gpt2-tiny-lora-c_attn |" in md.read_text()


@pytest.mark.slow
def test_fake_7b_lora_case_of_the_matrix(tmp_path) -> None:
    out = tmp_path / "fake.json"
    rc = run_cli("--matrix", MATRIX, "--only", "llama2-7b-lora-qv-r8", "--device", "fake", "--quiet", "--json", out)
    assert rc == 0
    (case,) = json.loads(out.read_text())["cases"]
    assert case["status"] == "ok"
    assert case["trainable"]["measured_peft"] == case["trainable"]["planned"] == 4_194_304
    assert 13 * 2**30 < case["measured"]["peak_bytes"] < 20 * 2**30


# --------------------------------------------------------------------------------------------
# Step time (cuda runs)


def _measurement(mode: str, step_seconds: tuple[float, ...] = ()) -> Measurement:
    return Measurement(mode=mode, peak_bytes=1000, peak_phase="backward", peak_step=2,
                       phase_peaks={"forward": 900, "backward": 1000, "optimizer": 700}, step_peaks=(990, 1000),
                       breakdown=dict.fromkeys(BREAKDOWN_KEYS, 0), trainable_params=10, total_params=100, wall_s=1.0,
                       settings={}, step_seconds=step_seconds)


def _result(case_id: str, measured: dict) -> dict:
    case = validate.Case(id=case_id, model="meta-llama/Llama-2-7b-hf", options={"r": 8})
    return {"id": case_id, "inputs": case.inputs(), "resolved": {"device": measured["mode"], "quantization": None},
            "status": "ok", "message": None, "estimated": {"available": True, "peak_bytes": 1010},
            "measured": measured, "comparison": None, "trainable": {"planned": 10, "measured_peft": 10, "match": True},
            "merge_check": {"status": "not checked"}, "checks": {"passed": True, "problems": []}, "wall_s": 1.0}


def _report(results: list[dict], kind: str) -> dict:
    env = {"date": "2026-01-01T00:00:00+00:00", "device": {"kind": kind, "name": "NVIDIA H100 80GB HBM3"},
           "torch": "2", "transformers": "5", "peft": "0.21", "bitsandbytes": None}
    return {"schema": validate.REPORT_SCHEMA, "environment": env, "summary": validate.summarise(results),
            "cases": results}


def test_step_time_in_the_report_only_for_cuda_runs(tmp_path) -> None:
    cuda = validate._measured_dict(_measurement("cuda", (2.0, 0.25, 0.35, 0.3)))
    assert cuda["step_s"] == pytest.approx(0.3) and cuda["step_seconds"] == [2.0, 0.25, 0.35, 0.3]
    assert "device_name" in cuda  # None without a GPU: the name is a label
    one_step = validate._measured_dict(_measurement("cuda", (2.0,)))
    assert one_step["step_s"] is None and validate.step_time(_result("x", one_step)) is None
    fake = validate._measured_dict(_measurement("fake"))
    assert not {"step_s", "step_seconds", "device_name"} & set(fake)  # as in reports written before

    timed = _report([_result("timed", cuda), _result("one-step", one_step)], "cuda")
    path = tmp_path / "cuda.json"
    validate.write_json(path, timed)
    back = json.loads(path.read_text())
    assert [validate.step_time(r) for r in back["cases"]] == [pytest.approx(0.3), None]
    md = validate.markdown_summary(back)
    header = next(line for line in md.splitlines() if line.startswith("| case |"))
    assert "| step time |" in header
    row = next(line for line in md.splitlines() if line.startswith("| timed |"))
    assert "| 300.0 ms |" in row and row.count("|") == header.count("|")
    assert "Step time: " in md
    assert "step time: 300.0 ms per step" in validate.format_case(back["cases"][0])

    untimed = _report([_result("fake", fake)], "fake")
    validate.write_json(path, untimed)
    back = json.loads(path.read_text())
    assert "step_s" not in back["cases"][0]["measured"]
    md = validate.markdown_summary(back)
    assert "step time" not in md.lower()
    header = next(line for line in md.splitlines() if line.startswith("| case |"))
    row = next(line for line in md.splitlines() if line.startswith("| fake |"))
    assert row.count("|") == header.count("|") == 13
    assert "step time" not in validate.format_case(back["cases"][0])
