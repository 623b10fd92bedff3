"""The GPU catalog is data: one test runs over every entry (litgpt-style), plus lookups and custom GPUs."""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest

from planner.errors import PlannerError
from planner.gpus import (
    GPU,
    GPUSpecError,
    UnknownGPUError,
    catalog_conventions,
    custom_gpu,
    gpu,
    gpu_ids,
    gpus,
)

GIB = 2**30
MIB = 2**20
REQUIRED_IDS = {
    "rtx-3090", "rtx-4090", "rtx-5090", "t4", "l4", "a10g", "l40s", "v100-16gb", "v100-32gb",
    "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "b200", "mi300x", "rtx-a6000",
    "apple-m2-ultra-192gb",
}  # fmt: skip


def _raw() -> dict:
    return json.loads(resources.files("planner.catalog").joinpath("gpus.json").read_text(encoding="utf-8"))


def _has_path(model: GPU, path: str) -> bool:
    obj: object = model
    for part in path.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


@pytest.mark.parametrize("entry", gpus(), ids=lambda g: g.id)
def test_catalog_entry_invariants(entry: GPU) -> None:
    # identity
    assert entry.id == entry.id.strip().lower() and " " not in entry.id, "ids are lowercase slugs"
    assert entry.name and entry.vendor and entry.form_factor
    # memory: whole MiB, at least 1 GiB, GiB-class nominal; reported total never above nominal
    assert entry.memory_bytes >= GIB and entry.memory_bytes % MIB == 0
    assert entry.memory_gib == entry.memory_bytes / GIB
    assert entry.memory_note, "every entry documents its memory convention"
    if entry.reported_memory_bytes is not None:
        assert 0.9 * entry.memory_bytes <= entry.reported_memory_bytes <= entry.memory_bytes
    assert 0 < entry.usable_memory_bytes <= entry.memory_bytes
    # bandwidth: decimal bytes/s, between 100 GB/s and 20 TB/s
    bw = entry.memory_bandwidth_bytes_per_s
    assert bw is not None and 100e9 <= bw <= 20e12
    # throughput: dense peaks are positive where present; every entry has fp32 and a 16-bit rate
    peaks = entry.peak_dense_tflops
    for dtype in ("bf16", "fp16", "fp32", "tf32"):
        v = getattr(peaks, dtype)
        assert v is None or (math.isfinite(v) and 0 < v < 10_000), (dtype, v)
    assert peaks.fp32 is not None
    assert peaks.bf16 is not None or peaks.fp16 is not None
    if peaks.bf16 is not None:
        assert peaks.bf16 >= peaks.fp32
    if peaks.fp16 is not None:
        assert peaks.fp16 >= peaks.fp32
    if peaks.tf32 is not None:
        assert peaks.tf32 >= peaks.fp32
        assert peaks.bf16 is None or peaks.bf16 >= peaks.tf32
    if entry.tdp_watts is not None:
        assert 10 <= entry.tdp_watts <= 2000
    # provenance
    assert entry.source is not None and entry.source.title.strip()
    assert entry.source.url.startswith("https://")
    assert entry.notes.strip()
    for path in entry.unconfirmed:
        assert _has_path(entry, path), f"unconfirmed names a field that does not exist: {path}"
    # unified-memory entries say how much the GPU may use
    if entry.unified_memory:
        assert entry.usable_memory_fraction is not None and 0 < entry.usable_memory_fraction < 1
        assert "fraction" in entry.memory_note or "%" in entry.memory_note


def test_catalog_size_and_unique_ids() -> None:
    ids = [row["id"] for row in _raw()["gpus"]]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 18
    assert REQUIRED_IDS <= set(ids)
    assert gpu_ids() == ids
    names = [g.name for g in gpus()]
    assert len(names) == len(set(names))


def test_catalog_has_conventions() -> None:
    about = catalog_conventions()
    for key in ("memory_bytes", "reported_memory_bytes", "memory_bandwidth_bytes_per_s", "peak_dense_tflops"):
        assert about[key].strip()
    assert "sparsity" in about["peak_dense_tflops"].lower()


def test_formats_without_hardware_support_are_null() -> None:
    for gid in ("t4", "v100-16gb", "v100-32gb"):
        p = gpu(gid).peak_dense_tflops
        assert p.bf16 is None and p.tf32 is None and p.fp16 is not None


def test_known_values() -> None:
    h100 = gpu("h100-sxm")
    assert h100.memory_bytes == 80 * GIB
    assert h100.reported_memory_bytes == 81559 * MIB
    assert h100.usable_memory_bytes == 81559 * MIB
    assert h100.memory_bandwidth_bytes_per_s == 3_350_000_000_000
    assert h100.peak_tflops("bf16") == pytest.approx(989.4)
    assert h100.peak_flops("bf16") == pytest.approx(989.4e12)
    assert gpu("a100-80gb").reported_memory_bytes == 80 * GIB
    assert gpu("mi300x").memory_bytes == 192 * GIB
    apple = gpu("apple-m2-ultra-192gb")
    assert apple.unified_memory and apple.usable_memory_bytes == int(192 * GIB * 0.75)


