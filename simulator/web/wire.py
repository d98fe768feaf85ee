"""What the workbench sends to the page, as pure functions (no I/O, table-testable).

The page gets one JSON state object, then only the top-level parts that
changed; the OLED travels as its raw 1-bit pixels (1 KiB for 128x64), which
the page paints itself, so what it draws can be compared bit for bit with
what the terminal showed.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from PIL.Image import Image

from terminal.ecr import ETX, FS, STX, Decoded, FrameError, encode
from terminal.exceptions import PayloadError
from terminal.uplink import decode_ack

#: Fields of a journal record the feed shows (the rest is chain and ids).
FEED_FIELDS = ("seq", "time_ms", "kind", "mode", "decision", "reason", "member_no", "profile", "strength",
               "amount_fen", "subsidy_fen", "to_pay_fen")
#: Yuan as a cashier types them: up to 7 digits (the ECR link's 9 digits of fen) and 2 decimals.
_YUAN = re.compile(r"(\d{1,7})(?:\.(\d{1,2}))?")
_CONTROL = {STX: "<STX>", ETX: "<ETX>", FS: "<FS>"}


def frame_payload(image: Image, frame: int) -> dict[str, Any]:
    """One OLED frame: size, counter and the pixels packed 8 per byte, rows MSB first."""
    mono = image.convert("1")
    return {"w": mono.width, "h": mono.height, "frame": frame,
            "bits": base64.b64encode(mono.tobytes()).decode("ascii")}


def frame_bits(payload: dict[str, Any]) -> list[int]:
    """The lit pixels of a frame payload, as 0/1 in row-major order (the page's reading)."""
    raw = base64.b64decode(payload["bits"])
    stride = (payload["w"] + 7) // 8
    return [(raw[y * stride + x // 8] >> (7 - x % 8)) & 1
            for y in range(payload["h"]) for x in range(payload["w"])]


def changes(sent: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The top-level parts of ``now`` that differ from what was ``sent`` (new keys included)."""
    return {key: value for key, value in now.items() if sent.get(key, _ABSENT) != value}


_ABSENT = object()


@dataclass(frozen=True)
class FeedTx:
    """A transaction the back office received, as far as the feed shows it."""

    terminal: str
    seq: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class FeedAck:
    """The back office's cumulative acknowledgement: every record up to ``seq`` is stored."""

    terminal: str
    seq: int


def parse_feed(topic: str, payload: bytes, prefix: str = "unionterm/v1") -> FeedTx | FeedAck:
    """Read a ``t/{id}/tx`` or ``t/{id}/ack`` message; anything else is a PayloadError."""
    m = re.fullmatch(re.escape(prefix) + r"/t/([^/]+)/(tx|ack)", topic)
    if m is None:
        raise PayloadError(topic, "not a transaction or acknowledgement topic")
    terminal, what = m.groups()
    if what == "ack":
        return FeedAck(terminal, decode_ack(payload).seq)
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(topic, f"not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("seq"), int) or isinstance(body["seq"], bool):
        raise PayloadError(topic, "a transaction needs an integer seq")
    return FeedTx(terminal, body["seq"], {k: body[k] for k in FEED_FIELDS if k in body})


# -- the cash-register panel -----------------------------------------------------------------


def parse_yuan(text: str) -> int:
    """What a cashier types (``19.99``, ``20``, ``0.5``) as fen; anything else is a PayloadError.

    Decimal text, never a float: ``0.29`` must be 29 fen, not 28.
    """
    m = _YUAN.fullmatch(text.strip())
    if m is None:
        raise PayloadError("amount", f"{text!r} is not an amount in yuan with at most two decimals")
    fen = int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))
    if fen == 0:
        raise PayloadError("amount", "a sale must be for more than nothing")
    return fen


def wire_text(data: bytes) -> str:
    """A frame's bytes as a person reads them: framing bytes named, LEN and CRC in hex, the body as text."""
    if len(data) < 6 or data[0] != STX or data[-1] != ETX:
        return " ".join(_CONTROL.get(b, chr(b) if 0x20 <= b <= 0x7E else f"{b:02X}") for b in data)
    body = "".join(_CONTROL.get(b, chr(b) if 0x20 <= b <= 0x7E else f"<{b:02X}>") for b in data[3:-3])
    return f"<STX> {data[1:3].hex().upper()} {body} {data[-3:-1].hex().upper()} <ETX>"


def frame_view(item: Decoded, direction: str) -> dict[str, Any]:
    """One row of the cash register's log: which way, the type letter, SEQ, the named fields, the bytes."""
    if isinstance(item, FrameError):
        return {"dir": direction, "type": "!", "seq": item.seq, "fields": {"error": item.kind},
                "wire": item.detail}
    fields = dict(zip(item.FIELDS, item.fields()))
    return {"dir": direction, "type": item.TYPE, "seq": item.seq, "fields": fields,
            "wire": wire_text(encode(item))}
