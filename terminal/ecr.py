"""The cash-register (ECR) link: framing, messages, and an incremental decoder.

Sans-I/O: the serial driver hands received bytes to :meth:`Decoder.feed`
with the monotonic time, and writes what :func:`encode` returns. The wire
format is specified in ``docs/ecr-link.md``; in short::

    STX | LEN (2 bytes, big-endian) | BODY (LEN bytes) | CRC (2 bytes, big-endian) | ETX
    BODY = TYPE (1 letter) SEQ (2 digits) { FS field }*

CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over LEN and BODY.
Every field is printable ASCII. A frame that fails any check comes out of the
decoder as a :class:`FrameError`, never as a message, so nothing corrupt can
ever be acted on.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import ClassVar, Union

from terminal.exceptions import PayloadError
from terminal.model import Decision

STX = 0x02
ETX = 0x03
FS = 0x1C
#: Longest BODY accepted; real messages are under 150 bytes. Keeping it
#: below 256 makes the high LEN byte 0, an extra sync check: a stray STX
#: followed by another STX claims 512+ bytes and is rejected at once instead
#: of swallowing good frames until the timeout.
MAX_BODY = 255
#: Bytes around BODY: STX, LEN, CRC, ETX.
OVERHEAD = 6
#: Longest reference, transaction id, terminal id.
MAX_ID = 32
#: Largest amount in fen (9 digits: 9,999,999.99 yuan).
MAX_AMOUNT = 999_999_999

_ID = re.compile(r"[\x21-\x7e]{0,%d}" % MAX_ID)
_WORD = re.compile(r"[a-z0-9_]{1,32}")
_DIGITS = re.compile(r"[0-9]{1,9}")


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE; ``crc16(b"123456789") == 0x29B1``."""
    return binascii.crc_hqx(data, 0xFFFF)


def _bad(problem: str) -> PayloadError:
    return PayloadError("ecr", problem)


def _ident(value: str, name: str, required: bool = True) -> str:
    if not _ID.fullmatch(value) or (required and not value):
        raise _bad(f"{name} must be 1..{MAX_ID} printable ASCII characters without spaces")
    return value


def _word(value: str, name: str) -> str:
    if not _WORD.fullmatch(value):
        raise _bad(f"{name} must be a lowercase word of 1..32 characters")
    return value


def _amount(value: int, name: str) -> int:
    if isinstance(value, bool) or not 0 <= value <= MAX_AMOUNT:
        raise _bad(f"{name} must be 0..{MAX_AMOUNT} fen")
    return value


