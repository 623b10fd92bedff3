"""Trainable tokens: planner counts == PEFT 0.21.2 ``get_nb_trainable_parameters()`` on the real
models (meta device); adapter file bytes / keys == a real ``save_pretrained`` (incl. the copies
PEFT writes for modules tied to the embedding)."""

from __future__ import annotations

import pytest

import planner
from tests.planner.methods.test_against_peft import IDS, SMALL_IDS, check
from tests.planner.methods.test_ln_tuning import FILE_IDS, check_saved_file

TOKENS = [0, 5, 17]


def _paths(model_id: str) -> tuple[str, str | None]:
    inv = planner.load_model(model_id).inventory
    embed = next(m.path for m in inv if m.role == "embed")
    head = next((m.path for m in inv if m.role == "lm_head"), None)
    return embed, head


@pytest.mark.parametrize("model_id", IDS)
def test_trainable_tokens_default_target(model_id):
    """Default target = the input embedding: one (3, hidden) delta, tied modules add nothing."""
    plan = check(model_id, "trainable_tokens", token_indices=TOKENS)
    assert plan.trainable_params == len(TOKENS) * planner.load_model(model_id).hidden_size


@pytest.mark.parametrize("model_id", SMALL_IDS)
def test_trainable_tokens_embedding_and_lm_head(model_id):
    """Targeting the LM head too: it gets its own delta even when tied (PEFT 0.21.2 then ties only its
    base_layer to the embedding's adapter), so two (2, hidden) deltas either way."""
    embed, head = _paths(model_id)
    plan = check(model_id, "trainable_tokens", token_indices=[1, 2], target_modules=[embed, head])
    assert plan.trainable_params == 2 * 2 * planner.load_model(model_id).hidden_size


def test_trainable_tokens_lm_head_only_on_tied_model():
    """Only the (tied) LM head targeted: PEFT does not tie then, the head gets its own delta."""
    check("HuggingFaceTB/SmolLM2-135M", "trainable_tokens", token_indices=[3, 4, 4], target_modules=["lm_head"])


def test_trainable_tokens_t5_encoder_embed_tokens_suffix():
    """``embed_tokens`` matches T5's encoder and decoder embeddings: two deltas (``shared`` not wrapped)."""
    plan = check("google-t5/t5-base", "trainable_tokens", token_indices=[7], target_modules=["embed_tokens"])
    assert plan.trainable_params == 2 * 768


@pytest.mark.parametrize("model_id", FILE_IDS)
def test_trainable_tokens_adapter_file_equals_real_save(model_id, tmp_path):
    """bf16 model: the delta is float32 (autocast); tied modules are saved as copies."""
    check_saved_file(model_id, "trainable_tokens", tmp_path, token_indices=[1, 7, 9])


@pytest.mark.parametrize("model_id", ["mistralai/Mistral-7B-v0.1", "HuggingFaceTB/SmolLM2-135M", "google-t5/t5-base",
                                      "google-bert/bert-base-uncased"])
def test_trainable_tokens_adapter_file_with_lm_head(model_id, tmp_path):
    """Untied: two deltas. Tied: two deltas plus ``<head>.base_layer.trainable_tokens_delta`` (the tied copy)."""
    embed, head = _paths(model_id)
    check_saved_file(model_id, "trainable_tokens", tmp_path, token_indices=[1, 2], target_modules=[embed, head])


def test_trainable_tokens_adapter_file_t5_embed_tokens_targeted(tmp_path):
    check_saved_file("google-t5/t5-base", "trainable_tokens", tmp_path, token_indices=[4],
                     target_modules=["shared", "embed_tokens"])


def test_trainable_tokens_peft_mapping_roundtrip():
    """An adapter_config.json mapping selects the method through peft_type."""
    mapping = {"peft_type": "TRAINABLE_TOKENS", "token_indices": [1, 2], "init_weights": True, "target_modules": None}
    plan = planner.estimate("openai-community/gpt2", method=mapping)
    assert plan.trainable_params == 2 * 768 and "init_weights" in plan.ignored_options


@pytest.mark.parametrize("options,field", [
    (dict(token_indices=[]), "token_indices"),
    (dict(token_indices=[-1]), "token_indices"),
    (dict(token_indices=[50257]), "token_indices"),  # gpt2 has 50257 rows: ids 0..50256
    (dict(token_indices=["a"]), "token_indices"),
    (dict(), "token_indices"),  # required
    (dict(token_indices=[1], target_modules=["ln_f"]), "target_modules"),  # a LayerNorm has no token rows
    (dict(token_indices=[1], target_modules=["nope"]), "target_modules"),
    (dict(token_indices=[1], target_modules="(unclosed"), "target_modules"),
    (dict(token_indices=[1], target_modules="all-linear"), "target_modules"),
    (dict(token_indices=[1], r=8), "r"),
])
def test_trainable_tokens_bad_options(options, field):
    with pytest.raises(planner.MethodConfigError) as err:
        planner.estimate("openai-community/gpt2", method="trainable_tokens", **options)
    assert err.value.field.split(".")[0] == field  # a bad list item is reported as token_indices.<i>


def test_trainable_tokens_untied_t5_head_shares_the_embedding_delta():
    """flan-t5 keeps a separate lm_head (tie_word_embeddings false in its config.json), but
    transformers 5 forces T5Config.tie_word_embeddings=True, so PEFT wraps the targeted head as a
    layer tied to the embedding's adapter: one delta, not two (PEFT 0.21.2 on the model built from
    the config with the untied head, as executors build it)."""
    spec = planner.load_model("google/flan-t5-xl")
    assert spec.tie_word_embeddings is False
    plan = check("google/flan-t5-xl", "trainable_tokens", token_indices=[1, 2], target_modules=["lm_head", "shared"])
    assert plan.trainable_params == 2 * spec.hidden_size
    assert any("forces tie_word_embeddings" in n for n in plan.notes)
