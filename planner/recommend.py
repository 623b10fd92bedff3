"""``planner.recommend``: ranked, concrete fine-tuning plans for a model, the user's GPUs, a task
and a dataset size, each verified to fit and each with its reasons and sources.

How a recommendation is made (docs/recommend.md has the whole table):

1. **Candidates** come from the seed lesson's guide (section 6.3 ``recommend_peft_method``) and
   rank table (exercise 3), restated as data in ``planner/catalog/guide.json`` with a source per
   rule: full fine-tuning, LoRA, DoRA, QLoRA, IA3 and prompt tuning, with the task's rank,
   target modules and dropout (smaller rank and more dropout with little data).
2. **Fit** is computed, never guessed: for every candidate and GPU the largest micro-batch that
   fits (``device_bytes <= usable_memory_bytes``) is found on the memory model, gradient
   checkpointing is switched on only when not even one sequence fits without it, and gradient
   accumulation makes up the effective batch. The final plan is re-estimated and checked with
   :func:`planner.fits`; a candidate that fits nowhere is listed in ``rejected`` with the bytes
   it needs. The seed's own memory rule ("QLoRA when GPU memory < 2 x billions of parameters
   GB") is replaced by this computation and quoted next to it.
3. **Ranking** by ``priority``: ``quality`` orders by the seed's quality ordering (section 6.2:
   Full FT > LoRA ~ QLoRA > Adapters > Prefix > Prompt; DoRA above LoRA per its paper) adjusted
   by the cited data-size and model-size rules; ``memory`` by device bytes; ``speed`` by
   training time (matmul FLOPs at the GPU's peak times a stated utilisation).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Mapping

import numpy as np

from planner.errors import PlannerError
from planner.format import human_bytes
from planner.gpus import GPU, gpu as lookup_gpu
from planner.models import ModelLike, load_model
from planner.plan import Plan
from planner.recommendation import Reason, Recommendation
from planner.spec import ModelSpec

PRIORITIES = ("quality", "memory", "speed")

#: Seed guide (section 6.3): "적은 데이터" below 1,000 examples.
SMALL_DATA_EXAMPLES = 1000
#: Seed guide / section 6.2: prompt tuning for models above 10B (Lester et al. 2021, figure 1).
LARGE_MODEL_PARAMS = 10 * 10**9
#: Seed section 6.2: "소형 모델 (<1B): LoRA/Adapters 권장".
SMALL_MODEL_PARAMS = 1 * 10**9
#: With little data the seed guide asks for "LoRA (small rank)"; its rank table's narrow-task band is r=1-8.
SMALL_DATA_MAX_RANK = 8
#: Seed exercise 3 task B: lora_dropout 0.1-0.2 when examples are few.
SMALL_DATA_LORA_DROPOUT = 0.1
#: Seed exercise 3: lora_alpha = 2r as a starting point.
LORA_ALPHA_PER_RANK = 2
#: Lester et al. 2021, figure 3(a): at large scale, prompts beyond 20 tokens give marginal gains.
DEFAULT_NUM_VIRTUAL_TOKENS = 20
#: Sequences per optimizer step when the user gives none: an assumption (a common fine-tuning
#: default), not a sourced optimum; pass ``effective_batch_size`` to change it.
DEFAULT_EFFECTIVE_BATCH_SIZE = 16
#: Recommendations returned when the user does not say.
DEFAULT_MAX_RESULTS = 5

#: Expected quality ordering, seed section 6.2 (Full FT > LoRA ~ QLoRA > Adapters > Prefix >
#: Prompt), DoRA above LoRA (Liu et al. 2024, tables 1 and 4), IA3 between adapters and prefix
#: (a few-shot method: Liu et al. 2022). A tier orders plans; it is not a predicted score.
QUALITY_TIER: dict[str, float] = {
    "full": 5.0, "dora": 4.5, "lora": 4.0, "qlora": 4.0, "bottleneck": 3.0, "ia3": 2.5, "prefix_tuning": 2.0,
    "prompt_tuning": 1.0,
}
#: Rule adjustments (each with its reason code): prompt tuning promoted for > 10B models with
#: little data (the seed guide returns it in that case); demoted for < 1B models; full
#: fine-tuning demoted below LoRA with little data.
PROMPT_TUNING_LARGE_MODEL_TIER = 4.6
PROMPT_TUNING_SMALL_MODEL_TIER = 0.5
FULL_SMALL_DATA_TIER = 3.5


@dataclass(frozen=True)
class TaskGuide:
    """One task of ``guide.json``: the LoRA settings the seed's rank table gives it."""

    name: str
    description: str
    r: int
    r_range: tuple[int, int]
    targets: str  # "attention" (PEFT's default targets: q/v style) or "all-linear"
    lora_dropout: float
    sources: tuple[str, ...]


@lru_cache(maxsize=1)
def guide() -> dict[str, Any]:
    """The guide data (tasks and sources), read from inside the package."""
    return json.loads(resources.files("planner.catalog").joinpath("guide.json").read_text(encoding="utf-8"))


