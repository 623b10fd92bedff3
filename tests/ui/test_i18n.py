"""The message catalog: both languages complete, every key the code uses exists, and no
user-facing string literal lives in ui/ outside the catalog."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import streamlit as st

import planner
from planner.memory.budget import BREAKDOWN_KEYS
from planner.memory.settings import ATTN_IMPLEMENTATIONS, OPTIMIZERS
from planner.recommend import PRIORITIES, tasks
from ui import methods, planning, state
from ui.i18n import LANGS, LOCALES, Translator, catalog, normalise_lang, placeholders

UI = Path(__file__).resolve().parents[2] / "ui"
SOURCES = sorted(UI.glob("*.py"))
HANGUL = re.compile(r"[\uac00-\ud7a3]")


def test_every_key_in_both_languages():
    en, ko = catalog("en"), catalog("ko")
    assert set(en) == set(ko), {"only en": sorted(set(en) - set(ko)), "only ko": sorted(set(ko) - set(en))}
    assert len(en) > 300


def test_files_are_valid_json_objects_of_strings():
    for lang in LANGS:
        data = json.loads((LOCALES / f"{lang}.json").read_text(encoding="utf-8"))
        assert all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in data.items()), lang


def test_placeholders_match_between_languages():
    en, ko = catalog("en"), catalog("ko")
    bad = {k: (placeholders(en[k]), placeholders(ko[k])) for k in en if placeholders(en[k]) != placeholders(ko[k])}
    assert not bad


def test_korean_catalog_is_korean():
    """Prose keys are translated (identifiers, units and the seed's quoted numbers may stay)."""
    ko, en = catalog("ko"), catalog("en")
    prose = [k for k in en if len(en[k].split()) >= 4 and not k.startswith(("seed.claim.", "adapter_json.placeholder")) and not k.endswith(".paper")
             and k != "method.heading"]
    untranslated = [k for k in prose if not HANGUL.search(ko[k])]
    assert not untranslated, untranslated


def test_seed_terms_used_in_korean():
    text = "\n".join(catalog("ko").values())
    for term in ("파라미터 효율적 파인튜닝", "저랭크 어댑터", "양자화", "옵티마이저 상태", "그래디언트 체크포인팅",
                 "첨가형", "재파라미터화", "선택적", "풀 파인튜닝"):
        assert term in text, term


def _literal_keys() -> set[str]:
    """Catalog keys passed as literals to t(...) / t.get(...) anywhere in ui/."""
    keys: set[str] = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            f = node.func
            is_t = (isinstance(f, ast.Name) and f.id == "t") or (
                isinstance(f, ast.Attribute) and f.attr == "get" and isinstance(f.value, ast.Name) and f.value.id == "t")
            if is_t and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                keys.add(node.args[0].value)
    return keys


def test_every_literal_key_exists():
    keys = _literal_keys()
    assert len(keys) > 150
    missing = sorted(k for k in keys if k not in catalog("en"))
    assert not missing


def test_every_dynamic_key_exists():
    """Keys built from values: views, settings' choices, components, phases, seed rows, categories."""
    needed = [f"view.{v}" for v in state.VIEWS]
    needed += [f"dtype.{v}" for v in state.DTYPES] + [f"mixed_precision.{v}" for v in state.MIXED_PRECISION]
    needed += [f"quant.{v}" for v in state.QUANTIZATION] + [f"attn.{v}" for v in ATTN_IMPLEMENTATIONS]
    needed += [f"optimizer.{v}" for v in OPTIMIZERS] + [f"targets.mode.{m}" for m in state.TARGET_MODES]
    needed += [f"component.{k}" for k in (*BREAKDOWN_KEYS, "reserve", "context")]
    needed += [f"phase.{p}" for p in ("forward", "backward", "optimizer")]
    needed += [f"variable.{v}" for v in ("seq_len", "batch_size", "r")]
    needed += [f"verdict.short.{s}" for s in ("fits", "tight", "no_fit", "unknown")]
    needed += [f"section.{s}" for s in ("model", "method", "training", "gpu")]
    for key, _, _ in planning.SEED_TABLE:
        needed += [f"seed.row.{key}", f"seed.claim.{key}.params", f"seed.claim.{key}.memory"]
    needed += [f"category.{m.category}" for m in planner.methods()]
    needed += [f"error.kind.{c.__name__}" for c in (planner.PlannerError, planner.ConfigError, planner.MethodConfigError,
                                                     planner.TargetModulesError, planner.UnknownModelError,
                                                     planner.UnsupportedModelError, planning.ReportError)]
    needed += ["error.kind.internal", "lang.name"]
    needed += [f"rec.priority.{p}" for p in PRIORITIES]
    needed += [f"sharding.{v}" for v in state.SHARDINGS] + [f"offload.{v}" for v in state.OFFLOAD_CHOICES]
    needed += [f"time.phase.{p}" for p in planning.FLOP_PHASES]
    plan = planner.estimate("HuggingFaceTB/SmolLM2-135M", "lora")
    needed += [f"time.part.{name}" for name in plan.flops.parts]
    needed += [f"error.kind.{planner.timing.TrainingTimeError.__name__}"]
    needed += [f"field.{f}" if f"field.{f}" in catalog("en") else f"setting.{f}"
               for f in ("num_gpus", "sharding", "offload", "num_examples", "epochs", "price_per_gpu_hour", "utilization")]
    for lang in LANGS:
        missing = [k for k in needed if k not in catalog(lang)]
        assert not missing, (lang, missing)


def test_method_names_and_explanations():
    """The seed's methods (and the LoRA variants) are named, explained and linked to their paper."""
    en = catalog("en")
    for choice in ("full", "lora", "qlora", "dora", "rslora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning",
                   "bitfit", "partial"):
        assert f"method.{choice}.name" in en and f"method.{choice}.explain" in en, choice
        paper = en.get(f"method.{choice}.paper", methods.info(choice).paper)
        if choice != "full":
            assert methods.arxiv_id(paper), (choice, paper)


def test_every_registered_method_has_a_label():
    """Methods registered later still get a label (catalog, or their registry name) and an explanation."""
    for lang in LANGS:
        t = Translator(lang)
        for choice in methods.choices():
            assert t.get(f"method.{choice}.name", choice)
            cat = t.get(f"category.{methods.category(choice)}", methods.category(choice))
            assert t.get(f"method.{choice}.explain", t("method.generic.explain", category=cat))


def test_every_recommend_task_has_a_label():
    """The guide's tasks are labelled in both languages (a task added later shows the planner's description)."""
    from ui.views import task_label

    for lang in LANGS:
        t = Translator(lang)
        for name in ("style", "classification", "qa", "translation", "summarization", "generation", "code", "instruction"):
            assert t.has(f"rec.task.{name}"), (lang, name)
        for name in tasks():
            assert task_label(t, name)
    assert HANGUL.search(task_label(Translator("ko"), "classification"))


def test_language_normalisation():
    assert normalise_lang("ko") == "ko" and normalise_lang("ko-KR") == "ko" and normalise_lang("KO") == "ko"
    assert normalise_lang("fr") == "en" and normalise_lang(None) == "en"
    assert Translator("ko")("view.plan") == "계획" and Translator("en")("view.plan") == "Plan"
    assert Translator("en")("no.such.key") == "no.such.key"


def test_numbers_format_the_same_in_both_languages():
    from ui.i18n import fmt_bytes, fmt_gib, fmt_int, fmt_pct

    assert fmt_int(8030261248) == "8,030,261,248"
    assert fmt_gib(17703156224) == "16.49 GiB"
    assert fmt_bytes(27283456) == "26.02 MiB"
    assert fmt_pct(0.08481) == "0.0848%"
    en = Translator("en")("verdict.fits", gpu="G", used=fmt_gib(2**34), capacity=fmt_gib(2**35), margin=fmt_gib(2**34), band="x")
    ko = Translator("ko")("verdict.fits", gpu="G", used=fmt_gib(2**34), capacity=fmt_gib(2**35), margin=fmt_gib(2**34), band="x")
    for number in ("16.00 GiB", "32.00 GiB"):
        assert number in en and number in ko


# ----- no user-facing literals in ui/ ------------------------------------------------------------------------

#: Streamlit functions whose string arguments people read (every public st.* callable).
ST_FUNCS = {name for name in dir(st) if not name.startswith("_") and callable(getattr(st, name))} - {
    "cache_data", "cache_resource", "set_option", "get_option", "session_state", "query_params", "rerun", "stop",
    "fragment", "dialog", "experimental_user", "login", "logout", "navigation", "Page", "context",
}
#: Keyword arguments that are identifiers or formats, not prose.
ALLOWED_KWARGS = {"key", "type", "format", "language", "mime", "file_name", "icon", "width", "height",
                  "label_visibility", "on_change", "selection_mode", "layout", "page_icon", "bind", "on_click",
                  "anchor", "divider", "unsafe_allow_html", "filter_mode", "persist_state", "theme"}
#: Plotly arguments people read.
PLOTLY_TEXT_KWARGS = {"title", "xaxis_title", "yaxis_title", "name", "annotation_text", "text", "legend_title"}


def _has_words(node: ast.AST) -> bool:
    """A string constant or f-string whose literal text has letters (prose), e.g. not "- " or "?"."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(re.search(r"[A-Za-z\uac00-\ud7a3]{2,}", node.value))
    if isinstance(node, ast.JoinedStr):
        return any(_has_words(v) for v in node.values if isinstance(v, ast.Constant))
    if isinstance(node, ast.IfExp):
        return _has_words(node.body) or _has_words(node.orelse)
    return False


def _violations(path: Path) -> list[str]:
    out = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        if name in ST_FUNCS:
            for arg in node.args:
                if _has_words(arg):
                    out.append(f"{path.name}:{node.lineno} {name}(... {ast.unparse(arg)!s:.60})")
            for kw in node.keywords:
                if kw.arg not in ALLOWED_KWARGS and kw.arg is not None and _has_words(kw.value):
                    out.append(f"{path.name}:{node.lineno} {name}({kw.arg}={ast.unparse(kw.value)!s:.60})")
        for kw in node.keywords:  # plotly figures (and anything else) titled with a literal
            if kw.arg in PLOTLY_TEXT_KWARGS and _has_words(kw.value) and name not in ST_FUNCS:
                out.append(f"{path.name}:{node.lineno} {name}({kw.arg}={ast.unparse(kw.value)!s:.60})")
    return out


def test_no_user_facing_literals_in_ui():
    violations = [v for path in SOURCES for v in _violations(path)]
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("source", [
    "import streamlit as st\nst.button('Click me')\n",
    "import streamlit as st\nst.sidebar.number_input(label='Batch', key='b')\n",
    "import streamlit as st\ncol = st.columns(2)[0]\ncol.metric(f'Peak {x}', 1)\n",
    "fig.update_layout(title='Memory')\n",
])
def test_scanner_catches_literals(tmp_path, source):
    p = tmp_path / "bad.py"
    p.write_text(source)
    assert _violations(p)


def test_scanner_allows_catalog_and_identifiers(tmp_path):
    p = tmp_path / "ok.py"
    p.write_text("import streamlit as st\nst.button(t('x'), key='go_button')\nst.code(snippet, language='python')\n"
                 "st.markdown(f'- {note}')\nfig.update_layout(title=t('chart.title'))\n")
    assert not _violations(p)
