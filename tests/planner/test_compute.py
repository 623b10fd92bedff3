"""``planner.compute`` (matmul FLOPs of one step) and ``planner.training_time`` (hours and cost).

Golden values are closed forms over the model's config, never the planner's own output: Llama-2-7B
(meta-llama/Llama-2-7b-hf config.json, bundled in the catalog: hidden 4096, intermediate 11008, 32
layers, 32 heads of 128, vocab 32000) with FlopCounterMode's conventions (``2 m n k`` per matmul,
fused SDPA ``4 B H L^2 d`` forward and ``10 B H L^2 d`` backward). The FLOP counts themselves are
checked against FlopCounterMode on real steps in ``tests/executors/test_flops.py``. Time: peaks of
user-described GPUs (``custom_gpu``) or the catalog's A100 (NVIDIA A100 datasheet: 312 TFLOPS dense
bf16, 19.5 TFLOPS fp32, 156 TFLOPS tf32).
"""

from __future__ import annotations

import math

import pytest

import planner
from planner.api import plan_method
from planner.compute import FlopsNotModelledError, step_flops, unsupported_reason
from planner.constants import DEFAULT_UTILIZATION
from planner.gpus import UnknownGPUError, custom_gpu
from planner.timing import TrainingTimeError

MODEL = "meta-llama/Llama-2-7b-hf"
D, I, LAYERS, V, HEADS, HEAD_DIM = 4096, 11008, 32, 32000, 32, 128
B, L = 1, 512
T = B * L
BLOCK_LINEAR = 4 * D * D + 3 * D * I  # q, k, v, o (MHA) + gate, up, down: weights per block
LINEAR_FWD = 2 * T * BLOCK_LINEAR * LAYERS
LM_HEAD_FWD = 2 * T * D * V
ATTN_FWD = 4 * B * HEADS * L * L * HEAD_DIM * LAYERS
QV_R8 = 2 * T * (D * 8 + 8 * D) * 2 * LAYERS  # LoRA r=8 on q_proj and v_proj: A and B products


def flops(method: str = "full", **options):
    return planner.estimate(MODEL, method, batch_size=B, seq_len=L, **options).flops


# ----- FLOP counts: closed forms -----------------------------------------------------------------


def test_full_fine_tuning_is_three_forwards_plus_attention():
    """Every weight trains: one weight-gradient and one input-gradient product per forward matmul
    (the 6N rule), and SDPA's backward is 2.5x its forward (five products against two)."""
    f = flops("full")
    assert f.parts["linear"].forward_flops == LINEAR_FWD
    assert f.parts["lm_head"].forward_flops == LM_HEAD_FWD
    assert f.parts["attention"].forward_flops == ATTN_FWD
    assert f.forward_flops == LINEAR_FWD + LM_HEAD_FWD + ATTN_FWD
    assert f.backward_weight_flops == LINEAR_FWD + LM_HEAD_FWD
    assert f.backward_input_flops == LINEAR_FWD + LM_HEAD_FWD + 5 * ATTN_FWD // 2
    assert f.recompute_flops == 0
    assert f.total_flops == 3 * (LINEAR_FWD + LM_HEAD_FWD) + 7 * ATTN_FWD // 2
    assert f.tokens == T and f.per_token_flops == f.total_flops / T
    # 6 N per token, N = matmul weights (embedding lookups are free); attention on top
    assert f.total_flops - 7 * ATTN_FWD // 2 == 6 * T * (BLOCK_LINEAR * LAYERS + D * V)


def test_lora_backward_costs_one_forward_not_two():
    """Frozen weights: no weight gradients but the adapters'; activation gradients everywhere the
    residual stream requires grad -- not into block 0's q / k / v (their input comes from the
    frozen embedding), and not into block 0's lora_A inputs."""
    f = flops("lora", r=8, target_modules=["q_proj", "v_proj"])
    layer0_qkv = 3 * 2 * T * D * D
    layer0_lora_a = 2 * 2 * T * D * 8
    assert f.parts["adapter"].forward_flops == QV_R8
    assert f.backward_weight_flops == QV_R8
    assert f.parts["adapter"].backward_input_flops == QV_R8 - layer0_lora_a
    assert f.parts["linear"].backward_input_flops == LINEAR_FWD - layer0_qkv
    assert f.parts["lm_head"].backward_input_flops == LM_HEAD_FWD and f.parts["lm_head"].backward_weight_flops == 0
    assert f.parts["attention"].backward_input_flops == 5 * ATTN_FWD // 2
    assert 1.0 < f.backward_to_forward < 1.2 < 2.0 < flops("full").backward_to_forward


