"""Shared helpers for the web-app tests (streamlit.testing.v1.AppTest: the script runs in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest

APP = str(Path(__file__).resolve().parents[2] / "ui" / "app.py")
TIMEOUT = 180  # seconds per run; the Compare and Explore tabs call the planner a few dozen times


@pytest.fixture
def make_app():
    """``make_app(lang=..., **query)`` -> an AppTest with those URL query parameters, not yet run."""
    from streamlit.testing.v1 import AppTest

    def make(**query: str):
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        for k, v in query.items():
            at.query_params[k] = v
        return at

    return make


@pytest.fixture
def app(make_app):
    """The app with the bundled default, run once."""
    return make_app().run()


def no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def texts(at) -> str:
    """All visible text of the page (markdown, alerts, captions, metrics, headings), joined."""
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "title", "header", "subheader"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    return "\n".join(parts)


def metric(at, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return found[0]


def open_view(at, view: str, lang: str = "en"):
    """Switch the main tabs to ``view`` (plan / compare / explore / export) and rerun."""
    from ui.i18n import Translator

    at.session_state["view_tab"] = Translator(lang)(f"view.{view}")
    return at.run()
