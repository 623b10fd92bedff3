"""OFT and BOFT: planner counts == PEFT 0.21.2's ``get_nb_trainable_parameters()``, adapter file size ==
the real ``adapter_model.safetensors``, and impossible block sizes refused like PEFT refuses them.

Golden values come from PEFT itself (``tests.reference``), on meta-device models for the catalog and
tiny CPU models for real saves.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import planner
from planner import catalog
from planner.methods.defaults import default_targets
from tests.planner.methods.test_against_peft import IDS, SMALL_IDS, check, check_defaults
from tests.reference import apply_peft, build_base, counts


def tiny_llama() -> dict:
    """Llama-2-7b's config shrunk to 2 layers x 64 hidden (untied lm_head, no biases)."""
    c = catalog.config("meta-llama/Llama-2-7b-hf")
    c.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
             vocab_size=512, max_position_embeddings=256)
    return c


def tiny_gpt2() -> dict:
    """GPT-2's config shrunk to 2 layers x 64 hidden (Conv1D layers with biases, tied lm_head)."""
    c = catalog.config("openai-community/gpt2")
    c.update(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=128)
    return c


def defaults_or_both_refuse(model_id: str, method: str, peft_type: str, peft_error: type[Exception], **options):
    """Default targets: equal counts, or (no default / a module PEFT cannot wrap / a size PEFT
    rejects) both the planner and PEFT refuse."""
    if planner.load_model(model_id).model_type not in default_targets(method):
        check_defaults(model_id, method, peft_type, **options)
        return None
    return both_or_check(model_id, method, peft_type, peft_error, **options)


def both_or_check(model_id: str, method: str, peft_type: str, peft_error: type[Exception], **options):
    try:
        planner.estimate(model_id, method=method, **options)
    except planner.MethodConfigError as err:
        with pytest.raises(peft_error):
            apply_peft(build_base(catalog.config(model_id)), {"peft_type": peft_type, **options})
        return err
    check(model_id, method, **options)
    return None


def saved_file_matches(config: dict, method: str, tmp_path, dtype: str = "float32", **options) -> planner.Plan:
    """Build the tiny model on CPU, apply PEFT, save it: counts and the file size must match."""
    plan = planner.estimate(config, method=method, dtype=dtype, **options)
    model = apply_peft(build_base(config, device="cpu", dtype=getattr(torch, dtype)), plan.peft_config)
    assert (plan.trainable_params, plan.total_params) == counts(model)
    model.save_pretrained(tmp_path)
    assert plan.adapter_file_bytes == os.path.getsize(tmp_path / "adapter_model.safetensors")
    # the adapter_config.json PEFT wrote plans to the same numbers
    again = planner.estimate(config, method=json.loads((tmp_path / "adapter_config.json").read_text()), dtype=dtype)
    assert (again.trainable_params, again.total_params, again.adapter_file_bytes) == \
        (plan.trainable_params, plan.total_params, plan.adapter_file_bytes)
    return plan


@pytest.fixture(autouse=True)
def _boft_without_extension(monkeypatch):
    """PEFT tries to compile its fbd_cuda extension at first BOFT use (~8 s, writes to ~/.cache) and,
    where that fails, silently uses boft_n_butterfly_factor=1. Tests choose explicitly."""
    import peft.tuners.boft.layer as boft_layer

    monkeypatch.setattr(boft_layer, "get_fbd_cuda", lambda: None)


@pytest.fixture
def boft_extension(monkeypatch):
    """As on a machine where fbd_cuda builds: PEFT uses the configured butterfly factor."""
    import peft.tuners.boft.layer as boft_layer

    monkeypatch.setattr(boft_layer, "get_fbd_cuda", lambda: object())


@pytest.fixture
def boft_p_on_meta(monkeypatch):
    """Each BOFT layer builds a dense (m, in, in) float32 permutation buffer boft_P (not a parameter,
    not saved; 40 GB for Llama-2-70B's defaults) in Python loops. Build it on the meta device and
    skip the permutation's values; the counted tensors and every size check stay PEFT's own code."""
    import peft.tuners.boft.layer as boft_layer

    class _MetaP:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def empty(*args, **kwargs):
            if args and isinstance(args[0], tuple) and len(args[0]) == 3:  # boft_P = torch.empty((m, in, in))
                kwargs.setdefault("device", "meta")
            return torch.empty(*args, **kwargs)

    monkeypatch.setattr(boft_layer, "torch", _MetaP())
    monkeypatch.setattr(boft_layer.BOFTLayer, "perm2mat", lambda self, idx: torch.empty((len(idx), len(idx)), device="meta"))
    monkeypatch.setattr(boft_layer.BOFTLayer, "block_butterfly_perm", lambda self, n, *args, **kwargs: torch.arange(n))


