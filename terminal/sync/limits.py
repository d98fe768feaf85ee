"""Upper bounds on everything a sync message may contain.

Bounds are checked before work is done so that a malicious or buggy
publisher can make a terminal refuse a message, but never make it run out of
memory (the whole process must stay under 150 MB while applying 1.1 million
members) or spend minutes on one payload.
"""

from __future__ import annotations

from dataclasses import dataclass

from terminal.signing import DEFAULT_MAX_BYTES

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Limits:
    """Sizes a terminal accepts; the back office must build within the same ones."""

    #: Whole signed envelope (manifest, delta, hot list), before any parsing.
    max_envelope: int = DEFAULT_MAX_BYTES
    #: One compressed snapshot chunk as it arrives on ``members/{scope}/chunk/{n}``.
    max_chunk: int = 256 * KIB
    #: One chunk once decompressed (guards against a zlib bomb even after the hash checked).
    max_chunk_raw: int = 16 * MIB
    #: One member record's canonical JSON line including its newline.
    max_line: int = 8 * KIB
    #: Members in one scope's list.
    max_members: int = 4_000_000
    #: Chunks in one snapshot.
    max_chunks: int = 8192
    #: Upserts plus removals in one delta.
    max_delta_ops: int = 10_000
    #: Entries in one hot-list message (a full hot list included).
    max_hotlist_entries: int = 40_000


DEFAULT_LIMITS = Limits()
