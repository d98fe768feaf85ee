"""Sans-I/O contactless EMV read of the card number, and nothing financial.

A bank card is used only as an identifier: PPSE -> pick an application ->
SELECT -> GET PROCESSING OPTIONS -> READ RECORD until tag 5A (PAN) or 57
(Track 2 equivalent) shows up. The GPO is mandatory on contactless cards
(UnionPay qPBOC, Visa qVSDC, Mastercard) before records can be read, so the
PDOL is filled with neutral terminal data: amount 0, China (0156) for
country and currency, today's date, a fresh unpredictable number.

Functions build commands and judge answers; :mod:`terminal.cards.profiles`
does the awaiting.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from terminal.cards import apdu, tlv
from terminal.exceptions import MalformedResponse

PPSE = b"2PAY.SYS.DDF01"

#: Application identifiers we read, from most to least preferred when the
#: card gives no priority. UnionPay (PBOC) first: the city's bank cards are.
KNOWN_AIDS: Mapping[bytes, str] = {
    bytes.fromhex("A000000333010101"): "UnionPay Debit",
    bytes.fromhex("A000000333010102"): "UnionPay Credit",
    bytes.fromhex("A000000333010103"): "UnionPay Quasi-credit",
    bytes.fromhex("A000000333010106"): "UnionPay Electronic Cash",
    bytes.fromhex("A0000000031010"): "Visa",
    bytes.fromhex("A0000000032010"): "Visa Electron",
    bytes.fromhex("A0000000041010"): "Mastercard",
    bytes.fromhex("A0000000043060"): "Maestro",
}

TAG_FCI = 0x6F
TAG_FCI_PROPRIETARY = 0xA5
TAG_FCI_ISSUER_DISCRETIONARY = 0xBF0C
TAG_DIRECTORY_ENTRY = 0x61
TAG_AID = 0x4F
TAG_PRIORITY = 0x87
TAG_PDOL = 0x9F38
TAG_RMTF1 = 0x80
TAG_RMTF2 = 0x77
TAG_AIP = 0x82
TAG_AFL = 0x94
TAG_RECORD = 0x70
TAG_PAN = 0x5A
TAG_TRACK2 = 0x57

#: READ RECORD commands one card may cost us; real cards need 1-6.
MAX_RECORDS = 16

#: Tags whose PDOL value is numeric (n format): padded/truncated on the left.
_NUMERIC_TAGS = frozenset({0x9F02, 0x9F03, 0x9F1A, 0x5F2A, 0x9A, 0x9C})


@dataclass(frozen=True)
class AppEntry:
    """One application the PPSE directory lists."""

    aid: bytes
    priority: int  # 1 = highest; 0 = the card did not say (sorted last)
    order: int  # position in the directory, to break ties stably


@dataclass(frozen=True)
class TerminalData:
    """The values a reader offers in the PDOL. Nothing here moves money.

    ``ttq`` (9F66): contactless EMV mode + contact chip + online PIN +
    signature supported, consumer device CVM; what a plain reader declares.
    """

    today: datetime.date
    unpredictable: bytes
    country: bytes = b"\x01\x56"
    currency: bytes = b"\x01\x56"
    ttq: bytes = bytes.fromhex("36004000")
    terminal_type: bytes = b"\x22"
    extra: Mapping[int, bytes] = field(default_factory=dict)

    def values(self) -> dict[int, bytes]:
        """Tag -> value for every PDOL entry we know how to fill."""
        d = self.today
        date = bytes(((y // 10) << 4) | (y % 10) for y in (d.year % 100, d.month, d.day))
        known = {
            0x9F66: self.ttq,
            0x9F02: bytes(6),  # amount, authorised: 0
            0x9F03: bytes(6),  # amount, other: 0
            0x9F1A: self.country,
            0x5F2A: self.currency,
            0x9A: date,
            0x9C: b"\x00",  # transaction type: goods and services
            0x9F37: self.unpredictable,
            0x95: bytes(5),  # TVR: all clear
            0x9F35: self.terminal_type,
        }
        known.update(self.extra)
        return known


def select_by_name(name: bytes) -> bytes:
    """ISO SELECT by DF name, first or only occurrence, FCI requested."""
    return apdu.command(0x00, 0xA4, 0x04, 0x00, name, le=0)


_SELECT_PPSE = select_by_name(PPSE)


def select_ppse() -> bytes:
    """SELECT of the contactless directory; built once, as every card that is not a union card gets it."""
    return _SELECT_PPSE


def _template(raw: bytes, what: str, tag: int) -> tuple[tlv.Tlv, ...]:
    """Parse a 9000 answer and require it to be one ``tag`` template."""
    resp = apdu.expect(raw, what)
    items = tlv.parse(resp.data)
    if len(items) != 1 or items[0].tag != tag:
        raise MalformedResponse(f"{what}: answer is not a {tag:X} template")
    return items


def parse_ppse(raw: bytes) -> list[AppEntry]:
    """List the directory entries of the PPSE FCI (6F / A5 / BF0C / 61...)."""
    items = _template(raw, "SELECT PPSE", TAG_FCI)
    entries: list[AppEntry] = []
    for item in tlv.walk(items):
        if item.tag != TAG_DIRECTORY_ENTRY:
            continue
        aid = tlv.find_value(item.children, TAG_AID)
        if aid is None or not 5 <= len(aid) <= 16:
            raise MalformedResponse("SELECT PPSE: directory entry without a valid AID")
        prio = tlv.find_value(item.children, TAG_PRIORITY)
        priority = prio[0] & 0x0F if prio and len(prio) == 1 else 0
        entries.append(AppEntry(aid, priority, len(entries)))
    if not entries:
        raise MalformedResponse("SELECT PPSE: no application listed")
    return entries


def choose_application(entries: Sequence[AppEntry], known: Iterable[bytes] = KNOWN_AIDS) -> AppEntry:
    """Highest priority among the AIDs we know; our preference order breaks ties.

    The card's own priority (tag 87, 1 = highest) wins, as EMV Book 1
    §12.4 wants; applications without one come after those with one.
    """
    preference = {aid: rank for rank, aid in enumerate(known)}
    ranked: list[tuple[tuple[int, int, int], AppEntry]] = []
    for entry in entries:
        ours = next((rank for aid, rank in preference.items() if entry.aid.startswith(aid)), None)
        if ours is not None:
            ranked.append(((entry.priority or 16, ours, entry.order), entry))
    if not ranked:
        raise MalformedResponse("EMV: no supported application on the card")
    return min(ranked, key=lambda pair: pair[0])[1]


def parse_select_application(raw: bytes) -> bytes:
    """Return the PDOL of the selected application (empty when it has none)."""
    items = _template(raw, "SELECT AID", TAG_FCI)
    return tlv.find_value(items, TAG_PDOL) or b""


def _fit(tag: int, value: bytes, length: int) -> bytes:
    """Size a value to the length the card asked for (EMV Book 3 §5.4)."""
    if tag in _NUMERIC_TAGS:
        value = value[-length:] if length else b""
        return bytes(length - len(value)) + value
    value = value[:length]
    return value + bytes(length - len(value))


def pdol_data(pdol: bytes, terminal: TerminalData) -> bytes:
    """Concatenate the requested values; unknown tags are sent as zeros."""
    values = terminal.values()
    return b"".join(_fit(tag, values.get(tag, b""), length) for tag, length in tlv.parse_dol(pdol))


def get_processing_options(pdol: bytes, terminal: TerminalData) -> bytes:
    """GPO with the command template 83 holding the PDOL data."""
    data = tlv.encode(0x83, pdol_data(pdol, terminal))
    if len(data) > 255:
        raise MalformedResponse("GPO: the card's PDOL asks for too much data")
    return apdu.command(0x80, 0xA8, 0x00, 0x00, data, le=0)


@dataclass(frozen=True)
class ProcessingOptions:
    """What GPO returned: the AFL and any objects sent inline (format 2)."""

    afl: bytes
    objects: tuple[tlv.Tlv, ...]


def parse_processing_options(raw: bytes) -> ProcessingOptions:
    """Accept format 1 (80: AIP || AFL) and format 2 (77 template)."""
    resp = apdu.expect(raw, "GPO")
    items = tlv.parse(resp.data)
    if len(items) != 1:
        raise MalformedResponse("GPO: answer is not one template")
    top = items[0]
    if top.tag == TAG_RMTF1:
        if len(top.value) < 2:
            raise MalformedResponse("GPO: format 1 shorter than the AIP")
        return ProcessingOptions(top.value[2:], ())
    if top.tag == TAG_RMTF2:
        return ProcessingOptions(tlv.find_value(top.children, TAG_AFL) or b"", top.children)
    raise MalformedResponse("GPO: unknown response template")


def records_to_read(afl: bytes) -> list[tuple[int, int]]:
    """Expand the AFL into (SFI, record) pairs, refusing nonsense and excess."""
    if len(afl) % 4:
        raise MalformedResponse("AFL: length is not a multiple of 4")
    out: list[tuple[int, int]] = []
    for i in range(0, len(afl), 4):
        sfi, first, last = afl[i] >> 3, afl[i + 1], afl[i + 2]
        if afl[i] & 0x07 or not 1 <= sfi <= 30 or first == 0 or last < first:
            raise MalformedResponse("AFL: invalid entry")
        out.extend((sfi, rec) for rec in range(first, last + 1))
        if len(out) > MAX_RECORDS:
            raise MalformedResponse("AFL: too many records")
    return out


def read_record(sfi: int, number: int) -> bytes:
    """READ RECORD ``number`` of file ``sfi``."""
    return apdu.command(0x00, 0xB2, number, (sfi << 3) | 0x04, le=0)


def parse_record(raw: bytes) -> tuple[tlv.Tlv, ...]:
    """A record is one 70 template."""
    return _template(raw, "READ RECORD", TAG_RECORD)


def luhn_valid(digits: str) -> bool:
    """ISO/IEC 7812 check digit: catches bit rot and made-up numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _digits(nibbles: str, what: str) -> str:
    if not nibbles.isdigit() or not 12 <= len(nibbles) <= 19 or not luhn_valid(nibbles):
        raise MalformedResponse(f"EMV: {what} does not hold a valid card number")
    return nibbles


def pan_from_objects(objects: Iterable[tlv.Tlv]) -> str | None:
    """The PAN from tag 5A, else from Track 2 equivalent (57) up to the 'D'."""
    objects = tuple(objects)
    pan = tlv.find_value(objects, TAG_PAN)
    if pan is not None:
        return _digits(pan.hex().upper().rstrip("F"), "tag 5A")
    track2 = tlv.find_value(objects, TAG_TRACK2)
    if track2 is not None:
        head, sep, _ = track2.hex().upper().partition("D")
        if not sep:
            raise MalformedResponse("EMV: track 2 equivalent without separator")
        return _digits(head, "tag 57")
    return None