# --- OFT ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", IDS)
def test_oft_default_targets(model_id):
    err = defaults_or_both_refuse(model_id, "oft", "OFT", TypeError)
    if model_id.startswith("openai-community/gpt2"):  # c_attn is a Conv1D: PEFT's OFT has no Conv1D layer
        assert isinstance(err, planner.TargetModulesError) and "conv1d" in str(err)
    else:
        assert err is None


ALL_LINEAR_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj",
                    "query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "fc1", "fc2", "q", "k", "v", "o", "wi",
                    "wo", "query", "key", "value", "out_proj", "c_attn", "c_proj", "c_fc"]


@pytest.mark.parametrize("model_id", SMALL_IDS)
@pytest.mark.parametrize("options", [
    dict(oft_block_size=48, block_share=True, bias="oft_only", target_modules="all-linear"),
    dict(r=8, oft_block_size=0, module_dropout=0.1, coft=True, use_cayley_neumann=False, bias="all",
         target_modules=ALL_LINEAR_NAMES, layers_to_transform=[0, 1]),
])
def test_oft_variants(model_id, options):
    err = both_or_check(model_id, "oft", "OFT", TypeError, **options)
    assert (err is None) == (model_id != "openai-community/gpt2")  # GPT-2's linears are all Conv1D


def test_oft_block_size_not_dividing_is_adjusted_like_peft():
    """PEFT replaces a block size (or r) that does not divide in_features by the nearest divisor, with a warning."""
    plan = check("HuggingFaceTB/SmolLM2-135M", "oft", oft_block_size=50, target_modules=["q_proj", "down_proj"])
    assert any("oft_block_size=50 does not divide 576" in n and "adjusts it to 48" in n for n in plan.notes)
    assert any("does not divide 1536" in n for n in plan.notes)
    plan = check("HuggingFaceTB/SmolLM2-135M", "oft", r=7, target_modules=["q_proj"])
    assert any("r=7 does not divide 576" in n and "adjusts it to 6" in n for n in plan.notes)
    check("HuggingFaceTB/SmolLM2-135M", "oft", oft_block_size=1000, target_modules=["q_proj"])  # > in_features