def test_checkpointing_recomputes_each_block_up_to_its_last_matmul():
    """Gradient checkpointing: block 0's input gradients appear (transformers' enable_input_require_grads),
    and each block's forward runs again -- except down_proj, whose inputs are the block's last saved
    tensors (non-reentrant checkpoint stops recomputing there)."""
    f = flops("lora", r=8, target_modules=["q_proj", "v_proj"], gradient_checkpointing=True)
    down = 2 * T * I * D
    assert f.recompute_flops == LINEAR_FWD + ATTN_FWD + QV_R8 - LAYERS * down
    assert f.parts["linear"].backward_input_flops == LINEAR_FWD
    assert f.parts["adapter"].backward_input_flops == QV_R8
    assert f.total_flops == f.forward_flops + f.backward_flops + f.recompute_flops


def test_qlora_counts_the_same_matmuls_as_lora():
    """Dequantization is not a matmul: the 4-bit base runs the same products in its compute dtype."""
    opts = dict(r=8, target_modules="all-linear", gradient_checkpointing=True)
    assert flops("qlora", **opts) == flops("lora", **opts)


def test_dora_adds_its_weight_product_forward_only():
    lora = flops("lora", r=8, target_modules=["q_proj"])
    dora = flops("dora", r=8, target_modules=["q_proj"])
    eye = (2 * D * D * 8 + 2 * D * 8 * D) * LAYERS  # lora_B(lora_A(eye(in))), detached from the loss
    assert dora.forward_flops - lora.forward_flops == eye
    assert dora.backward_flops == lora.backward_flops


def test_prompt_tuning_runs_every_block_on_the_virtual_tokens_too():
    n = 20
    f = flops("prompt_tuning", num_virtual_tokens=n)
    rows, seq = B * (L + n), L + n
    assert f.parts["linear"].forward_flops == 2 * rows * BLOCK_LINEAR * LAYERS
    assert f.parts["attention"].forward_flops == 4 * B * HEADS * seq * seq * HEAD_DIM * LAYERS
    assert f.backward_weight_flops == 0  # the prompt embedding is a lookup
    assert f.tokens == T


def test_prefix_tuning_lengthens_keys_only():
    p = 10
    f = flops("prefix_tuning", num_virtual_tokens=p)
    assert f.parts["linear"].forward_flops == LINEAR_FWD
    assert f.parts["attention"].forward_flops == 4 * B * HEADS * L * (L + p) * HEAD_DIM * LAYERS


def test_bitfit_and_ia3_train_no_weight_matrix():
    gpt2 = planner.estimate("openai-community/gpt2", "bitfit", batch_size=B, seq_len=L).flops
    assert gpt2.backward_weight_flops == 0
    assert flops("ia3").backward_weight_flops == 0


def test_uncounted_methods_say_why():
    plan = planner.estimate(MODEL, "vera", r=8, target_modules=["q_proj", "v_proj"])
    assert plan.flops is None
    spec = planner.load_model(MODEL)
    mplan = plan_method(spec, "vera", r=8, target_modules=["q_proj", "v_proj"])[0]
    assert "vera" in unsupported_reason(spec, mplan, plan.settings)
    with pytest.raises(FlopsNotModelledError) as err:
        step_flops(spec, mplan, plan.settings)
    assert err.value.field == "method"
    prefix = planner.estimate(MODEL, "prefix_tuning", num_virtual_tokens=10, gradient_checkpointing=True)
    assert prefix.flops is None  # PEFT refuses prefix tuning with gradient checkpointing