def test_peak_tflops_dtype_aliases() -> None:
    h = gpu("h100-sxm")
    assert h.peak_tflops("torch.bfloat16") == h.peak_tflops("BF16") == h.peak_dense_tflops.bf16
    assert h.peak_tflops("float32") == h.peak_dense_tflops.fp32
    with pytest.raises(GPUSpecError) as exc:
        h.peak_tflops("int8")
    assert exc.value.field == "dtype"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("h100-sxm", "h100-sxm"),
        ("H100-SXM", "h100-sxm"),
        ("  RTX-4090 ", "rtx-4090"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("nvidia t4", "t4"),
        ("AMD Instinct MI300X", "mi300x"),
    ],
)
def test_lookup_by_id_or_name(query: str, expected: str) -> None:
    assert gpu(query).id == expected


def test_lookup_passes_gpu_through_and_is_cached() -> None:
    g = gpu("l4")
    assert gpu(g) is g
    assert gpu("L4") is g
    assert gpus()[0] is gpus()[0]  # same cached objects
    gpus().clear()  # returned list is a copy
    assert len(gpus()) >= 18


def test_gpu_is_frozen() -> None:
    g = gpu("t4")
    with pytest.raises(Exception):
        g.memory_bytes = 1  # type: ignore[misc]


def test_unknown_gpu_lists_catalog_and_close_matches() -> None:
    with pytest.raises(UnknownGPUError) as exc:
        gpu("h100")
    err = exc.value
    assert isinstance(err, PlannerError) and isinstance(err, ValueError)
    assert err.field == "gpu"
    msg = str(err)
    assert "did you mean" in msg.lower()
    assert "h100-sxm" in msg and "h100-pcie" in msg
    for gid in gpu_ids():
        assert gid in msg
    with pytest.raises(UnknownGPUError) as exc2:
        gpu("rtx 4090 ti super")
    assert "rtx-4090" in str(exc2.value)


def test_unknown_gpu_non_string() -> None:
    with pytest.raises(UnknownGPUError):
        gpu(4090)  # type: ignore[arg-type]


def test_custom_gpu() -> None:
    g = custom_gpu(24, name="My Card", bf16_tflops=100.0, fp32_tflops=25, memory_bandwidth_gb_per_s=900)
    assert g.memory_bytes == 24 * GIB and g.memory_gib == 24
    assert g.usable_memory_bytes == 24 * GIB
    assert g.peak_tflops("bf16") == 100.0 and g.peak_tflops("fp16") is None
    assert g.memory_bandwidth_bytes_per_s == 900_000_000_000
    assert g.name == "My Card" and g.id == "my-card" and g.vendor == "custom"
    assert custom_gpu(7.5).memory_bytes == int(7.5 * GIB)
    assert custom_gpu(64, usable_memory_fraction=0.5).usable_memory_bytes == 32 * GIB


@pytest.mark.parametrize("bad", [0, 0.0, -1, -24.0, float("nan"), float("inf"), None, "24", True])
def test_custom_gpu_rejects_bad_memory(bad: object) -> None:
    with pytest.raises(GPUSpecError) as exc:
        custom_gpu(bad)  # type: ignore[arg-type]
    assert exc.value.field == "memory_gib"
    assert isinstance(exc.value, PlannerError)
    assert str(exc.value).startswith("memory_gib:")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"bf16_tflops": 0}, "bf16_tflops"),
        ({"fp32_tflops": -3}, "fp32_tflops"),
        ({"memory_bandwidth_gb_per_s": 0}, "memory_bandwidth_gb_per_s"),
        ({"tdp_watts": -1}, "tdp_watts"),
        ({"usable_memory_fraction": 1.5}, "usable_memory_fraction"),
        ({"usable_memory_fraction": 0}, "usable_memory_fraction"),
        ({"name": "  "}, "name"),
    ],
)
def test_custom_gpu_rejects_bad_fields(kwargs: dict, field: str) -> None:
    with pytest.raises(GPUSpecError) as exc:
        custom_gpu(24, **kwargs)
    assert exc.value.field == field


def test_gpu_model_validates_directly() -> None:
    with pytest.raises(ValueError):
        GPU(id="x", name="x", memory_bytes=0)
    with pytest.raises(ValueError):
        GPU(id="x", name="x", memory_bytes=GIB, reported_memory_bytes=2 * GIB)
    with pytest.raises(ValueError):
        GPU(id="x", name="x", memory_bytes=GIB, unknown_field=1)


def test_docs_table_lists_every_gpu() -> None:
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "gpus.md"
    if not doc.is_file():
        pytest.skip("docs/gpus.md not present (installed package)")
    text = doc.read_text(encoding="utf-8")
    for gid in gpu_ids():
        assert f"`{gid}`" in text, f"docs/gpus.md has no row for {gid}"