def tasks() -> dict[str, TaskGuide]:
    return {name: TaskGuide(name=name, description=row["description"], r=row["r"], r_range=tuple(row["r_range"]),
                            targets=row["targets"], lora_dropout=row["lora_dropout"], sources=tuple(row["sources"]))
            for name, row in guide()["tasks"].items()}


def sources() -> dict[str, dict[str, str]]:
    return dict(guide()["sources"])


def task_guide(task: str) -> TaskGuide:
    known = tasks()
    if not isinstance(task, str) or task not in known:
        raise PlannerError(f"unknown task {task!r}; the guide knows: {', '.join(known)}", field="task")
    return known[task]


# -- reasons --------------------------------------------------------------------------------------

#: Reason texts, by code, in the CLI / UI languages. ``{...}`` are the reason's params.
REASON_TEXT: dict[str, dict[str, str]] = {
    "fits": {
        "en": "fits {gpu}: {device} of {usable} per GPU at micro-batch {micro} x {seq} tokens ({margin} to spare)",
        "ko": "{gpu}에 적합: GPU당 {usable} 중 {device} 사용, 마이크로 배치 {micro} x {seq} 토큰 (여유 {margin})",
    },
    "sharding.ddp": {
        "en": "{gpus} x {gpu}, data parallel (DDP): each GPU holds the whole model and trains on its share of the batch",
        "ko": "{gpus} x {gpu}, 데이터 병렬 (DDP): GPU마다 모델 전체를 두고 배치를 나눠 학습",
    },
    "sharding.fsdp_full_shard": {
        "en": "{gpus} x {gpu}, FSDP full shard: parameters, gradients and optimizer state split across the GPUs (the replicated model does not fit one GPU)",
        "ko": "{gpus} x {gpu}, FSDP full shard: 파라미터, 그래디언트, 옵티마이저 상태를 GPU들에 나눔 (모델 복제본이 GPU 하나에 들어가지 않음)",
    },
    "accumulation": {
        "en": "gradient accumulation {accum} x micro-batch {micro} x {gpus} GPU(s) = effective batch {effective}",
        "ko": "그래디언트 누적 {accum} x 마이크로 배치 {micro} x GPU {gpus}개 = 유효 배치 {effective}",
    },
    "checkpointing": {
        "en": "gradient checkpointing on: without it not even one {seq}-token sequence fits ({device} > {usable})",
        "ko": "그래디언트 체크포인팅 사용: 없으면 {seq} 토큰 시퀀스 하나도 들어가지 않음 ({device} > {usable})",
    },
    "task_rank": {
        "en": "task '{task}': rank r={r} (the rank table's band r={r_lo}-{r_hi}), lora_alpha={alpha}, targets {targets}",
        "ko": "태스크 '{task}': 랭크 r={r} (랭크 표의 범위 r={r_lo}-{r_hi}), lora_alpha={alpha}, 대상 {targets}",
    },
    "small_data_rank": {
        "en": "only {n} examples (< {limit}): small rank r={r} and lora_dropout={dropout} against overfitting",
        "ko": "예제 {n}개 (< {limit}): 과적합 방지를 위해 작은 랭크 r={r}, lora_dropout={dropout}",
    },
    "small_data_new_behaviour": {
        "en": "only {n} examples, but the task needs new patterns: rank kept at r={r}, lora_dropout={dropout}",
        "ko": "예제 {n}개뿐이지만 새로운 패턴 학습이 필요: 랭크 r={r} 유지, lora_dropout={dropout}",
    },
    "all_projections": {
        "en": "generation-type task: LoRA on all linear projections, as QLoRA found necessary to match full fine-tuning",
        "ko": "생성형 태스크: 전체 파인튜닝 성능에 맞추려면 모든 선형 프로젝션에 LoRA 적용 (QLoRA 논문)",
    },
    "full_quality": {
        "en": "full fine-tuning: the best expected quality (seed 6.2), and it fits",
        "ko": "전체 파인튜닝: 기대 품질이 가장 높고 (6.2절) 메모리에 들어감",
    },
    "full_small_data": {
        "en": "only {n} examples: full fine-tuning updates all {params} parameters and overfits easily; ranked below LoRA",
        "ko": "예제 {n}개: 전체 파인튜닝은 {params}개 파라미터를 모두 갱신해 과적합되기 쉬움; LoRA 아래 순위",
    },
    "dora_quality": {
        "en": "DoRA: above LoRA at the same rank in its paper; it needs {extra} more than LoRA at the same micro-batch and checkpointing",
        "ko": "DoRA: 같은 랭크에서 LoRA보다 성능이 높음 (논문); 같은 마이크로 배치와 체크포인팅에서 LoRA보다 {extra} 더 필요",
    },
    "dora_no_dropout": {
        "en": "DoRA without lora_dropout (instead of {dropout}): with dropout PEFT recomputes each adapted base layer on the dropped input, one more full matmul per layer",
        "ko": "DoRA는 lora_dropout 없이 ({dropout} 대신): 드롭아웃이 있으면 PEFT가 어댑터 레이어마다 기반 레이어를 드롭된 입력으로 다시 계산해 행렬곱이 한 번 더 듦",
    },
    "dora_dropout_cost": {
        "en": "DoRA with lora_dropout={dropout} (little data): PEFT recomputes each adapted base layer on the dropped input, {extra} more compute per step",
        "ko": "DoRA에 lora_dropout={dropout} 사용 (적은 데이터): PEFT가 어댑터 레이어마다 기반 레이어를 다시 계산해 스텝당 연산 {extra} 증가",
    },
    "lora_quality": {
        "en": "LoRA: close to full fine-tuning with {percent} of the parameters trainable",
        "ko": "LoRA: 학습 파라미터 {percent}로 전체 파인튜닝에 가까운 품질",
    },
    "qlora_needed": {
        "en": "QLoRA: bf16 LoRA needs {lora_device} per GPU > {usable} on {gpu}; the 4-bit base brings it to {device} (seed rule of thumb: QLoRA when GPU memory < 2 x {billions} B = {rule_gb} GB)",
        "ko": "QLoRA: bf16 LoRA는 GPU당 {lora_device} 필요 > {gpu}의 {usable}; 4비트 기반 모델로 {device} (경험칙: GPU 메모리 < 2 x {billions}B = {rule_gb} GB이면 QLoRA)",
    },
    "qlora_saves": {
        "en": "QLoRA: quality on par with 16-bit LoRA (QLoRA paper); {saved} less than bf16 LoRA at the same micro-batch and checkpointing; dequantisation makes steps slower",
        "ko": "QLoRA: 16비트 LoRA와 동등한 품질 (QLoRA 논문); 같은 마이크로 배치와 체크포인팅에서 bf16 LoRA보다 {saved} 절약; 역양자화로 스텝이 느려짐",
    },
    "qlora_costs_more": {
        "en": "QLoRA: here it needs {more} more than bf16 LoRA at the same micro-batch (prepare_model_for_kbit_training keeps the unquantized layers and the activation stream in fp32); worth it only when LoRA does not fit",
        "ko": "QLoRA: 여기서는 같은 마이크로 배치의 bf16 LoRA보다 {more} 더 필요 (prepare_model_for_kbit_training이 양자화되지 않은 레이어와 활성화를 fp32로 유지); LoRA가 들어가지 않을 때만 의미 있음",
    },
    "ia3_few": {
        "en": "IA3: learns only {params} scaling values; designed for few-shot adaptation",
        "ko": "IA3: 스케일링 값 {params}개만 학습; 퓨샷 적응용으로 설계됨",
    },
    "prompt_large": {
        "en": "{billions}B parameters and {n} examples: the seed guide picks prompt tuning (it matches model tuning above ~10B)",
        "ko": "{billions}B 파라미터, 예제 {n}개: 가이드는 프롬프트 튜닝을 선택 (~10B 이상에서 모델 튜닝과 동등)",
    },
    "prompt_small_model": {
        "en": "a {billions}B model: prompt tuning lags far behind at this scale; LoRA / adapters are recommended for < 1B",
        "ko": "{billions}B 모델: 이 규모에서 프롬프트 튜닝은 크게 뒤처짐; 1B 미만은 LoRA/어댑터 권장",
    },
    "prompt_tuning": {
        "en": "prompt tuning: {tokens} virtual tokens ({params} trainable parameters), the smallest adapter file ({file})",
        "ko": "프롬프트 튜닝: 가상 토큰 {tokens}개 (학습 파라미터 {params}개), 가장 작은 어댑터 파일 ({file})",
    },
    "time": {
        "en": "{hours} of training on {gpus} x {gpu} ({tokens} tokens x {epochs} epoch(s)){cost}",
        "ko": "{gpus} x {gpu}에서 학습 {hours} ({tokens} 토큰 x {epochs} 에폭){cost}",
    },
    "infer.merged": {
        "en": "inference: merge into the base weights (merge_and_unload) and it costs nothing extra; unmerged it adds two small matmuls per adapted layer",
        "ko": "추론: 기반 가중치에 병합(merge_and_unload)하면 추가 비용 없음; 병합하지 않으면 어댑터 레이어마다 작은 행렬곱 2번 추가",
    },
    "infer.merged_4bit": {
        "en": "inference: merging into 4-bit weights needs a dequantised copy (merge into a bf16 model); unmerged it adds two small matmuls per adapted layer",
        "ko": "추론: 4비트 가중치에는 바로 병합할 수 없어 bf16 모델로 역양자화 후 병합; 병합하지 않으면 레이어마다 작은 행렬곱 2번 추가",
    },
    "infer.scaling": {
        "en": "inference: the learned scaling vectors merge into the weights; no extra cost after merging",
        "ko": "추론: 학습된 스케일링 벡터는 가중치에 병합됨; 병합 후 추가 비용 없음",
    },
    "infer.none": {
        "en": "inference: the fine-tuned model itself; no adapter overhead",
        "ko": "추론: 파인튜닝된 모델 그대로; 어댑터 오버헤드 없음",
    },
    "infer.prompt": {
        "en": "inference: every request carries {tokens} extra virtual tokens (longer sequence, cannot be merged)",
        "ko": "추론: 요청마다 가상 토큰 {tokens}개가 추가됨 (시퀀스가 길어지고 병합 불가)",
    },
    "infer.prefix": {
        "en": "inference: {tokens} prefix keys/values per layer lengthen attention (cannot be merged)",
        "ko": "추론: 레이어마다 프리픽스 키/값 {tokens}개가 어텐션을 늘림 (병합 불가)",
    },
    "infer.adapter": {
        "en": "inference: bottleneck adapters run sequentially in every layer (a non-linearity; cannot be merged)",
        "ko": "추론: 병목 어댑터가 모든 레이어에서 순차 실행됨 (비선형이라 병합 불가)",
    },
    "rejected.fit": {
        "en": "needs {device} per GPU even at micro-batch 1 with gradient checkpointing; {gpu} has {usable}",
        "ko": "마이크로 배치 1, 그래디언트 체크포인팅에서도 GPU당 {device} 필요; {gpu}는 {usable}",
    },
    "rejected.unmodelled": {
        "en": "its memory is not modelled here ({why}), so it cannot be verified to fit",
        "ko": "메모리가 모델링되지 않아 ({why}) 적합 여부를 검증할 수 없음",
    },
}


