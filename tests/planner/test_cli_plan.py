"""``python -m planner fit | recommend | gpus``: output and exit codes (logic is tested in
test_solve.py / test_recommend.py; here the command line around it)."""

from __future__ import annotations

import json

import pytest

import planner
from planner.cli import _gpu_counts, main


def test_fit_reports_verdict_largest_values_and_smallest_gpu(capsys):
    rc = main(["fit", "--model", "Qwen/Qwen2.5-0.5B", "--method", "full", "--seq-len", "1024", "--gpu", "t4"])
    out = capsys.readouterr().out
    plan = planner.estimate("Qwen/Qwen2.5-0.5B", "full", seq_len=1024)
    expect_fit = planner.fits(plan, "t4")
    assert rc == (0 if expect_fit else 1)
    assert "largest batch size" in out and "largest sequence length" in out
    largest = planner.solve_max("Qwen/Qwen2.5-0.5B", "full", gpu="t4", parameter="batch_size", seq_len=1024)
    assert f"largest batch size" in out and str(largest) in out
    assert "smallest catalog GPU that fits" in out


def test_fit_json_is_consistent_with_the_api(capsys):
    rc = main(["fit", "--model", "meta-llama/Llama-3.1-8B", "--method", "qlora", "--r", "16", "--target", "all-linear",
               "--seq-len", "2048", "--gradient-checkpointing", "--gpu", "rtx-4090", "--solve", "batch_size", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["fits"] is True
    assert data["largest"]["batch_size"] == planner.solve_max(
        "meta-llama/Llama-3.1-8B", "qlora", gpu="rtx-4090", parameter="batch_size", r=16, target_modules="all-linear",
        seq_len=2048, gradient_checkpointing=True)
    assert data["device_bytes"] <= data["usable_memory_bytes"]


def test_fit_unknown_gpu_lists_the_catalog(capsys):
    rc = main(["fit", "--model", "openai-community/gpt2", "--gpu", "rtx-9999"])
    err = capsys.readouterr().err
    assert rc == 2 and "rtx-4090" in err


def test_recommend_prints_ranked_plans_with_reasons(capsys):
    rc = main(["recommend", "--model", "meta-llama/Llama-2-13b-hf", "--gpu", "rtx-4090", "--task", "classification",
               "--num-examples", "5000"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("1. qlora")
    assert "rejected: full @ rtx-4090" in out


def test_recommend_korean_and_json(capsys):
    assert main(["recommend", "--model", "openai-community/gpt2", "--gpu", "t4", "--task", "qa", "--num-examples", "800",
                 "--lang", "ko"]) == 0
    assert "마이크로 배치" in capsys.readouterr().out
    assert main(["recommend", "--model", "openai-community/gpt2", "--gpu", "t4", "--task", "qa", "--num-examples", "800",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plans"][0]["recommendation"]["rank"] == 1


@pytest.mark.parametrize("argv,match", [
    (["--task", "poetry", "--num-examples", "10"], "unknown task 'poetry'"),
    (["--task", "qa", "--num-examples", "0"], "num_examples"),
    (["--task", "qa", "--num-examples", "10", "--gpu", "nope"], "not in the GPU catalog"),
])
def test_recommend_bad_input(capsys, argv, match):
    base = ["recommend", "--model", "openai-community/gpt2"] + ([] if "--gpu" in argv else ["--gpu", "t4"])
    assert main(base + argv) == 2
    assert match.lower() in capsys.readouterr().err.lower()


def test_gpu_counts():
    assert _gpu_counts(["rtx-4090x2", "t4", "t4"]) == {"rtx-4090": 2, "t4": 2}
    assert _gpu_counts(["rtx-4090"]) == {"rtx-4090": 1}


def test_gpus_lists_the_catalog(capsys):
    assert main(["gpus"]) == 0
    out = capsys.readouterr().out
    assert all(g.id in out for g in planner.gpus())
