"""Per-model memoisation of derived results (method plans, counts, memory budgets).

Everything ``estimate`` derives is a pure function of (model spec, method options, settings), and
a :class:`~planner.spec.ModelSpec` is immutable, so results are cached *on the spec*: they live
exactly as long as the spec does (catalog specs are themselves cached in
:func:`planner.models._catalog_spec`), and a spec built from another config cannot see them.
A call whose arguments cannot be turned into a key (an option holding an arbitrary object) is
simply not cached. Each spec keeps at most :data:`MAX_ENTRIES_PER_SPEC` results per kind, oldest
dropped first, so a long UI session or a sweep does not grow memory without bound.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")

#: Results kept per spec and kind (method plans / memory budgets); a budget is a few kB.
MAX_ENTRIES_PER_SPEC = 512


def options_key(*parts: Any) -> str | None:
    """A canonical key for JSON-like arguments (dict order does not matter), or None where the
    arguments are not plain JSON data (a non-string dict key would be stringified and could collide)."""
    if not _plain(parts):
        return None
    try:
        return json.dumps(parts, sort_keys=True, separators=(",", ":"), allow_nan=True)
    except (TypeError, ValueError):
        return None


def memoised(owner: Any, kind: str, key: Hashable | None, compute: Callable[[], T]) -> T:
    """``compute()``, cached on ``owner`` (a ModelSpec) under (kind, key); no caching when key is None.
    Exceptions are not cached: bad input raises its specific error on every call."""
    if key is None:
        return compute()
    getter = getattr(owner, "memo_caches", None)
    if not callable(getter):
        return compute()
    cache = getter().setdefault(kind, OrderedDict())
    try:
        value = cache[key]
    except KeyError:
        value = compute()
        cache[key] = value
        if len(cache) > MAX_ENTRIES_PER_SPEC:
            cache.popitem(last=False)
        return value
    cache.move_to_end(key)
    return value



def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, bool, int, float))
