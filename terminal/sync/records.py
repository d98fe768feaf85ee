"""The member record as published, its canonical line, and the list digest.

The digest is how a terminal proves to the back office that its SQLite list
is exactly the published one, and how it checks that a delta, applied to its
list, gives the list the back office meant. It is defined over records, not
over whatever bytes happened to arrive, and as a *sum* so that a change costs
only what it changes::

    digest = hex64( SHA-256(line(r1)) + SHA-256(line(r2)) + ...  mod 2**256 )
    line(r) = canonical JSON of the record (lists sorted, see below) || "\\n"

each SHA-256 read as a big-endian integer. A delta of 10,000 changes moves
the digest by 10,000 subtractions and additions; an ordered hash would have
to re-read all 1.1 million stored lines (~1.5 s on this class of machine) to
check it. An additive hash is a consistency check, not what makes a list
authentic: every line it sums was signed by the back office (chunks by their
SHA-256 in the signed manifest, deltas whole), so nobody who could craft
colliding sets can get a line in. The empty list's digest is 64 zeros.

A record's two lists have no meaningful order, so the canonical form sorts
them: ``access_groups`` ascending, ``cards`` by (kind, ref). ``member_no`` is
ASCII only, so byte order, code-point order and SQLite's default BINARY
collation all sort the same way (snapshot chunks come in that order).
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


#: Digest of the list with no members.
EMPTY_DIGEST = "0" * 64
_DIGEST_MOD = 1 << 256


def line_term(line: bytes) -> int:
    """One line's share of the list digest."""
    return int.from_bytes(hashlib.sha256(line).digest(), "big")


class ListDigest:
    """Count and digest of a list, built by streaming it or moved along by a change.

    The terminal and the back office stream lists through :meth:`add_line`
    in member_no order, which also proves no member is listed twice; a
    delta applied to a held list moves the held figures with :meth:`plus`
    and :meth:`minus`, one per line it adds or removes.
    """

    def __init__(self, count: int = 0, digest: str = EMPTY_DIGEST) -> None:
        self.count = count
        self._sum = int(digest, 16)
        self._last = ""

    def add(self, record: Mapping[str, Any]) -> None:
        """Add one canonical record (use :func:`validate_member` on anything else first)."""
        self.add_line(canonical_line(record), record["member_no"])

    def add_line(self, line: bytes, member_no: str) -> None:
        """Add the next record of a stream, already encoded by :func:`canonical_line`."""
        if self.count and member_no <= self._last:
            raise ValueError(f"member_no {member_no!r} is not after {self._last!r}: "
                             "a list is streamed in member_no order")
        self._last = member_no
        self.plus(line)

    def plus(self, line: bytes) -> None:
        """A member's line joins the list."""
        self._sum += line_term(line)
        self.count += 1

    def minus(self, line: bytes) -> None:
        """A member's line leaves the list."""
        self._sum -= line_term(line)
        self.count -= 1

    def hexdigest(self) -> str:
        return f"{self._sum % _DIGEST_MOD:064x}"


def list_digest(records: Iterable[Mapping[str, Any]]) -> tuple[int, str]:
    """Count and digest of canonical records given in member_no order."""
    digest = ListDigest()
    for record in records:
        digest.add(record)
    return digest.count, digest.hexdigest()


# -- fast path for canonical lines --------------------------------------------------------

_Q_TOKEN = r"[0-9A-Za-z][0-9A-Za-z_.\-]{0,63}"
#: One character of a JSON string in canonical form that has no control characters.
_Q_CHAR = r'(?:[^"\\\x00-\x1f\x7f]|\\["\\])'
_Q_PIN_CHAR = r'(?:[\x21\x23-\x5b\x5d-\x7e]|\\["\\])'
_Q_INT = r"(0|[1-9][0-9]{0,9})"
_Q_KINDS = "|".join(sorted(CARD_KINDS))
_Q_CARD = r'\{"kind":"(?:%s)","ref":"[0-9a-f]{64}"\}' % _Q_KINDS
_QUICK_RE = re.compile(
    r'\{"access_groups":\[((?:"%(tok)s")(?:,"%(tok)s")*)?\]'
    r',"batch":[123]'
    r',"canteen_group":"(?:%(tok)s)?"'
    r',"cards":\[((?:%(card)s)(?:,%(card)s)*)?\]'
    r',"member_no":"([0-9A-Za-z][0-9A-Za-z_\-]{0,31})"'
    r',"name":"%(char)s{1,32}"'
    r',"org":"%(char)s{0,64}"'
    r',"pin_hash":"%(pin)s{0,128}"'
    r',"role":"(?:%(roles)s)"'
    r',"status":"(?:%(statuses)s)"'
    r',"tier":[0-9]'
    r',"valid_from":%(int)s'
    r',"valid_until":%(int)s\}'
    % {"tok": _Q_TOKEN, "card": _Q_CARD,
       "char": _Q_CHAR, "pin": _Q_PIN_CHAR, "int": _Q_INT,
       "roles": "|".join(sorted(ROLES)), "statuses": "|".join(sorted(STATUSES))}
)
_Q_CARD_RE = re.compile(r'\{"kind":"(%s)","ref":"([0-9a-f]{64})"\}' % _Q_KINDS)


def quick_line(line: bytes) -> tuple[str, tuple[str, ...]] | None:
    """``(member_no, card refs)`` of a line that is surely a valid canonical record, else None.

    Applying 1.1 million members spends most of its time proving each line
    is a valid record in canonical form; parsing, validating and re-encoding
    every line costs ~45 µs, this one compiled pattern plus a few list checks
    ~5 µs. It is a filter, never a judge: it accepts only lines that
    :func:`validate_member` would accept and re-encode to the same bytes, and
    anything it does not recognise (including every invalid line) returns
    None, so the caller falls back to the full check, which names the fault.
    ``line`` is without its newline.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    m = _QUICK_RE.fullmatch(text)
    if m is None:
        return None
    groups_text, cards_text, member_no, valid_from, valid_until = m.groups()
    if groups_text and '","' in groups_text:
        groups = groups_text[1:-1].split('","')
        if len(groups) > MAX_GROUPS or not all(map(str.__lt__, groups, groups[1:])):
            return None  # repeated or unsorted groups (or too many): let the full check say so
    cards = _Q_CARD_RE.findall(cards_text) if cards_text else []
    refs = tuple(ref for _kind, ref in cards)
    if len(cards) > 1 and (len(cards) > MAX_CARDS or len(set(refs)) != len(refs)
                           or not all(map(tuple.__lt__, cards, cards[1:]))):
        return None
    start, end = int(valid_from), int(valid_until)
    if start > MAX_TIME or end > MAX_TIME or (end and end <= start):
        return None
    return member_no, refs
