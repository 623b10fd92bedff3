"""Bottleneck adapters: Houlsby et al. (2019, "Parameter-Efficient Transfer Learning for NLP",
arXiv:1902.00751) and Pfeiffer et al. (2020/2021, "AdapterFusion", arXiv:2005.00247), counted
exactly like the ``adapters`` library (AdapterHub) **version 1.3.0** builds them. PEFT has no
bottleneck adapters, so there is no PEFT config (``peft_config=None``); what an executor needs is
in ``MethodPlan.extra["bottleneck"]``.

Source read (adapters-1.3.0-py3-none-any.whl):

- ``adapters/configuration/adapter_config.py``: ``BnConfig`` (fields and defaults),
  ``SeqBnConfig`` = Pfeiffer (``mh_adapter=False, output_adapter=True, non_linearity="relu",
  original_ln_before=True, original_ln_after=True, residual_before_ln=True, reduction_factor=16``),
  ``DoubleSeqBnConfig`` = Houlsby (``mh_adapter=True, output_adapter=True,
  non_linearity="swish", original_ln_before=False, original_ln_after=True,
  residual_before_ln=True, reduction_factor=16``); ``DEFAULT_ADAPTER_CONFIG = "seq_bn"``.
- ``adapters/methods/bottleneck.py`` ``BottleneckLayer.add_adapter``: one ``Adapter`` per
  location (``mh_adapter`` after self-attention, ``output_adapter`` after the feed-forward block,
  ``cross_adapter`` after cross-attention), ``input_size = config.hidden_size``,
  ``down_sample = int(hidden_size // reduction_factor)``; a mapping ``reduction_factor`` is looked
  up by ``str(layer_idx)``, else ``"default"``, else KeyError. Layers listed in ``leave_out``
  get none (``ModelAdaptersConfig.match``).
- ``adapters/methods/modeling.py`` ``Adapter.__init__``: optional ``adapter_norm_before =
  nn.LayerNorm(d)`` (``ln_before``), ``nn.Linear(d, m)`` (down, with bias; ``m`` raised to 1 if
  below), the activation (``Activation_Function_Class`` around transformers' ``get_activation``:
  ``prelu`` owns 1 parameter, ``xielu`` 2), ``nn.Linear(m, d)`` (up, with bias), optional
  ``scaling`` parameter (``"learned"``: 1, ``"channel"``: d), optional ``adapter_norm_after =
  nn.LayerNorm(d)`` (``ln_after``), optional ``gate = nn.Linear(d, 1)`` (``use_gating``).
  ``original_ln_before`` / ``original_ln_after`` / ``residual_before_ln`` /
  ``adapter_residual_before_ln`` only rewire the forward pass through the model's own norms: no
  parameters.
- ``adapters/models/t5/mixin_t5.py`` ``iter_layers``: encoder blocks are layers 0..E-1, decoder
  blocks E..E+D-1 (``leave_out`` and ``reduction_factor`` keys use these global ids).
- ``adapters/model_mixin.py`` ``train_adapter``: freezes ``base_model`` and the output
  embeddings (``freeze_embeddings``); parameters of a task head outside the base model stay
  trainable (BertForMaskedLM's ``cls.predictions.transform``, RoBERTa's ``lm_head.dense`` /
  ``lm_head.layer_norm``), counted here as trainable base parameters.

Formula per adapter module (d = hidden_size, m = max(1, int(d // reduction_factor))):

    P = (d*m + m) + (m*d + d)          down and up Linear, each with bias
        + 2d [ln_before] + 2d [ln_after] + (d + 1) [use_gating]
        + 1 [scaling="learned"] | d [scaling="channel"] + 1 [prelu] | 2 [xielu]

per layer: Houlsby = 2 modules (after attention and after FFN), Pfeiffer = 1 (after FFN); plus
one after cross-attention in decoder blocks of encoder-decoder models with ``cross_adapter``.
bert-base, Pfeiffer, reduction_factor 16: 12 * (768*48 + 48 + 48*768 + 768) = 894,528.
(Houlsby et al. also trained the layer norms of the pre-trained model; adapters' DoubleSeqBnConfig
does not, and neither does this count.)

Parameter names are the ``adapters`` state-dict keys with adapter name ``default``
(``<block>.attention.output.adapters.default.*`` / ``<block>.output.adapters.default.*`` for
BERT-like layers, ``<block>.layer.<i>.adapters.default.*`` for T5, ``<block>.attention_adapters``
/ ``output_adapters.adapters.default.*`` otherwise). Not modelled, refused with an error naming
the field: ``phm_layer`` (Compacter), ``is_parallel`` (ParBn), ``inv_adapter`` (invertible
adapters). BnConfig options that change neither counts nor wiring (``init_weights_seed``,
``stochastic_depth``, the ``phm_*`` details) are not fields: passing them is an unknown-option error.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import field_validator, model_validator

from planner.errors import MethodConfigError
from planner.methods import register
from planner.methods.base import MethodConfig, MethodPlan, NewTensor

ADAPTERS_VERSION = "1.3.0"
#: Name under which the planner's parameter names place the adapter (``add_adapter(name, ...)``).
ADAPTER_NAME = "default"

#: variant -> (adapters config class, identifier string, defaults that differ between the two).
VARIANTS: dict[str, dict[str, Any]] = {
    "houlsby": {"config_class": "DoubleSeqBnConfig", "identifier": "double_seq_bn", "mh_adapter": True,
                "output_adapter": True, "non_linearity": "swish", "original_ln_before": False},
    "pfeiffer": {"config_class": "SeqBnConfig", "identifier": "seq_bn", "mh_adapter": False,
                 "output_adapter": True, "non_linearity": "relu", "original_ln_before": True},
}
VARIANT_ALIASES = {"houlsby": "houlsby", "double_seq_bn": "houlsby", "doubleseqbn": "houlsby",
                   "pfeiffer": "pfeiffer", "seq_bn": "pfeiffer", "seqbn": "pfeiffer"}
#: Method aliases that pick a variant when ``variant`` is not given.
METHOD_VARIANT = {"houlsby": "houlsby", "double_seq_bn": "houlsby", "pfeiffer": "pfeiffer", "seq_bn": "pfeiffer"}
DEFAULT_VARIANT = "pfeiffer"  # adapters' DEFAULT_ADAPTER_CONFIG = "seq_bn"
DEFAULT_REDUCTION_FACTOR = 16.0  # SeqBnConfig / DoubleSeqBnConfig

#: Activation names ``Activation_Function_Class`` accepts: transformers 4.57.6 ``ACT2CLS`` keys
#: (the transformers release adapters 1.3.0 requires) plus its own "leakyrelu"; lower-cased.
ACTIVATIONS = frozenset({
    "gelu", "gelu_10", "gelu_fast", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "gelu_python_tanh",
    "gelu_accurate", "laplace", "leaky_relu", "linear", "mish", "quick_gelu", "relu", "relu2", "relu6", "sigmoid",
    "silu", "swish", "tanh", "prelu", "xielu", "leakyrelu",
})
#: Parameters an activation module owns (``nn.PReLU()``: weight (1,); ``XIELUActivation``:
#: alpha_p, alpha_n (1,) each), named as in the adapter's state dict.
ACTIVATION_PARAMS: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {
    "prelu": (("non_linearity.f.weight", (1,)),),
    "xielu": (("non_linearity.f.alpha_p", (1,)), ("non_linearity.f.alpha_n", (1,))),
}
#: Model types with built-in support in adapters 1.3.0 (adapters/models/auto/adapter_model.py);
#: any other needs an ``AdapterModelInterface`` (plugin interface: layer hooks, same modules).
NATIVE_MODEL_TYPES = frozenset({
    "albert", "bart", "beit", "bert", "bert-generation", "clip", "deberta", "deberta-v2", "distilbert", "electra",
    "gpt2", "gptj", "llama", "mbart", "mistral", "mt5", "plbart", "roberta", "t5", "vit", "whisper", "xlm-roberta",
    "xmod",
})
#: Families whose layers carry adapters inside BertSelfOutput / BertOutput (models/bert/mixin_bert.py).
BERT_LIKE = frozenset({"bert", "roberta", "xlm-roberta", "electra", "deberta", "deberta-v2", "bert-generation", "xmod"})
T5_LIKE = frozenset({"t5", "mt5"})


class BottleneckConfig(MethodConfig):
    """``adapters.BnConfig`` fields (adapters' own names) that change what is counted or wired."""

    peft_type = None

    variant: str | None = None
    """"houlsby" (DoubleSeqBnConfig: after attention and after FFN) or "pfeiffer" (SeqBnConfig:
    after FFN); aliases "double_seq_bn" / "seq_bn". None: from the method name, else "pfeiffer"."""
    reduction_factor: float | dict[str, float] = DEFAULT_REDUCTION_FACTOR
    """hidden_size / bottleneck size; or per layer {"<layer id>": factor, "default": factor}
    (encoder-decoder: decoder layers are numbered after the encoder's). Below 1 = up-projection."""
    non_linearity: str | None = None
    """Activation between down and up projection; None: "swish" (Houlsby) / "relu" (Pfeiffer)."""
    original_ln_before: bool | None = None
    """Apply the model's own norm + residual before the adapter (no parameters); None: variant default."""
    original_ln_after: bool = True
    """Apply the model's own norm + residual after the adapter (no parameters)."""
    residual_before_ln: bool | Literal["post_add"] = True
    """Where the residual around the adapter is taken (no parameters)."""
    adapter_residual_before_ln: bool = False
    """Residual before the adapter's own ``ln_after`` (no parameters)."""
    ln_before: bool = False
    """A new trainable LayerNorm(d) before the down projection (2d parameters)."""
    ln_after: bool = False
    """A new trainable LayerNorm(d) after the up projection (2d parameters)."""
    mh_adapter: bool | None = None
    """Adapter after the multi-head attention block; None: variant default (Houlsby yes, Pfeiffer no)."""
    output_adapter: bool | None = None
    """Adapter after the feed-forward block; None: variant default (yes for both)."""
    cross_adapter: bool = False
    """Adapter after cross-attention in decoder blocks of encoder-decoder models."""
    leave_out: list[int] = []
    """Layer ids (from 0; encoder-decoder: decoder ids follow the encoder's) without adapters."""
    use_gating: bool = False
    """A trainable gate Linear(d, 1) beside each adapter (UniPELT), d + 1 parameters."""
    scaling: float | Literal["learned", "channel"] = 1.0
    """Output scaling: a constant, or "learned" (1 parameter) / "channel" (d parameters)."""
    dropout: float = 0.0
    """Dropout inside the adapter (no parameters)."""
    init_weights: Literal["bert", "mam_adapter", "houlsby"] = "bert"
    """Initialisation scheme (no effect on counts)."""
    phm_layer: bool = False
    """Compacter's PHM projections: not modelled (must stay False)."""
    is_parallel: bool = False
    """Parallel adapters (ParBnConfig): not modelled (must stay False)."""
    inv_adapter: str | None = None
    """Invertible adapters (SeqBnInvConfig): not modelled (must stay None)."""

    @field_validator("variant")
    @classmethod
    def _variant(cls, v: str | None) -> str | None:
        if v is None:
            return v
        key = v.strip().lower().replace("-", "_")
        if key not in VARIANT_ALIASES:
            raise ValueError(f"variant must be one of {', '.join(sorted(VARIANT_ALIASES))}")
        return VARIANT_ALIASES[key]

    @field_validator("reduction_factor")
    @classmethod
    def _reduction(cls, v):
        values = v.values() if isinstance(v, dict) else [v]
        if any(not (x > 0) or x != x or x == float("inf") for x in values):
            raise ValueError("reduction_factor must be > 0 (a finite number, or a mapping of such numbers)")
        if isinstance(v, dict):
            if not v:
                raise ValueError("reduction_factor mapping is empty; give at least {'default': factor}")
            bad = [k for k in v if k != "default" and not k.isdigit()]
            if bad:
                raise ValueError("reduction_factor keys must be layer ids as strings ('0', '1', ...) or 'default', "
                                 f"got {bad}")
        return v

    @field_validator("non_linearity")
    @classmethod
    def _activation(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in ACTIVATIONS:
            raise ValueError(f"non_linearity must be one of {', '.join(sorted(ACTIVATIONS))}")
        return v.lower() if v is not None else v

    @field_validator("leave_out")
    @classmethod
    def _leave_out(cls, v: list[int]) -> list[int]:
        if any(i < 0 for i in v):
            raise ValueError("leave_out layer ids must be >= 0")
        return v

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        return v

    @field_validator("phm_layer", "is_parallel")
    @classmethod
    def _unsupported_flag(cls, v: bool, info) -> bool:
        if v:
            what = {"phm_layer": "PHM layers (Compacter)", "is_parallel": "parallel adapters (ParBn)"}[info.field_name]
            raise ValueError(f"{info.field_name}=True: {what} are not modelled by the planner")
        return v

    @field_validator("inv_adapter")
    @classmethod
    def _unsupported_inv(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError("inv_adapter: invertible adapters (SeqBnInv / DoubleSeqBnInv) are not modelled by the planner")
        return v

    @model_validator(mode="after")
    def _somewhere(self):
        if self.mh_adapter is False and self.output_adapter is False and not self.cross_adapter:
            raise ValueError("mh_adapter is off, and so are output_adapter and cross_adapter: no adapter would be added")
        return self

    @classmethod
    def method_name(cls) -> str:
        return "bottleneck"

    def resolved(self, method: str) -> dict[str, Any]:
        """The full adapters config (every BnConfig field the planner knows), variant defaults filled in."""
        variant = self.variant or METHOD_VARIANT.get(method, DEFAULT_VARIANT)
        base = VARIANTS[variant]
        out = self.model_dump(exclude={"variant"})
        for key in ("mh_adapter", "output_adapter", "non_linearity", "original_ln_before"):
            if out[key] is None:
                out[key] = base[key]
        return {"variant": variant, "config_class": base["config_class"], "identifier": base["identifier"], **out}


def bottleneck_size(hidden: int, factor: float) -> int:
    """``int(hidden_size // reduction_factor)``, raised to 1 (``Adapter.__init__``)."""
    return max(1, int(hidden // factor))


def adapter_tensors(d: int, m: int, cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of one ``Adapter`` module's parameters, as ``named_parameters()`` lists them."""
    out: list[tuple[str, tuple[int, ...]]] = []
    if cfg["scaling"] == "learned":
        out.append(("scaling", (1,)))
    elif cfg["scaling"] == "channel":
        out.append(("scaling", (d,)))
    if cfg["ln_before"]:
        out += [("adapter_norm_before.weight", (d,)), ("adapter_norm_before.bias", (d,))]
    out += list(ACTIVATION_PARAMS.get(cfg["non_linearity"], ()))
    down = 1 if cfg["ln_before"] else 0  # index inside the adapter_down Sequential
    out += [(f"adapter_down.{down}.weight", (m, d)), (f"adapter_down.{down}.bias", (m,)),
            ("adapter_up.weight", (d, m)), ("adapter_up.bias", (d,))]
    if cfg["ln_after"]:
        out += [("adapter_norm_after.weight", (d,)), ("adapter_norm_after.bias", (d,))]
    if cfg["use_gating"]:
        out += [("gate.weight", (1, d)), ("gate.bias", (1,))]
    return out


def _blocks(spec) -> list[tuple[int, str, str]]:
    """(adapters layer id, block path, stack) in ``iter_layers`` order."""
    found: dict[tuple[str, int], str] = {}
    for m in spec.inventory:
        if m.layer is None:
            continue
        match = re.match(r"^(.*?\.\d+)\.", m.path)
        if match:
            found.setdefault((m.stack, m.layer), match.group(1))
    if spec.is_encoder_decoder:
        enc = sorted((k, v) for k, v in found.items() if k[0] == "encoder")
        dec = sorted((k, v) for k, v in found.items() if k[0] == "decoder")
        return [(i, path, "encoder") for i, ((_, _), path) in enumerate(enc)] + \
               [(len(enc) + j, path, "decoder") for j, ((_, _), path) in enumerate(dec)]
    rows = sorted(found.items(), key=lambda kv: kv[0][1])
    return [(layer, path, stack) for (stack, layer), path in rows]


def _locations(spec, block: str, stack: str, cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(location key, module path holding ``adapters.<name>``) for one block."""
    mt = spec.model_type
    out: list[tuple[str, str]] = []
    if mt in T5_LIKE:
        decoder = stack == "decoder"
        if cfg["mh_adapter"]:
            out.append(("mh_adapter", f"{block}.layer.0"))
        if decoder and cfg["cross_adapter"]:
            out.append(("cross_adapter", f"{block}.layer.1"))
        if cfg["output_adapter"]:
            out.append(("output_adapter", f"{block}.layer.{2 if decoder else 1}"))
        return out
    if mt in BERT_LIKE:
        if cfg["mh_adapter"]:
            out.append(("mh_adapter", f"{block}.attention.output"))
        if cfg["output_adapter"]:
            out.append(("output_adapter", f"{block}.output"))
        return out
    if cfg["mh_adapter"]:
        out.append(("mh_adapter", f"{block}.attention_adapters"))
    if cfg["output_adapter"]:
        out.append(("output_adapter", f"{block}.output_adapters"))
    return out


def _factor(cfg: dict[str, Any], layer: int) -> float:
    rf = cfg["reduction_factor"]
    if not isinstance(rf, dict):
        return rf
    if str(layer) in rf:
        return rf[str(layer)]
    if "default" in rf:
        return rf["default"]
    raise MethodConfigError(f"reduction_factor has no entry for layer {layer} and no 'default' (adapters raises "
                            "KeyError): add e.g. {'default': 16}", field="reduction_factor")


def _head_trainable(spec) -> list[str]:
    """Base parameters ``train_adapter`` leaves trainable: those outside ``base_model`` that are
    not (tied to) the output embeddings."""
    inv = spec.inventory
    embed = next((m for m in inv if m.role == "embed"), None)
    if embed is None or "." not in embed.path:
        return []  # the model is its own base model (e.g. T5ForConditionalGeneration): all frozen
    prefix = embed.path.split(".", 1)[0] + "."
    frozen: set[str] = set()
    for m in inv:
        if m.role == "lm_head":
            for p in m.params:
                frozen.add(p.tied_to or f"{m.path}.{p.name}")
    return [n for n, _ in inv.named_parameters() if not n.startswith(prefix) and n not in frozen]


@register("bottleneck", aliases=("bottleneck_adapter", "houlsby", "pfeiffer", "seq_bn", "double_seq_bn"),
          category="additive", config=BottleneckConfig, peft_type=None,
          paper="Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP (arXiv:1902.00751); "
                "Pfeiffer et al. 2021, AdapterFusion (arXiv:2005.00247)")
def build(cfg: BottleneckConfig, spec, method: str) -> MethodPlan:
    if cfg.variant is not None and method in METHOD_VARIANT and METHOD_VARIANT[method] != cfg.variant:
        raise MethodConfigError(f"method {method!r} is the {METHOD_VARIANT[method]} variant but variant={cfg.variant!r}",
                                field="variant")
    rc = cfg.resolved(method)
    native = spec.model_type in NATIVE_MODEL_TYPES
    if not native and rc["original_ln_after"] is False:
        raise MethodConfigError(
            f"adapters {ADAPTERS_VERSION} supports {spec.model_type!r} only through its plugin interface (layer hooks), "
            "which refuses original_ln_after=False (LAYER_HOOK_UNSUPPORTED)", field="original_ln_after")
    blocks = _blocks(spec)
    n_layers = len(blocks)
    outside = [i for i in rc["leave_out"] if i >= n_layers]
    if outside:
        raise MethodConfigError(f"leave_out has layer ids {outside} but the model has layers 0..{n_layers - 1}"
                                + (" (decoder layers follow the encoder's)" if spec.is_encoder_decoder else ""),
                                field="leave_out")
    d = spec.hidden_size
    tensors: list[NewTensor] = []
    locations: list[dict[str, Any]] = []
    for layer, block, stack in blocks:
        if layer in rc["leave_out"]:
            continue
        places = _locations(spec, block, stack, rc)
        if not places:
            continue
        m = bottleneck_size(d, _factor(rc, layer))
        for key, holder in places:
            base = f"{holder}.adapters.{ADAPTER_NAME}"
            for name, shape in adapter_tensors(d, m, rc):
                tensors.append(NewTensor(base, name, shape, saved_name=f"{base}.{name}"))
            locations.append({"layer": layer, "stack": stack, "location": key, "module": base, "bottleneck": m})
    if not tensors:
        raise MethodConfigError("leave_out removes every layer (or no adapter location exists in this model): "
                                "no adapter would be added", field="leave_out")
    head = _head_trainable(spec)
    notes = [f"{len(locations)} bottleneck adapters ({rc['config_class']}, adapters {ADAPTERS_VERSION}), hidden "
             f"{d} -> {sorted({loc['bottleneck'] for loc in locations})} -> {d}."]
    if not native:
        notes.append(f"adapters {ADAPTERS_VERSION} has no built-in support for {spec.model_type!r}: it needs an "
                     "AdapterModelInterface (plugin interface), which adds the same modules through layer hooks.")
    if head:
        notes.append(f"adapters' train_adapter leaves the task head outside the base model trainable "
                     f"({', '.join(head)}); counted as trainable base parameters, not saved with the adapter.")
    if rc["ln_before"] or rc["non_linearity"] in ACTIVATION_PARAMS:
        notes.append("With ln_before or a parametrised activation, adapters' state dict lists those tensors twice "
                     "(shared storage): save_adapter(use_safetensors=True) refuses it; the default .bin keeps one storage.")
    notes.append("Adapter file: adapters writes pytorch_adapter.bin (torch.save) by default; the size shown is "
                 "the safetensors layout of the same tensors.")
    extra = {"bottleneck": {"library": f"adapters {ADAPTERS_VERSION}", "adapter_name": ADAPTER_NAME,
                            "native_support": native, "config": rc, "hidden_size": d, "locations": locations,
                            "trainable_head": head,
                            # save_adapter(use_safetensors=True) writes adapter.safetensors without the
                            # {"format": "pt"} metadata PEFT adds (32 header bytes less)
                            "file": {"default": "pytorch_adapter.bin", "safetensors": "adapter.safetensors",
                                     "safetensors_metadata": None}}}
    return MethodPlan(method="bottleneck", peft_type=None, category="additive", adapted=(), new_tensors=tuple(tensors),
                      trainable_base=tuple(head), peft_config=None, notes=tuple(notes), extra=extra)
