"""A scope's full member list: one signed manifest plus zlib-compressed chunks.

The manifest is small and signed; it lists every chunk's SHA-256, size,
record count and first/last member number. A chunk is therefore
authenticated by the manifest signature without a signature of its own, and
since the member ranges of consecutive chunks are strictly increasing, chunks
may be applied in any order while the list as a whole is still known to be
sorted and free of duplicates.

A chunk is a zlib stream (RFC 1950) of canonical record lines (see
:mod:`.records`); the concatenation of all decompressed chunks is exactly the
input of the list digest. Decoding is streaming: one chunk of at most
:attr:`Limits.max_chunk` compressed bytes is held at a time and records are
yielded one by one, so applying 1.1 million members never needs the list in
memory.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from terminal.exceptions import PayloadError, SignatureError
from terminal.signing import KIND_MANIFEST, Verified

from .limits import DEFAULT_LIMITS, Limits
from .records import MEMBER_NO_RE, ListDigest, canonical_line, quick_line, validate_member
from .strict import (
    canonical_json,
    check_keys,
    get_choice,
    get_hex64,
    get_int,
    get_list,
    get_str,
    loads_object,
)

COMPRESSION = "zlib"
_MANIFEST_KEYS = frozenset({"chunks", "compression", "count", "digest"})
_CHUNK_KEYS = frozenset({"count", "first", "last", "raw", "sha256", "size"})
#: Decompress in steps of this many bytes so a chunk never expands all at once.
_STEP = 64 * 1024
#: Room for the sync-flush marker, the final block and the Adler-32 trailer.
_TRAILER_ROOM = 16


@dataclass(frozen=True)
class ChunkInfo:
    """What the signed manifest promises about one chunk."""

    sha256: str
    size: int
    raw: int
    count: int
    first: str
    last: str

    def as_json(self) -> dict[str, object]:
        return {"sha256": self.sha256, "size": self.size, "raw": self.raw,
                "count": self.count, "first": self.first, "last": self.last}


@dataclass(frozen=True)
class Manifest:
    """A verified snapshot manifest: which list, which version, and how to check it."""

    scope: str
    version: int
    issued: int
    expires: int
    count: int
    digest: str
    chunks: tuple[ChunkInfo, ...]

    def stale(self, now: float) -> bool:
        """Past ``expires`` the list is still used but shown and reported as stale."""
        return now >= self.expires


def encode_manifest_body(count: int, digest: str, chunks: Iterable[ChunkInfo]) -> bytes:
    """The manifest body the back office signs (scope and version live in the header)."""
    return canonical_json({"compression": COMPRESSION, "count": count, "digest": digest,
                           "chunks": [c.as_json() for c in chunks]})


def decode_manifest(verified: Verified, limits: Limits = DEFAULT_LIMITS) -> Manifest:
    """Validate a verified manifest envelope's body against the chunk rules."""
    header = verified.header
    if header.kind != KIND_MANIFEST:
        raise PayloadError("manifest", f"envelope kind is {header.kind!r}, not {KIND_MANIFEST!r}")
    where = "manifest"
    obj = check_keys(loads_object(verified.body, where), where, _MANIFEST_KEYS)
    get_choice(obj, "compression", where, {COMPRESSION})
    count = get_int(obj, "count", where, 0, limits.max_members)
    digest = get_hex64(obj, "digest", where)
    chunks = tuple(_chunk_info(item, f"{where}.chunks[{i}]", limits)
                   for i, item in enumerate(get_list(obj, "chunks", where, limits.max_chunks)))
    for i in range(1, len(chunks)):
        if chunks[i].first <= chunks[i - 1].last:
            raise PayloadError(f"{where}.chunks[{i}].first",
                               f"{chunks[i].first!r} is not after chunk {i - 1}'s last "
                               f"{chunks[i - 1].last!r}")
    total = sum(c.count for c in chunks)
    if total != count:
        raise PayloadError(f"{where}.count", f"says {count} members, chunks hold {total}")
    return Manifest(scope=header.scope, version=header.version, issued=header.issued,
                    expires=header.expires, count=count, digest=digest, chunks=chunks)


