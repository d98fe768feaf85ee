"""Write a config table back out as TOML (the standard library only reads it).

Provisioning writes ``terminal.toml`` from collected settings; keeping the
writer apart keeps provisioning about *what* goes into a terminal, and this
about spelling it so ``tomllib`` reads back exactly the same table.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    """A key as TOML spells it: bare when it can be, quoted otherwise."""
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(value: str) -> str:
    # JSON's escapes are all valid TOML basic-string escapes; DEL is the one control
    # character JSON leaves raw and TOML forbids.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_scalar(value: Any) -> str | None:
    """A boolean, number or string as TOML spells it; None for anything else.

    Shared with the config fuzz tests, which write documents this writer
    refuses (inline tables, dates, raw text) around the same scalars.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    return None


def _toml_value(value: Any, where: str) -> str:
    scalar = toml_scalar(value)
    if scalar is not None:
        return scalar
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    raise TypeError(f"{where}: cannot write {type(value).__name__} to TOML")


def toml_text(table: Mapping[str, Any], prefix: str = "") -> str:
    """A TOML document for ``table`` (scalars, arrays of scalars, nested tables).

    The terminal's config needs no more than that, and the standard library
    only reads TOML, so this small writer saves a dependency.
    """
    lines: list[str] = []
    subtables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in table.items():
        if value is None:
            continue
        dotted = f"{prefix}.{toml_key(key)}" if prefix else toml_key(key)
        if isinstance(value, Mapping):
            subtables.append((dotted, value))
        else:
            lines.append(f"{toml_key(key)} = {_toml_value(value, dotted)}")
    out = []
    if lines:
        out.append((f"[{prefix}]\n" if prefix else "") + "\n".join(lines) + "\n")
    elif prefix and not subtables:
        out.append(f"[{prefix}]\n")
    out.extend(toml_text(sub, dotted) for dotted, sub in subtables)
    return "\n".join(out)
