"""The append-only transaction journal: the terminal's memory of what it granted.

A decision that grants value is committed here (WAL, ``synchronous=FULL``)
before the relay moves or "approved" is shown, so a power cut can lose a tap
that was never honoured but never one that was. Records are hash-chained:
each carries the SHA-256 of the previous one, so a removed or edited record
is detectable by whoever holds the chain (the back office).

SQLite connections are bound to one thread, so all journal I/O runs on one
dedicated worker thread; the loop awaits it and never blocks on ``fsync``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from .exceptions import StorageError

log = logging.getLogger("unionterm.journal")

T = TypeVar("T")

GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tx (
    seq INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    hash TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    acked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tx_unpublished ON tx(published) WHERE published = 0;
"""


@dataclass(frozen=True)
class TxEntry:
    """What the app asks the journal to record; the journal adds sequence, ids and chain."""

    mode: str
    kind: str
    decision: str
    reason: str
    card_ref: str = ""
    profile: str = ""
    strength: str = ""
    member_no: str = ""
    amount_fen: int = 0
    subsidy_fen: int = 0
    to_pay_fen: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Record:
    """One journaled transaction, exactly as published (``body``) plus its chain hash."""

    seq: int
    body: str
    hash: str

    @property
    def fields(self) -> dict[str, Any]:
        return json.loads(self.body)


def chain_hash(prev_hash: str, body: str) -> str:
    """The link of the hash chain: SHA-256 over the previous hash and this body."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + body.encode()).hexdigest()


def canonical(obj: dict[str, Any]) -> str:
    """The one JSON spelling that is hashed and published."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


class Journal:
    """Durable, ordered, hash-chained transaction log for one terminal."""

    def __init__(self, path: str | Path, terminal_id: str, clock: Callable[[], tuple[int, bool]]) -> None:
        self.path = Path(path)
        self.terminal_id = terminal_id
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._conn: sqlite3.Connection | None = None
        self._last_seq = 0
        self._last_hash = GENESIS
        self.appended = asyncio.Event()

    async def __aenter__(self) -> "Journal":
        await self._run(self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._run(self._close)
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- worker-thread side ------------------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT seq, hash FROM tx ORDER BY seq DESC LIMIT 1").fetchone()
        if row:
            self._last_seq, self._last_hash = row
        self._conn = conn
        log.info("event=journal_open path=%s last_seq=%d", self.path, self._last_seq)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _append(self, entry: TxEntry) -> Record:
        assert self._conn is not None
        wall_ms, clock_ok = self._clock()
        seq = self._last_seq + 1
        body_obj = {
            "terminal": self.terminal_id,
            "seq": seq,
            "txid": str(uuid.uuid4()),
            "time_ms": wall_ms,
            "clock_ok": clock_ok,
            "prev_hash": self._last_hash,
            **asdict(entry),
        }
        body = canonical(body_obj)
        digest = chain_hash(self._last_hash, body)
        try:
            self._conn.execute("INSERT INTO tx (seq, body, hash) VALUES (?, ?, ?)", (seq, body, digest))
        except sqlite3.Error as exc:
            raise StorageError(f"journal append failed: {exc}") from exc
        self._last_seq, self._last_hash = seq, digest
        return Record(seq, body, digest)

    def _unpublished(self, after: int, limit: int) -> list[Record]:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT seq, body, hash FROM tx WHERE published = 0 AND seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Record(*r) for r in rows]

    def _mark_published(self, seqs: list[int]) -> None:
        assert self._conn is not None
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany("UPDATE tx SET published = 1 WHERE seq = ?", [(s,) for s in seqs])

    def _count_unpublished(self) -> int:
        assert self._conn is not None
        return self._conn.execute("SELECT count(*) FROM tx WHERE published = 0").fetchone()[0]

    # -- loop side ----------------------------------------------------------------------

    async def append(self, entry: TxEntry) -> Record:
        """Commit one transaction durably; returns only after the commit is on disk."""
        record = await self._run(self._append, entry)
        self.appended.set()
        return record

    async def unpublished(self, after: int = 0, limit: int = 100) -> list[Record]:
        """Records not yet handed to the broker, in sequence order."""
        return await self._run(self._unpublished, after, limit)

    async def mark_published(self, seqs: list[int]) -> None:
        if seqs:
            await self._run(self._mark_published, seqs)

    async def backlog(self) -> int:
        return await self._run(self._count_unpublished)

    @property
    def last_seq(self) -> int:
        return self._last_seq