#: How the two target choices read in each language.
TARGET_WORDS = {
    "en": {"all-linear": "all linear projections (all-linear)", "attention": "PEFT's default attention targets (e.g. q_proj, v_proj)"},
    "ko": {"all-linear": "모든 선형 프로젝션 (all-linear)", "attention": "PEFT 기본 어텐션 대상 (예: q_proj, v_proj)"},
}


def reason_text(reason: Reason, lang: str = "en") -> str:
    from planner.locale import LANGUAGES

    if lang not in LANGUAGES:
        raise PlannerError(f"unknown language {lang!r}; use one of {', '.join(LANGUAGES)}", field="lang")
    params = dict(reason.params)
    if "targets" in params:
        params["targets"] = TARGET_WORDS[lang].get(params["targets"], params["targets"])
    return REASON_TEXT[reason.code][lang].format(**params)


def _reason(code: str, *source_keys: str, **params: Any) -> Reason:
    if code not in REASON_TEXT:
        raise KeyError(code)
    unknown = [k for k in source_keys if k not in guide()["sources"]]
    if unknown:
        raise KeyError(f"reason {code!r} cites unknown sources {unknown}")
    return Reason(code=code, params=params, sources=list(source_keys))


# -- candidates -----------------------------------------------------------------------------------


@dataclass
class Candidate:
    label: str  # the method name passed to estimate
    options: dict[str, Any]
    tier: float
    reasons: list[Reason] = field(default_factory=list)


