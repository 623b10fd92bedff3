"""The test oracle: the real transformers model and the real PEFT, built from a config dict.

Independent of ``executors`` on purpose: planner counts are checked against the libraries
themselves. Models are built on the meta device (no memory) unless a test asks for CPU.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore")

AUTO = {"t5": AutoModelForSeq2SeqLM, "mt5": AutoModelForSeq2SeqLM, "bert": AutoModelForMaskedLM,
        "roberta": AutoModelForMaskedLM}


def build_base(config: dict[str, Any], device: str = "meta", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    cfg = AutoConfig.for_model(**copy.deepcopy(config))
    auto = AUTO.get(config["model_type"], AutoModelForCausalLM)
    with torch.device(device):
        model = auto.from_config(cfg, dtype=dtype)
    # T5 v1.1 / mT5 checkpoints store lm_head separately; transformers 5 ties on from_config.
    if config["model_type"] in ("t5", "mt5") and config.get("tie_word_embeddings") is False:
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    return model


def peft_config_from_mapping(mapping: dict[str, Any]):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    mapping = dict(mapping)
    cls = PEFT_TYPE_TO_CONFIG_MAPPING[mapping.pop("peft_type")]
    fields = set(cls.__dataclass_fields__)
    return cls(**{k: v for k, v in mapping.items() if k in fields})


def apply_peft(model: torch.nn.Module, mapping: dict[str, Any]):
    from peft import get_peft_model

    return get_peft_model(model, peft_config_from_mapping(mapping))


def counts(model) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def total_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
