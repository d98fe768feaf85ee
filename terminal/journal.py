"""The append-only transaction journal: the terminal's memory of what it granted.

A decision that grants value is committed here (WAL, ``synchronous=FULL``)
before the relay moves or "approved" is shown, so a power cut can lose a tap
that was never honoured but never one that was. Records are hash-chained:
each carries the SHA-256 of the previous one, so a removed or edited record
is detectable by whoever holds the chain (the back office).

SQLite connections are bound to one thread, so all journal I/O runs on one
dedicated worker thread; the loop awaits it and never blocks on ``fsync``.
The uplink shares that thread with the tap path, so it asks for small slices
(a few dozen rows) and an append never waits behind more than one of them.

Delivery state is two watermarks, not per-row flags: ``published`` (the
broker acknowledged every record up to here) and ``acked`` (the back office
stored every record up to here). Records are sent in order, so a watermark
says everything a flag per row would, for one tiny write instead of one per
record. Neither watermark needs ``fsync``: losing one only means records are
sent again, and the back office de-duplicates by (terminal, seq).

The file is checked (``PRAGMA integrity_check``) at every start. A corrupt
file is moved aside, never deleted (:mod:`terminal.journalfile`), and a
fresh journal continues the sequence and the chain from the last record
known, read from the corrupt file if it still can be, else from a small
sidecar (``<db>.head``, :mod:`terminal.journalhead`) rewritten after every
commit. A journal that stops being writable (disk full, file
system read-only) does not stop the terminal: the failure is classified
(:mod:`terminal.storage`), value-granting taps are refused, and a background
task probes until the storage is back.

Space: ``auto_vacuum=INCREMENTAL``. Pruned rows free pages that later inserts
reuse, and ``PRAGMA incremental_vacuum`` after each pruning pass hands the
free pages at the end of the file back to the file system, so a terminal
recovering from a full disk gets its space back without a full ``VACUUM``
(which would need as much free space again as the file).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .bridge import SerialWorker
from .config import JournalSection
from .exceptions import StorageError
from .journalfile import CorruptFile, Resume, check_file, file_id, move_aside
from .journalhead import GENESIS, Head, HeadFile
from .storage import StorageState, classify, disk_free, probe_directory

log = logging.getLogger("unionterm.journal")

T = TypeVar("T")


#: Kind of the record a fresh journal starts with after its predecessor was lost.
KIND_RESET = "journal_reset"

#: Rows deleted per pruning transaction: small, so a tap never waits long behind one.
PRUNE_BATCH = 1000
#: Pages handed back to the file system per ``incremental_vacuum`` call.
VACUUM_PAGES = 2048
#: How often acknowledged rows past their retention are looked for.
PRUNE_EVERY_S = 600.0
#: An append in a degraded state re-probes the storage at most this often.
INLINE_PROBE_S = 0.5
WAL_SIZE_LIMIT = 4 << 20

#: Every connection's settings (a fresh file is made ``auto_vacuum=INCREMENTAL`` first).
PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", f"journal_size_limit={WAL_SIZE_LIMIT}")
SCHEMA = """
CREATE TABLE IF NOT EXISTS tx (
    seq INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    hash TEXT NOT NULL,
    at_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class TxEntry:
    """What the app asks the journal to record; the journal adds sequence, ids and chain.

    ``grants_value`` marks a record whose decision hands something out (door
    opened, subsidy paid): those are refused when storage is degraded, while
    refusals may still be written into the capacity reserve.
    """

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
    grants_value: bool = False
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


class AckResult(enum.Enum):
    """What a back-office acknowledgement did; only ACCEPTED changes anything."""

    ACCEPTED = "accepted"
    #: Equal to the current watermark: a repeat.
    DUPLICATE = "duplicate"
    #: Below the current watermark: old or out of order.
    STALE = "stale"
    #: No such record here (beyond the last one, or the file was replaced).
    UNKNOWN = "unknown"
    #: The record exists but its hash differs: the acknowledger holds another chain.
    MISMATCH = "mismatch"


@dataclass(frozen=True)
class JournalStats:
    """Queue and storage figures for telemetry; ages are 0 when nothing waits."""

    last_seq: int
    published_seq: int
    acked_seq: int
    rows: int
    capacity: int
    oldest_unpublished_ms: int
    oldest_unacked_ms: int
    state: StorageState
    disk_free: int

    @property
    def unpublished(self) -> int:
        return self.last_seq - self.published_seq

    @property
    def unacked(self) -> int:
        return self.last_seq - self.acked_seq


def chain_hash(prev_hash: str, body: str) -> str:
    """The link of the hash chain: SHA-256 over the previous hash and this body."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + body.encode()).hexdigest()


#: Made once: ``json.dumps`` with options builds an encoder per call, on every tap's commit.
_CANONICAL = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))

#: Transaction ids drawn ahead, between taps (see :meth:`Journal._after_answer`).
TXID_POOL = 4


def canonical(obj: dict[str, Any]) -> str:
    """The one JSON spelling that is hashed and published."""
    return _CANONICAL.encode(obj)


# -- the journal -------------------------------------------------------------------------


class Journal:
    """Durable, ordered, hash-chained transaction log for one terminal."""

    def __init__(self, path: str | Path, terminal_id: str, clock: Callable[[], tuple[int, bool]],
                 settings: JournalSection | None = None) -> None:
        self.path = Path(path)
        self.terminal_id = terminal_id
        self.settings = settings or JournalSection()
        self._clock = clock
        self._worker = SerialWorker("journal")
        self._conn: sqlite3.Connection | None = None
        self._head = HeadFile(Path(f"{self.path}.head"))
        self._after_answer_pending = False
        self._txids: list[str] = []  # only under the worker's job lock (its jobs, append_here)
        self._last_seq = 0
        self._last_hash = GENESIS
        self._rows = 0
        self._published = 0
        self._acked = 0
        self._fault: StorageState | None = None
        self._last_probe = 0.0
        self._announced = StorageState.OK
        self._maintainer: asyncio.Task[None] | None = None
        self._closed = False
        self._checked: tuple[int, int] | None = None
        self.appended = asyncio.Event()
        self.acked = asyncio.Event()
        #: Called on the loop with the new state whenever it changes.
        self.listeners: list[Callable[[StorageState], None]] = []
        warn = self.settings.warn_at or self.settings.capacity * 4 // 5
        self._warn_at = min(warn, self.settings.capacity)
        self._reserve = max(10, self.settings.capacity // 100)

    async def __aenter__(self) -> "Journal":
        await self._run(self._open)
        self._maintainer = asyncio.get_running_loop().create_task(self._maintain(), name="journal")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
        await self._run(self._close)
        self._worker.shutdown()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self._worker.run(fn, *args)
        finally:
            self._announce()

    def _announce(self) -> None:
        state = self.state
        if state is self._announced or self._closed:
            return
        previous, self._announced = self._announced, state
        level = logging.INFO if state.accepts_value else logging.ERROR
        log.log(level, "event=journal_state state=%s previous=%s rows=%d last_seq=%d",
                state.value, previous.value, self._rows, self._last_seq)
        for listener in list(self.listeners):
            listener(state)

    # -- worker-thread side: opening ------------------------------------------------------

    def _open(self) -> None:
        self._close_conn()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            head = self._head.read()
            if head is not None and head.terminal != self.terminal_id:
                head = None
            resume: Resume | None = None
            if self.path.exists() and self._checked != file_id(self.path):
                try:
                    check_file(self.path, self.terminal_id)
                    # Retried every probe while the disk is read-only: check an unchanged file once.
                    self._checked = file_id(self.path)
                except CorruptFile as exc:
                    resume = move_aside(self.path, self.terminal_id, str(exc), head)
            self._conn = self._connect()
            self._load()
            if resume is None and head is not None and head.seq > self._last_seq:
                # Committed records are gone although the file checks out (restored
                # from a backup, WAL deleted): never hand their numbers out again.
                log.error("event=journal_behind_head db_seq=%d head_seq=%d", self._last_seq, head.seq)
                resume = Resume(head.seq, head.hash, "behind_head", {"db_seq": self._last_seq})
            if resume is not None:
                self._write_reset(resume)
            # A real write: SQLite opens a file on a read-only file system without complaint.
            self._store_meta({"opened": int(time.time())}, durable=True)
            self._head.write(self._current_head())
            self._fault = None
            self._checked = None
            self._refresh_fault()
            log.info("event=journal_open path=%s last_seq=%d rows=%d published=%d acked=%d",
                     self.path, self._last_seq, self._rows, self._published, self._acked)
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc, "open")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)  # see append_here
        try:
            fresh = conn.execute("PRAGMA page_count").fetchone()[0] == 0
            if fresh:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            for pragma in PRAGMAS:
                conn.execute(f"PRAGMA {pragma}")
            conn.executescript(SCHEMA)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(tx)")}
            if "published" in columns:  # a walking-skeleton journal: carry its flag over once
                self._migrate_flags(conn)
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("VACUUM")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate_flags(conn: sqlite3.Connection) -> None:
        if conn.execute("SELECT 1 FROM meta WHERE k = 'published'").fetchone():
            return
        row = conn.execute("SELECT min(seq) - 1 FROM tx WHERE published = 0").fetchone()
        upto = row[0] if row[0] is not None else conn.execute("SELECT coalesce(max(seq), 0) FROM tx").fetchone()[0]
        conn.execute("INSERT INTO meta (k, v) VALUES ('published', ?)", (upto,))

    def _load(self) -> None:
        conn = self._conn
        assert conn is not None
        row = conn.execute("SELECT seq, hash FROM tx ORDER BY seq DESC LIMIT 1").fetchone()
        self._last_seq, self._last_hash = row if row else (0, GENESIS)
        self._rows = conn.execute("SELECT count(*) FROM tx").fetchone()[0]
        meta = dict(conn.execute("SELECT k, v FROM meta").fetchall())
        if "terminal" not in meta:
            conn.execute("INSERT INTO meta (k, v) VALUES ('terminal', ?)", (self.terminal_id,))
        self._published = min(int(meta.get("published", 0)), self._last_seq)
        self._acked = min(int(meta.get("acked", 0)), self._last_seq)
        self._published = max(self._published, self._acked)

    def _write_reset(self, resume: Resume) -> None:
        """First record of a fresh journal: where it resumes and what was lost."""
        fresh = self._rows == 0
        self._last_seq, self._last_hash = resume.seq, resume.hash
        entry = TxEntry(mode="system", kind=KIND_RESET, decision="none", reason=resume.reason,
                        detail={**resume.detail, "resumed_after": resume.seq})
        if fresh:  # nothing below the reset record lives in this file
            self._published = self._acked = resume.seq
            self._store_meta({"published": resume.seq, "acked": resume.seq}, durable=True)
        self._commit([entry], None)
        self._sync_head()
        log.error("event=journal_reset reason=%s resumed_after=%d", resume.reason, resume.seq)

    # -- worker-thread side: writing ------------------------------------------------------

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _close(self) -> None:
        self._closed = True
        self._close_conn()
        written = self._head.written  # None: this journal never opened, so it has no head of its own to give
        if written is not None and written != self._current_head():  # e.g. an append whose answer was never taken
            self._head.write(self._current_head())
        self._head.sync()
        self._head.close()

    def _fail(self, exc: BaseException, during: str) -> None:
        """Classify a storage failure; let go of the files unless the disk is merely full."""
        state = classify(exc, self.path.parent)
        if state is not self._fault:
            log.error("event=journal_storage_error during=%s state=%s error=%r", during, state.value, str(exc))
        self._fault = state
        if state is not StorageState.DISK_FULL:
            # Drop every handle: a read-only or failing file system can then be
            # unmounted, checked and mounted again, and we reopen (and re-check) it.
            self._close_conn()
            self._head.close()

    def _refresh_fault(self) -> None:
        """Keep the preemptive "disk nearly full" refusal in step with free space."""
        if self._fault in (None, StorageState.DISK_FULL) and self.settings.min_free_kb:
            free = disk_free(self.path.parent)
            low = 0 <= free < self.settings.min_free_kb * 1024
            if low:
                self._fault = StorageState.DISK_FULL

    def _recover(self) -> None:
        """Probe a degraded journal; clear the fault when a real write succeeds again."""
        self._last_probe = time.monotonic()
        if self._conn is None:
            self._open()
            return
        min_free = self.settings.min_free_kb * 1024
        state = probe_directory(self.path.parent, min_free)
        if state is not StorageState.OK:
            if state is not self._fault:
                log.warning("event=journal_probe state=%s", state.value)
            self._fault = state
            return
        try:
            self._store_meta({"probe": int(time.time())}, durable=True)
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc, "probe")
            return
        self._fault = None
        self._make_room(self._rows - self._warn_at)

    def _admit(self, entries: Sequence[TxEntry]) -> None:
        """Refuse before writing anything when a record may not be added now."""
        if self._fault is not None and time.monotonic() - self._last_probe >= INLINE_PROBE_S:
            self._recover()
        if self._conn is None or self._fault in (StorageState.READ_ONLY, StorageState.FAILED):
            raise StorageError(f"journal unavailable: {(self._fault or StorageState.FAILED).value}")
        value = any(e.grants_value for e in entries)
        if value:
            self._refresh_fault()
            if self._fault is StorageState.DISK_FULL:
                raise StorageError("journal refuses value: disk full")
        after = self._rows + len(entries)
        if after > self.settings.capacity:
            self._make_room(min(after - self.settings.capacity, 100))
            after = self._rows + len(entries)
        if after > self.settings.capacity and (value or after > self.settings.capacity + self._reserve):
            raise StorageError(f"journal full: {self._rows} rows, capacity {self.settings.capacity}")

    def _commit(self, entries: Sequence[TxEntry], also: Callable[[sqlite3.Connection], None] | None
                ) -> list[Record]:
        conn = self._conn
        assert conn is not None
        wall_ms, clock_ok = self._clock()
        seq, prev = self._last_seq, self._last_hash
        records: list[Record] = []
        rows: list[tuple[int, str, str, int]] = []
        for entry in entries:
            seq += 1
            body = canonical({
                "terminal": self.terminal_id,
                "seq": seq,
                "txid": self._txids.pop() if self._txids else str(uuid.uuid4()),
                "time_ms": wall_ms,
                "clock_ok": clock_ok,
                "prev_hash": prev,
                **vars(entry),  # its fields, flat JSON values (asdict's deep copy costs a tap ~20 µs)
            })
            prev = chain_hash(prev, body)
            records.append(Record(seq, body, prev))
            rows.append((seq, body, prev, wall_ms))
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO tx (seq, body, hash, at_ms) VALUES (?, ?, ?, ?)", rows)
            if also is not None:
                also(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self._last_seq, self._last_hash = seq, prev
        self._rows += len(rows)
        return records

    def _head_later(self) -> None:
        """Loop side, after an append's answer: have :meth:`_after_answer` run once the loop is next free.

        Not from the worker right after the commit: its write would take the
        interpreter while the loop wakes up with the answer (up to a fifth of
        a millisecond at the tail of a tap). The sidecar lags the file by the
        records just committed for that moment longer, as it always did
        between a commit and its write; closing writes it last.
        """
        if not self._after_answer_pending:
            self._after_answer_pending = True
            asyncio.get_running_loop().call_soon(self._worker.submit, self._after_answer)

    def _after_answer(self) -> None:
        """Worker, between taps: the head sidecar, and the next records' transaction ids.

        A random UUID costs a tap about 0.09 ms on a terminal idle between
        taps (cold caches, a getrandom call); drawn here, the commit only
        takes one. A burst that empties the pool draws its own.
        """
        self._after_answer_pending = False
        self._sync_head()
        while len(self._txids) < TXID_POOL:
            self._txids.append(str(uuid.uuid4()))

    def _current_head(self) -> Head:
        return Head(self._last_seq, self._last_hash, self.terminal_id)

    def _sync_head(self) -> None:
        self._head.write(self._current_head())
        self._head.sync()

    def _append(self, entries: Sequence[TxEntry], also: Callable[[sqlite3.Connection], None] | None
                ) -> list[Record]:
        self._admit(entries)
        try:
            return self._commit(entries, also)
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc, "append")
            raise StorageError(f"journal append failed ({self._fault.value if self._fault else '?'}): {exc}"
                               ) from exc

    def _store_meta(self, values: dict[str, int], durable: bool = False) -> None:
        """Write watermarks; without ``durable`` the commit skips fsync (a loss only means a resend)."""
        conn = self._conn
        if conn is None:
            raise StorageError("journal unavailable")
        if not durable:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", list(values.items()))
        finally:
            if not durable:
                conn.execute("PRAGMA synchronous=FULL")

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a non-append write, turning storage trouble into :class:`StorageError`."""
        if self._conn is None:
            raise StorageError(f"journal unavailable: {(self._fault or StorageState.FAILED).value}")
        try:
            return fn(*args)
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc, getattr(fn, "__name__", "write"))
            raise StorageError(f"journal write failed: {exc}") from exc

    def _mark_published(self, upto: int) -> None:
        upto = min(upto, self._last_seq)
        if upto > self._published:
            self._published = upto
            self._store_meta({"published": upto})

    def _ack(self, upto: int, digest: str) -> AckResult:
        if upto < self._acked:
            return AckResult.STALE
        if upto == self._acked:
            return AckResult.DUPLICATE
        if upto > self._last_seq or self._conn is None:
            return AckResult.UNKNOWN
        row = self._conn.execute("SELECT hash FROM tx WHERE seq = ?", (upto,)).fetchone()
        if row is None:
            return AckResult.UNKNOWN
        if row[0] != digest:
            return AckResult.MISMATCH
        self._acked = upto
        self._published = max(self._published, upto)
        try:
            self._store_meta({"acked": upto, "published": self._published})
        except (sqlite3.Error, OSError) as exc:  # kept in memory: at worst a resend after a restart
            self._fail(exc, "ack")
        return AckResult.ACCEPTED

    def _delete_acked(self, limit: int, before_ms: int | None) -> int:
        """Delete up to ``limit`` of the oldest acknowledged rows (never the last one)."""
        conn = self._conn
        if conn is None or limit <= 0:
            return 0
        cutoff = before_ms if before_ms is not None else 2**62
        cur = conn.execute(
            "DELETE FROM tx WHERE seq IN (SELECT seq FROM tx WHERE seq <= ? AND seq < ? AND at_ms < ?"
            " ORDER BY seq LIMIT ?)", (self._acked, self._last_seq, cutoff, limit))
        self._rows -= cur.rowcount
        return cur.rowcount

    def _make_room(self, rows: int) -> int:
        """``drop_acked``: delete acknowledged rows to get under capacity (a no-op otherwise)."""
        if self.settings.full_policy != "drop_acked" or rows <= 0:
            return 0
        try:
            dropped = self._delete_acked(min(rows, PRUNE_BATCH), None)
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc, "drop_acked")
            return 0
        if dropped:
            log.info("event=journal_dropped_acked rows=%d remaining=%d", dropped, self._rows)
        return dropped

    def _prune_step(self, now_ms: int) -> int:
        cutoff = now_ms - self.settings.retention_days * 86_400_000
        return self._guarded(self._delete_acked, PRUNE_BATCH, cutoff)

    def _vacuum(self) -> int:
        assert self._conn is not None
        before = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        # Stepped once, as execute() would, the pragma frees a single page; a script runs it out.
        self._conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
        return before - self._conn.execute("PRAGMA freelist_count").fetchone()[0]

    # -- worker-thread side: reading ------------------------------------------------------

    def _records_after(self, after: int, limit: int) -> list[Record]:
        if self._conn is None:
            return []
        rows = self._guarded(lambda: self._conn.execute(  # type: ignore[union-attr]
            "SELECT seq, body, hash FROM tx WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)).fetchall())
        return [Record(*r) for r in rows]

    def _at_ms(self, seq: int) -> int:
        if self._conn is None or seq > self._last_seq:
            return 0
        row = self._conn.execute("SELECT at_ms FROM tx WHERE seq >= ? ORDER BY seq LIMIT 1", (seq,)).fetchone()
        return int(row[0]) if row else 0

    def _stats(self) -> JournalStats:
        try:
            unpublished = self._at_ms(self._published + 1)
            unacked = self._at_ms(self._acked + 1)
        except (sqlite3.Error, OSError):
            unpublished = unacked = 0
        return JournalStats(self._last_seq, self._published, self._acked, self._rows, self.settings.capacity,
                            unpublished, unacked, self.state, disk_free(self.path.parent))

    # -- loop side ----------------------------------------------------------------------

    async def append(self, entry: TxEntry, also: Callable[[sqlite3.Connection], None] | None = None
                     ) -> Record:
        """Commit one transaction durably; returns only after the commit is on disk.

        ``also`` runs inside the same SQLite transaction (on the journal thread),
        for state that must change together with the record (counters). Raises
        :class:`StorageError` when the record cannot be written; nothing was
        written then, and nothing may be granted.
        """
        (record,) = await self._run(self._append, (entry,), also)
        self.after_append()
        return record

    def append_here(self, entry: TxEntry) -> Record:
        """:meth:`append` in the calling thread, between the worker's jobs; the same errors.

        For a tap served on the thread that read its card, which holds the
        loop's :class:`~terminal.eventloop.StateGuard` meanwhile; once the loop
        hears of the record it calls :meth:`after_append`.
        """
        (record,) = self._worker.call_here(self._append, (entry,), None)
        return record

    def after_append(self, appended: bool = True) -> None:
        """Loop side of an append, wherever it was made (``appended`` False: it was refused):
        a change of storage state, the head sidecar, whoever waits for records."""
        self._announce()
        if appended:
            self._head_later()
            self.appended.set()

    async def append_batch(self, entries: Iterable[TxEntry]) -> list[Record]:
        """Commit several records in one transaction (imports, bulk back-fills, the bench)."""
        batch = list(entries)
        if not batch:
            return []
        records = await self._run(self._append, batch, None)
        self._head_later()
        self.appended.set()
        return records

    async def transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one durable transaction on the journal's thread.

        For small tables that share the journal's durability (seen command
        nonces); storage failures become :class:`StorageError`.
        """
        def work() -> T:
            conn = self._conn
            if conn is None:
                raise StorageError(f"journal unavailable: {(self._fault or StorageState.FAILED).value}")
            try:
                conn.execute("BEGIN IMMEDIATE")
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, (sqlite3.Error, OSError)):
                    self._fail(exc, "transact")
                    raise StorageError(f"journal transaction failed: {exc}") from exc
                raise
        return await self._run(work)

    async def records_after(self, after: int, limit: int = 50) -> list[Record]:
        """Records with ``seq > after``, in order, at most ``limit`` (keep it small)."""
        return await self._run(self._records_after, after, limit)

    async def unpublished(self, limit: int = 50) -> list[Record]:
        """Records the broker has not acknowledged yet, in sequence order."""
        return await self.records_after(self._published, limit)

    async def mark_published(self, upto: int) -> None:
        """The broker acknowledged every record up to ``upto`` (PUBACK)."""
        if upto > self._published:
            await self._run(self._guarded, self._mark_published, upto)

    async def ack(self, upto: int, digest: str) -> AckResult:
        """The back office stored every record up to ``upto``, whose hash is ``digest``."""
        result = await self._run(self._ack, upto, digest)
        if result is AckResult.ACCEPTED:
            self.acked.set()
        return result

    async def backlog(self) -> int:
        """Records the broker has not acknowledged yet."""
        return self._last_seq - self._published

    async def stats(self) -> JournalStats:
        return await self._run(self._stats)

    async def prune(self) -> int:
        """Delete acknowledged rows older than the retention, in small steps; returns rows deleted."""
        wall_ms, clock_ok = self._clock()
        if not clock_ok:  # a wrong clock could make every row look ancient
            return 0
        total = 0
        while True:
            n = await self._run(self._prune_step, wall_ms)
            total += n
            if n < PRUNE_BATCH:
                break
            await asyncio.sleep(0)  # let the taps in between
        if total:
            pages = step = await self._run(self._guarded, self._vacuum)
            while step >= VACUUM_PAGES:
                await asyncio.sleep(0)
                step = await self._run(self._guarded, self._vacuum)
                pages += step
            log.info("event=journal_pruned rows=%d pages_released=%d remaining=%d", total, pages, self._rows)
        return total

    async def _make_room_async(self) -> None:
        excess = self._rows - self._warn_at
        while excess > 0 and self.settings.full_policy == "drop_acked":
            if not await self._run(self._make_room, excess):
                break
            excess = self._rows - self._warn_at
            await asyncio.sleep(0)

    async def _maintain(self) -> None:
        """Probe a degraded journal, keep below the warning mark, prune by retention."""
        next_prune = 0.0
        while True:
            await asyncio.sleep(self.settings.probe_s)
            try:
                if self._fault is not None or self._conn is None:
                    await self._run(self._recover)
                    continue
                await self._make_room_async()
                if time.monotonic() >= next_prune or self.state is StorageState.JOURNAL_FULL:
                    next_prune = time.monotonic() + PRUNE_EVERY_S
                    await self.prune()
                else:
                    await self._run(self._refresh_fault)
            except StorageError:
                continue  # logged where it happened; the next round probes again
            except Exception:  # noqa: BLE001 - upkeep must never take the terminal down
                log.exception("event=journal_maintenance_error")

    @property
    def state(self) -> StorageState:
        """The fault if there is one, else how full the journal is."""
        if self._fault is not None:
            return self._fault
        if self._conn is None:
            return StorageState.FAILED
        if self._rows >= self.settings.capacity:
            return StorageState.JOURNAL_FULL
        if self._rows >= self._warn_at:
            return StorageState.NEAR_FULL
        return StorageState.OK

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def published_seq(self) -> int:
        return self._published

    @property
    def acked_seq(self) -> int:
        return self._acked

    @property
    def rows(self) -> int:
        return self._rows
