"""A simulated MIFARE DESFire EV2 carrying the union application.

Written from ``docs/card-profiles.md`` alone (it imports nothing from
``terminal``), so when the terminal reads this card, two independent
readings of the document agree. Only :mod:`cryptography` primitives are used.

Besides the genuine card it can misbehave the ways real cards and clones do:
a wrong key (personalise it from another master), a random UID, malformed
answers (:class:`Fault`) and being pulled out of the field at APDU number N
(``pull_at``, counted from 1 after each reset).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from simulator.vcard import CardPulled

#: A PC/SC reader's ATR for an ISO 14443-4 card whose ATS has no historical
#: bytes; what pcscd reports for a DESFire EV2.
ATR_DESFIRE = bytes.fromhex("3B8180018080")

UNION_AID = b"UNI"
SYSTEM_ID = b"UNIONTERM"
READ_KEY_NO = 1
UID_KEY_NO = 2
RECORD_FILE = 1

# Status words of the native command set (91 xx).
ST_OK = b"\x91\x00"
ST_MORE = b"\x91\xAF"
ST_AUTH_ERROR = b"\x91\xAE"
ST_NO_APP = b"\x91\xA0"
ST_NO_KEY = b"\x91\x40"
ST_PERMISSION = b"\x91\x9D"
ST_INTEGRITY = b"\x91\x1E"
ST_LENGTH = b"\x91\x7E"
ST_ILLEGAL = b"\x91\x1C"
ST_NO_FILE = b"\x91\xF0"
ST_BOUNDARY = b"\x91\xBE"
ISO_OK = b"\x90\x00"
ISO_CLA = b"\x6E\x00"


# --- crypto, straight from the document ------------------------------------------


def aes_block(key: bytes, block: bytes) -> bytes:
    """E(K, x) for one block."""
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)


def cbc(key: bytes, iv: bytes, data: bytes, *, decrypt: bool = False) -> bytes:
    """CBC(K, IV, x), no padding."""
    c = Cipher(algorithms.AES(key), modes.CBC(iv))
    op = c.decryptor() if decrypt else c.encryptor()
    return op.update(data) + op.finalize()


def cmac(key: bytes, data: bytes) -> bytes:
    """CMAC(K, x) (RFC 4493)."""
    c = CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def mact(key: bytes, data: bytes) -> bytes:
    """MACt: bytes 1, 3, ..., 15 of the CMAC."""
    full = cmac(key, data)
    return bytes(full[i] for i in range(1, 16, 2))


def _shift(block: bytes) -> bytes:
    """One subkey step: shift left by one bit, XOR 87 if a bit fell out."""
    out = bytearray(16)
    carry = 0
    for i in reversed(range(16)):
        out[i] = ((block[i] << 1) | carry) & 0xFF
        carry = block[i] >> 7
    if carry:
        out[15] ^= 0x87
    return bytes(out)


def an10922(master: bytes, div_input: bytes) -> bytes:
    """AES-128 diversification, two blocks always (document, 'Key diversification')."""
    k1 = _shift(aes_block(master, bytes(16)))
    k2 = _shift(k1)
    m = b"\x01" + div_input
    if len(m) == 32:
        sub = k1
    else:
        m = m + b"\x80" + bytes(31 - len(m))
        sub = k2
    d = m[:16] + bytes(a ^ b for a, b in zip(m[16:], sub))
    return cbc(master, bytes(16), d)[16:]


def card_keys(read_master: bytes, uid_master: bytes, uid: bytes, aid: bytes = UNION_AID) -> dict[int, bytes]:
    """Keys 1 and 2 of one card, as personalisation writes them."""
    return {
        READ_KEY_NO: an10922(read_master, uid + aid + SYSTEM_ID),
        UID_KEY_NO: an10922(uid_master, aid + SYSTEM_ID),
    }


def member_record(member_no: str, issued_at: int = 1_735_660_800, card_seq: int = 0) -> bytes:
    """The 32-byte record file: format 01, member no, issued at, sequence, RFU."""
    return (
        b"\x01"
        + member_no.encode("ascii").ljust(16, b"\x00")
        + issued_at.to_bytes(4, "big")
        + bytes([card_seq])
        + bytes(10)
    )


def _rotl(b: bytes) -> bytes:
    return b[1:] + b[:1]


class Fault(enum.Enum):
    """Ways a card (or a clone) answers wrongly."""

    NONE = "none"
    SHORT_CHALLENGE = "short_challenge"  # auth pass 1: 15 bytes instead of 16
    UNKNOWN_STATUS = "unknown_status"  # ReadData: SW 6F 00
    TRUNCATED_RECORD = "truncated_record"  # ReadData: 16 bytes, correctly MACed
    BAD_RECORD_MAC = "bad_record_mac"  # ReadData: one MAC bit flipped
    FORGED_AUTH = "forged_auth"  # a clone without the key: accepts pass 2, answers noise
    GARBLED_UID = "garbled_uid"  # GetCardUID: 12 bytes of data
    BAD_RECORD_FORMAT = "bad_record_format"  # record format byte 02


@dataclass
class _Session:
    key_no: int
    ti: bytes
    enc: bytes
    mac: bytes
    ctr: int = 0

    def ctr_bytes(self, step: int = 0) -> bytes:
        return ((self.ctr + step) & 0xFFFF).to_bytes(2, "little")


@dataclass
class UnionCard:
    """Behaviour of a personalised union card (see :meth:`personalise`)."""

    uid: bytes
    keys: dict[int, bytes]
    record: bytes
    random_uid: bool = False
    fault: Fault = Fault.NONE
    pull_at: int | None = None
    atr: bytes = ATR_DESFIRE
    aid: bytes = UNION_AID
    #: Where the card's random numbers come from (RndB, TI, a random UID); a bench that
    #: replays a recorded exchange gives back the numbers drawn then.
    entropy: Callable[[int], bytes] = field(default=os.urandom, repr=False)
    _count: int = field(default=0, init=False, repr=False)
    _selected: bool = field(default=False, init=False, repr=False)
    _pending: tuple[int, bytes] | None = field(default=None, init=False, repr=False)
    _session: _Session | None = field(default=None, init=False, repr=False)
    _shown_uid: bytes = field(default=b"", init=False, repr=False)

    def __post_init__(self) -> None:
        self.reset()

    @classmethod
    def personalise(
        cls,
        read_master: bytes,
        uid_master: bytes,
        uid: bytes,
        member_no: str,
        **options: object,
    ) -> "UnionCard":
        """A card issued for ``member_no`` with keys diversified from the masters."""
        return cls(uid=uid, keys=card_keys(read_master, uid_master, uid), record=member_record(member_no), **options)  # type: ignore[arg-type]

    def reset(self) -> None:
        self._count = 0
        self._selected = False
        self._pending = None
        self._session = None
        self._shown_uid = b"\x08" + self.entropy(3) if self.random_uid else self.uid

    # -- dispatch -----------------------------------------------------------------

    def respond(self, capdu: bytes) -> bytes:
        self._count += 1
        if self.pull_at is not None and self._count >= self.pull_at:
            raise CardPulled()
        if capdu[:2] == b"\xFF\xCA":
            return self._shown_uid + ISO_OK
        if len(capdu) < 5 or capdu[0] != 0x90:
            return ISO_CLA
        ins, data = capdu[1], capdu[5 : 5 + capdu[4]]
        handler = {
            0x5A: self._select,
            0x71: self._auth_first,
            0xAF: self._auth_second,
            0x51: self._get_uid,
            0xAD: self._read_data,
        }.get(ins)
        if handler is None:
            self._session = None
            return ST_ILLEGAL
        answer = handler(data)
        if answer[-2:] not in (ST_OK, ST_MORE):
            self._session = None  # DESFire drops authentication on any error
        return answer

    # -- commands ------------------------------------------------------------------

    def _select(self, data: bytes) -> bytes:
        self._session = None
        self._selected = data == self.aid
        return ST_OK if self._selected else ST_NO_APP

    def _auth_first(self, data: bytes) -> bytes:
        self._pending = None
        if not self._selected or not data:
            return ST_PERMISSION
        key_no = data[0]
        if key_no not in self.keys:
            return ST_NO_KEY
        rnd_b = self.entropy(16)
        self._pending = (key_no, rnd_b)
        challenge = cbc(self.keys[key_no], bytes(16), rnd_b)
        if self.fault is Fault.SHORT_CHALLENGE:
            challenge = challenge[:15]
        return challenge + ST_MORE

    def _auth_second(self, data: bytes) -> bytes:
        pending, self._pending = self._pending, None
        if pending is None:
            return ST_ILLEGAL
        if len(data) != 32:
            return ST_LENGTH
        key_no, rnd_b = pending
        key = self.keys[key_no]
        if self.fault is Fault.FORGED_AUTH:
            return self.entropy(32) + ST_OK
        plain = cbc(key, bytes(16), data, decrypt=True)
        rnd_a = plain[:16]
        if plain[16:] != _rotl(rnd_b):
            return ST_AUTH_ERROR
        ti = self.entropy(4)
        sv = rnd_a[0:2] + bytes(x ^ y for x, y in zip(rnd_a[2:8], rnd_b[0:6])) + rnd_b[6:] + rnd_a[8:]
        self._session = _Session(
            key_no,
            ti,
            cmac(key, b"\xA5\x5A\x00\x01\x00\x80" + sv),
            cmac(key, b"\x5A\xA5\x00\x01\x00\x80" + sv),
        )
        return cbc(key, bytes(16), ti + _rotl(rnd_a) + bytes(12)) + ST_OK

    def _checked(self, ins: int, header: bytes, mac: bytes) -> _Session | None:
        """The session if the command MAC is right, else None."""
        s = self._session
        if s is None or mac != mact(s.mac, bytes([ins]) + s.ctr_bytes() + s.ti + header):
            return None
        return s

    def _answer(self, s: _Session, data: bytes) -> bytes:
        """Data || MACt over 00 || CmdCtr+1 || TI || data, then count the pair."""
        tag = mact(s.mac, b"\x00" + s.ctr_bytes(1) + s.ti + data)
        s.ctr += 1
        return data + tag + ST_OK

    def _get_uid(self, data: bytes) -> bytes:
        s = self._checked(0x51, b"", data)
        if s is None:
            return ST_PERMISSION if self._session is None else ST_INTEGRITY
        iv = aes_block(s.enc, b"\x5A\xA5" + s.ti + s.ctr_bytes(1) + bytes(8))
        padded = self.uid + b"\x80" + bytes(15 - len(self.uid))
        enc = cbc(s.enc, iv, padded)
        if self.fault is Fault.GARBLED_UID:
            enc = enc[:12]
        return self._answer(s, enc)

    def _read_data(self, data: bytes) -> bytes:
        if len(data) != 15:
            return ST_LENGTH
        header, mac = data[:7], data[7:]
        s = self._checked(0xAD, header, mac)
        if s is None:
            return ST_PERMISSION if self._session is None else ST_INTEGRITY
        if s.key_no != READ_KEY_NO:
            return ST_PERMISSION
        if header[0] != RECORD_FILE:
            return ST_NO_FILE
        offset = int.from_bytes(header[1:4], "little")
        length = int.from_bytes(header[4:7], "little") or len(self.record) - offset
        if offset + length > len(self.record):
            return ST_BOUNDARY
        if self.fault is Fault.UNKNOWN_STATUS:
            return b"\x6F\x00"
        content = self.record[offset : offset + length]
        if self.fault is Fault.BAD_RECORD_FORMAT:
            content = b"\x02" + content[1:]
        if self.fault is Fault.TRUNCATED_RECORD:
            content = content[:16]
        answer = self._answer(s, content)
        if self.fault is Fault.BAD_RECORD_MAC:
            answer = answer[:-3] + bytes([answer[-3] ^ 0x01]) + answer[-2:]
        return answer