@pytest.mark.parametrize("model", ["mistralai/Mixtral-8x7B-v0.1", "google-t5/t5-base", "google-bert/bert-base-uncased",
                                   "tiiuae/falcon-7b", "bigscience/bloom-560m", "microsoft/phi-2",
                                   "EleutherAI/pythia-1b", "facebook/opt-1.3b", "google/gemma-2-9b",
                                   "microsoft/Phi-3-mini-4k-instruct", "Qwen/Qwen3-8B"])
def test_every_family_is_counted(model):
    # Mixtral: all-linear would put LoRA on the fused expert tensors (target_parameters), not counted
    targets = ["q_proj", "v_proj"] if "Mixtral" in model else "all-linear"
    f = planner.estimate(model, "lora", r=8, target_modules=targets, batch_size=2, seq_len=128).flops
    assert f is not None and f.forward_flops > 0 and f.backward_flops > 0
    assert f.total_flops == sum(p.total_flops for p in f.parts.values())


def test_lora_on_fused_expert_tensors_is_not_counted():
    spec = planner.load_model("mistralai/Mixtral-8x7B-v0.1")
    mplan = plan_method(spec, "lora", r=8, target_modules="all-linear")[0]
    plan = planner.estimate(spec, "lora", r=8, target_modules="all-linear")
    assert plan.flops is None and "target_parameters" in unsupported_reason(spec, mplan, plan.settings)


