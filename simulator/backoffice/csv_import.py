"""Import members from the CSV files the card office keeps in a spreadsheet.

Format (UTF-8, a BOM is fine; first line is the header; column order is free;
surrounding spaces in a cell are ignored; blank lines are skipped):

=============== ===========================================================
column          content
=============== ===========================================================
member_no       1-32 of ``0-9 A-Z a-z _ -``, starting with a letter or digit
name            full or already masked name; stored masked (王小明 -> 王*明)
org             work unit name, up to 64 characters (may be empty)
status          ``active`` | ``suspended`` | ``left``
tier            0-9
canteen_group   empty or a token (``cg-1001``)
access_groups   tokens separated by ``;`` (``site-1001;gym``), may be empty
valid_from      ``YYYY-MM-DD``: valid from 00:00 Asia/Shanghai that day
valid_until     ``YYYY-MM-DD`` last valid day (through 24:00), empty = no end
batch           1, 2 or 3
role            ``member`` | ``technician`` | ``supervisor`` | ``visitor``
pin_hash        optional column; empty = no PIN
card_kind       ``union`` | ``pan`` | ``uid`` | ``ecard``, or empty with card_id
card_id         the raw identifier, hashed with the deployment key on import:
                union/uid = UID in hex (4, 7 or 10 bytes), pan = 12-19 digits
                with a valid Luhn digit, ecard = the row's member_no (the QR
                token carries it, see docs/card-profiles.md)
=============== ===========================================================

A member with several cards takes one row per card; the member columns must
then be identical on each of its rows. A card may belong to one member only.

The import is all or nothing: every bad cell is collected as (line, column,
problem) and one :class:`~terminal.exceptions.ImportRejected` carries them
all; no record is returned while any row is bad. Lines are physical lines of
the file (the header is line 1; a row with a quoted line break is reported at
the line it starts on); a row the CSV parser or UTF-8 decoder cannot read at
all is reported with column ``*``.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, TextIO

from terminal.cardref import card_ref
from terminal.exceptions import ImportRejected, PayloadError
from terminal.sync.records import (
    CARD_KINDS,
    MAX_TIER,
    MEMBER_NO_RE,
    PIN_HASH_RE,
    ROLES,
    STATUSES,
    validate_member,
)
from terminal.sync.strict import TOKEN_RE, check_str, refuse_repeats

from .generate import luhn_valid, mask_name, midnight

MEMBER_COLUMNS = ("member_no", "name", "org", "status", "tier", "canteen_group", "access_groups",
                  "valid_from", "valid_until", "batch", "role", "pin_hash")
CARD_COLUMNS = ("card_kind", "card_id")
OPTIONAL_COLUMNS = frozenset({"pin_hash"})

_NUMBER_RE = re.compile(r"[0-9]{1,9}")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_HEX_UID_RE = re.compile(r"(?:[0-9A-Fa-f]{8}|[0-9A-Fa-f]{14}|[0-9A-Fa-f]{20})")
_PAN_RE = re.compile(r"[0-9]{12,19}")

Error = tuple[int, str, str]


def _number(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(value: str, column: str) -> int:
        if not _NUMBER_RE.fullmatch(value) or not lo <= int(value) <= hi:
            raise PayloadError(column, f"{value!r} is not a whole number from {lo} to {hi}")
        return int(value)
    return parse


def _choice(choices: frozenset[str]) -> Callable[[str, str], str]:
    def parse(value: str, column: str) -> str:
        if value not in choices:
            raise PayloadError(column, f"{value!r} is not one of {', '.join(sorted(choices))}")
        return value
    return parse


def _day(value: str, column: str) -> date:
    try:
        if _DATE_RE.fullmatch(value):
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise PayloadError(column, f"{value!r} is not a date YYYY-MM-DD")


def _groups(value: str, column: str) -> list[str]:
    if not value:
        return []
    groups = [g.strip() for g in value.split(";")]
    for i, group in enumerate(groups):
        check_str(group, f"{column}[{i}]", 64, TOKEN_RE, allow_empty=False)
    refuse_repeats(groups, column)
    return groups


#: Member column -> parser from cell text to the record's value.
_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "member_no": lambda v, c: check_str(v, c, 32, MEMBER_NO_RE, allow_empty=False),
    "name": lambda v, c: mask_name(check_str(v, c, 32, allow_empty=False)),
    "org": lambda v, c: check_str(v, c, 64),
    "status": _choice(STATUSES),
    "tier": _number(0, MAX_TIER),
    "canteen_group": lambda v, c: v and check_str(v, c, 64, TOKEN_RE),
    "access_groups": _groups,
    "valid_from": lambda v, c: midnight(_day(v, c)),
    "valid_until": lambda v, c: midnight(_day(v, c) + timedelta(days=1)) if v else 0,
    "batch": _number(1, 3),
    "role": _choice(ROLES),
    "pin_hash": lambda v, c: v and check_str(v, c, 128, PIN_HASH_RE),
}


def parse_card_id(kind: str, value: str, member: str) -> bytes | str:
    """Turn a card_id cell into the identifier :func:`card_ref` hashes for ``kind``."""
    if kind in ("union", "uid"):
        if not _HEX_UID_RE.fullmatch(value):
            raise PayloadError("card_id", f"{value!r} is not a 4, 7 or 10-byte UID in hex")
        return bytes.fromhex(value)
    if kind == "pan":
        if not _PAN_RE.fullmatch(value) or not luhn_valid(value):
            raise PayloadError("card_id", f"{value!r} is not a 12-19 digit card number "
                               "with a valid Luhn check digit")
        return value
    if value != member:
        raise PayloadError("card_id", f"an e-card's id is its member_no {member!r}, not {value!r}")
    return value


@dataclass
class _Member:
    line: int
    fields: dict[str, Any]
    cards: list[dict[str, str]] = field(default_factory=list)


def read_members_csv(source: str | os.PathLike[str] | TextIO, card_key: bytes) -> list[dict[str, Any]]:
    """Read, validate and hash a member CSV; records come back sorted by member_no.

    Raises :class:`ImportRejected` listing every bad cell if any row is bad.
    """
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        with open(name, "rb") as fh:
            data = fh.read()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise ImportRejected(name, [(line, "*", f"not UTF-8 text (byte {exc.start})")]) from None
        return _read(io.StringIO(text, newline=""), name, card_key)
    return _read(source, getattr(source, "name", "<csv>"), card_key)


def _read(fh: TextIO, name: str, card_key: bytes) -> list[dict[str, Any]]:
    reader = csv.reader(fh)
    rows = _rows(reader)
    try:
        header = [h.strip() for h in next(rows, (0, []))[1]]
    except ImportRejected as exc:
        raise ImportRejected(name, exc.errors) from None
    errors: list[Error] = _check_header(header)
    if errors:
        raise ImportRejected(name, errors)
    members: dict[str, _Member] = {}
    card_lines: dict[str, int] = {}
    try:
        for start, row in rows:
            if len(row) != len(header):
                column = header[len(row)] if len(row) < len(header) else f"#{len(header) + 1}"
                errors.append((start, column, f"row has {len(row)} fields, header has {len(header)}"))
                continue
            cells = {h: v.strip() for h, v in zip(header, row)}
            cells.setdefault("pin_hash", "")
            _read_row(start, cells, card_key, members, card_lines, errors)
    except ImportRejected as exc:  # the rest of the file cannot be read: report what we have
        errors += exc.errors
    records = [] if errors else _finish(members, errors)
    if errors:
        raise ImportRejected(name, sorted(errors))
    return records


def _rows(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """Non-blank rows with the physical line each starts on (quoted cells may span lines)."""
    line = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportRejected("", [(max(reader.line_num, 1), "*", f"unreadable: {exc}")]) from None
        start, line = line + 1, reader.line_num
        if row and (len(row) > 1 or row[0].strip()):
            yield start, row


def _check_header(header: list[str]) -> list[Error]:
    if not any(header):
        return [(1, "member_no", "file is empty: a header line is required")]
    known = set(MEMBER_COLUMNS) | set(CARD_COLUMNS)
    errors = [(1, h, "unknown column") for h in header if h not in known]
    errors += [(1, c, "required column missing") for c in (*MEMBER_COLUMNS, *CARD_COLUMNS)
               if c not in header and c not in OPTIONAL_COLUMNS]
    errors += [(1, h, "column appears twice") for i, h in enumerate(header) if h in header[:i]]
    return errors


def _read_row(line: int, cells: dict[str, str], card_key: bytes, members: dict[str, _Member],
              card_lines: dict[str, int], errors: list[Error]) -> None:
    """Parse one row into ``members``; every bad cell becomes one entry in ``errors``."""
    fields: dict[str, Any] = {}
    for column, parse in _PARSERS.items():
        try:
            fields[column] = parse(cells[column], column)
        except PayloadError as exc:
            errors.append((line, column, exc.problem))
    if "valid_from" in fields and fields.get("valid_until") and \
            fields["valid_until"] <= fields["valid_from"]:
        errors.append((line, "valid_until", "is before valid_from"))
    card = _read_card(line, cells, card_key, card_lines, errors)
    if len(fields) != len(_PARSERS):
        return
    member = members.get(fields["member_no"])
    if member is None:
        member = members[fields["member_no"]] = _Member(line, fields)
    else:
        for column, value in fields.items():
            if member.fields[column] != value:
                errors.append((line, column, f"differs from line {member.line} of the same member"))
    if card is not None:
        member.cards.append(card)


def _read_card(line: int, cells: dict[str, str], card_key: bytes, card_lines: dict[str, int],
               errors: list[Error]) -> dict[str, str] | None:
    kind, value = cells["card_kind"], cells["card_id"]
    if not kind and not value:
        return None
    if kind not in CARD_KINDS:
        errors.append((line, "card_kind", f"{kind!r} is not one of {', '.join(sorted(CARD_KINDS))}"))
        return None
    try:
        ref = card_ref(card_key, kind, parse_card_id(kind, value, cells["member_no"])).hex()
    except PayloadError as exc:
        errors.append((line, "card_id", exc.problem))
        return None
    if ref in card_lines:
        errors.append((line, "card_id", f"the same card is already on line {card_lines[ref]}"))
        return None
    card_lines[ref] = line
    return {"kind": kind, "ref": ref}


def _finish(members: dict[str, _Member], errors: list[Error]) -> list[dict[str, Any]]:
    """Assemble records and run the terminal's own validation over each as a last guard."""
    records = []
    for member_no in sorted(members):
        member = members[member_no]
        try:
            records.append(validate_member({**member.fields, "cards": member.cards}))
        except PayloadError as exc:
            column = exc.where.split(".")[1].split("[")[0] if "." in exc.where else exc.where
            errors.append((member.line, "card_id" if column == "cards" else column, exc.problem))
    return records
