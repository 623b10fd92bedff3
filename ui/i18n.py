"""Messages for people, in English and Korean, from one catalog (``ui/locales/{en,ko}.json``).

Every string the app shows comes from the catalog through :class:`Translator`; numbers and units
are formatted the same way in both languages (``1,234,567``, ``12.34 GiB``) so a plan reads the
same whichever language it was shared in.
"""

from __future__ import annotations

import json
import string
from functools import lru_cache
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.format import human_bytes

LANGS: tuple[str, ...] = ("en", "ko")
DEFAULT_LANG = "en"
LOCALES = Path(__file__).resolve().parent / "locales"


@lru_cache(maxsize=None)
def catalog(lang: str) -> dict[str, str]:
    """The flat ``key -> message`` mapping of one language."""
    if lang not in LANGS:
        raise KeyError(f"no message catalog for language {lang!r}; available: {', '.join(LANGS)}")
    data = json.loads((LOCALES / f"{lang}.json").read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def normalise_lang(value: Any) -> str:
    """``"ko"`` / ``"ko-KR"`` / ``"KO"`` -> ``"ko"``; anything else -> the default (English)."""
    key = str(value or "").strip().lower().replace("_", "-").split("-")[0]
    return key if key in LANGS else DEFAULT_LANG


def placeholders(message: str) -> set[str]:
    """Placeholder names of a message (none for a message whose braces are literal JSON)."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(message) if name and name.isidentifier()}
    except ValueError:
        return set()


class Translator:
    """``t("key", name=value)`` -> the message in ``lang`` with its placeholders filled.

    A key missing from the catalog shows as the key itself (tests keep both catalogs complete).
    Messages are formatted only when values are given, so a message without placeholders may
    hold literal braces (JSON examples).
    """

    def __init__(self, lang: str = DEFAULT_LANG) -> None:
        self.lang = normalise_lang(lang)
        self.messages = catalog(self.lang)

    def __call__(self, key: str, **values: Any) -> str:
        message = self.messages.get(key)
        if message is None:
            return key
        return message.format(**values) if values else message

    def has(self, key: str) -> bool:
        return key in self.messages

    def get(self, key: str, default: str, **values: Any) -> str:
        """The message for ``key`` if the catalog has one, else ``default`` (already a catalog message)."""
        return self(key, **values) if key in self.messages else default


class LocalizedError(PlannerError):
    """An input error the UI itself finds (a pasted or uploaded file): its message is a catalog
    key, shown in the reader's language; ``str()`` is the English text."""

    def __init__(self, key: str, *, field: str | None = None, **values: Any) -> None:
        self.key = key
        self.values = values
        super().__init__(Translator(DEFAULT_LANG)(key, **values), field=field)


# ----- numbers and units: the same in every language -----------------------------------------------


def fmt_int(n: int | float | None) -> str:
    return "—" if n is None else f"{int(n):,}"


def fmt_pct(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}%"


def fmt_bytes(n: int | float | None) -> str:
    """Binary units (GiB = 2^30 bytes), as GPU memory is quoted and nvidia-smi reports it."""
    return "—" if n is None else human_bytes(n)


def fmt_gib(n: int | float | None, digits: int = 2) -> str:
    return "—" if n is None else f"{n / 2**30:,.{digits}f} GiB"


def fmt_signed_gib(n: int | float) -> str:
    return f"{n / 2**30:+,.2f} GiB"


def fmt_flops(n: int | float | None) -> str:
    """FLOPs in decimal units (a TFLOP is 10^12, as GPU peaks are quoted): ``21.24 TFLOP``."""
    if n is None:
        return "—"
    for scale, unit in ((1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} FLOP"
