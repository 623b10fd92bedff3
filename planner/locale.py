"""The CLI's human-readable words in English and Korean (the seed lesson's terms).

JSON output never goes through this table: it stays language-neutral. Numbers and units are
formatted the same in both languages (``planner.format``).
"""

from __future__ import annotations

LANGUAGES = ("en", "ko")

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "model": "model", "method": "method", "trainable": "trainable parameters", "total": "total parameters",
        "trainable_percent": "trainable %", "adapted": "adapted modules", "adapter_file": "adapter file",
        "memory": "memory", "memory_missing": "not modelled for this case (see notes)", "step": "step",
        "step_desc": "batch {batch} x {seq} tokens, {dtype}, {optimizer}{ckpt}, {attn}",
        "ckpt": ", gradient checkpointing", "peak": "peak allocated", "peak_desc": "{value} (+-{band}, in {phase})",
        "reserved": "peak reserved", "device": "device (nvidia-smi)", "note": "note", "error": "error",
        "phase.forward": "forward", "phase.backward": "backward", "phase.optimizer": "optimizer",
        "part.weights": "weights", "part.gradients": "gradients", "part.optimizer": "optimizer state",
        "part.activations": "activations", "part.logits": "logits and loss", "part.quantization": "quantization state",
        "part.temporaries": "temporaries",
        "col.id": "id", "col.model_type": "model type", "col.params": "parameters", "col.names": "names",
        "col.category": "category", "col.paper": "paper",
        "cat.full": "full fine-tuning", "cat.additive": "additive", "cat.reparameterization": "reparameterization",
        "cat.selective": "selective", "cat.hybrid": "hybrid",
        "gpus": "GPUs", "gpus_desc": "{n} ({sharding}{offload}); memory below is per GPU",
        "host": "host memory per GPU (offload)",
        "usable": "usable", "fit": "fits?", "fits_yes": "yes: {device} of {usable} on {gpu}",
        "fits_no": "no: {device} > {usable} on {gpu}", "largest.batch_size": "largest batch size",
        "largest.seq_len": "largest sequence length", "largest.r": "largest LoRA rank", "none_fits": "none fits",
        "smallest_gpu": "smallest catalog GPU that fits", "micro_batch": "micro-batch",
        "rejected": "rejected", "nothing_fits": "no candidate fits these GPUs (see rejected)",
    },
    "ko": {
        "model": "모델", "method": "방법", "trainable": "학습 파라미터", "total": "전체 파라미터",
        "trainable_percent": "학습 비율 %", "adapted": "어댑터 모듈 수", "adapter_file": "어댑터 파일",
        "memory": "메모리", "memory_missing": "이 경우의 메모리는 아직 모델링되지 않았습니다 (노트 참고)", "step": "스텝",
        "step_desc": "배치 {batch} x {seq} 토큰, {dtype}, {optimizer}{ckpt}, {attn}",
        "ckpt": ", 그래디언트 체크포인팅", "peak": "최대 할당 메모리", "peak_desc": "{value} (+-{band}, {phase} 단계)",
        "reserved": "최대 예약 메모리", "device": "디바이스 메모리 (nvidia-smi)", "note": "노트", "error": "오류",
        "phase.forward": "순전파", "phase.backward": "역전파", "phase.optimizer": "옵티마이저",
        "part.weights": "가중치", "part.gradients": "그래디언트", "part.optimizer": "옵티마이저 상태",
        "part.activations": "활성화", "part.logits": "로짓과 손실", "part.quantization": "양자화 상태",
        "part.temporaries": "임시 텐서",
        "col.id": "ID", "col.model_type": "모델 유형", "col.params": "파라미터", "col.names": "이름",
        "col.category": "분류", "col.paper": "논문",
        "cat.full": "전체 파인튜닝", "cat.additive": "추가형", "cat.reparameterization": "재매개변수화",
        "cat.selective": "선택형", "cat.hybrid": "혼합형",
        "gpus": "GPU", "gpus_desc": "{n}개 ({sharding}{offload}); 아래 메모리는 GPU당",
        "host": "GPU당 호스트 메모리 (오프로드)",
        "usable": "사용 가능", "fit": "적합 여부", "fits_yes": "예: {gpu}에서 {usable} 중 {device}",
        "fits_no": "아니오: {gpu}에서 {device} > {usable}", "largest.batch_size": "최대 배치 크기",
        "largest.seq_len": "최대 시퀀스 길이", "largest.r": "최대 LoRA 랭크", "none_fits": "들어가는 값 없음",
        "smallest_gpu": "들어가는 가장 작은 카탈로그 GPU", "micro_batch": "마이크로 배치",
        "rejected": "제외", "nothing_fits": "이 GPU에 들어가는 후보가 없음 (제외 목록 참고)",
    },
}


def t(key: str, lang: str = "en", **values: object) -> str:
    if lang not in MESSAGES:
        from planner.errors import PlannerError

        raise PlannerError(f"unknown language {lang!r}; use one of {', '.join(LANGUAGES)}", field="lang")
    text = MESSAGES[lang][key]
    return text.format(**values) if values else text