def _billions(params: int) -> str:
    return f"{params / 1e9:.1f}" if params >= 1e8 else f"{params / 1e9:.2f}"


def candidates(spec: ModelSpec, task: TaskGuide, num_examples: int) -> list[Candidate]:
    """The guide's candidates for this model, task and data size, with tiers and reasons."""
    params = spec.total_params
    small_data = num_examples < SMALL_DATA_EXAMPLES
    new_behaviour = task.name == "code"  # seed exercise 3 task B: few examples, new patterns: keep the rank
    r, dropout = task.r, task.lora_dropout
    lora_reasons = []
    if small_data and new_behaviour:
        dropout = max(dropout, SMALL_DATA_LORA_DROPOUT)
        lora_reasons.append(_reason("small_data_new_behaviour", "seed_rank_table", n=num_examples, r=r, dropout=dropout))
    elif small_data:
        r, dropout = min(r, SMALL_DATA_MAX_RANK), max(dropout, SMALL_DATA_LORA_DROPOUT)
        lora_reasons.append(_reason("small_data_rank", "seed_guide", "seed_rank_table", n=num_examples,
                                    limit=SMALL_DATA_EXAMPLES, r=r, dropout=dropout))
    targets: Any = "all-linear" if task.targets == "all-linear" else None  # None: PEFT's default (q/v) targets
    lora_opts = {"r": r, "lora_alpha": LORA_ALPHA_PER_RANK * r, "lora_dropout": dropout}
    if targets is not None:
        lora_opts["target_modules"] = targets
    lora_reasons.insert(0, _reason("task_rank", *task.sources, task=task.name, r=r, r_lo=task.r_range[0],
                                   r_hi=task.r_range[1], alpha=LORA_ALPHA_PER_RANK * r,
                                   targets="all-linear" if targets else "attention"))
    if targets == "all-linear":
        lora_reasons.append(_reason("all_projections", "seed_guide", "qlora"))

    out = []
    full_tier = FULL_SMALL_DATA_TIER if small_data else QUALITY_TIER["full"]
    full_reasons = ([_reason("full_small_data", "full_ft_small_data", n=num_examples, params=f"{params:,}")] if small_data
                    else [_reason("full_quality", "seed_guide")])
    out.append(Candidate("full", {}, full_tier, full_reasons))
    out.append(Candidate("lora", dict(lora_opts), QUALITY_TIER["lora"], list(lora_reasons)))
    dora_opts, dora_reasons = dict(lora_opts), list(lora_reasons)
    if not small_data:
        # PEFT's DoRA with dropout > 0 runs base_layer(dropout(x)) again in every adapted layer (the base
        # result cannot be reused), i.e. one more base matmul per adapted module; without a small-data
        # reason for dropout, DoRA is planned without it
        dora_opts["lora_dropout"] = 0.0
        dora_reasons.append(_reason("dora_no_dropout", "dora", dropout=lora_opts["lora_dropout"]))
    out.append(Candidate("dora", dora_opts, QUALITY_TIER["dora"], dora_reasons))
    out.append(Candidate("qlora", dict(lora_opts), QUALITY_TIER["qlora"], list(lora_reasons)))
    if task.targets == "attention" or params < SMALL_MODEL_PARAMS:  # seed 6.3 "LoRA or Adapters"; 6.2 "<1B: LoRA/Adapters"
        out.append(Candidate("pfeiffer", {}, QUALITY_TIER["bottleneck"], []))
    out.append(Candidate("ia3", {}, QUALITY_TIER["ia3"], []))
    out.append(Candidate("prefix_tuning", {"num_virtual_tokens": DEFAULT_NUM_VIRTUAL_TOKENS}, QUALITY_TIER["prefix_tuning"], []))
    prompt_tier, prompt_reasons = QUALITY_TIER["prompt_tuning"], []
    if params > LARGE_MODEL_PARAMS and small_data:
        prompt_tier = PROMPT_TUNING_LARGE_MODEL_TIER
        prompt_reasons.append(_reason("prompt_large", "seed_guide", "prompt_tuning", billions=_billions(params),
                                      n=num_examples))
    elif params < SMALL_MODEL_PARAMS:
        prompt_tier = PROMPT_TUNING_SMALL_MODEL_TIER
        prompt_reasons.append(_reason("prompt_small_model", "seed_guide", "prompt_tuning", billions=_billions(params)))
    out.append(Candidate("prompt_tuning", {"num_virtual_tokens": DEFAULT_NUM_VIRTUAL_TOKENS}, prompt_tier,
                         prompt_reasons))
    return out