def _fen(text: str, name: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise _bad(f"{name} must be 1..9 decimal digits")
    return int(text)


@dataclass(frozen=True)
class _Message:
    """Common shape: a one-letter type and a sequence number 0..99.

    The ECR bumps ``seq`` for each new request and repeats it when it
    retransmits, which is how the terminal tells a retry from a new sale.
    """

    TYPE: ClassVar[str] = ""
    #: Attribute names of the wire fields, in wire order.
    FIELDS: ClassVar[tuple[str, ...]] = ()
    seq: int

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or not 0 <= self.seq <= 99:
            raise _bad("seq must be 0..99")

    def fields(self) -> tuple[str, ...]:
        """Wire text of each field (numbers in decimal)."""
        return tuple(str(getattr(self, name)) for name in self.FIELDS)

    @classmethod
    def parse(cls, seq: int, fields: list[str]) -> "_Message":
        """Build from wire text; validation is the constructor's, so a decoded
        message is exactly as valid as one the terminal builds itself."""
        return cls(seq, *fields)


@dataclass(frozen=True)
class Sale(_Message):
    """ECR -> terminal: discount this sale of ``amount_fen``."""

    TYPE: ClassVar[str] = "S"
    FIELDS: ClassVar[tuple[str, ...]] = ("amount_fen", "ecr_ref")
    amount_fen: int = 0
    ecr_ref: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if _amount(self.amount_fen, "amount") == 0:
            raise _bad("amount must be positive")
        _ident(self.ecr_ref, "ecr_ref")

    @classmethod
    def parse(cls, seq: int, fields: list[str]) -> "Sale":
        return cls(seq, _fen(fields[0], "amount"), fields[1])


@dataclass(frozen=True)
class Void(_Message):
    """ECR -> terminal: void the last sale, named by ECR reference or terminal tx id."""

    TYPE: ClassVar[str] = "V"
    FIELDS: ClassVar[tuple[str, ...]] = ("ecr_ref", "tx_id")
    ecr_ref: str = ""
    tx_id: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _ident(self.ecr_ref, "ecr_ref", required=False)
        _ident(self.tx_id, "tx_id", required=False)
        if not (self.ecr_ref or self.tx_id):
            raise _bad("void needs ecr_ref or tx_id")


@dataclass(frozen=True)
class Status(_Message):
    """ECR -> terminal: are you there, and ready?"""

    TYPE: ClassVar[str] = "Q"


@dataclass(frozen=True)
class Reply(_Message):
    """Terminal -> ECR: the decision on a SALE or VOID.

    ``amount_fen == discount_fen + to_pay_fen`` always; on a denial the
    discount is 0 and ``to_pay_fen`` is the full amount.
    """

    TYPE: ClassVar[str] = "R"
    FIELDS: ClassVar[tuple[str, ...]] = ("approved", "reason", "amount_fen", "discount_fen", "to_pay_fen", "tx_id")
    approved: bool = False
    reason: str = ""
    amount_fen: int = 0
    discount_fen: int = 0
    to_pay_fen: int = 0
    tx_id: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _word(self.reason, "reason")
        for name in ("amount_fen", "discount_fen", "to_pay_fen"):
            _amount(getattr(self, name), name)
        if self.amount_fen != self.discount_fen + self.to_pay_fen:
            raise _bad("amount must equal discount plus to_pay")
        _ident(self.tx_id, "tx_id", required=False)

    def fields(self) -> tuple[str, ...]:
        return ("A" if self.approved else "D",) + super().fields()[1:]

    @classmethod
    def parse(cls, seq: int, fields: list[str]) -> "Reply":
        if fields[0] not in ("A", "D"):
            raise _bad("decision must be A or D")
        amounts = [_fen(f, n) for f, n in zip(fields[2:5], ("amount", "discount", "to_pay"))]
        return cls(seq, fields[0] == "A", fields[1], *amounts, fields[5])


@dataclass(frozen=True)
class StatusReply(_Message):
    """Terminal -> ECR: ``state`` is ``ready``, ``busy``, ``offline`` or ``closed``."""

    TYPE: ClassVar[str] = "T"
    FIELDS: ClassVar[tuple[str, ...]] = ("state", "terminal_id")
    state: str = "ready"
    terminal_id: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _word(self.state, "state")
        _ident(self.terminal_id, "terminal_id")


@dataclass(frozen=True)
class ErrorReply(_Message):
    """Either side: your last frame was unusable (``code`` = a FrameError kind); resend."""

    TYPE: ClassVar[str] = "E"
    FIELDS: ClassVar[tuple[str, ...]] = ("code",)
    code: str = "format"

    def __post_init__(self) -> None:
        super().__post_init__()
        _word(self.code, "code")


Frame = Union[Sale, Void, Status, Reply, StatusReply, ErrorReply]
_TYPES: dict[str, type[_Message]] = {c.TYPE: c for c in (Sale, Void, Status, Reply, StatusReply, ErrorReply)}


@dataclass(frozen=True)
class FrameError:
    """Bytes the decoder could not turn into a message.

    ``kind``: ``noise`` (bytes outside any frame), ``length``, ``etx``,
    ``checksum``, ``timeout`` (a frame stopped arriving), ``format`` (a
    well-framed body with bad content; ``seq`` is set when it could be read).
    """

    kind: str
    size: int
    detail: str = ""
    seq: int | None = None

    @property
    def answer(self) -> bool:
        """Should the receiver send an ERROR frame? Not for line noise, which
        a request never produces, so answering it would only add traffic."""
        return self.kind != "noise"

    def reply(self) -> ErrorReply:
        return ErrorReply(self.seq or 0, self.kind)


Decoded = Union[Frame, FrameError]


def encode(message: Frame) -> bytes:
    """Frame one message for the wire."""
    body = f"{message.TYPE}{message.seq:02d}".encode("ascii")
    for value in message.fields():
        body += bytes([FS]) + value.encode("ascii")
    head = len(body).to_bytes(2, "big")
    return bytes([STX]) + head + body + crc16(head + body).to_bytes(2, "big") + bytes([ETX])


def parse_body(body: bytes) -> Decoded:
    """Turn a checksummed BODY into a message, or a ``format`` FrameError."""
    seq = int(body[1:3]) if len(body) >= 3 and body[1:3].isdigit() else None
    try:
        if len(body) < 3 or seq is None or not all(b == FS or 0x20 <= b <= 0x7E for b in body):
            raise _bad("body must be TYPE, two-digit SEQ and printable fields")
        text = body.decode("ascii")
        cls = _TYPES.get(text[0])
        if cls is None:
            raise _bad(f"unknown type {text[0]!r}")
        rest = text[3:]
        if rest and rest[0] != "\x1c":
            raise _bad("fields must follow FS")
        fields = rest[1:].split("\x1c") if rest else []
        if len(fields) != len(cls.FIELDS):
            raise _bad(f"type {cls.TYPE} takes {len(cls.FIELDS)} fields, got {len(fields)}")
        return cls.parse(seq, fields)  # type: ignore[return-value]
    except PayloadError as exc:
        return FrameError("format", len(body), str(exc), seq)


def reply_for(seq: int, requested_fen: int, decision: Decision, tx_id: str) -> Reply:
    """The REPLY for a decision on a sale of ``requested_fen``: a denial
    carries no discount and the full price, so the cash register can still
    charge it."""
    if decision.approved:
        return Reply(seq, True, decision.reason, decision.amount_fen, decision.subsidy_fen, decision.to_pay_fen, tx_id)
    return Reply(seq, False, decision.reason, requested_fen, 0, requested_fen, tx_id)


class Decoder:
    """Incremental, never-raising frame decoder for one serial line.

    Resynchronisation: after any bad frame only its STX is dropped and the
    scan restarts at the next byte, so a real frame hidden behind a false
    STX (line noise) is still found. A partial frame older than
    ``timeout_s`` (inter-byte time, from the ``now`` the caller passes) is
    reported and dropped the same way.
    """

    def __init__(self, timeout_s: float = 0.5, max_body: int = MAX_BODY) -> None:
        self.timeout_s = timeout_s
        self.max_body = max_body
        self._buf = bytearray()
        self._last = 0.0

    @property
    def pending(self) -> bool:
        """Is a partial frame waiting for more bytes?"""
        return bool(self._buf)

    def feed(self, data: bytes, now: float) -> list[Decoded]:
        """Add received bytes; return every complete frame or error, in order."""
        out = self.poll(now)
        if data:
            self._buf += data
            self._last = now
            out += self._drain()
        return out

    def poll(self, now: float) -> list[Decoded]:
        """Expire a stale partial frame (call when the line has been quiet)."""
        out: list[Decoded] = []
        while self._buf and now - self._last > self.timeout_s:
            out.append(FrameError("timeout", len(self._buf), "frame incomplete"))
            del self._buf[0]
            out += self._drain()
        return out

    def _drain(self) -> list[Decoded]:
        out: list[Decoded] = []
        buf = self._buf
        while buf:
            start = buf.find(STX)
            if start != 0:
                skipped = len(buf) if start < 0 else start
                out.append(FrameError("noise", skipped))
                del buf[:skipped]
                continue
            if len(buf) < 3:
                break
            length = int.from_bytes(buf[1:3], "big")
            if not 3 <= length <= self.max_body:
                out.append(FrameError("length", 3, f"declared body length {length}"))
                del buf[0]
                continue
            total = length + OVERHEAD
            if len(buf) < total:
                break
            problem = self._check(bytes(buf[:total]), length)
            if problem is not None:
                out.append(problem)
                del buf[0]
                continue
            out.append(parse_body(bytes(buf[3 : 3 + length])))
            del buf[:total]
        return out

    @staticmethod
    def _check(frame: bytes, length: int) -> FrameError | None:
        if frame[-1] != ETX:
            return FrameError("etx", len(frame), "no ETX where the length says")
        if crc16(frame[1 : 3 + length]) != int.from_bytes(frame[3 + length : 5 + length], "big"):
            return FrameError("checksum", len(frame), "CRC mismatch")
        return None
