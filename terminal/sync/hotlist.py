"""Signed hot-list messages: cards to refuse at once, whatever the member list says.

A lost or stolen card must stop working within seconds, long before the next
delta, so hot-list changes travel on their own topic with their own sequence
number (the envelope version). Changes are kind ``hotlist`` and apply only on
top of exactly the previous sequence; a terminal that sees a gap asks for a
resync and receives kind ``hotlist.full``, the complete current hot list,
which replaces its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from terminal.exceptions import PayloadError
from terminal.signing import KIND_HOTLIST, KIND_HOTLIST_FULL, Verified

from .limits import DEFAULT_LIMITS, Limits
from .strict import (
    canonical_json,
    check_keys,
    get_choice,
    get_hex64,
    get_list,
    loads_object,
    refuse_repeats,
)

HOTLIST_KINDS = (KIND_HOTLIST, KIND_HOTLIST_FULL)
#: Why a card is blocked, and why it is released again.
ADD_REASONS = frozenset({"lost", "stolen", "damaged", "replaced", "fraud", "other"})
REMOVE_REASONS = frozenset({"found", "error", "other"})
_BODY_KEYS = frozenset({"entries"})
_ENTRY_KEYS = frozenset({"op", "reason", "ref"})


@dataclass(frozen=True)
class HotlistEntry:
    """Block (``add``) or release (``remove``) one card reference (hex of card_ref)."""

    op: str
    ref: str
    reason: str

    @property
    def ref_bytes(self) -> bytes:
        return bytes.fromhex(self.ref)

    def as_json(self) -> dict[str, str]:
        return {"op": self.op, "ref": self.ref, "reason": self.reason}


@dataclass(frozen=True)
class Hotlist:
    """A verified hot-list message; ``full`` ones replace the terminal's whole hot list."""

    version: int
    issued: int
    expires: int
    full: bool
    entries: tuple[HotlistEntry, ...]


def encode_hotlist_body(entries: Iterable[HotlistEntry], full: bool,
                        limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The body the back office signs as ``hotlist`` or (``full``) ``hotlist.full``."""
    body = canonical_json({"entries": [e.as_json() for e in entries]})
    _check_body(loads_object(body, "hotlist"), full, limits)  # never publish what terminals refuse
    return body


def decode_hotlist(verified: Verified, limits: Limits = DEFAULT_LIMITS) -> Hotlist:
    """Validate a verified hot-list envelope's body."""
    header = verified.header
    if header.kind not in HOTLIST_KINDS:
        raise PayloadError("hotlist", f"envelope kind is {header.kind!r}, not a hot-list kind")
    full = header.kind == KIND_HOTLIST_FULL
    entries = _check_body(loads_object(verified.body, "hotlist"), full, limits)
    return Hotlist(version=header.version, issued=header.issued, expires=header.expires,
                   full=full, entries=entries)


def _check_body(obj: dict[str, object], full: bool, limits: Limits) -> tuple[HotlistEntry, ...]:
    where = "hotlist"
    check_keys(obj, where, _BODY_KEYS)
    entries = []
    for i, item in enumerate(get_list(obj, "entries", where, limits.max_hotlist_entries)):
        here = f"{where}.entries[{i}]"
        check_keys(item, here, _ENTRY_KEYS)
        op = get_choice(item, "op", here, {"add"} if full else {"add", "remove"})
        reason = get_choice(item, "reason", here, ADD_REASONS if op == "add" else REMOVE_REASONS)
        entries.append(HotlistEntry(op=op, ref=get_hex64(item, "ref", here), reason=reason))
    refuse_repeats([e.ref for e in entries], f"{where}.entries")
    return tuple(entries)
