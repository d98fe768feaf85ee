"""Building C-APDUs and taking R-APDUs apart, for every profile.

One place for ISO 7816-4 short framing so each profile module only states
*which* command it sends, and so "the card answered fewer than two bytes" is
detected once, the same way, everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from terminal.exceptions import MalformedResponse, UnexpectedStatus

SW_OK = 0x9000

#: Largest answer a short-Le command can carry, plus SW1 SW2; anything longer
#: is not a card we speak to and is refused before parsing.
MAX_RESPONSE = 256 + 2


def command(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = 0) -> bytes:
    """Encode a short C-APDU (case 1-4). ``le=None`` omits Le; 0 means 256."""
    if len(data) > 255:
        raise ValueError("short APDU data is at most 255 bytes")
    head = bytes([cla, ins, p1, p2])
    body = bytes([len(data)]) + data if data else b""
    tail = b"" if le is None else bytes([le & 0xFF])
    return head + body + tail


@dataclass(frozen=True)
class Response:
    """An R-APDU split into its data field and status word."""

    data: bytes
    sw: int


def split(raw: bytes, what: str) -> Response:
    """Separate data and SW; a response without a status word is malformed."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) < 2:
        raise MalformedResponse(f"{what}: response shorter than a status word")
    if len(raw) > MAX_RESPONSE:
        raise MalformedResponse(f"{what}: response of {len(raw)} bytes is too long")
    return Response(bytes(raw[:-2]), (raw[-2] << 8) | raw[-1])


def expect(raw: bytes, what: str, *accepted: int) -> Response:
    """Split and require one of the ``accepted`` status words (9000 by default)."""
    resp = split(raw, what)
    if resp.sw not in (accepted or (SW_OK,)):
        raise UnexpectedStatus(what, resp.sw)
    return resp
