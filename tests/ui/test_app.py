"""The app runs without exceptions and shows what planner.estimate computes."""

from __future__ import annotations

from pathlib import Path

import pytest

import planner

APP = str(Path(__file__).resolve().parents[2] / "ui" / "app.py")


@pytest.fixture
def app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(APP, default_timeout=60)


def test_default_plan_shown(app):
    app.run()
    assert not app.exception
    expected = planner.estimate("meta-llama/Llama-3.1-8B", method="lora", r=16, target_modules=["q_proj"])
    assert app.metric[0].value == f"{expected.trainable_params:,}"


def test_error_is_shown_not_raised(app):
    app.run()
    app.sidebar.multiselect[0].set_value([]).run()  # no target module picked
    assert not app.exception
    assert app.error and "target_modules" in app.error[0].value
