"""peft-planner web app: will it fit, what will it cost, which PEFT method.

Run with ``make run`` (http://localhost:8501). Thin on purpose: inputs and URL state live in
``ui/sidebar.py`` / ``ui/state.py``, the logic in ``ui/planning.py``, figures in ``ui/charts.py``,
the tabs in ``ui/views.py``, every message in ``ui/locales/{en,ko}.json``. Imports only ``planner``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `streamlit run ui/app.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamlit as st  # noqa: E402

from ui import planning, sidebar, views  # noqa: E402
from ui.i18n import Translator  # noqa: E402


def main() -> None:
    sidebar.seed_from_url()
    st.set_page_config(page_title=Translator(st.session_state.get("lang", "en"))("app.title"), layout="wide")
    t = sidebar.language_switch()
    views.header(t)
    view, containers = views.tabs(t)
    sb = sidebar.render(t, view)
    outcome = planning.estimate_for(sb.inputs, sb.model, views.runner)
    if not outcome.ok:
        sb.show_error(t, outcome.error)
    inputs = sb.inputs
    with containers[view]:
        if view == "plan":
            inputs = views.plan_view(t, sb, outcome)
        elif view == "recommend":
            inputs = views.recommend_view(t, sb)
        elif view == "compare":
            views.compare_view(t, sb)
        elif view == "explore":
            views.explore_view(t, sb)
        else:
            views.export_view(t, sb, outcome)
    sidebar.write_url(inputs)


main()