def inference_overhead(plan: Plan) -> Reason:
    """Seed exercise 4, per method: what the adapter costs at inference."""
    fam = plan.method_family
    if plan.category == "full" or fam in ("bitfit", "partial", "ln_tuning"):
        return _reason("infer.none", "seed_inference")
    if fam in ("lora", "adalora", "loha", "lokr", "vera", "oft", "boft", "fourierft", "vblora"):
        if plan.settings is not None and plan.settings.quantized_4bit:
            return _reason("infer.merged_4bit", "seed_inference", "qlora")
        return _reason("infer.merged", "seed_inference", "lora")
    if fam == "ia3":
        return _reason("infer.scaling", "seed_inference", "ia3")
    tokens = (plan.peft_config or {}).get("num_virtual_tokens") or 0
    if fam == "prefix_tuning":
        return _reason("infer.prefix", "seed_inference", tokens=tokens)
    if fam in ("prompt_tuning", "p_tuning", "adaption_prompt"):
        return _reason("infer.prompt", "seed_inference", tokens=tokens)
    return _reason("infer.adapter", "seed_inference", "houlsby")


# -- hardware and fitting -------------------------------------------------------------------------


def hardware(gpus: Any) -> list[tuple[GPU, int]]:
    """``gpus``: a GPU id / GPU, a list of them (a repeated id = that many cards), or a mapping
    ``{id: count}``. Returns (GPU, count) per distinct kind, in the order given."""
    if isinstance(gpus, (str, GPU)):
        gpus = [gpus]
    if isinstance(gpus, Mapping):
        items = list(gpus.items())
    elif isinstance(gpus, Iterable):
        items = [(g, 1) for g in gpus]
    else:
        raise PlannerError(f"gpus must be a GPU id, a list of GPU ids or a mapping id -> count, got {type(gpus).__name__}",
                           field="gpus")
    if not items:
        raise PlannerError("no GPUs given: pass at least one, e.g. gpus=['rtx-4090']", field="gpus")
    counts: dict[str, tuple[GPU, int]] = {}
    for g, n in items:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PlannerError(f"GPU count for {g!r} must be an integer >= 1, got {n!r}", field="gpus")
        entry = lookup_gpu(g)
        prev = counts.get(entry.id, (entry, 0))[1]
        counts[entry.id] = (entry, prev + n)
    return list(counts.values())


@dataclass(frozen=True)
class Fitted:
    plan: Plan
    gpu: GPU
    num_gpus: int
    sharding: str | None
    micro: int
    accum: int
    checkpointing: bool
    needed_checkpointing_device: int | None  # device bytes at micro-batch 1 without checkpointing, when it did not fit
    floor_device_bytes: int  # device bytes at micro-batch 1 with the chosen checkpointing: the method's memory floor


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def headroom_bytes(plan: Plan) -> int:
    """What a recommended plan keeps free on top of ``device_bytes``: the memory model's own error
    band on the peak (``plan.memory.error_band``), so a plan at the edge of its band still fits."""
    return math.ceil(plan.memory.error_band * plan.memory.peak_bytes)


