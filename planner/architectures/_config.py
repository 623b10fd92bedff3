"""Reading config.json values with the checks every family needs."""

from __future__ import annotations

from typing import Any

from planner.errors import ConfigError

_MISSING = object()


def require(cfg: dict[str, Any], key: str | tuple[str, ...], typ: type = int, *, default: Any = _MISSING,
            positive: bool = True) -> Any:
    """Return ``cfg[key]`` (first present of several alias keys), type- and range-checked.

    Missing and no default -> ConfigError naming the key. ``None`` counts as missing.
    """
    keys = (key,) if isinstance(key, str) else key
    for k in keys:
        if cfg.get(k) is not None:
            value = cfg[k]
            break
    else:
        if default is _MISSING:
            raise ConfigError(f"required key is missing from config.json (accepted names: {', '.join(keys)})", field=keys[0])
        return default
    name = k
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"must be an integer, got {value!r}", field=name)
        if positive and value <= 0:
            raise ConfigError(f"must be a positive integer, got {value}", field=name)
    elif typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {value!r}", field=name)
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"must be a number, got {value!r}", field=name)
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {value!r}", field=name)
    return value


def divisible(a: int, b: int, a_name: str, b_name: str) -> int:
    if a % b:
        raise ConfigError(f"{a_name}={a} is not divisible by {b_name}={b}", field=a_name)
    return a // b


def dtype_of(cfg: dict[str, Any]) -> str | None:
    value = cfg.get("torch_dtype", cfg.get("dtype"))
    return value if isinstance(value, str) else None


def common(cfg: dict[str, Any], *, model_type: str, architecture: str, task: str, hidden: int, layers: int,
           heads: int, kv_heads: int, head_dim: int, intermediate: int, vocab: int, tie: bool,
           max_pos: int | None, act: str, **extra: Any) -> dict[str, Any]:
    if heads % kv_heads:
        raise ConfigError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}",
                          field="num_key_value_heads")
    return dict(model_type=model_type, architecture=architecture, task=task, hidden_size=hidden, num_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                intermediate_size=intermediate, vocab_size=vocab, tie_word_embeddings=tie,
                max_position_embeddings=max_pos, hidden_act=act, torch_dtype=dtype_of(cfg), **extra)
