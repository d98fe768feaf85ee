"""One member-list file on disk, and the building of a new one from a snapshot.

What :mod:`terminal.members` serves from (its layout and the reasons for it
are told there): a list file's schema and connection settings, the pointer
file that names the live one, the version row that keeps its count and
digest, the writer that changes members and their card index in step with
that digest, and :class:`SnapshotBuild`, which fills a new file beside the
live one and switches the pointer only once the file is complete and on
disk. Nothing here keeps state between calls: the store holds the open
connections.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .storage import fsync_path, write_atomic
from .sync.records import EMPTY_DIGEST, ListDigest, canonical_line, quick_line
from .sync.report import ListState
from .sync.snapshot import ListedRecord, Manifest

_BATCH = 4096
#: Host parameters per ``IN (...)`` query (SQLite allows 32,766).
_IN_BATCH = 500
_BUSY_MS = 10_000

LIST_SCHEMA = """
CREATE TABLE IF NOT EXISTS members (
    id INTEGER PRIMARY KEY, member_no TEXT NOT NULL UNIQUE, line BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cards (
    ref BLOB NOT NULL, member_id INTEGER NOT NULL, PRIMARY KEY (ref, member_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS list_meta (
    one INTEGER PRIMARY KEY CHECK (one = 1), scope TEXT NOT NULL, version INTEGER NOT NULL,
    issued INTEGER NOT NULL, expires INTEGER NOT NULL, count INTEGER NOT NULL,
    digest TEXT NOT NULL, applied_at INTEGER NOT NULL);
"""

@dataclass(frozen=True)
class HeldList:
    """One list as this terminal holds it; version 0 means none yet.

    ``issued`` and ``expires`` come from the newest manifest or delta
    applied (the back office vouched for the list as of ``issued``);
    ``count`` and ``digest`` are those of the stored lines, checked against
    the signed figures whenever the lines changed.
    """

    scope: str
    version: int = 0
    count: int = 0
    digest: str = EMPTY_DIGEST
    issued: int = 0
    expires: int = 0
    applied_at: int = 0

    def state(self) -> ListState:
        """The report's view of this list."""
        return ListState(self.scope, self.version, self.count, self.digest, self.expires)



def connect(path: Path, *, bulk: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode; ``bulk`` for a file nobody else sees yet."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
    if bulk:
        # A half-built file is deleted, never repaired: no journal, no fsync per step.
        conn.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                           "PRAGMA locking_mode=EXCLUSIVE; PRAGMA cache_size=-8192;"
                           "PRAGMA temp_store=FILE;")
    else:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    return conn


POINTER_SUFFIX = ".current"


def lists_dir_of(home: Path) -> Path:
    """Where the per-scope list files and their pointers live, beside the home database."""
    return home.with_suffix(".lists")


def held_list_files(lists_dir: Path) -> dict[str, Path]:
    """scope -> the file its pointer names (read-only view of the layout; the file may be missing)."""
    return {pointer.name[:-len(POINTER_SUFFIX)]: lists_dir / pointer.read_text(encoding="ascii").strip()
            for pointer in sorted(lists_dir.glob(f"*{POINTER_SUFFIX}"))}


def write_pointer(pointer: Path, target: str) -> None:
    """Point ``pointer`` at ``target`` atomically and durably."""
    write_atomic(pointer, f"{target}\n".encode("ascii"))


def read_meta(conn: sqlite3.Connection, scope: str) -> HeldList:
    row = conn.execute("SELECT scope, version, count, digest, issued, expires, applied_at "
                       "FROM list_meta WHERE one = 1").fetchone()
    return HeldList(*row) if row else HeldList(scope)


def write_meta(conn: sqlite3.Connection, held: HeldList) -> None:
    conn.execute("INSERT OR REPLACE INTO list_meta (one, scope, version, issued, expires, count, "
                 "digest, applied_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                 (held.scope, held.version, held.issued, held.expires, held.count, held.digest,
                  held.applied_at))


def stored_digest(conn: sqlite3.Connection) -> tuple[int, str]:
    """Count and list digest recomputed from the stored lines."""
    digest = ListDigest()
    for (line,) in conn.execute("SELECT line FROM members"):
        digest.plus(line)
    return digest.count, digest.hexdigest()


def _refs_of_line(line: bytes) -> tuple[str, ...]:
    quick = quick_line(line.rstrip(b"\n"))
    if quick is not None:
        return quick[1]
    return tuple(card["ref"] for card in json.loads(line)["cards"])


def write_changes(conn: sqlite3.Connection, upserts: Iterable[Mapping[str, Any]],
                   removals: Iterable[str] = (), digest: ListDigest | None = None) -> None:
    """Remove members and upsert canonical records, touching only what differs.

    A member that stays keeps its row and the card index entries of the
    cards it keeps, so a delta of 10,000 small changes rewrites ~10,000
    rows, not 10,000 rows plus 20,000 index entries twice over. Reads and
    writes go in batches: at this size the per-statement cost dominates.
    ``digest``, the list's figures before the change, is moved to after it.
    """
    digest = ListDigest() if digest is None else digest
    upserts, removals = list(upserts), list(removals)
    held = _rows_of(conn, [*removals, *(r["member_no"] for r in upserts)])
    next_id = (conn.execute("SELECT max(id) FROM members").fetchone()[0] or 0) + 1
    deleted, updated, inserted = [], [], []
    cards_gone: list[tuple[bytes, int]] = []
    cards_new: list[tuple[bytes, int]] = []
    for member_no in removals:
        if member_no in held:
            member_id, line = held.pop(member_no)
            deleted.append((member_id,))
            digest.minus(line)
            cards_gone += [(bytes.fromhex(ref), member_id) for ref in _refs_of_line(line)]
    for record in upserts:
        line = canonical_line(record)
        refs = {c["ref"] for c in record["cards"]}
        old = held.get(record["member_no"])
        if old is None:
            member_id, before = next_id, set()
            next_id += 1
            inserted.append((member_id, record["member_no"], line))
        elif old[1] == line:
            continue
        else:
            member_id, before = old[0], set(_refs_of_line(old[1]))
            updated.append((line, member_id))
            digest.minus(old[1])
        digest.plus(line)
        cards_gone += [(bytes.fromhex(ref), member_id) for ref in before - refs]
        cards_new += [(bytes.fromhex(ref), member_id) for ref in refs - before]
    conn.executemany("DELETE FROM members WHERE id = ?", deleted)
    conn.executemany("UPDATE members SET line = ? WHERE id = ?", updated)
    conn.executemany("INSERT INTO members (id, member_no, line) VALUES (?, ?, ?)", inserted)
    conn.executemany("DELETE FROM cards WHERE ref = ? AND member_id = ?", cards_gone)
    conn.executemany("INSERT OR IGNORE INTO cards (ref, member_id) VALUES (?, ?)", cards_new)


def _rows_of(conn: sqlite3.Connection, member_nos: list[str]) -> dict[str, tuple[int, bytes]]:
    """(id, line) of those of ``member_nos`` that are held."""
    rows: dict[str, tuple[int, bytes]] = {}
    for i in range(0, len(member_nos), _IN_BATCH):
        part = member_nos[i:i + _IN_BATCH]
        marks = ",".join("?" * len(part))
        rows.update((no, (member_id, line)) for no, member_id, line in conn.execute(
            f"SELECT member_no, id, line FROM members WHERE member_no IN ({marks})", part))
    return rows


class BuildCancelled(Exception):
    """A newer snapshot superseded the one being built; its file is discarded."""


class SnapshotBuild:
    """A new list file being filled beside the live one, in a worker thread.

    :meth:`run` consumes checked records (from
    :func:`terminal.sync.snapshot.iter_snapshot_lines`, whose last step
    checks count and digest), indexes them, makes the file durable and only
    then points the scope at it. Any exception, or :meth:`cancel`, deletes the
    file and leaves the pointer alone.
    """

    def __init__(self, lists_dir: Path, manifest: Manifest, now: Callable[[], float] = time.time) -> None:
        self.manifest = manifest
        self.scope = manifest.scope
        self.path = lists_dir / f"{self.scope}.v{manifest.version}.{secrets.token_hex(4)}.db"
        self.pointer = lists_dir / f"{self.scope}{POINTER_SUFFIX}"
        self.added = 0
        self._now = now
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def run(self, records: Iterable[ListedRecord]) -> HeldList:
        """Build, verify, sync to disk, then switch the pointer (the commit point)."""
        try:
            held = self._fill(records)
            fsync_path(self.path)
            if self.cancelled:
                raise BuildCancelled(self.scope)
            write_pointer(self.pointer, self.path.name)
            return held
        except BaseException:
            remove_list_file(self.path)
            raise

    def _fill(self, records: Iterable[ListedRecord]) -> HeldList:
        conn = connect(self.path, bulk=True)
        try:
            conn.executescript(LIST_SCHEMA)
            conn.execute("CREATE TEMP TABLE stage (ref BLOB NOT NULL, member_id INTEGER NOT NULL)")
            conn.execute("BEGIN")
            members: list[tuple[int, str, bytes]] = []
            cards: list[tuple[bytes, int]] = []
            for record in records:
                self.added += 1
                members.append((self.added, record.member_no, record.line))
                cards.extend((bytes.fromhex(ref), self.added) for ref in record.refs)
                if len(members) >= _BATCH:
                    self._flush(conn, members, cards)
            self._flush(conn, members, cards)
            # Card refs are random: inserting them sorted builds the index sequentially.
            conn.execute("INSERT OR IGNORE INTO cards SELECT ref, member_id FROM temp.stage "
                         "ORDER BY ref, member_id")
            conn.execute("DROP TABLE temp.stage")
            m = self.manifest
            held = HeldList(self.scope, m.version, m.count, m.digest, m.issued, m.expires,
                            int(self._now()))
            write_meta(conn, held)
            conn.execute("COMMIT")
            conn.execute("PRAGMA locking_mode=NORMAL")
            conn.execute("PRAGMA journal_mode=WAL")  # how the live file will be written from now on
            return held
        finally:
            conn.close()

    def _flush(self, conn: sqlite3.Connection, members: list[tuple[int, str, bytes]],
               cards: list[tuple[bytes, int]]) -> None:
        if self.cancelled:
            raise BuildCancelled(self.scope)
        conn.executemany("INSERT INTO members (id, member_no, line) VALUES (?, ?, ?)", members)
        conn.executemany("INSERT INTO temp.stage (ref, member_id) VALUES (?, ?)", cards)
        members.clear()
        cards.clear()


def remove_list_file(path: Path) -> None:
    """Delete a list file and its WAL companions (missing ones are fine)."""
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        with contextlib.suppress(FileNotFoundError):
            name.unlink()
