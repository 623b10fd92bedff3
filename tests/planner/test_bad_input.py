"""Bad input raises a specific PlannerError naming the field (never a silent wrong number)."""

from __future__ import annotations

import json

import pytest

import planner
from planner import catalog
from planner.cli import main


@pytest.mark.parametrize("options,field", [
    (dict(r=0), "r"),
    (dict(r=-4), "r"),
    (dict(r=5000, target_modules=["q_proj"]), "r"),  # rank above min(in, out) = 4096
    (dict(lora_dropout=1.5), "lora_dropout"),
    (dict(target_modules=["nope"]), "target_modules"),
    (dict(target_modules=["mlp"]), "target_modules"),  # a container, not a layer
    (dict(target_modules="all-linear", layers_to_transform=[0]), "layers_to_transform"),
    (dict(use_dora=True, lora_bias=True), "use_dora"),
    (dict(rank=8), "rank"),  # unknown option: typo of r
    (dict(target_modules="(unclosed"), "target_modules"),
])
def test_lora_bad_options(options, field):
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate("meta-llama/Llama-2-7b-hf", method="lora", **options)
    assert err.value.field == field


def test_unknown_target_lists_module_names():
    with pytest.raises(planner.TargetModulesError, match="q_proj, k_proj, v_proj, o_proj, gate_proj"):
        planner.estimate("meta-llama/Llama-2-7b-hf", method="lora", target_modules=["query"])


def test_unknown_model_id_suggests():
    with pytest.raises(planner.UnknownModelError, match="Llama-2-7b-hf"):
        planner.estimate("meta-llama/Llama-2-7b")


def test_unknown_method():
    with pytest.raises(planner.MethodConfigError, match="unknown method"):
        planner.estimate("openai-community/gpt2", method="lorax")


def test_unsupported_model_type():
    with pytest.raises(planner.UnsupportedModelError, match="supported: bert"):
        planner.estimate({"model_type": "mamba", "hidden_size": 8})


def test_partial_config_names_missing_key():
    cfg = catalog.config("meta-llama/Llama-2-7b-hf")
    del cfg["num_hidden_layers"]
    with pytest.raises(planner.ConfigError) as err:
        planner.estimate(cfg)
    assert err.value.field == "num_hidden_layers"


@pytest.mark.parametrize("key,value", [("hidden_size", -1), ("hidden_size", "4096"), ("num_key_value_heads", 3)])
def test_malformed_config_values(key, value):
    cfg = catalog.config("meta-llama/Llama-2-7b-hf") | {key: value}
    with pytest.raises(planner.ConfigError):
        planner.estimate(cfg)


def test_malformed_json_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{not json")
    with pytest.raises(planner.ConfigError, match="not valid JSON"):
        planner.estimate(str(p))


def test_peft_mapping_without_peft_type():
    with pytest.raises(planner.MethodConfigError, match="peft_type"):
        planner.estimate("openai-community/gpt2", method={"r": 8})


def test_peft_mapping_ignores_bookkeeping_keys(tmp_path):
    mapping = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "x",
               "init_lora_weights": True, "task_type": "CAUSAL_LM"}
    plan = planner.estimate("meta-llama/Llama-2-7b-hf", method=mapping)
    assert plan.trainable_params == 4_194_304  # seed exercise 1
    assert "init_lora_weights" in plan.ignored_options
    assert plan.method_family == "lora"


def test_alias_keeps_registered_family():
    plan = planner.estimate("meta-llama/Llama-2-7b-hf", method="qlora", target_modules=["q_proj"])
    assert (plan.method, plan.method_family) == ("qlora", "lora")


def test_cli_estimate_json_and_errors(tmp_path, capsys):
    assert main(["estimate", "--model", "meta-llama/Llama-2-7b-hf", "--method", "lora", "--r", "8",
                 "--target", "q_proj,v_proj", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trainable_params"] == 4_194_304
    adapter = tmp_path / "adapter_config.json"
    adapter.write_text(json.dumps({"peft_type": "LORA", "r": 64, "target_modules": ["q_proj", "v_proj"]}))
    assert main(["estimate", "--model", "huggyllama/llama-7b", "--peft-config", str(adapter), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 33_554_432
    assert main(["estimate", "--method", "lora", "--r", "0"]) == 2
    assert "r: rank r must be a positive integer" in capsys.readouterr().err
    assert main(["models"]) == 0 and "meta-llama/Llama-2-7b-hf" in capsys.readouterr().out


def test_planner_does_not_import_heavy_libraries():
    import subprocess
    import sys

    code = ("import sys, planner; planner.estimate('meta-llama/Llama-2-7b-hf'); "
            "print([m for m in ('torch','transformers','peft','streamlit','plotly') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
