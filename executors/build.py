"""Build the real ``transformers`` model (+ PEFT) that a plan describes.

``build_model`` turns a Hugging Face ``config.json`` mapping (random weights, never the hub, never
remote code), an optional PEFT config mapping (as ``adapter_config.json`` / ``XConfig.to_dict()``),
an optional list of base parameters that must train, and an optional bitsandbytes 4-bit
quantization into a :class:`BuiltModel`, on the ``meta`` device (shapes only, fast for 70B) or on
the ``cpu`` (real tensors, small models only).

Helpers read what PEFT itself would report: :func:`count` (``get_nb_trainable_parameters``) and
:func:`adapter_file_bytes` (the size of the ``adapter_model.safetensors`` that ``save_pretrained``
writes, computed from the adapter state dict so that it also works on meta).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping

import torch
from torch import nn

Device = Literal["meta", "cpu", "cuda"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

#: model_type -> auto class name. Everything else is a causal LM.
SEQ2SEQ_MODEL_TYPES = frozenset({"t5", "mt5"})
MASKED_LM_MODEL_TYPES = frozenset({"bert", "roberta"})

#: AdaLoRA refuses to build without ``total_step`` (peft ``AdaLoraConfig.__post_init__``); when a
#: mapping lacks it we use this placeholder. It changes the rank schedule, never a tensor shape.
ADALORA_DEFAULT_TOTAL_STEP = 1000

#: PEFT types whose adapter init reads tensor values (BOFT's ``perm2mat`` calls ``.item()``):
#: built on the CPU first; PEFT then moves the adapters to the meta base layers.
PEFT_TYPES_INITIALISED_OFF_META = frozenset({"BOFT"})


@dataclass
class BuiltModel:
    """A built model: ``model`` is the transformers model, ``peft_model_or_model`` what trains."""

    model: nn.Module
    peft_model_or_model: nn.Module
    config: Any  # transformers.PretrainedConfig
    device: str
    dtype: torch.dtype
    peft_config: Any | None = None  # peft.PeftConfig
    quantized: bool = False
    gradient_checkpointing: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def is_peft(self) -> bool:
        return self.peft_config is not None

    @property
    def model_type(self) -> str:
        return str(self.config.model_type)

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters that receive gradients (deduplicated, tied ones once)."""
        return [(n, p) for n, p in self.peft_model_or_model.named_parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.trainable_named_parameters()]

    def count(self) -> tuple[int, int]:
        return count(self)

    def adapter_file_bytes(self) -> int:
        return adapter_file_bytes(self)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}") from None


def auto_class_for(model_type: str) -> type:
    """The transformers auto class used to build (and to fine-tune) a ``model_type``."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    if model_type in SEQ2SEQ_MODEL_TYPES:
        return AutoModelForSeq2SeqLM
    if model_type in MASKED_LM_MODEL_TYPES:
        return AutoModelForMaskedLM
    return AutoModelForCausalLM


def make_config(config: Mapping[str, Any]) -> Any:
    """``AutoConfig.for_model(**config)``: a PretrainedConfig from a config.json mapping."""
    from transformers import AutoConfig

    kwargs = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    model_type = kwargs.pop("model_type", None)
    if not model_type:
        raise ValueError("config has no 'model_type'")
    kwargs.pop("auto_map", None)  # never remote code
    return AutoConfig.for_model(model_type, **kwargs)


def peft_config_from_dict(peft_config: Mapping[str, Any]) -> Any:
    """A real ``peft.PeftConfig`` from a mapping (``to_dict()`` / adapter_config.json).

    Keys the config class does not accept are dropped (as PEFT itself does for configs saved by a
    newer version); ``task_type`` is passed only when the mapping has one.
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import PeftType

    raw = dict(peft_config)
    if "peft_type" not in raw:
        raise ValueError("peft_config needs a 'peft_type' (e.g. 'LORA')")
    peft_type = raw.pop("peft_type")
    peft_type = PeftType(peft_type.value if isinstance(peft_type, PeftType) else str(peft_type).upper())
    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    accepted = set(inspect.signature(config_cls.__init__).parameters) - {"self"}
    init_fields = {f.name for f in dataclasses.fields(config_cls) if f.init}
    kwargs = {k: v for k, v in raw.items() if k in accepted and k in init_fields}
    if kwargs.get("task_type") is None:
        kwargs.pop("task_type", None)
    for key in ("target_modules", "modules_to_save", "exclude_modules"):
        if isinstance(kwargs.get(key), (set, tuple)):
            kwargs[key] = sorted(kwargs[key])
    if peft_type == PeftType.ADALORA and not kwargs.get("total_step"):
        kwargs["total_step"] = ADALORA_DEFAULT_TOTAL_STEP
    return config_cls(**kwargs)


