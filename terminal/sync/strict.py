"""Strict JSON in, canonical JSON out: the two halves every signed payload needs.

Inbound payloads come from the network and land in the member list that opens
doors, so nothing is taken on trust: duplicate keys, unknown keys, booleans
posing as integers and out-of-range values are all refused with a
:class:`~terminal.exceptions.PayloadError` whose ``where`` is the dotted path
of the offending field (``delta.upserts[3].cards[0].ref``), so one log line
tells the back-office team exactly what to fix.

Outbound, :func:`canonical_json` is the one serialisation whose bytes are
hashed and signed. It is RFC 8785 (JCS) restricted to the value types the
protocol uses (strings, integers, arrays, objects with ASCII keys), which is
what Python's ``json`` produces with sorted keys, no spaces and raw UTF-8.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Set as AbstractSet
from typing import Any

from terminal.exceptions import PayloadError

#: An identifier that must survive as one MQTT topic level and a SQLite key:
#: no '/', '+', '#', spaces or control characters.
TOKEN_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.\-]{0,63}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
#: Characters no free-text field may hold: control characters corrupt log lines and screens,
#: and a lone UTF-16 surrogate (which JSON's ``\ud800`` escape can smuggle in) has no UTF-8
#: form, so the record could never be written as its canonical line.
_TEXT_FAULT_RE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
#: Longest rendering of a sender's value or name inside an error message.
_SHOWN = 40

_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                            allow_nan=False, check_circular=False)


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` in the one byte form that is hashed and signed (JCS subset)."""
    return _ENCODER.encode(value).encode("utf-8")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {quote_value(key)}")
            seen.add(key)
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


_DECODER = json.JSONDecoder(object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)