def test_mixtral_experts_see_tokens_times_top_k():
    cfg = planner.catalog.config("mistralai/Mixtral-8x7B-v0.1")
    h, i, e, k, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_local_experts"], cfg["num_experts_per_tok"], \
        cfg["num_hidden_layers"]
    attn_linear = 2 * T * (2 * h * h + 2 * h * (h // cfg["num_attention_heads"]) * cfg["num_key_value_heads"])
    router = 2 * T * h * e
    experts = 2 * T * k * 3 * h * i  # gate_up (2 I) and down (I), top-k rows per token
    f = planner.estimate("mistralai/Mixtral-8x7B-v0.1", "full", batch_size=B, seq_len=L).flops
    assert f.parts["linear"].forward_flops == n * (attn_linear + router + experts)


# ----- training time and cost -------------------------------------------------------------------

GPU = custom_gpu(memory_gib=80, name="test-gpu", bf16_tflops=100.0, fp32_tflops=10.0, tf32_tflops=50.0)


def lora_plan(**settings):
    return planner.estimate(MODEL, "lora", r=8, target_modules=["q_proj", "v_proj"], batch_size=4, seq_len=2048,
                            **settings)


def test_hours_and_cost_from_flops_peak_and_utilization():
    """10,000 examples of 2048 tokens = 10,000 sequences = 2,500 micro-batches of 4; the float32
    LoRA products at the fp32 peak, the rest at the bf16 peak."""
    plan = lora_plan()
    tt = planner.training_time(plan, GPU, num_examples=10_000, price_per_gpu_hour=2.0, utilization=0.5)
    adapter = plan.flops.parts["adapter"].total_flops
    step_s = (plan.flops.total_flops - adapter) / (100e12 * 0.5) + adapter / (10e12 * 0.5)
    assert (tt.sequences, tt.micro_steps, tt.optimizer_steps) == (10_000, 2_500, 2_500)
    assert tt.number_format == "bf16" and tt.adapter_number_format == "fp32"
    assert tt.step_s == pytest.approx(step_s, rel=1e-12)
    assert tt.hours == pytest.approx(2_500 * step_s / 3600, rel=1e-12)
    assert tt.cost_usd == pytest.approx(tt.hours * 2.0, rel=1e-12)
    assert tt.flops == 2_500 * plan.flops.total_flops
    assert tt.utilization == 0.5 and tt.utilization_source == "given"


def test_catalog_gpu_default_utilization_and_data_parallel():
    plan = lora_plan(gradient_accumulation_steps=4)
    tt = planner.training_time(plan, "a100-80gb", num_examples=10_000, epochs=2, num_gpus=4)
    assert (tt.peak_tflops, tt.adapter_peak_tflops) == (312.0, 19.5)
    assert tt.utilization == DEFAULT_UTILIZATION and "arXiv:2204.02311" in tt.utilization_source
    assert tt.micro_steps == math.ceil(20_000 / (4 * 4)) and tt.optimizer_steps == math.ceil(tt.micro_steps / 4)
    assert tt.gpu_hours == pytest.approx(4 * tt.hours) and tt.cost_usd is None


def test_short_examples_are_packed_into_planned_sequences():
    tt = planner.training_time(lora_plan(), GPU, num_examples=1_000, tokens_per_example=300, epochs=1.5)
    assert tt.tokens == 450_000 and tt.sequences == math.ceil(450_000 / 2048)


def test_number_format_follows_the_matmul_dtype():
    full32 = planner.estimate(MODEL, "full", dtype="float32", batch_size=1, seq_len=512)
    assert planner.training_time(full32, GPU, num_examples=10).number_format == "fp32"
    tt = planner.training_time(full32, GPU, num_examples=10, tf32=True)
    assert (tt.number_format, tt.peak_tflops, tt.adapter_number_format) == ("tf32", 50.0, None)
    qlora = planner.estimate(MODEL, "qlora", r=8, target_modules="all-linear", batch_size=1, seq_len=512)
    assert planner.training_time(qlora, GPU, num_examples=10).number_format == "bf16"


def test_measured_step_time_is_shown_next_to_the_estimate():
    plan = lora_plan()
    tt = planner.training_time(plan, GPU, num_examples=10_000, price_per_gpu_hour=3.0, measured_step_s=4.0)
    assert tt.measured_hours == pytest.approx(2_500 * 4.0 / 3600)
    assert tt.measured_cost_usd == pytest.approx(tt.measured_hours * 3.0)
    assert tt.measured_utilization == pytest.approx(plan.flops.total_flops / (4.0 * 100e12))


@pytest.mark.parametrize("kwargs,field", [
    (dict(num_examples=0), "num_examples"), (dict(num_examples=-5), "num_examples"),
    (dict(num_examples=2.5), "num_examples"), (dict(num_examples=True), "num_examples"),
    (dict(epochs=0), "epochs"), (dict(epochs=-1), "epochs"), (dict(epochs=float("nan")), "epochs"),
    (dict(price_per_gpu_hour=float("nan")), "price_per_gpu_hour"), (dict(price_per_gpu_hour=-2.0), "price_per_gpu_hour"),
    (dict(utilization=0), "utilization"), (dict(utilization=1.5), "utilization"),
    (dict(num_gpus=0), "num_gpus"), (dict(tokens_per_example=0), "tokens_per_example"),
    (dict(measured_step_s=0), "measured_step_s"),
])
def test_bad_input_names_the_field(kwargs, field):
    args = dict(num_examples=100) | kwargs
    with pytest.raises(TrainingTimeError) as err:
        planner.training_time(lora_plan(), GPU, **args)
    assert err.value.field == field


def test_bad_gpu_and_plan():
    with pytest.raises(UnknownGPUError) as err:
        planner.training_time(lora_plan(), "a100-90gb", num_examples=10)
    assert err.value.field == "gpu"
    with pytest.raises(TrainingTimeError) as err:  # T4: no bf16 tensor cores, no bf16 peak
        planner.training_time(lora_plan(), "t4", num_examples=10)
    assert err.value.field == "gpu"
    with pytest.raises(TrainingTimeError) as err:
        planner.training_time(planner.estimate(MODEL, "vera", r=8, target_modules=["q_proj"]), GPU, num_examples=10)
    assert err.value.field == "plan"
    with pytest.raises(TrainingTimeError) as err:
        planner.training_time({"model": MODEL}, GPU, num_examples=10)
    assert err.value.field == "plan"


def test_price_zero_means_free_hardware():
    # own hardware: a price of 0 is a valid input and gives a cost of 0
    plan = planner.estimate("meta-llama/Llama-2-7b-hf", "lora", batch_size=1, seq_len=512)
    assert planner.training_time(plan, "a100-80gb", num_examples=100, price_per_gpu_hour=0).cost_usd == 0
