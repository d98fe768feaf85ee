"""Turn parsed TOML tables into frozen dataclasses, strictly.

Kept apart from the schema itself (:mod:`terminal.config`) so that every
section is declared as a plain dataclass and validated the same way: an
unknown key, a wrong type or an out-of-range value raises
:class:`~terminal.exceptions.ConfigError` naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .exceptions import ConfigError

_MISSING = dataclasses.MISSING


def bounded(default: Any, lo: float | None = None, hi: float | None = None, doc: str = "") -> Any:
    """A dataclass field with an allowed range; ``load_section`` enforces it."""
    return dataclasses.field(default=default, metadata={"min": lo, "max": hi, "doc": doc})


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "table"}.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{kind} {shown}" if not isinstance(value, (list, dict)) else kind


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _convert(value: Any, tp: Any, path: str, key: str) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(path, key, "must not be empty")
    tp = inner
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(path, key, f"expected a table, got {_describe(value)}")
        return load_section(tp, value, path, key)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ConfigError(path, key, f"must be one of {choices}, got {_describe(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(path, key, f"expected an array, got {_describe(value)}")
        (item_tp, *_rest) = get_args(tp)
        return tuple(_convert(v, item_tp, path, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, key, f"expected a table, got {_describe(value)}")
        _kt, vt = get_args(tp)
        return {str(k): _convert(v, vt, path, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, key, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, key, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, key, f"expected a number, got {_describe(value)}")
        if value != value:  # NaN passes every range check: no bound is ever crossed
            raise ConfigError(path, key, "expected a number, got nan")
        try:
            return float(value)
        except OverflowError:  # TOML integers are unbounded here, floats are not
            raise ConfigError(path, key, "expected a number, got an integer too large to be one") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, key, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"config schema uses unsupported type {tp!r} at {key}")  # a schema bug


def load_section(cls: type, table: dict[str, Any], path: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``table``; every problem names ``path`` and the key."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(path, _join(prefix, key), f"unknown key (known keys here: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        dotted = _join(prefix, name)
        if name not in table:
            if f.default is _MISSING and f.default_factory is _MISSING:  # type: ignore[misc]
                raise ConfigError(path, dotted, "is required but missing")
            continue
        value = _convert(table[name], hints[name], path, dotted)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if lo is not None and value < lo:
                raise ConfigError(path, dotted, f"must be at least {lo}, got {value}")
            if hi is not None and value > hi:
                raise ConfigError(path, dotted, f"must be at most {hi}, got {value}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # The rules' own checks (__post_init__) know their section's name, not the file or where the
        # section sits in it ("canteen: windows.lunch"); say both.
        raise ConfigError(path, prefix or None, f"{exc.key}: {exc.problem}" if exc.key else exc.problem) from None
    except ValueError as exc:  # a check that failed on a value it did not expect ("²²:00" to int)
        raise ConfigError(path, prefix or None, f"invalid value: {exc}") from None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key