def _untie_t5_lm_head(model: nn.Module, config_dict: Mapping[str, Any]) -> bool:
    """T5 v1.1 / mT5 files say ``tie_word_embeddings: false``; give ``lm_head`` its own weight."""
    if config_dict.get("model_type") not in SEQ2SEQ_MODEL_TYPES or config_dict.get("tie_word_embeddings", True):
        return False
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None or out.weight is not inp.weight:
        return False
    w = inp.weight
    out.weight = nn.Parameter(torch.empty_like(w), requires_grad=w.requires_grad)
    if w.device.type != "meta":
        with torch.no_grad():
            out.weight.normal_(0.0, 1.0)
    model.config.tie_word_embeddings = False
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = None
    return True


def _quantizable_linears(model: nn.Module, quantization: Mapping[str, Any]) -> Iterator[tuple[nn.Module, str, nn.Linear]]:
    """(parent, name, module) of every plain ``nn.Linear`` to quantize, as transformers picks them:
    all but the output embedding and those named in ``llm_int8_skip_modules`` (or under one)."""
    skip = set(quantization.get("llm_int8_skip_modules") or [])
    output_emb = model.get_output_embeddings()
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child is output_emb:
                continue
            if child_name in skip or any(part in skip for part in parent_name.split(".")):
                continue
            yield parent, child_name, child


def _swap_in(parent: nn.Module, child_name: str, child: nn.Linear, new: nn.Module) -> None:
    """Put the quantized ``new`` in place of ``child``, keeping its bias and train / eval mode."""
    if child.bias is not None:
        new.bias = child.bias
    new.train(child.training)
    setattr(parent, child_name, new)


def _quantize_linears_4bit(model: nn.Module, quantization: Mapping[str, Any], device: str) -> int:
    """Replace every ``nn.Linear`` but the output embedding by ``bnb.nn.Linear4bit``.

    On CPU the weights are really quantized (bitsandbytes' CPU backend). On meta the weight becomes
    a ``Params4bit`` holding the packed uint8 shape ``(ceil(n/2), 1)``, which is what PEFT's
    ``get_nb_trainable_parameters`` counts (numel * 2).
    """
    import bitsandbytes as bnb

    if not quantization.get("load_in_4bit"):
        raise NotImplementedError("quantization needs load_in_4bit or load_in_8bit (got %r)" % dict(quantization))
    quant_type = quantization.get("bnb_4bit_quant_type", "fp4")
    double = bool(quantization.get("bnb_4bit_use_double_quant", False))
    compute = resolve_dtype(quantization.get("bnb_4bit_compute_dtype", "float32"))
    storage = resolve_dtype(quantization.get("bnb_4bit_quant_storage", "uint8")) if quantization.get(
        "bnb_4bit_quant_storage") not in (None, "uint8") else torch.uint8
    replaced = 0
    for parent, child_name, child in _quantizable_linears(model, quantization):
        new = bnb.nn.Linear4bit(
            child.in_features, child.out_features, bias=child.bias is not None, compute_dtype=compute,
            compress_statistics=double, quant_type=quant_type, quant_storage=storage, device="meta",
        )
        if device == "meta":
            packed = torch.empty((child.weight.numel() * 4 + storage.itemsize * 8 - 1) // (storage.itemsize * 8), 1,
                                 dtype=storage, device="meta")
            new.weight = bnb.nn.Params4bit(packed, requires_grad=False, compress_statistics=double,
                                           quant_type=quant_type, quant_storage=storage, module=new,
                                           bnb_quantized=True)
        else:
            new.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=double,
                                           quant_type=quant_type, quant_storage=storage, module=new)
            new.weight = new.weight._quantize(device)  # type: ignore[attr-defined]
            new.quant_state = new.weight.quant_state
        _swap_in(parent, child_name, child, new)
        replaced += 1
    model.is_loaded_in_4bit = True
    model.is_quantized = True
    return replaced