def _chunk_info(item: Any, where: str, limits: Limits) -> ChunkInfo:
    check_keys(item, where, _CHUNK_KEYS)
    info = ChunkInfo(
        sha256=get_hex64(item, "sha256", where),
        size=get_int(item, "size", where, 1, limits.max_chunk),
        raw=get_int(item, "raw", where, 1, limits.max_chunk_raw),
        count=get_int(item, "count", where, 1, limits.max_members),
        first=get_str(item, "first", where, 32, MEMBER_NO_RE, allow_empty=False),
        last=get_str(item, "last", where, 32, MEMBER_NO_RE, allow_empty=False),
    )
    if info.count == 1 and info.first != info.last:
        raise PayloadError(f"{where}.last", "a one-record chunk must have first == last")
    if info.count > 1 and info.first >= info.last:
        raise PayloadError(f"{where}.last", f"{info.last!r} is not after first {info.first!r}")
    return info


# -- decoding -----------------------------------------------------------------------


def iter_chunk(manifest: Manifest, index: int, payload: bytes,
               limits: Limits = DEFAULT_LIMITS) -> Iterator[dict[str, Any]]:
    """Check chunk ``index`` against the manifest, then stream its records.

    The size and hash are checked here, before the first record is asked for;
    record errors surface while iterating, so a caller applies a chunk in one
    transaction and rolls back if iteration raises.
    """
    return (record for _no, record, _line in _chunk_records(manifest, index, payload, limits,
                                                            _parse_record))


def iter_snapshot(manifest: Manifest, chunks: Iterable[bytes],
                  limits: Limits = DEFAULT_LIMITS) -> Iterator[dict[str, Any]]:
    """Stream every record of a snapshot from its chunks in order, then check the digest.

    The final count and digest check runs after the last record is yielded,
    so nothing may be committed before the iterator is exhausted.
    """
    return (record for _no, record, _line in _snapshot_records(manifest, chunks, limits,
                                                               _parse_record))


class ListedRecord(NamedTuple):
    """A checked record as a store keeps it: the exact canonical line, and its keys.

    A terminal that stores the line itself never re-encodes a record to
    recompute the list digest, and never parses one it will not look at.
    (A named tuple: a million of them are made per snapshot.)
    """

    member_no: str
    refs: tuple[str, ...]
    line: bytes


def iter_chunk_lines(manifest: Manifest, index: int, payload: bytes,
                     limits: Limits = DEFAULT_LIMITS) -> Iterator[ListedRecord]:
    """:func:`iter_chunk` for stores: the same checks, yielding lines instead of dicts.

    Lines that are plainly valid and canonical take :func:`quick_line`'s fast
    path (about nine times faster); any other line goes through the full
    record check, so a fault is refused and named exactly as by :func:`iter_chunk`.
    """
    return map(ListedRecord._make, _chunk_records(manifest, index, payload, limits, _parse_listed))


def iter_snapshot_lines(manifest: Manifest, chunks: Iterable[bytes],
                        limits: Limits = DEFAULT_LIMITS) -> Iterator[ListedRecord]:
    """:func:`iter_snapshot` for stores (see :func:`iter_chunk_lines`); the digest check comes last."""
    return map(ListedRecord._make, _snapshot_records(manifest, chunks, limits, _parse_listed))


#: Turns one line (without its newline) into (member_no, what the caller gets), or raises.
_Parse = Callable[[bytes, str], tuple[str, Any]]


def _parse_record(line: bytes, here: str) -> tuple[str, dict[str, Any]]:
    record = validate_member(loads_object(line, here), here)
    if canonical_line(record) != line + b"\n":
        raise PayloadError(here, "record is not in canonical form (sorted keys and lists, "
                           "no spaces, raw UTF-8)")
    return record["member_no"], record


def _parse_listed(line: bytes, here: str) -> tuple[str, tuple[str, ...]]:
    quick = quick_line(line)
    if quick is not None:
        return quick
    member_no, record = _parse_record(line, here)
    return member_no, tuple(card["ref"] for card in record["cards"])