def fits_with_headroom(plan: Plan, gpu: GPU) -> bool:
    from planner.solve import fits

    return fits(plan, gpu) and plan.memory.device_bytes + headroom_bytes(plan) <= gpu.usable_memory_bytes


def _max_micro_batch(model: ModelSpec, method: str, options: dict[str, Any], gpu: GPU, limit: int,
                     settings: dict[str, Any], band: float) -> tuple[int, int]:
    """(largest micro-batch <= limit that fits with headroom, device bytes at micro-batch 1), on the
    vectorised sweep (each element equals ``estimate`` at that batch size; tested)."""
    from planner.solve import sweep

    out = sweep(model, method, batch_size=np.arange(1, limit + 1), **options, **settings)
    need = out["device_bytes"] + np.ceil(band * out["peak_bytes"]).astype(np.int64)
    ok = need <= gpu.usable_memory_bytes
    return (int(np.flatnonzero(ok).max()) + 1 if ok.any() else 0), int(out["device_bytes"][0])


#: How several GPUs of one kind are used, in order of preference: data parallel with the model
#: replicated (fastest: no parameter gathering), then FSDP full shard (parameters, gradients and
#: optimizer state sharded: for what does not fit replicated). One GPU: no sharding.
MULTI_GPU_SHARDINGS = ("ddp", "fsdp_full_shard")


def fit(model: ModelSpec, cand: Candidate, gpu: GPU, count: int, effective_batch_size: int,
        settings: dict[str, Any]) -> Fitted | tuple[str, dict[str, Any]]:
    """The candidate's plan on ``count`` x ``gpu`` (all of them: data parallel, else FSDP full shard)
    with the largest micro-batch that fits with the model's error band to spare (checkpointing only
    when needed), or (reason code, params) why not."""
    shardings = MULTI_GPU_SHARDINGS if count > 1 else (None,)
    reason: tuple[str, dict[str, Any]] | None = None
    for sharding in shardings:
        par = {} if sharding is None else {"num_gpus": count, "sharding": sharding}
        result = _fit_one(model, cand, gpu, count, sharding, effective_batch_size, dict(settings, **par))
        if isinstance(result, Fitted):
            return result
        if reason is None or result[0] == "rejected.fit":  # a measured shortfall beats "not modelled"
            reason = result
    assert reason is not None
    return reason


def _fit_one(model: ModelSpec, cand: Candidate, gpu: GPU, num_gpus: int, sharding: str | None,
             effective_batch_size: int, settings: dict[str, Any]) -> Fitted | tuple[str, dict[str, Any]]:
    """Gradient accumulation changes memory (from the second micro-step on every ``.grad`` is
    resident), so micro-batches below the per-GPU target are searched with accumulation on, the full
    target without it, and the chosen plan is estimated with its own accumulation steps."""
    from planner.api import estimate

    per_gpu = math.ceil(effective_batch_size / num_gpus)
    device_no_ckpt = None
    for ckpt in (False, True):
        opts = dict(settings, gradient_checkpointing=ckpt)
        try:
            whole = estimate(model, cand.label, **cand.options, **dict(opts, batch_size=per_gpu))
            if whole.memory is None:
                return "rejected.unmodelled", {"why": "; ".join(whole.notes[-1:]) or "no memory program"}
            if fits_with_headroom(whole, gpu):  # the whole per-GPU batch at once: no accumulation needed
                floor = estimate(model, cand.label, **cand.options, **dict(opts, batch_size=1,
                                                                           gradient_accumulation_steps=per_gpu))
                return Fitted(whole, gpu, num_gpus, sharding, per_gpu, 1, ckpt, device_no_ckpt,
                              floor.memory.device_bytes)
            bmax, device1 = (0, whole.memory.device_bytes) if per_gpu == 1 else _max_micro_batch(
                model, cand.label, cand.options, gpu, per_gpu - 1, dict(opts, gradient_accumulation_steps=2),
                whole.memory.error_band)
        except PlannerError as exc:
            return "rejected.unmodelled", {"why": str(exc)}
        if bmax == 0:
            if not ckpt:
                device_no_ckpt = device1
                continue
            return "rejected.fit", {"device": human_bytes(device1), "gpu": gpu.name,
                                    "usable": human_bytes(gpu.usable_memory_bytes)}
        micro = _largest_divisor_at_most(per_gpu, bmax)
        accum = per_gpu // micro
        plan = estimate(model, cand.label, **cand.options, **dict(opts, batch_size=micro, gradient_accumulation_steps=accum))
        if not fits_with_headroom(plan, gpu):  # sweep == estimate (tested): never hand out a plan that does not fit
            continue
        return Fitted(plan, gpu, num_gpus, sharding, micro, accum, ckpt, device_no_ckpt, device1)


# -- the entry point ------------------------------------------------------------------------------


