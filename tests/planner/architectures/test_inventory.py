"""Every catalog model's inventory equals transformers' own named_parameters (names and shapes),
and ModelSpec.total_params equals sum(p.numel()) of the model built from the same config.

Reference: transformers 5.24 models built on the meta device from the bundled configs.
"""

from __future__ import annotations

import pytest

from planner import catalog
from planner.models import load_model
from tests.reference import build_base

IDS = catalog.model_ids()


@pytest.mark.parametrize("model_id", IDS)
def test_inventory_matches_transformers(model_id):
    spec = load_model(model_id)
    model = build_base(catalog.config(model_id))
    expected = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    ours = [(n, p.shape) for n, p in spec.inventory.named_parameters()]
    assert sorted(ours) == sorted(expected)
    assert spec.total_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_id", IDS)
def test_total_matches_published_count(model_id):
    """Catalog golden values: the published counts in planner/catalog/models.json (sources there)."""
    e = catalog.entry(model_id)
    spec = load_model(model_id)
    if e.published_basis == "params" or e.published_basis.startswith("lm_head untied"):
        assert spec.total_params == e.published_params
    else:  # state_dict / backbone bases count a different set of tensors; the head class count applies
        assert spec.total_params == e.params_from_config


@pytest.mark.parametrize("model_id", IDS)
def test_tied_parameters_match_transformers(model_id):
    spec = load_model(model_id)
    model = build_base(catalog.config(model_id))
    unique = dict(model.named_parameters())
    all_named = dict(model.named_parameters(remove_duplicate=False))
    tied_expected = {n for n in all_named if n not in unique}
    tied_ours = {f"{m.path}.{p.name}" for m in spec.inventory for p in m.params if p.tied_to}
    assert tied_ours == tied_expected
