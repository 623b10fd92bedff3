"""Bottleneck adapters (Houlsby = DoubleSeqBnConfig, Pfeiffer = SeqBnConfig), counted like the
``adapters`` library 1.3.0. PEFT has none, so the oracles are:

1. golden numbers derived here from the library's construction (``adapters/methods/modeling.py``
   ``Adapter.__init__`` lines 60-117: optional LayerNorm(d), ``nn.Linear(d, m)``, activation,
   ``nn.Linear(m, d)``, optional scaling / LayerNorm / gate; ``adapters/methods/bottleneck.py``
   ``BottleneckLayer.add_adapter`` lines 69-116: ``m = int(hidden_size // reduction_factor)``);
2. numbers measured once with the real library (adapters 1.3.0 on transformers 4.57.6, the
   release it pins; it cannot be installed next to transformers 5 in this venv): ``add_adapter``
   + ``train_adapter`` on small models, parameter counts and ``save_adapter(...,
   use_safetensors=True, with_head=False)`` file sizes;
3. the same modules built with plain torch, attached to the real transformers model (meta
   device), compared with torch's ``numel`` and names.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import planner
from planner import catalog
from planner.adapter_file import safetensors_file_bytes
from planner.api import plan_method
from tests.planner.methods.test_against_peft import IDS, SMALL_IDS
from tests.reference import build_base, total_params

# --- 1. golden numbers from the formula --------------------------------------------------------


def one_adapter(d: int, m: int) -> int:
    """Down Linear(d, m) and up Linear(m, d), both with bias (modeling.py lines 81 and 97)."""
    return (d * m + m) + (m * d + d)


def test_bert_base_pfeiffer_and_houlsby_goldens():
    """bert-base: d = 768, reduction_factor 16 -> m = 48; 12 layers.
    Pfeiffer (SeqBnConfig: output_adapter only) = 12 x 74,544 = 894,528;
    Houlsby (DoubleSeqBnConfig: mh_adapter + output_adapter) = 1,789,056.
    The same numbers came out of the real adapters 1.3.0 on BertModel(BertConfig())."""
    per = one_adapter(768, 768 // 16)
    assert per == 74_544
    pf = planner.estimate("google-bert/bert-base-uncased", method="pfeiffer")
    ho = planner.estimate("google-bert/bert-base-uncased", method="houlsby")
    assert pf.added_params == 12 * per == 894_528
    assert ho.added_params == 24 * per == 1_789_056
    # adapters docs (docs/overview.md): adapters take "~3MB per task instead of ~440MB" for BERT-base
    assert 3.0e6 < pf.adapter_file_bytes < 4.0e6
    # train_adapter leaves BertForMaskedLM's head transform trainable: dense 768x768+768, LayerNorm 2x768
    assert pf.trainable_params == 894_528 + (768 * 768 + 768) + 2 * 768


def test_llama_7b_houlsby_golden():
    """LLaMA-7B: d = 4096, m = 256, 32 layers x 2 adapters x (2 x 4096 x 256 + 256 + 4096)."""
    plan = planner.estimate("huggyllama/llama-7b", method="double_seq_bn")
    assert plan.added_params == plan.trainable_params == 64 * one_adapter(4096, 256) == 134_496_256


def test_variant_options_golden_t5_base():
    """t5-base (12 encoder + 12 decoder layers, ids 0..23), Houlsby with cross_adapter, ln_after,
    learned scaling, reduction {"0": 4, "default": 32}, leave_out [23]:
    layer 0: 2 adapters with m = 192; encoder 1..11: 2 adapters, m = 24; decoder 12..22: 3 adapters."""
    d = 768
    extra = 2 * d + 1  # ln_after LayerNorm(d) + learned scaling (1)
    small = one_adapter(d, 24) + extra
    expected = 2 * (one_adapter(d, 192) + extra) + 11 * 2 * small + 11 * 3 * small
    plan = planner.estimate("google-t5/t5-base", method="bottleneck", variant="houlsby", cross_adapter=True, ln_after=True,
                            scaling="learned", reduction_factor={"0": 4, "default": 32}, leave_out=[23])
    assert plan.added_params == plan.trainable_params == expected


# --- 2. measured with the real adapters library -----------------------------------------------

TINY = {
    "bert": dict(model_type="bert", vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64),
    "roberta": dict(model_type="roberta", vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=64),
    "gpt2": dict(model_type="gpt2", vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "llama": dict(model_type="llama", vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64),
    "mistral": dict(model_type="mistral", vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=64),
    "t5": dict(model_type="t5", vocab_size=128, d_model=32, d_kv=8, num_layers=2, num_decoder_layers=3, num_heads=4,
               d_ff=64),
}
OPTIONS = {
    "seq_bn": dict(variant="seq_bn"),  # SeqBnConfig()
    "double_seq_bn": dict(variant="double_seq_bn"),  # DoubleSeqBnConfig()
    # DoubleSeqBnConfig(reduction_factor={"0": 4, "default": 8}, leave_out=[1], ln_after=True, use_gating=True,
    #                   scaling="learned", cross_adapter=True, non_linearity="gelu")
    "custom": dict(variant="double_seq_bn", reduction_factor={"0": 4, "default": 8}, leave_out=[1], ln_after=True,
                   use_gating=True, scaling="learned", cross_adapter=True, non_linearity="gelu"),
    # DoubleSeqBnConfig(reduction_factor={"0": 4, "default": 8}, leave_out=[1], ln_before=True, ln_after=True,
    #                   non_linearity="prelu", use_gating=True, scaling="channel", cross_adapter=True)
    "aliased": dict(variant="double_seq_bn", reduction_factor={"0": 4, "default": 8}, leave_out=[1], ln_before=True,
                    ln_after=True, non_linearity="prelu", use_gating=True, scaling="channel", cross_adapter=True),
}
#: (family, options) -> (adapter parameters, trainable parameters after train_adapter, bytes of
#: adapter.safetensors or None where save_file refuses the shared tensors of ln_before / prelu),
#: measured with adapters 1.3.0 + transformers 4.57.6 (AutoModelFor{MaskedLM,CausalLM,Seq2SeqLM},
#: adapters.init, add_adapter("default", config), train_adapter("default")).
MEASURED = {
    ("bert", "seq_bn"): (324, 1444, 2272), ("bert", "double_seq_bn"): (648, 1768, 4632),
    ("bert", "custom"): (1300, 2420, 7464), ("bert", "aliased"): (1492, 2612, None),
    ("roberta", "seq_bn"): (324, 1444, 2296), ("roberta", "double_seq_bn"): (648, 1768, 4680),
    ("roberta", "custom"): (1300, 2420, 7520), ("roberta", "aliased"): (1492, 2612, None),
    ("gpt2", "seq_bn"): (324, 324, 2304), ("gpt2", "double_seq_bn"): (648, 648, 4640),
    ("gpt2", "custom"): (1300, 1300, 7480), ("gpt2", "aliased"): (1492, 1492, None),
    ("llama", "seq_bn"): (324, 324, 2296), ("llama", "double_seq_bn"): (648, 648, 4624),
    ("llama", "custom"): (1300, 1300, 7456), ("llama", "aliased"): (1492, 1492, None),
    ("mistral", "seq_bn"): (324, 324, 2296), ("mistral", "double_seq_bn"): (648, 648, 4624),
    ("mistral", "custom"): (1300, 1300, 7456), ("mistral", "aliased"): (1492, 1492, None),
    ("t5", "seq_bn"): (810, 810, 5608), ("t5", "double_seq_bn"): (1620, 1620, 11224),
    ("t5", "custom"): (4810, 4810, 30872), ("t5", "aliased"): (5866, 5866, None),
}


@pytest.mark.parametrize("family,options", list(MEASURED))
def test_matches_the_real_adapters_library(family, options):
    added, trainable, file_bytes = MEASURED[(family, options)]
    plan = planner.estimate(TINY[family], method="bottleneck", **OPTIONS[options])
    assert (plan.added_params, plan.trainable_params) == (added, trainable)
    if file_bytes is not None:
        # adapters' save_file writes no metadata; the planner's names must give the same header
        mplan, *_ = plan_method(planner.load_model(TINY[family]), "bottleneck", **OPTIONS[options])
        items = [(t.saved_name, t.shape, "float32") for t in mplan.new_tensors]
        assert safetensors_file_bytes(items, metadata=None) == file_bytes


# --- 3. the same modules in plain torch on the real model --------------------------------------


class TorchAdapter(nn.Module):
    """adapters 1.3.0 ``Adapter.__init__`` (modeling.py 40-117), same attribute order and names."""

    def __init__(self, d: int, m: int, cfg: dict):
        from transformers.activations import get_activation

        super().__init__()
        seq = []
        if cfg["ln_before"]:
            self.adapter_norm_before = nn.LayerNorm(d)
            seq.append(self.adapter_norm_before)
        seq.append(nn.Linear(d, m))
        act = nn.Module()
        act.f = nn.Identity() if cfg["non_linearity"] == "leakyrelu" else get_activation(cfg["non_linearity"])
        self.non_linearity = act
        seq.append(act)
        self.adapter_down = nn.Sequential(*seq)
        self.adapter_up = nn.Linear(m, d)
        if cfg["scaling"] == "learned":
            self.scaling = nn.Parameter(torch.ones(1))
        elif cfg["scaling"] == "channel":
            self.scaling = nn.Parameter(torch.ones(d))
        if cfg["ln_after"]:
            self.adapter_norm_after = nn.LayerNorm(d)
        if cfg["use_gating"]:
            self.gate = nn.Linear(d, 1)


def attach_torch_adapters(model: nn.Module, mplan) -> list[str]:
    """Build one TorchAdapter per planned location and hang it where adapters does
    (``<holder>.adapters.default``); returns the new parameter names."""
    info = mplan.extra["bottleneck"]
    before = {n for n, _ in model.named_parameters()}
    with torch.device("meta"):
        for loc in info["locations"]:
            holder = loc["module"].removesuffix(".adapters.default")
            parent_path, _, leaf = holder.rpartition(".")
            parent = model.get_submodule(parent_path)
            if not hasattr(parent, leaf):  # attention_adapters / output_adapters: created by adapters' mixins
                parent.add_module(leaf, nn.Module())
            target = getattr(parent, leaf)
            if not hasattr(target, "adapters"):
                target.add_module("adapters", nn.ModuleDict())
            target.adapters["default"] = TorchAdapter(info["hidden_size"], loc["bottleneck"], info["config"])
    return [n for n, _ in model.named_parameters() if n not in before]


def train_adapter_trainable(model: nn.Module, new: list[str]) -> int:
    """adapters' ``train_adapter``: freeze ``base_model`` (model_mixin.py ``freeze_model``) and the
    output embeddings (``freeze_embeddings``), train the adapters; other head parameters stay trainable."""
    frozen = {id(p) for p in model.base_model.parameters()}
    out = model.get_output_embeddings()
    frozen |= {id(p) for p in out.parameters()} if out is not None else set()
    params = dict(model.named_parameters())
    return sum(p.numel() for n, p in params.items() if n in new or id(p) not in frozen)


def check_torch(model_id: str, method: str, **options):
    spec = planner.load_model(model_id)
    mplan, *_ = plan_method(spec, method, **options)
    plan = planner.estimate(model_id, method=method, **options)
    model = build_base(catalog.config(model_id))
    base_total = total_params(model)
    new = attach_torch_adapters(model, mplan)
    params = dict(model.named_parameters())
    assert {n: tuple(params[n].shape) for n in new} == {t.saved_name: t.shape for t in mplan.new_tensors}
    assert plan.added_params == sum(params[n].numel() for n in new)
    assert plan.total_params == base_total + plan.added_params == total_params(model)
    assert plan.trainable_params == train_adapter_trainable(model, new)
    return plan


@pytest.mark.parametrize("model_id", IDS)
def test_houlsby_every_catalog_model_in_torch(model_id):
    plan = check_torch(model_id, "houlsby")
    spec = planner.load_model(model_id)
    layers = spec.num_layers + spec.num_encoder_layers
    assert plan.added_params == 2 * layers * one_adapter(spec.hidden_size, spec.hidden_size // 16)


@pytest.mark.parametrize("model_id", SMALL_IDS)
@pytest.mark.parametrize("method,options", [
    ("pfeiffer", {}),
    ("bottleneck", dict(variant="houlsby", reduction_factor={"0": 4, "1": 64, "default": 32}, leave_out=[2], ln_before=True,
                        ln_after=True, non_linearity="prelu", use_gating=True, scaling="learned", cross_adapter=True)),
    ("seq_bn", dict(reduction_factor=0.5, non_linearity="xielu", scaling="channel", mh_adapter=True)),
    ("bottleneck", dict(reduction_factor=1e9, non_linearity="leakyrelu")),  # m = int(d // 1e9) = 0 -> 1
])
def test_variants_in_torch(model_id, method, options):
    check_torch(model_id, method, **options)


def test_non_native_model_type_is_noted():
    plan = planner.estimate("Qwen/Qwen2.5-0.5B", method="pfeiffer")
    assert any("plugin interface" in n for n in plan.notes)
    assert plan.peft_config is None and plan.peft_type is None


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id,method,options,field", [
    ("google-bert/bert-base-uncased", "bottleneck", dict(variant="lora"), "variant"),
    ("google-bert/bert-base-uncased", "bottleneck", dict(reduction_factor=0), "reduction_factor"),
    ("google-bert/bert-base-uncased", "bottleneck", dict(reduction_factor=-16), "reduction_factor"),
    ("google-bert/bert-base-uncased", "bottleneck", dict(reduction_factor={"x": 8}), "reduction_factor"),
    ("google-bert/bert-base-uncased", "bottleneck", dict(reduction_factor={"0": 8}), "reduction_factor"),  # no default
    ("google-bert/bert-base-uncased", "bottleneck", dict(non_linearity="softmax"), "non_linearity"),
    ("google-bert/bert-base-uncased", "bottleneck", dict(leave_out=[-1]), "leave_out"),
    ("google-bert/bert-base-uncased", "bottleneck", dict(leave_out=[12]), "leave_out"),  # layers 0..11
    ("google-bert/bert-base-uncased", "bottleneck", dict(leave_out=list(range(12))), "leave_out"),
    ("google-bert/bert-base-uncased", "bottleneck", dict(phm_layer=True), "phm_layer"),
    ("google-bert/bert-base-uncased", "bottleneck", dict(is_parallel=True), "is_parallel"),
    ("google-bert/bert-base-uncased", "bottleneck", dict(inv_adapter="nice"), "inv_adapter"),
    ("google-bert/bert-base-uncased", "bottleneck", dict(dropout=1.5), "dropout"),
    ("google-bert/bert-base-uncased", "bottleneck", dict(mh_adapter=False, output_adapter=False), "mh_adapter"),
    ("google-bert/bert-base-uncased", "houlsby", dict(variant="pfeiffer"), "variant"),
    ("google-bert/bert-base-uncased", "bottleneck", dict(r=8), "r"),
    ("Qwen/Qwen2.5-0.5B", "pfeiffer", dict(original_ln_after=False), "original_ln_after"),  # plugin interface refuses it
])
def test_bottleneck_bad_options(model_id, method, options, field):
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate(model_id, method=method, **options)
    assert err.value.field == field