class Recommendations(list):
    """A ranked ``list[Plan]`` (each with ``plan.recommendation``), plus ``rejected``: the
    candidates that fit none of the GPUs, as (method, gpu id, reason)."""

    rejected: list[tuple[str, str, Reason]]

    def __init__(self, plans: Iterable[Plan] = (), rejected: list[tuple[str, str, Reason]] | None = None) -> None:
        super().__init__(plans)
        self.rejected = list(rejected or [])


def _check_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise PlannerError(f"{name} must be an integer >= {minimum}, got {value!r}", field=name)
    return int(value)


def recommend(model: ModelLike, gpus: Any, *, task: str, num_examples: int, priority: str = "quality",
              seq_len: int = 512, epochs: float = 1, effective_batch_size: int = DEFAULT_EFFECTIVE_BATCH_SIZE,
              price_per_gpu_hour: float | None = None, utilization: float | None = None,
              max_results: int = DEFAULT_MAX_RESULTS, **settings: Any) -> Recommendations:
    """Ranked plans for fine-tuning ``model`` on ``gpus`` for ``task`` with ``num_examples`` examples.

    ``gpus``: a GPU id, a list (repeat an id for several cards) or ``{id: count}``; ``task``: one
    of :func:`tasks` (``classification``, ``generation``, ``qa``, ``instruction``, ...);
    ``priority``: ``quality`` | ``memory`` | ``speed``. Other keyword arguments are training
    settings for every plan (``dtype``, ``optimizer``, ``attn_implementation``, ...). Every plan
    returned fits its GPU (``planner.fits``); ``result.rejected`` says why the others do not.
    """
    if priority not in PRIORITIES:
        raise PlannerError(f"unknown priority {priority!r}; use one of {', '.join(PRIORITIES)}", field="priority")
    num_examples = _check_int(num_examples, "num_examples")
    seq_len = _check_int(seq_len, "seq_len")
    effective_batch_size = _check_int(effective_batch_size, "effective_batch_size")
    max_results = _check_int(max_results, "max_results")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not math.isfinite(epochs) or epochs <= 0:
        raise PlannerError(f"epochs must be a number > 0, got {epochs!r}", field="epochs")
    for bad in ("batch_size", "gradient_checkpointing"):
        if bad in settings:
            raise PlannerError(f"recommend chooses {bad} itself (largest micro-batch that fits; checkpointing only "
                               "when needed); set effective_batch_size instead", field=bad)
    from planner.timing import _non_negative_number, _utilization

    if price_per_gpu_hour is not None:
        _non_negative_number(price_per_gpu_hour, "price_per_gpu_hour")
    if utilization is not None:
        _utilization(utilization)
    guide_row = task_guide(task)
    hw = hardware(gpus)
    spec = load_model(model)
    settings = dict(settings, seq_len=seq_len)

    entries: list[tuple[tuple, Plan]] = []
    rejected: list[tuple[str, str, Reason]] = []
    fitted_by: dict[tuple[str, str], Fitted] = {}
    cands = {c.label: c for c in candidates(spec, guide_row, num_examples)}
    for cand in cands.values():
        for g, count in hw:
            result = fit(spec, cand, g, count, effective_batch_size, settings)
            if isinstance(result, Fitted):
                fitted_by[(cand.label, g.id)] = result
            else:
                code, params = result
                rejected.append((cand.label, g.id, _reason(code, **params)))
    for (label, gid), f in fitted_by.items():
        cand = cands[label]
        reasons = list(cand.reasons) + _method_reasons(cand, f, fitted_by, spec, settings)
        timing = _timing(f, num_examples, seq_len, epochs, price_per_gpu_hour, utilization)
        hours, cost = timing if timing else (None, None)
        device = f.plan.memory.device_bytes
        reasons.append(_reason("fits", gpu=f.gpu.name, device=human_bytes(device), usable=human_bytes(f.gpu.usable_memory_bytes),
                               micro=f.micro, seq=seq_len, margin=human_bytes(f.gpu.usable_memory_bytes - device)))
        if f.checkpointing:
            reasons.append(_reason("checkpointing", seq=seq_len, device=human_bytes(f.needed_checkpointing_device or 0),
                                   usable=human_bytes(f.gpu.usable_memory_bytes)))
        if f.sharding is not None:
            reasons.append(_reason(f"sharding.{f.sharding}", gpus=f.num_gpus, gpu=f.gpu.name))
        effective = f.micro * f.accum * f.num_gpus
        reasons.append(_reason("accumulation", accum=f.accum, micro=f.micro, gpus=f.num_gpus, effective=effective))
        if hours is not None:
            reasons.append(_reason("time", hours=_hours_text(hours), gpus=f.num_gpus, gpu=f.gpu.name,
                                   tokens=f"{num_examples * seq_len:,}", epochs=epochs,
                                   cost="" if cost is None else f", about ${cost:,.2f}"))
        rec = dict(priority=priority, task=guide_row.name, gpu=f.gpu.id, num_gpus=f.num_gpus, sharding=f.sharding,
                   micro_batch_size=f.micro, gradient_accumulation_steps=f.accum, effective_batch_size=effective,
                   gradient_checkpointing=f.checkpointing, device_bytes=device, usable_memory_bytes=f.gpu.usable_memory_bytes,
                   quality_tier=cand.tier, training_hours=hours, cost_usd=cost, inference_overhead=inference_overhead(f.plan),
                   reasons=reasons)
        key = _sort_key(priority, cand.tier, hours, f.floor_device_bytes, f.gpu.usable_memory_bytes)
        entries.append((key, f.plan, rec))
    entries.sort(key=lambda e: e[0])
    plans = []
    for rank, (_, plan, rec) in enumerate(entries[:max_results], start=1):
        plans.append(plan.model_copy(update={"recommendation": Recommendation(rank=rank, **rec)}))
    return Recommendations(plans, rejected)


