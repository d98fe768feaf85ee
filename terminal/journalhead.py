"""The journal's sidecar: the chain's head, readable when the database is not.

Kept apart from :mod:`terminal.journal` because it is its own small format
with its own failure rules: a fresh journal continues the sequence and the
hash chain from it when the database file was lost or moved aside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("unionterm.journal")

#: The hash before a chain's first record.
GENESIS = "0" * 64


@dataclass(frozen=True)
class Head:
    """The last record's sequence number and hash, and whose journal it is."""

    seq: int
    hash: str
    terminal: str


class HeadFile:
    """``<db>.head``: the chain's head, readable when the database is not.

    One fixed-size block overwritten in place after every commit (a single
    ``pwrite`` that ``kill -9`` cannot tear), carrying a CRC so a block torn
    by a power cut is recognised and ignored rather than trusted. It is
    written and flushed with ``fdatasync`` once the loop is next free after
    the commit's answer, off the tap's path.
    """

    SIZE = 256
    MAGIC = "UTJH1"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._failed = False
        #: The last head written to the file by this object (None until one is).
        self.written: Head | None = None

    @classmethod
    def encode(cls, head: Head) -> bytes:
        core = f"{head.seq} {head.hash} {head.terminal}"
        line = f"{cls.MAGIC} {zlib.crc32(core.encode()):08x} {core}"
        return line.encode().ljust(cls.SIZE - 1, b" ") + b"\n"

    @classmethod
    def decode(cls, raw: bytes) -> Head | None:
        try:
            magic, crc, seq, digest, terminal = raw.decode("ascii").split(maxsplit=4)
        except (UnicodeDecodeError, ValueError):
            return None
        terminal = terminal.rstrip()
        core = f"{seq} {digest} {terminal}"
        if magic != cls.MAGIC or crc != f"{zlib.crc32(core.encode()):08x}" or not seq.isdigit():
            return None
        return Head(int(seq), digest, terminal)

    def read(self) -> Head | None:
        try:
            return self.decode(self.path.read_bytes()[: self.SIZE])
        except OSError:
            return None

    def write(self, head: Head) -> None:
        """Best effort: the sidecar must never cost a tap; a failure is logged once."""
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.pwrite(self._fd, self.encode(head), 0)
            self._failed = False
            self.written = head
        except OSError as exc:
            if not self._failed:
                log.warning("event=journal_head_write_failed path=%s error=%r", self.path, str(exc))
            self._failed = True
            self.close()

    def sync(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