def test_oft_packed_upper_triangle():
    """oft_R stores each block's strict upper triangle: (r, b(b-1)/2); block_share keeps one block."""
    plan = check("meta-llama/Llama-2-7b-hf", "oft", oft_block_size=32, target_modules=["q_proj"])
    assert plan.trainable_params == 32 * (4096 // 32) * (32 * 31 // 2)
    plan = check("meta-llama/Llama-2-7b-hf", "oft", oft_block_size=32, block_share=True, target_modules=["q_proj"])
    assert plan.trainable_params == 32 * (32 * 31 // 2)


@pytest.mark.parametrize("config,options", [
    (tiny_llama, dict()),
    (tiny_llama, dict(r=4, target_modules=["q_proj", "embed_tokens", "down_proj"], bias="all")),
    (tiny_llama, dict(oft_block_size=16, block_share=True, target_modules="all-linear", dtype="bfloat16")),
    (tiny_llama, dict(oft_block_size=8, target_modules=["v_proj", "lm_head"], modules_to_save=["model.norm"])),
])
def test_oft_adapter_file(config, options, tmp_path):
    saved_file_matches(config(), "oft", tmp_path, **options)


@pytest.mark.parametrize("options,field", [
    (dict(r=-1), "r"),
    (dict(r=0, oft_block_size=0), "r"),
    (dict(r=8, oft_block_size=16), "r"),
    (dict(oft_block_size=-8), "oft_block_size"),
    (dict(module_dropout=1.0), "module_dropout"),
    (dict(bias="lora_only"), "bias"),
    (dict(block_size=8), "block_size"),  # unknown option
    (dict(target_modules=["mlp"]), "target_modules"),  # a container
])
def test_oft_bad_options(options, field):
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate("meta-llama/Llama-2-7b-hf", method="oft", **options)
    assert err.value.field == field


def test_oft_refuses_conv1d_like_peft():
    with pytest.raises(planner.TargetModulesError, match="conv1d module; oft can adapt only embedding, linear"):
        planner.estimate("openai-community/gpt2", method="oft", target_modules=["c_attn"])
    with pytest.raises(TypeError, match="not supported"):
        apply_peft(build_base(catalog.config("openai-community/gpt2")), {"peft_type": "OFT", "target_modules": ["c_attn"]})


# --- BOFT --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", IDS)
def test_boft_default_targets(model_id, boft_p_on_meta):
    err = defaults_or_both_refuse(model_id, "boft", "BOFT", TypeError)
    assert (err is None) == (not model_id.startswith("openai-community/gpt2"))


@pytest.mark.parametrize("model_id", SMALL_IDS)
@pytest.mark.parametrize("options", [
    dict(boft_block_num=16, boft_block_size=0, boft_dropout=0.1, bias="boft_only", target_modules=ALL_LINEAR_NAMES,
         layers_to_transform=[0, 1]),
])
def test_boft_variants(model_id, options, boft_p_on_meta):
    err = both_or_check(model_id, "boft", "BOFT", TypeError, **options)
    assert (err is None) == (model_id != "openai-community/gpt2")


@pytest.mark.parametrize("model_id,options,refused", [
    ("HuggingFaceTB/SmolLM2-135M", dict(boft_block_size=4, boft_n_butterfly_factor=2, target_modules="all-linear"), False),
    ("tiiuae/falcon-7b", dict(boft_block_num=16, boft_block_size=0, boft_n_butterfly_factor=3, bias="all"), False),
    ("microsoft/Phi-3-mini-4k-instruct", dict(boft_block_size=8, boft_n_butterfly_factor=4,
                                              target_modules=["qkv_proj", "down_proj"]), False),
    # 576 = 2**6 x 9: 9 blocks of 64 are odd, 576 / (4 x 2**7) is not whole
    ("HuggingFaceTB/SmolLM2-135M", dict(boft_block_size=64, boft_n_butterfly_factor=2, target_modules=["q_proj"]), True),
    ("HuggingFaceTB/SmolLM2-135M", dict(boft_block_size=4, boft_n_butterfly_factor=8, target_modules=["q_proj"]), True),
])
def test_boft_butterfly(model_id, options, refused, boft_extension, boft_p_on_meta):
    """With the fbd_cuda extension, boft_R is (m, N, b, b) for m butterfly factors, and PEFT's
    factor-dependent size rules apply."""
    err = both_or_check(model_id, "boft", "BOFT", ValueError, **options)
    assert (err is not None) == refused


def test_boft_without_extension_is_factor_one(boft_p_on_meta):
    """Where fbd_cuda cannot be built, PEFT silently counts boft_n_butterfly_factor=1 (the plan notes it)."""
    plan = planner.estimate("HuggingFaceTB/SmolLM2-135M", method="boft", boft_n_butterfly_factor=2, target_modules=["q_proj"])
    assert any("fbd_cuda" in n for n in plan.notes)
    one = check("HuggingFaceTB/SmolLM2-135M", "boft", boft_n_butterfly_factor=1, target_modules=["q_proj"])
    ref = counts(apply_peft(build_base(catalog.config("HuggingFaceTB/SmolLM2-135M")), plan.peft_config))
    assert ref == (one.trainable_params, one.total_params)
    assert plan.trainable_params - one.trainable_params == 30 * (576 // 4) * 4 * 4  # one more factor per module


@pytest.mark.parametrize("options", [
    dict(target_modules="all-linear", bias="boft_only"),
    dict(boft_block_num=4, target_modules=["q_proj", "lm_head"], dtype="bfloat16"),
])
def test_boft_adapter_file(options, tmp_path):
    saved_file_matches(tiny_llama(), "boft", tmp_path, **options)


def test_boft_adapter_file_butterfly(boft_extension, tmp_path):
    saved_file_matches(tiny_llama(), "boft", tmp_path, boft_block_num=8, boft_n_butterfly_factor=3,
                       target_modules="all-linear")


@pytest.mark.parametrize("options,field,peft_match", [
    (dict(boft_block_size=5), "boft_block_size", "must be divisible by boft_block_size"),
    (dict(boft_block_num=5, boft_block_size=0), "boft_block_num", "must be divisible by boft_block_num"),
    (dict(boft_block_num=4, boft_block_size=0, boft_n_butterfly_factor=4), "boft_block_num", "Invalid combination"),
    (dict(boft_block_size=6, boft_n_butterfly_factor=7), "boft_block_size", "Invalid combination"),  # 576 % (6 * 2**6)
])
def test_boft_impossible_sizes(options, field, peft_match, boft_extension):
    model_id = "HuggingFaceTB/SmolLM2-135M"
    options = dict(options, target_modules=["q_proj"])
    with pytest.raises(planner.MethodConfigError, match="q_proj") as err:
        planner.estimate(model_id, method="boft", **options)
    assert err.value.field == field
    assert "work for in_features 576" in str(err.value)
    with pytest.raises(ValueError, match=peft_match):
        apply_peft(build_base(catalog.config(model_id)), {"peft_type": "BOFT", **options})


@pytest.mark.parametrize("options,field", [
    (dict(boft_block_size=0), "boft_block_size"),
    (dict(boft_block_num=4, boft_block_size=4), "boft_block_size"),
    (dict(boft_n_butterfly_factor=0), "boft_n_butterfly_factor"),
    (dict(boft_dropout=-0.1), "boft_dropout"),
    (dict(target_modules=["embed_tokens"]), "target_modules"),  # BOFT has no Embedding layer
])
def test_boft_bad_options(options, field):
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate("meta-llama/Llama-2-7b-hf", method="boft", **options)
    assert err.value.field == field
