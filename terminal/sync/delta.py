"""A signed step from list version N to N+1: upserted records and removed members.

A delta only makes sense on top of exactly the list it was computed from, so
it names its base; the header's version is ``base + 1``. It also states the
count and digest of the list after it is applied, which lets a terminal (or
the back office, from the terminal's report) notice a list that drifted and
fall back to a full snapshot instead of compounding the error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from terminal.exceptions import PayloadError
from terminal.signing import KIND_DELTA, MAX_INT, Verified

from .limits import DEFAULT_LIMITS, Limits
from .records import MEMBER_NO_RE, validate_member
from .strict import (
    canonical_json,
    check_keys,
    check_str,
    get_hex64,
    get_int,
    get_list,
    loads_object,
    refuse_repeats,
)

_DELTA_KEYS = frozenset({"base", "count", "digest", "removals", "upserts"})


@dataclass(frozen=True)
class Delta:
    """A verified, validated delta; records are canonical (see :mod:`.records`)."""

    scope: str
    version: int
    base: int
    issued: int
    expires: int
    upserts: tuple[dict[str, Any], ...]
    removals: tuple[str, ...]
    count: int
    digest: str


def encode_delta_body(base: int, upserts: Iterable[Mapping[str, Any]], removals: Iterable[str],
                      count: int, digest: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The body the back office signs as kind ``members.delta`` with version ``base + 1``."""
    body = canonical_json({
        "base": base, "count": count, "digest": digest,
        "removals": sorted(removals),
        "upserts": sorted((validate_member(r, "upserts") for r in upserts),
                          key=lambda r: r["member_no"]),
    })
    _check_body(loads_object(body, "delta"), base + 1, limits)  # never publish what terminals refuse
    return body


def decode_delta(verified: Verified, limits: Limits = DEFAULT_LIMITS) -> Delta:
    """Validate a verified delta envelope's body; every fault names its field."""
    header = verified.header
    if header.kind != KIND_DELTA:
        raise PayloadError("delta", f"envelope kind is {header.kind!r}, not {KIND_DELTA!r}")
    obj = loads_object(verified.body, "delta")
    base, upserts, removals, count, digest = _check_body(obj, header.version, limits)
    return Delta(scope=header.scope, version=header.version, base=base, issued=header.issued,
                 expires=header.expires, upserts=upserts, removals=removals, count=count,
                 digest=digest)


def _check_body(obj: dict[str, Any], version: int, limits: Limits
                ) -> tuple[int, tuple[dict[str, Any], ...], tuple[str, ...], int, str]:
    where = "delta"
    check_keys(obj, where, _DELTA_KEYS)
    base = get_int(obj, "base", where, 1, MAX_INT - 1)
    if base + 1 != version:
        raise PayloadError(f"{where}.base", f"{base} + 1 is not the signed version {version}")
    raw_upserts = get_list(obj, "upserts", where, limits.max_delta_ops)
    raw_removals = get_list(obj, "removals", where, limits.max_delta_ops)
    if len(raw_upserts) + len(raw_removals) > limits.max_delta_ops:
        raise PayloadError(where, f"more than {limits.max_delta_ops} upserts and removals")
    upserts = tuple(validate_member(r, f"{where}.upserts[{i}]") for i, r in enumerate(raw_upserts))
    removals = tuple(check_str(m, f"{where}.removals[{i}]", 32, MEMBER_NO_RE, allow_empty=False)
                     for i, m in enumerate(raw_removals))
    refuse_repeats([r["member_no"] for r in upserts] + list(removals), f"{where}.upserts+removals")
    return (base, upserts, removals, get_int(obj, "count", where, 0, limits.max_members),
            get_hex64(obj, "digest", where))