def _sort_key(priority: str, tier: float, hours: float | None, floor_device: int, usable: int) -> tuple:
    """quality: tier, then time, then memory; memory: the method's floor (device bytes at micro-batch
    1, every method compared at the same batch) as a share of the GPU; speed: training hours."""
    h = math.inf if hours is None else hours
    if priority == "quality":
        return (-tier, h, floor_device / usable)
    if priority == "memory":
        return (floor_device / usable, -tier, h)
    return (h, -tier, floor_device / usable)


def _method_reasons(cand: Candidate, f: Fitted, fitted_by: dict[tuple[str, str], Fitted], spec: ModelSpec,
                    settings: dict[str, Any]) -> list[Reason]:
    from planner.api import estimate

    plan, label = f.plan, cand.label
    lora_opts = {k: v for k, v in cand.options.items()}

    par = {} if f.sharding is None else {"num_gpus": f.num_gpus, "sharding": f.sharding}

    def lora_here(**extra: Any) -> Plan:  # bf16 LoRA with this plan's batch, checkpointing and sharding: like for like
        return estimate(spec, "lora", **lora_opts, **dict(settings, batch_size=f.micro, gradient_checkpointing=f.checkpointing,
                                                           gradient_accumulation_steps=f.accum, **par, **extra))

    lora = fitted_by.get(("lora", f.gpu.id))
    if label == "lora":
        return [_reason("lora_quality", "lora", percent=f"{plan.trainable_percent:.3f}%")]
    if label == "dora":
        extra = plan.memory.device_bytes - lora_here().memory.device_bytes
        out = [_reason("dora_quality", "dora", extra=human_bytes(max(extra, 0)))]
        dropout = cand.options.get("lora_dropout") or 0
        if dropout and plan.flops is not None:
            plain = estimate(spec, "dora", **dict(cand.options, lora_dropout=0.0),
                             **dict(settings, batch_size=f.micro, gradient_checkpointing=f.checkpointing,
                                    gradient_accumulation_steps=f.accum, **par))
            if plain.flops is not None and plain.flops.total_flops:
                more = plan.flops.total_flops / plain.flops.total_flops - 1
                out.append(_reason("dora_dropout_cost", "dora", dropout=dropout, extra=f"{more:.0%}"))
        return out
    if label == "qlora":
        if lora is None:
            bf16 = estimate(spec, "lora", **cand.options, **dict(settings, batch_size=1, gradient_checkpointing=True))
            return [_reason("qlora_needed", "seed_guide", "qlora", lora_device=human_bytes(bf16.memory.device_bytes),
                            usable=human_bytes(f.gpu.usable_memory_bytes), gpu=f.gpu.name,
                            device=human_bytes(plan.memory.device_bytes), billions=_billions(spec.total_params),
                            rule_gb=f"{2 * spec.total_params / 1e9:.0f}")]
        saved = lora_here(quantization=None).memory.device_bytes - plan.memory.device_bytes
        if saved <= 0:
            return [_reason("qlora_costs_more", "qlora", more=human_bytes(-saved))]
        return [_reason("qlora_saves", "qlora", saved=human_bytes(saved))]
    if label == "ia3":
        return [_reason("ia3_few", "ia3", params=f"{plan.trainable_params:,}")]
    if label == "prompt_tuning":
        return [_reason("prompt_tuning", "prompt_tuning", tokens=(plan.peft_config or {}).get("num_virtual_tokens"),
                        params=f"{plan.trainable_params:,}", file=human_bytes(plan.adapter_file_bytes))]
    return []


def _timing(f: Fitted, num_examples: int, seq_len: int, epochs: float, price_per_gpu_hour: float | None,
            utilization: float | None) -> tuple[float, float | None] | None:
    """(hours, cost) from the compute model, or None where it has no figure for this plan / GPU."""
    try:
        from planner.timing import training_time
    except ImportError:
        return None
    try:
        tt = training_time(f.plan, gpu=f.gpu, num_examples=num_examples, tokens_per_example=seq_len, epochs=epochs,
                           price_per_gpu_hour=price_per_gpu_hour, utilization=utilization, num_gpus=f.num_gpus)
    except PlannerError:
        return None
    return tt.hours, tt.cost_usd


def _hours_text(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:.1f} h"
