"""A bounded BER-TLV reader for EMV answers.

Bank cards are foreign objects: whatever bytes they return, this parser ends
in a value or in :class:`MalformedResponse`, never in an IndexError or a deep
recursion. Nesting depth, object count and the length field size are capped,
which is all an EMV read ever needs (EMV Book 3 Annex B).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from terminal.exceptions import MalformedResponse

MAX_DEPTH = 6
MAX_OBJECTS = 256
#: Bytes between data objects that EMV allows as padding (Book 3 Annex B).
PADDING = (0x00, 0xFF)


@dataclass(frozen=True)
class Tlv:
    """One data object; ``children`` is filled when the tag is constructed."""

    tag: int
    value: bytes
    children: tuple["Tlv", ...] = ()

    @property
    def constructed(self) -> bool:
        return is_constructed(self.tag)


def is_constructed(tag: int) -> bool:
    """Bit 6 of the first tag byte marks a template."""
    first = tag
    while first > 0xFF:
        first >>= 8
    return bool(first & 0x20)


def _read_tag(data: bytes, pos: int) -> tuple[int, int]:
    """Return (tag, next position); multi-byte tags are at most 3 bytes."""
    if pos >= len(data):
        raise MalformedResponse("TLV: truncated tag")
    tag = data[pos]
    pos += 1
    if tag & 0x1F == 0x1F:
        for _ in range(2):
            if pos >= len(data):
                raise MalformedResponse("TLV: truncated multi-byte tag")
            tag = (tag << 8) | data[pos]
            pos += 1
            if not data[pos - 1] & 0x80:
                break
        else:
            raise MalformedResponse("TLV: tag longer than 3 bytes")
    return tag, pos


def _read_length(data: bytes, pos: int) -> tuple[int, int]:
    """Return (length, next position); definite form, at most 3 length bytes."""
    if pos >= len(data):
        raise MalformedResponse("TLV: truncated length")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if not 1 <= count <= 3:
        raise MalformedResponse("TLV: unsupported length form")
    if pos + count > len(data):
        raise MalformedResponse("TLV: truncated length")
    return int.from_bytes(data[pos : pos + count], "big"), pos + count


class _Budget:
    """Object counter shared across one parse so nesting cannot multiply it."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise MalformedResponse("TLV: too many data objects")


def _parse(data: bytes, depth: int, budget: _Budget) -> tuple[Tlv, ...]:
    if depth > MAX_DEPTH:
        raise MalformedResponse("TLV: nested too deep")
    items: list[Tlv] = []
    pos = 0
    while pos < len(data):
        if data[pos] in PADDING:
            pos += 1
            continue
        budget.spend()
        tag, pos = _read_tag(data, pos)
        length, pos = _read_length(data, pos)
        if pos + length > len(data):
            raise MalformedResponse(f"TLV: value of tag {tag:X} runs past the end")
        value = data[pos : pos + length]
        pos += length
        children = _parse(value, depth + 1, budget) if is_constructed(tag) else ()
        items.append(Tlv(tag, value, children))
    return tuple(items)


def parse(data: bytes, max_objects: int = MAX_OBJECTS) -> tuple[Tlv, ...]:
    """Parse a BER-TLV byte string into a tree; raise only MalformedResponse."""
    try:
        return _parse(bytes(data), 0, _Budget(max_objects))
    except MalformedResponse:
        raise
    except Exception as exc:  # belt and braces: a parser bug must still deny cleanly
        raise MalformedResponse(f"TLV: {type(exc).__name__}") from exc


def walk(items: Iterable[Tlv]) -> Iterator[Tlv]:
    """Every object, depth first, templates before their contents."""
    for item in items:
        yield item
        yield from walk(item.children)


def find(items: Iterable[Tlv], tag: int) -> Tlv | None:
    """The first object with ``tag`` anywhere in the tree."""
    return next((item for item in walk(items) if item.tag == tag), None)


def find_value(items: Iterable[Tlv], tag: int) -> bytes | None:
    """The value of the first object with ``tag``, or None."""
    item = find(items, tag)
    return None if item is None else item.value


def parse_dol(data: bytes) -> list[tuple[int, int]]:
    """Read a data object list (tag, length pairs without values), e.g. a PDOL."""
    entries: list[tuple[int, int]] = []
    pos = 0
    while pos < len(data):
        if len(entries) >= MAX_OBJECTS:
            raise MalformedResponse("DOL: too many entries")
        tag, pos = _read_tag(data, pos)
        length, pos = _read_length(data, pos)
        if length > 255:
            raise MalformedResponse("DOL: entry longer than 255 bytes")
        entries.append((tag, length))
    return entries


def encode_tag(tag: int) -> bytes:
    """The tag's bytes, most significant first."""
    return tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")


def encode(tag: int, value: bytes) -> bytes:
    """Encode one object with the shortest definite length."""
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    elif n <= 0xFF:
        length = b"\x81" + bytes([n])
    else:
        length = b"\x82" + n.to_bytes(2, "big")
    return encode_tag(tag) + length + value