def _snapshot_records(manifest: Manifest, chunks: Iterable[bytes], limits: Limits,
                      parse: _Parse) -> Iterator[tuple[str, Any, bytes]]:
    digest = ListDigest()
    received = 0
    for index, payload in enumerate(chunks):
        for member_no, item, line in _chunk_records(manifest, index, payload, limits, parse):
            digest.add_line(line, member_no)
            yield member_no, item, line
        received = index + 1
    if received != len(manifest.chunks):
        raise PayloadError("snapshot", f"{received} of {len(manifest.chunks)} chunks given")
    if digest.count != manifest.count or digest.hexdigest() != manifest.digest:
        raise PayloadError("manifest.digest", f"chunks hold {digest.count} members with digest "
                           f"{digest.hexdigest()}, manifest says {manifest.count} / {manifest.digest}")


def _chunk_records(manifest: Manifest, index: int, payload: bytes, limits: Limits,
                   parse: _Parse) -> Iterator[tuple[str, Any, bytes]]:
    where = f"chunk[{index}]"
    if not 0 <= index < len(manifest.chunks):
        raise PayloadError(where, f"manifest v{manifest.version} has {len(manifest.chunks)} chunks")
    if len(payload) > limits.max_chunk:
        raise PayloadError(where, f"{len(payload)} bytes is over the {limits.max_chunk}-byte limit")
    info = manifest.chunks[index]
    actual = hashlib.sha256(payload).hexdigest()
    if len(payload) != info.size or actual != info.sha256:
        raise SignatureError(where, f"{len(payload)} bytes with sha256 {actual} do not match the "
                             f"signed manifest v{manifest.version} ({info.size} bytes, {info.sha256})")
    return _records_of(info, payload, where, limits, parse)


def _records_of(info: ChunkInfo, payload: bytes, where: str, limits: Limits,
                parse: _Parse) -> Iterator[tuple[str, Any, bytes]]:
    count = 0
    last = ""
    for line in _lines(payload, info, where, limits):
        count += 1
        here = f"{where}.line[{count}]"
        if count > info.count:
            raise PayloadError(here, f"more than the {info.count} records the manifest lists")
        member_no, item = parse(line, here)
        line += b"\n"
        if count == 1 and member_no != info.first:
            raise PayloadError(here, f"first member {member_no!r}, manifest says {info.first!r}")
        if count > 1 and member_no <= last:
            raise PayloadError(here, f"member {member_no!r} is not after {last!r}")
        last = member_no
        yield member_no, item, line
    if count != info.count or last != info.last:
        raise PayloadError(where, f"{count} records ending at {last!r}, manifest says "
                           f"{info.count} ending at {info.last!r}")


def _lines(payload: bytes, info: ChunkInfo, where: str, limits: Limits) -> Iterator[bytes]:
    """Decompress step by step and split into lines without the newline."""
    inflater = zlib.decompressobj()
    pending = payload
    tail = b""
    raw = 0
    while not inflater.eof:
        try:
            out = inflater.decompress(pending, _STEP)
        except zlib.error as exc:
            raise PayloadError(where, f"not a valid zlib stream: {exc}") from None
        pending = inflater.unconsumed_tail
        if not out and not pending and not inflater.eof:
            raise PayloadError(where, "zlib stream is truncated")
        raw += len(out)
        if raw > info.raw:
            raise PayloadError(where, f"decompresses past the {info.raw} bytes the manifest lists")
        lines = (tail + out).split(b"\n")
        tail = lines.pop()
        if len(tail) >= limits.max_line:
            raise PayloadError(where, f"a line is longer than {limits.max_line} bytes")
        yield from lines
    if inflater.unused_data:
        raise PayloadError(where, "bytes after the end of the zlib stream")
    if tail:
        raise PayloadError(where, "last record is not terminated by a newline")
    if raw != info.raw:
        raise PayloadError(where, f"decompresses to {raw} bytes, manifest says {info.raw}")


# -- encoding (back-office side) -----------------------------------------------------