def _quantize_linears_8bit(model: nn.Module, quantization: Mapping[str, Any], device: str) -> int:
    """Replace every ``nn.Linear`` but the output embedding by ``bnb.nn.Linear8bitLt`` (LLM.int8()).

    As transformers does for ``BitsAndBytesConfig(load_in_8bit=True)``: frozen int8 weights
    (``has_fp16_weights=False``, row-wise scales ``SCB`` in fp32) and the outlier ``threshold``
    (``llm_int8_threshold``, default 6.0). On meta the weight is an ``Int8Params`` of the same
    shape in int8 (what PEFT counts); on CPU / CUDA the weight is really quantized.
    """
    import bitsandbytes as bnb

    threshold = float(quantization.get("llm_int8_threshold", 6.0))
    has_fp16 = bool(quantization.get("llm_int8_has_fp16_weight", False))
    replaced = 0
    for parent, child_name, child in _quantizable_linears(model, quantization):
        new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                  has_fp16_weights=has_fp16, threshold=threshold, device="meta")
        if device == "meta":
            new.weight = bnb.nn.Int8Params(torch.empty(child.weight.shape, dtype=torch.int8, device="meta"),
                                           requires_grad=False, has_fp16_weights=has_fp16)
        else:
            new.weight = bnb.nn.Int8Params(child.weight.data, requires_grad=has_fp16, has_fp16_weights=has_fp16)
            new.weight = new.weight._quantize(device)  # type: ignore[attr-defined]
        _swap_in(parent, child_name, child, new)
        replaced += 1
    model.is_loaded_in_8bit = True
    model.is_quantized = True
    return replaced


def _materialise_random(model: nn.Module, device: torch.device) -> None:
    """Meta model -> real tensors on ``device`` (tying kept), random N(0, 0.02) weights, norms 1.

    Values do not change the memory of the measured path; integer buffers get valid indices
    (``position_ids`` = arange, others 0) so that embedding lookups stay in range.
    """
    model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dtype.is_floating_point:
                if name.endswith("bias"):
                    p.zero_()
                elif p.dim() == 1:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02)
        for name, b in model.named_buffers():
            if b.dtype.is_floating_point:
                b.fill_(0.01)
            elif name.endswith("position_ids"):
                b.copy_(torch.arange(b.shape[-1], device=device).expand_as(b))
            else:
                b.zero_()


@contextlib.contextmanager
def _maybe_device(device: str) -> Iterator[None]:
    if device in ("meta", "cuda"):
        with torch.device(device):
            yield
    else:
        yield


def build_model(
    config: Mapping[str, Any],
    *,
    peft_config: Mapping[str, Any] | None = None,
    trainable_base_params: list[str] | None = None,
    dtype: str = "bfloat16",
    quantization: Mapping[str, Any] | None = None,
    device: Device = "meta",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    seed: int = 0,
) -> BuiltModel:
    """Build the model a plan describes (random weights) and apply PEFT.

    - ``peft_config`` None and ``trainable_base_params`` None: full fine-tuning (all train).
    - ``trainable_base_params`` given: exactly those base parameters train (plus PEFT's own).
    - ``quantization``: bitsandbytes kwargs (``BitsAndBytesConfig``); linears (not the output
      embedding) become ``Linear4bit`` (``load_in_4bit``) or ``Linear8bitLt`` (``load_in_8bit``) and
      ``prepare_model_for_kbit_training`` runs before PEFT, as in QLoRA.
    """
    if device not in ("meta", "cpu", "cuda"):
        raise ValueError(f"device must be 'meta', 'cpu' or 'cuda', got {device!r}")
    torch_dtype = resolve_dtype(dtype)
    hf_config = make_config(config)
    auto_cls = auto_class_for(hf_config.model_type)
    notes: list[str] = []
    torch.manual_seed(seed)
    with _maybe_device("meta" if device == "cuda" else device):
        model = auto_cls.from_config(
            hf_config, dtype=torch_dtype, attn_implementation=attn_implementation, trust_remote_code=False
        )
    if _untie_t5_lm_head(model, config):
        notes.append("lm_head untied from the shared embedding (config says tie_word_embeddings: false)")
    if device == "cuda":
        _materialise_random(model, torch.device("cuda"))
    model.train()

    wanted: list[nn.Parameter] = []
    if trainable_base_params is not None:
        named = dict(model.named_parameters(remove_duplicate=False))
        missing = [n for n in trainable_base_params if n not in named]
        if missing:
            raise ValueError(f"unknown base parameters: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        wanted = [named[n] for n in trainable_base_params]
        wanted_ids = {id(p) for p in wanted}
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted_ids)

    quantized = False
    if quantization:
        from peft import prepare_model_for_kbit_training

        if quantization.get("load_in_8bit"):
            n = _quantize_linears_8bit(model, quantization, device)
            notes.append(f"{n} linear layers quantized to int8 (LLM.int8)")
        else:
            n = _quantize_linears_4bit(model, quantization, device)
            notes.append(f"{n} linear layers quantized to 4-bit")
        quantized = True
        prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False

    trained: nn.Module = model
    real_peft_config = None
    if peft_config is not None:
        from peft import get_peft_model

        real_peft_config = peft_config_from_dict(peft_config)
        peft_type = str(real_peft_config.peft_type.value)
        if device in ("meta", "cuda") and peft_type not in PEFT_TYPES_INITIALISED_OFF_META:
            with _maybe_device(device):  # adapters created where the base lives
                trained = get_peft_model(model, real_peft_config)
            if device == "meta":
                _emulate_adapter_move_on_meta(trained)
        else:
            # Adapters are created on the CPU; on meta PEFT then moves them to the base's device.
            trained = get_peft_model(model, real_peft_config)
        trained.train()
    for p in wanted:  # PEFT / kbit preparation froze the base; re-enable what must train
        p.requires_grad_(True)

    return BuiltModel(
        model=model, peft_model_or_model=trained, config=hf_config, device=device, dtype=torch_dtype,
        peft_config=real_peft_config, quantized=quantized, gradient_checkpointing=gradient_checkpointing, notes=notes,
    )


