"""A simulated contactless UnionPay debit card (qPBOC-style), read-only use.

Answers SELECT PPSE, SELECT AID, GET PROCESSING OPTIONS (checking that the
PDOL data has the length its PDOL asks for) and READ RECORD, as
``docs/card-profiles.md`` ("Profile pan") describes; nothing financial. The
:class:`EmvFault` variants give the malformed answers a terminal must turn
into a clean denial. Independent of ``terminal``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from simulator.vcard import CardPulled

UNIONPAY_DEBIT = bytes.fromhex("A000000333010101")
UNIONPAY_ECASH = bytes.fromhex("A000000333010106")
PPSE = b"2PAY.SYS.DDF01"


def _atr(historical: bytes) -> bytes:
    """PC/SC ATR of an ISO 14443-4 card: 3B 8n 80 01 hist TCK (TCK = XOR from T0)."""
    body = bytes([0x80 | len(historical), 0x80, 0x01]) + historical
    tck = 0
    for b in body:
        tck ^= b
    return b"\x3B" + body + bytes([tck])


ATR_BANK = _atr(bytes.fromhex("8073C821"))

#: PDOL of the simulated card: TTQ, amounts, country, TVR, currency, date,
#: type, unpredictable number (33 bytes of data).
PDOL = bytes.fromhex("9F66049F02069F03069F1A0295055F2A029A039C019F3704")
PDOL_DATA_LEN = 4 + 6 + 6 + 2 + 5 + 2 + 3 + 1 + 4

SW_OK = b"\x90\x00"
SW_NOT_FOUND = b"\x6A\x82"
SW_NO_RECORD = b"\x6A\x83"
SW_WRONG_LENGTH = b"\x67\x00"
SW_CONDITIONS = b"\x69\x85"
SW_INS = b"\x6D\x00"


def tlv(tag: str, *parts: bytes) -> bytes:
    """One BER-TLV object; ``tag`` in hex, value = the parts joined."""
    value = b"".join(parts)
    n = len(value)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n])
    return bytes.fromhex(tag) + length + value


def bcd(digits: str) -> bytes:
    """Digits packed two per byte, right-padded with F to a whole byte."""
    if len(digits) % 2:
        digits += "F"
    return bytes.fromhex(digits)


class EmvFault(enum.Enum):
    """Ways a bank card (or a broken one) answers wrongly."""

    NONE = "none"
    PPSE_LENGTH_OVERRUN = "ppse_length_overrun"  # a TLV length past the end
    PPSE_NO_APP = "ppse_no_app"  # directory without entries
    GPO_UNKNOWN_STATUS = "gpo_unknown_status"  # GPO answers 6F 00
    BAD_AFL = "bad_afl"  # AFL of 5 bytes
    BAD_LUHN = "bad_luhn"  # PAN with a wrong check digit
    TRUNCATED_RECORD = "truncated_record"  # a record cut short
    NO_PAN = "no_pan"  # records without 5A or 57
    DEEP_NESTING = "deep_nesting"  # templates nested 40 deep


@dataclass
class EmvCard:
    """Behaviour of a contactless bank card holding ``pan``.

    ``pan_in`` says where the number is: ``"records"`` (57 and 5A in the
    records), ``"track2"`` (57 only) or ``"gpo"`` (57 in the GPO answer).
    """

    pan: str = "6212345678901232"
    expiry: str = "3012"
    pan_in: str = "records"
    fault: EmvFault = EmvFault.NONE
    pull_at: int | None = None
    atr: bytes = ATR_BANK
    _selected: bytes | None = field(default=None, init=False, repr=False)
    _gpo_done: bool = field(default=False, init=False, repr=False)
    _count: int = field(default=0, init=False, repr=False)

    def reset(self) -> None:
        self._selected = None
        self._gpo_done = False
        self._count = 0

    def _card_pan(self) -> str:
        if self.fault is not EmvFault.BAD_LUHN:
            return self.pan
        return self.pan[:-1] + str((int(self.pan[-1]) + 1) % 10)

    def _track2(self) -> bytes:
        return tlv("57", bcd(self._card_pan() + "D" + self.expiry + "2010000000000"))

    def respond(self, capdu: bytes) -> bytes:
        self._count += 1
        if self.pull_at is not None and self._count >= self.pull_at:
            raise CardPulled()
        head = capdu[:2]
        if head == b"\x00\xA4" and len(capdu) >= 5:
            return self._select(capdu[5 : 5 + capdu[4]])
        if head == b"\x80\xA8":
            return self._gpo(capdu[5 : 5 + capdu[4]] if len(capdu) > 5 else b"")
        if head == b"\x00\xB2" and len(capdu) >= 4:
            return self._read_record(capdu[3] >> 3, capdu[2])
        return SW_INS

    def _select(self, name: bytes) -> bytes:
        self._gpo_done = False
        if name == PPSE:
            self._selected = PPSE
            return self._ppse()
        if name in (UNIONPAY_DEBIT, UNIONPAY_ECASH):
            self._selected = name
            label = b"UnionPay Debit" if name == UNIONPAY_DEBIT else b"Electronic Cash"
            return tlv("6F", tlv("84", name), tlv("A5", tlv("50", label), tlv("87", b"\x01"), tlv("9F38", PDOL))) + SW_OK
        return SW_NOT_FOUND

    def _ppse(self) -> bytes:
        if self.fault is EmvFault.PPSE_LENGTH_OVERRUN:
            return bytes.fromhex("6F20840E") + PPSE + bytes.fromhex("A50EBF0C") + SW_OK
        if self.fault is EmvFault.DEEP_NESTING:
            nested = tlv("4F", UNIONPAY_DEBIT)
            for _ in range(40):
                nested = tlv("A5", nested) if len(nested) < 0x7F else nested
            return tlv("6F", nested) + SW_OK
        entries = b"" if self.fault is EmvFault.PPSE_NO_APP else (
            tlv("61", tlv("4F", UNIONPAY_ECASH), tlv("50", b"Electronic Cash"), tlv("87", b"\x02"))
            + tlv("61", tlv("4F", UNIONPAY_DEBIT), tlv("50", b"UnionPay Debit"), tlv("87", b"\x01"))
        )
        return tlv("6F", tlv("84", PPSE), tlv("A5", tlv("BF0C", entries))) + SW_OK

    def _gpo(self, data: bytes) -> bytes:
        if self._selected not in (UNIONPAY_DEBIT, UNIONPAY_ECASH):
            return SW_CONDITIONS
        if len(data) != 2 + PDOL_DATA_LEN or data[:2] != bytes([0x83, PDOL_DATA_LEN]):
            return SW_WRONG_LENGTH
        if self.fault is EmvFault.GPO_UNKNOWN_STATUS:
            return b"\x6F\x00"
        afl = bytes.fromhex("0801010010010200")
        if self.fault is EmvFault.BAD_AFL:
            afl = afl[:5]
        inline = self._track2() if self.pan_in == "gpo" else b""
        self._gpo_done = True
        return tlv("77", tlv("82", b"\x00\x80"), tlv("94", afl), inline) + SW_OK

    def _records(self) -> dict[tuple[int, int], bytes]:
        """SFI 1 holds track 2 ("track2"), SFI 2 the PAN ("records"): the reader
        has to go past a record without the number in the "records" case."""
        hide = self.fault is EmvFault.NO_PAN
        track2 = self._track2() if self.pan_in == "track2" and not hide else b""
        pan = tlv("5A", bcd(self._card_pan())) if self.pan_in == "records" and not hide else b""
        return {
            (1, 1): tlv("70", track2, tlv("5F20", b"CARDHOLDER/UNION")),
            (2, 1): tlv("70", pan, tlv("5F24", bytes.fromhex(self.expiry + "31")), tlv("5F34", b"\x01")),
            (2, 2): tlv("70", tlv("8C", bytes.fromhex("9F02069F03069F1A0295055F2A029A039C019F3704"))),
        }

    def _read_record(self, sfi: int, number: int) -> bytes:
        if not self._gpo_done:
            return SW_CONDITIONS
        record = self._records().get((sfi, number))
        if record is None:
            return SW_NO_RECORD
        if self.fault is EmvFault.TRUNCATED_RECORD:
            record = record[: len(record) // 2]
        return record + SW_OK