def loads_object(data: bytes, where: str) -> dict[str, Any]:
    """Parse UTF-8 JSON that must be one object; duplicate keys and NaN are refused."""
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PayloadError(where, f"not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:
        raise PayloadError(where, f"not valid JSON: {exc}") from None
    except RecursionError:
        # json's C scanner recurses once per array or object level: a few KB of
        # "[[[[" (well inside every size limit) exhaust the stack. Documents of
        # this protocol are five levels deep at most, so this is never a real one.
        raise PayloadError(where, "JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise PayloadError(where, f"expected a JSON object, got {type(value).__name__}")
    return value


def check_keys(obj: Any, where: str, required: AbstractSet[str],
               optional: AbstractSet[str] = frozenset()) -> dict[str, Any]:
    """Refuse a non-object, a missing required key or any key the protocol does not define."""
    if type(obj) is not dict:
        raise PayloadError(where, f"expected an object, got {type(obj).__name__}")
    keys = obj.keys()
    if keys == required:  # the common case, checked in one set comparison
        return obj
    missing = sorted(k for k in required if k not in obj)
    if missing:
        raise PayloadError(f"{where}.{missing[0]}", "required key missing")
    unknown = sorted(k for k in keys if k not in required and k not in optional)
    if unknown:
        raise PayloadError(f"{where}.{label(unknown[0])}", "unknown key")
    return obj


def within(where: str, exc: PayloadError) -> PayloadError:
    """The same fault, located inside ``where`` (for items of arrays, checked with ``where=""``).

    Paths are built only when something is wrong: formatting one for every
    field of 1.1 million records would cost more than checking them.
    """
    return PayloadError(where + exc.where, exc.problem)


def get_int(obj: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    """An integer in ``[lo, hi]``; a JSON ``true`` is not an integer here."""
    value = obj[key]
    if type(value) is not int:
        raise PayloadError(f"{where}.{key}", f"expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise PayloadError(f"{where}.{key}", f"{quote_value(value)} is outside {lo}..{hi}")
    return value


def get_str(obj: dict[str, Any], key: str, where: str, max_len: int,
            pattern: re.Pattern[str] | None = None, allow_empty: bool = True) -> str:
    """A string of at most ``max_len`` characters, matching ``pattern`` in full if given.

    Without a pattern, control characters are refused (they would corrupt
    log lines and screens).
    """
    value = obj[key]
    problem = _str_problem(value, max_len, pattern, allow_empty)
    if problem:
        raise PayloadError(f"{where}.{key}", problem)
    return value


def check_str(value: Any, where: str, max_len: int,
              pattern: re.Pattern[str] | None = None, allow_empty: bool = True) -> str:
    """:func:`get_str` for strings that sit in arrays rather than under a key."""
    problem = _str_problem(value, max_len, pattern, allow_empty)
    if problem:
        raise PayloadError(where, problem)
    return value


def _str_problem(value: Any, max_len: int, pattern: re.Pattern[str] | None,
                 allow_empty: bool) -> str:
    if type(value) is not str:
        return f"expected a string, got {type(value).__name__}"
    if not value:
        return "" if allow_empty else "must not be empty"
    if len(value) > max_len:
        return f"longer than {max_len} characters"
    if pattern is not None:
        if not pattern.fullmatch(value):
            return f"{quote_value(value)} does not match {pattern.pattern}"
    else:
        fault = _TEXT_FAULT_RE.search(value)
        if fault:
            return ("contains a lone UTF-16 surrogate (not encodable as UTF-8)"
                    if fault.group() >= "\ud800" else "contains control characters")
    return ""


def get_choice(obj: dict[str, Any], key: str, where: str, choices: Collection[str]) -> str:
    """One of a fixed set of words."""
    value = obj[key]
    if type(value) is not str or value not in choices:
        raise PayloadError(f"{where}.{key}", f"{quote_value(value)} is not one of {sorted(choices)}")
    return value


def get_list(obj: dict[str, Any], key: str, where: str, max_items: int) -> list[Any]:
    """An array of at most ``max_items`` elements (elements are checked by the caller)."""
    value = obj[key]
    if type(value) is not list:
        raise PayloadError(f"{where}.{key}", f"expected an array, got {type(value).__name__}")
    if len(value) > max_items:
        raise PayloadError(f"{where}.{key}", f"more than {max_items} items")
    return value


def get_hex64(obj: dict[str, Any], key: str, where: str) -> str:
    """A SHA-256 sized value as 64 lowercase hex digits (the only spelling hashed)."""
    return get_str(obj, key, where, 64, HEX64_RE, allow_empty=False)


def refuse_repeats(values: Collection[str], where: str) -> None:
    """Name the first value that appears twice in a list that must hold each once."""
    if len(set(values)) == len(values):
        return
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise PayloadError(f"{where}[{i}]", f"{value!r} appears more than once")
        seen.add(value)


def label(name: str, limit: int = _SHOWN) -> str:
    """A sender's key, scope or topic as it may stand in a ``where``: short, unprintables escaped.

    Names in error paths come from the payload; a 4 MB key or a lone
    surrogate there would flood, or break, the one log line meant to say what
    is wrong.
    """
    head = name[:limit]
    if not head.isprintable():
        head = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in head)
    if len(head) > limit or len(name) > limit:
        return head[:limit - 3] + "..."
    return head


def quote_value(value: Any) -> str:
    """A sender's value as an error message may quote it, in at most a few dozen characters.

    Strings are quoted and cut; integers keep their head and digit count
    (a 4000-digit number says nothing more); arrays and objects are named by
    type only, since their repr may be megabytes long or too deeply nested to
    produce at all.
    """
    if isinstance(value, str):
        text = repr(value if len(value) <= _SHOWN else value[:_SHOWN - 3] + "...")
        return text if len(text) <= 2 * _SHOWN else text[:2 * _SHOWN - 3] + "..."  # escapes
    if type(value) is int:
        digits = str(value)
        return digits if len(digits) <= 24 else f"{digits[:12]}... ({len(digits.lstrip('-'))} digits)"
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    return f"a {type(value).__name__}"  # list or dict