def _emulate_adapter_move_on_meta(peft_model: nn.Module) -> None:
    """Do what ``BaseTunerLayer._move_adapter_to_device_of_base_layer`` does off meta.

    On a real device PEFT casts each ``ParameterDict`` adapter entry to the base layer's dtype and
    stores it back, and ``ParameterDict`` wraps the cast tensor in a fresh ``nn.Parameter``
    (``requires_grad=True``): AdaLoRA's ``ranknum`` then trains on CPU/CUDA. On meta PEFT skips
    the move, so we apply the same rule here to count what a real run counts.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in peft_model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        base = module.get_base_layer()
        weight = getattr(base, "weight", None)
        if weight is None or not weight.dtype.is_floating_point or weight.__class__.__name__ == "Params4bit":
            continue
        for attr in tuple(module.adapter_layer_names) + tuple(module.other_param_names):
            pdict = getattr(module, attr, None)
            if not isinstance(pdict, nn.ParameterDict):
                continue
            for key in list(pdict.keys()):
                item = pdict[key]
                if item.dtype.is_floating_point and item.dtype != weight.dtype and not item.requires_grad:
                    pdict[key] = nn.Parameter(item.detach(), requires_grad=True)


def _param_count(param: torch.Tensor) -> int:
    """PEFT's rule (``PeftModel.get_nb_trainable_parameters``): Params4bit count numel * 2 * itemsize."""
    n = param.numel()
    if param.__class__.__name__ == "Params4bit":
        if hasattr(param, "element_size"):
            nbytes = param.element_size()
        else:
            nbytes = getattr(getattr(param, "quant_storage", None), "itemsize", 1)
        n = n * 2 * nbytes
    return n


def count(built: BuiltModel) -> tuple[int, int]:
    """(trainable, total) parameters as PEFT's ``get_nb_trainable_parameters`` reports them."""
    m = built.peft_model_or_model
    if hasattr(m, "get_nb_trainable_parameters"):
        return tuple(m.get_nb_trainable_parameters())  # type: ignore[return-value]
    trainable = total = 0
    for p in m.parameters():
        n = _param_count(p)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def adapter_state_dict(built: BuiltModel) -> dict[str, torch.Tensor]:
    """The tensors ``PeftModel.save_pretrained`` writes, under the names it writes them."""
    from peft.utils import get_peft_model_state_dict

    if not built.is_peft:
        raise ValueError("not a PEFT model: there is no adapter file")
    m = built.peft_model_or_model
    with _meta_cpu_is_identity():  # prompt learning calls ``.cpu()`` on the prompt embeddings
        return get_peft_model_state_dict(m, adapter_name="default", save_embedding_layers="auto")


@contextlib.contextmanager
def _meta_cpu_is_identity() -> Iterator[None]:
    """Let ``meta_tensor.cpu()`` return the meta tensor (shapes and dtypes are all we read)."""
    original = torch.Tensor.cpu

    def cpu(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.is_meta:
            return self
        return original(self, *args, **kwargs)

    torch.Tensor.cpu = cpu  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cpu = original  # type: ignore[method-assign]


def safetensors_file_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> int:
    """Exact size of ``safetensors.torch.save_file(tensors, metadata=metadata)``: the planner's one
    layout implementation (planner.adapter_file) applied to real tensors' names, shapes, dtypes."""
    from planner.adapter_file import safetensors_file_bytes as layout_bytes

    items = [(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in tensors.items()]
    return layout_bytes(items, dict(metadata) if metadata else None)


#: ``PeftModel.save_pretrained`` writes ``metadata={"format": "pt"}`` into the safetensors file.
PEFT_SAFETENSORS_METADATA = {"format": "pt"}


def adapter_file_bytes(built: BuiltModel) -> int:
    """Bytes of ``adapter_model.safetensors`` as ``save_pretrained`` would write it (works on meta)."""
    return safetensors_file_bytes(adapter_state_dict(built), PEFT_SAFETENSORS_METADATA)
