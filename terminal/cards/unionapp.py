"""The union card application on a DESFire EV2: its numbers and record layout.

These constants are the contract with card personalisation (and with the
simulated card). They are restated, with the reasons, in
``docs/card-profiles.md``; change both together or cards stop reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from terminal.exceptions import MalformedResponse

#: DESFire application id, as the 3 bytes sent on the wire: ASCII "UNI".
UNION_AID = b"UNI"

#: Application key 1: per-card key (AN10922 from SAM slot 1 by UID, AID),
#: the only key allowed to read the member record.
READ_KEY_NO = 0x01
#: Application key 2: application-wide key (AN10922 from SAM slot 2 by AID
#: alone) used only to learn the real UID of a random-UID card.
UID_KEY_NO = 0x02

READ_KEY_SLOT = 1
UID_KEY_SLOT = 2

#: Standard data file with the member record, CommMode.MAC, read = key 1.
RECORD_FILE_NO = 0x01
RECORD_LEN = 32
RECORD_FORMAT = 0x01

_MEMBER_NO_LEN = 16
_MEMBER_NO = re.compile(rb"[0-9A-Z-]{1,16}")


@dataclass(frozen=True)
class UnionAppConfig:
    """Where the union application and its keys are; defaults are the deployment's."""

    aid: bytes = UNION_AID
    read_key_no: int = READ_KEY_NO
    uid_key_no: int = UID_KEY_NO
    read_key_slot: int = READ_KEY_SLOT
    uid_key_slot: int = UID_KEY_SLOT
    record_file_no: int = RECORD_FILE_NO


@dataclass(frozen=True)
class MemberRecord:
    """The 32-byte member record file, decoded."""

    member_no: str
    issued_at: int
    card_seq: int


def parse_member_record(data: bytes) -> MemberRecord:
    """Decode the fixed layout: format(1) member_no(16) issued_at(4) seq(1) RFU(10)."""
    if len(data) != RECORD_LEN:
        raise MalformedResponse(f"member record is {len(data)} bytes, expected {RECORD_LEN}")
    if data[0] != RECORD_FORMAT:
        raise MalformedResponse(f"member record format {data[0]:#04x} is not supported")
    raw_no = data[1 : 1 + _MEMBER_NO_LEN].rstrip(b"\x00")
    if not _MEMBER_NO.fullmatch(raw_no):
        raise MalformedResponse("member record: member number is not well formed")
    issued_at = int.from_bytes(data[17:21], "big")
    return MemberRecord(raw_no.decode("ascii"), issued_at, data[21])


def encode_member_record(record: MemberRecord) -> bytes:
    """Inverse of :func:`parse_member_record`, for personalisation tools."""
    raw_no = record.member_no.encode("ascii")
    if not _MEMBER_NO.fullmatch(raw_no):
        raise ValueError("member number must be 1..16 of 0-9 A-Z -")
    return (
        bytes([RECORD_FORMAT])
        + raw_no.ljust(_MEMBER_NO_LEN, b"\x00")
        + record.issued_at.to_bytes(4, "big")
        + bytes([record.card_seq])
        + bytes(RECORD_LEN - 22)
    )
