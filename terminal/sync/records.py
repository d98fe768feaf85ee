"""The member record as published, its canonical line, and the list digest.

The digest is how a terminal proves to the back office that its SQLite list
is exactly the published one. It must be computable by streaming the store
(``ORDER BY member_no``), so it is defined over records, not over whatever
bytes happened to arrive::

    digest = SHA-256( line(r1) || line(r2) || ... )   records in member_no order
    line(r) = canonical JSON of the record (lists sorted, see below) || "\\n"

``member_no`` is ASCII only, so byte order, code-point order and SQLite's
default BINARY collation all sort the same way. A record's two lists have no
meaningful order, so the canonical form sorts them: ``access_groups``
ascending, ``cards`` by (kind, ref). The empty list's digest is SHA-256 of
nothing.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Iterable, Mapping
from typing import Any

from terminal.cardref import KINDS
from terminal.exceptions import PayloadError

from .strict import (
    HEX64_RE,
    TOKEN_RE,
    canonical_json,
    check_keys,
    check_str,
    get_choice,
    get_int,
    get_list,
    get_str,
    refuse_repeats,
    within,
)

MEMBER_KEYS = frozenset({
    "member_no", "name", "org", "status", "tier", "canteen_group", "access_groups",
    "valid_from", "valid_until", "batch", "role", "pin_hash", "cards",
})
CARD_KEYS = frozenset({"kind", "ref"})
STATUSES = frozenset({"active", "suspended", "left"})
ROLES = frozenset({"member", "technician", "supervisor", "visitor"})
CARD_KINDS = frozenset(KINDS)

MEMBER_NO_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z_\-]{0,31}")
PIN_HASH_RE = re.compile(r"[\x21-\x7e]{1,128}")
#: 2100-01-01T00:00:00+08:00; a later date is a typo, not a plan.
MAX_TIME = 4_102_416_000
MAX_CARDS = 16
MAX_GROUPS = 32
MAX_TIER = 9
_CARD_ORDER = operator.itemgetter("kind", "ref")


def validate_member(obj: Any, where: str = "member") -> dict[str, Any]:
    """Check one published record field by field and return it in canonical form.

    Every field is required and no other is allowed: a back office that adds
    a field must bump the protocol, not have terminals silently drop it.
    """
    rec = check_keys(obj, where, MEMBER_KEYS)
    valid_from = get_int(rec, "valid_from", where, 0, MAX_TIME)
    valid_until = get_int(rec, "valid_until", where, 0, MAX_TIME)
    if valid_until and valid_until <= valid_from:
        raise PayloadError(f"{where}.valid_until", f"{valid_until} is not after valid_from {valid_from}")
    groups = get_list(rec, "access_groups", where, MAX_GROUPS)
    for i, group in enumerate(groups):
        try:
            check_str(group, "", 64, TOKEN_RE, allow_empty=False)
        except PayloadError as exc:
            raise within(f"{where}.access_groups[{i}]", exc) from None
    refuse_repeats(groups, f"{where}.access_groups")
    pin_hash = rec["pin_hash"]
    if pin_hash != "":
        get_str(rec, "pin_hash", where, 128, PIN_HASH_RE)
    return {
        "access_groups": sorted(groups),
        "batch": get_int(rec, "batch", where, 1, 3),
        "canteen_group": get_str(rec, "canteen_group", where, 64, TOKEN_RE)
        if rec["canteen_group"] != "" else "",
        "cards": _validate_cards(rec, where),
        "member_no": get_str(rec, "member_no", where, 32, MEMBER_NO_RE, allow_empty=False),
        "name": get_str(rec, "name", where, 32, allow_empty=False),
        "org": get_str(rec, "org", where, 64),
        "pin_hash": pin_hash,
        "role": get_choice(rec, "role", where, ROLES),
        "status": get_choice(rec, "status", where, STATUSES),
        "tier": get_int(rec, "tier", where, 0, MAX_TIER),
        "valid_from": valid_from,
        "valid_until": valid_until,
    }


def _validate_cards(rec: dict[str, Any], where: str) -> list[dict[str, str]]:
    cards = get_list(rec, "cards", where, MAX_CARDS)
    out = []
    for i, card in enumerate(cards):
        try:
            check_keys(card, "", CARD_KEYS)
            out.append({"kind": get_choice(card, "kind", "", CARD_KINDS),
                        "ref": get_str(card, "ref", "", 64, HEX64_RE, allow_empty=False)})
        except PayloadError as exc:
            raise within(f"{where}.cards[{i}]", exc) from None
    refuse_repeats([c["ref"] for c in out], f"{where}.cards")
    out.sort(key=_CARD_ORDER)
    return out


def canonical_line(record: Mapping[str, Any]) -> bytes:
    """The bytes one record contributes to chunks and to the digest.

    ``record`` must already be canonical (as :func:`validate_member` returns it).
    """
    return canonical_json(record) + b"\n"


class ListDigest:
    """Streaming SHA-256 over canonical lines, refusing records out of order.

    The terminal feeds it from its store (``ORDER BY member_no``), the back
    office from its export; equal digests mean equal lists.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._last = ""
        self.count = 0

    def add(self, record: Mapping[str, Any]) -> None:
        """Add one canonical record (use :func:`validate_member` on anything else first)."""
        self.add_line(canonical_line(record), record["member_no"])

    def add_line(self, line: bytes, member_no: str) -> None:
        """Add one record already encoded by :func:`canonical_line`."""
        if self.count and member_no <= self._last:
            raise ValueError(f"member_no {member_no!r} is not after {self._last!r}: "
                             "the digest is defined over member_no order")
        self._last = member_no
        self._hash.update(line)
        self.count += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def list_digest(records: Iterable[Mapping[str, Any]]) -> tuple[int, str]:
    """Count and digest of canonical records given in member_no order."""
    digest = ListDigest()
    for record in records:
        digest.add(record)
    return digest.count, digest.hexdigest()
