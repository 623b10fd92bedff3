"""Formatting numbers for people (same in every language)."""

from __future__ import annotations

from planner.constants import GIB, KIB, MIB


def human_bytes(n: int | float) -> str:
    n = float(n)
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{int(n):,} B"


def human_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= size:
            return f"{n / size:,.2f}{unit}"
    return f"{n:,}"