def _deflate_bound(n: int) -> int:
    """zlib's compressBound(): the most ``n`` input bytes can grow to."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13


def min_chunk_size(limits: Limits = DEFAULT_LIMITS) -> int:
    """The smallest chunk size that still fits any valid record."""
    return _deflate_bound(limits.max_line) + _TRAILER_ROOM


@dataclass
class EncodedSnapshot:
    """Chunks ready to publish, and the count and digest the manifest must state."""

    chunks: list[tuple[ChunkInfo, bytes]] = field(default_factory=list)
    count: int = 0
    digest: str = ""


class _ChunkBuilder:
    """Fill one zlib stream with lines until the next one might break the size cap.

    The exact compressed size is only known after a flush, so the builder
    keeps a safe over-estimate (bytes out so far plus the worst case for the
    input not yet flushed) and sync-flushes only when that estimate says the
    next line might not fit. Chunks therefore end within a line of the cap.
    """

    def __init__(self, max_size: int, max_raw: int, level: int) -> None:
        self.max_size = max_size
        self.max_raw = max_raw
        self._zlib = zlib.compressobj(level)
        self._parts: list[bytes] = []
        self._hash = hashlib.sha256()
        self.out = 0
        self.unflushed = 0
        self.raw = 0
        self.count = 0
        self.first = ""
        self.last = ""

    def _emit(self, data: bytes) -> None:
        if data:
            self._parts.append(data)
            self._hash.update(data)
            self.out += len(data)

    def _fits(self, extra: int) -> bool:
        return self.out + _deflate_bound(self.unflushed + extra) + _TRAILER_ROOM <= self.max_size

    def offer(self, line: bytes, member_no: str) -> bool:
        """Add ``line`` if it surely fits; False means: close this chunk first."""
        if self.count and self.raw + len(line) > self.max_raw:
            return False
        if self.count and not self._fits(len(line)):
            self._emit(self._zlib.flush(zlib.Z_SYNC_FLUSH))
            self.unflushed = 0
            if not self._fits(len(line)):
                return False
        self._emit(self._zlib.compress(line))
        self.unflushed += len(line)
        self.raw += len(line)
        self.count += 1
        self.first = self.first or member_no
        self.last = member_no
        return True

    def close(self) -> tuple[ChunkInfo, bytes]:
        self._emit(self._zlib.flush(zlib.Z_FINISH))
        info = ChunkInfo(sha256=self._hash.hexdigest(), size=self.out, raw=self.raw,
                         count=self.count, first=self.first, last=self.last)
        return info, b"".join(self._parts)


def encode_snapshot(records: Iterable[Mapping[str, Any]], chunk_size: int | None = None,
                    limits: Limits = DEFAULT_LIMITS, level: int = 6) -> EncodedSnapshot:
    """Validate, canonicalise and chunk records given in member_no order.

    Every record goes through :func:`validate_member`, so the back office can
    never publish a list a terminal would refuse.
    """
    size = limits.max_chunk if chunk_size is None else chunk_size
    if not min_chunk_size(limits) <= size <= limits.max_chunk:
        raise ValueError(f"chunk_size {size} outside {min_chunk_size(limits)}..{limits.max_chunk}")
    result = EncodedSnapshot()
    digest = ListDigest()
    builder: _ChunkBuilder | None = None
    for i, source in enumerate(records):
        record = validate_member(source, f"records[{i}]")
        line = canonical_line(record)
        if len(line) > limits.max_line:
            raise ValueError(f"records[{i}]: canonical line of {len(line)} bytes is over "
                             f"{limits.max_line}")
        digest.add_line(line, record["member_no"])
        if builder is None or not builder.offer(line, record["member_no"]):
            if builder is not None:
                result.chunks.append(builder.close())
            builder = _ChunkBuilder(size, limits.max_chunk_raw, level)
            builder.offer(line, record["member_no"])
    if builder is not None:
        result.chunks.append(builder.close())
    if digest.count > limits.max_members or len(result.chunks) > limits.max_chunks:
        raise ValueError(f"{digest.count} members in {len(result.chunks)} chunks exceed the limits")
    result.count = digest.count
    result.digest = digest.hexdigest()
    return result
