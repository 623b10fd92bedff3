"""FourierFT: planner counts == PEFT 0.21.2's ``get_nb_trainable_parameters()``, adapter file size ==
the real ``adapter_model.safetensors`` (only the spectra are saved; the frequency positions are not),
and n_frequency limits refused like PEFT refuses them. Golden values come from PEFT itself.
"""

from __future__ import annotations

import pytest
import torch

import planner
from planner import catalog
from tests.planner.methods.test_against_peft import IDS, SMALL_IDS, check
from tests.planner.methods.test_oft import (
    ALL_LINEAR_NAMES, both_or_check, defaults_or_both_refuse, saved_file_matches, tiny_gpt2, tiny_llama,
)
from tests.reference import apply_peft, build_base


@pytest.fixture(autouse=True)
def cheap_positions(monkeypatch):
    """PEFT draws each module's frequency positions with ``torch.randperm(out * in)`` (235M int64 for a
    70B MLP, never counted or saved). Hand it a short range instead; ``[:n_frequency]`` and everything
    counted stay PEFT's own code (n_frequency must stay at most 4096 here)."""
    monkeypatch.setattr(torch, "randperm", lambda n, *args, generator=None, **kwargs: torch.arange(min(n, 4096)))


@pytest.mark.parametrize("model_id", IDS)
def test_fourierft_default_targets(model_id):
    assert defaults_or_both_refuse(model_id, "fourierft", "FOURIERFT", TypeError) is None


@pytest.mark.parametrize("model_id", SMALL_IDS)
@pytest.mark.parametrize("options", [
    dict(n_frequency=500, bias="fourier_only", target_modules="all-linear"),
    dict(n_frequency=100, n_frequency_pattern={"(q|v)_proj": 33, "attn.c_proj": 7, "wo": 5, "value": 9, "dense": 3},
         bias="all", target_modules=ALL_LINEAR_NAMES, layers_to_transform=[0, 1]),
])
def test_fourierft_variants(model_id, options):
    assert both_or_check(model_id, "fourierft", "FOURIERFT", TypeError, **options) is None


def test_fourierft_one_vector_per_module():
    plan = check("meta-llama/Llama-2-7b-hf", "fourierft", n_frequency=2000, target_modules=["q_proj", "v_proj"])
    assert plan.trainable_params == 64 * 2000


def test_fourierft_pattern_full_path_key():
    """A key with no ``.`` boundary before it (a full module path) only matches that module exactly."""
    plan = check("HuggingFaceTB/SmolLM2-135M", "fourierft", target_modules=["q_proj"], n_frequency=10,
                 n_frequency_pattern={"model.layers.0.self_attn.q_proj": 100, "layers.1.self_attn.q_proj": 50})
    assert plan.trainable_params == 100 + 50 + 28 * 10


@pytest.mark.parametrize("config,options", [
    (tiny_llama, dict()),
    (tiny_llama, dict(n_frequency=64 * 64, target_modules=["q_proj", "lm_head"], n_frequency_pattern={"lm_head": 9})),
    (tiny_gpt2, dict(n_frequency=50, target_modules=["c_attn", "c_fc"], bias="fourier_only")),
    (tiny_gpt2, dict(n_frequency=20, target_modules="all-linear", bias="all", dtype="bfloat16")),
])
def test_fourierft_adapter_file(config, options, tmp_path):
    saved_file_matches(config(), "fourierft", tmp_path, **options)


@pytest.mark.parametrize("options,field", [
    (dict(n_frequency=64 * 64 + 1, target_modules=["q_proj"]), "n_frequency"),
    (dict(n_frequency=10, n_frequency_pattern={"q_proj": 64 * 64 + 1}, target_modules=["q_proj"]), "n_frequency_pattern"),
])
def test_fourierft_too_many_frequencies(options, field):
    with pytest.raises(planner.MethodConfigError, match=r"exceeds in_features x out_features = 4096 of 'model.layers.0") as err:
        planner.estimate(tiny_llama(), method="fourierft", **options)
    assert err.value.field == field
    with pytest.raises(ValueError, match="less than or equal to the product"):
        apply_peft(build_base(tiny_llama(), device="cpu"), {"peft_type": "FOURIERFT", **options})


@pytest.mark.parametrize("options,field", [
    (dict(n_frequency=0), "n_frequency"),
    (dict(n_frequency_pattern={"q_proj": 0}), "n_frequency_pattern"),
    (dict(n_frequency_pattern={"(q_proj": 10}), "n_frequency_pattern"),
    (dict(bias="lora_only"), "bias"),
    (dict(frequencies=10), "frequencies"),
    (dict(target_modules=["embed_tokens"]), "target_modules"),  # FourierFT wraps Linear / Conv1D only
])
def test_fourierft_bad_options(options, field):
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate("meta-llama/Llama-2-7b-hf", method="fourierft", **options)
    assert err.value.field == field


def test_fourierft_refuses_embeddings_like_peft():
    with pytest.raises(planner.TargetModulesError, match="embedding module; fourierft can adapt only conv1d, linear"):
        planner.estimate(tiny_llama(), method="fourierft", target_modules=["embed_tokens"])
    with pytest.raises(TypeError, match="not supported"):
        apply_peft(build_base(tiny_llama()), {"peft_type": "FOURIERFT", "target_modules": ["embed_tokens"]})


def test_fourierft_from_catalog_config_mapping():
    plan = planner.estimate(catalog.config("google-t5/t5-base"), method={"peft_type": "FOURIERFT", "n_frequency": 300})
    assert plan.trainable_params == 2 * (12 + 12 + 12) * 300  # q, v in encoder self, decoder self and cross attention
