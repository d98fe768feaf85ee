"""The locally cached member lists: who a card belongs to, offline, at 1.1 million members.

Layout (``members.db`` stands for ``[members] db`` in the state folder)::

    members.db                home: the hot list, its sequence number, and the
                              "local" list (members loaded by hand: simulator, demo)
    members.lists/all.current pointer: the name of the file that serves scope ``all``
    members.lists/all.v12.3f9a1c2e.db
                              one SQLite file per scope, built from one snapshot
                              and then changed in place by deltas
    members.lists/spool/all/  snapshot chunks received, waiting to be applied

Why one file per scope version behind a pointer file, rather than tables
swapped inside one database: a snapshot is built into a *new* file while the
live one keeps serving, with no journal and no fsync per transaction (a
half-built file is simply deleted), so the build runs at bulk-load speed. It
goes live by atomically replacing the pointer (write, fsync, ``rename``,
fsync the folder), the one step that decides which list serves: ``kill -9``
or a power cut before the rename leaves the old list, after it the new one,
and never a mix, because a file is only ever named once it is complete and
on disk. The old file is then deleted whole, which returns its space at once
(a dropped table inside one database would leave a free list the size of
the list behind, until a VACUUM the terminal cannot afford). Deltas, small by
protocol, change the live file in one WAL transaction together with its
version row (``list_meta``), so a version can never disagree with content.
The hot list lives in the home database and is untouched by any swap.

Every list file stores each member as its exact canonical line (the bytes
the back office signed over) plus a card index, and its version row keeps
the list's count and digest. The digest is a sum over lines, so a delta
moves it by the lines it removes and adds: its stated digest is checked
inside its transaction, in time proportional to the delta, and a mismatch
rolls everything back. Recomputing from the lines (the doctor does) is a
plain scan. A look-up parses one line.

Reads run on the event-loop thread on purpose: a primary-key probe costs
tens of microseconds, far less than a hop to a worker thread, and WAL lets a
writer (a delta in progress) leave readers undisturbed. Writes that can be
large (snapshot builds, deltas, full hot lists) are made in worker threads,
each on its own connection. Card references are stored as 32-byte BLOB keys.

This module is the store the terminal reads: look-ups, the local list, the
hot list, and serving what the sync brings. One list file itself (schema,
pointer, version row, change writer, snapshot build) is
:mod:`terminal.memberfiles`.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exceptions import PayloadError, ReplayError, StorageError
from .memberfiles import (
    LIST_SCHEMA,
    POINTER_SUFFIX,
    HeldList,
    SnapshotBuild,
    connect,
    held_list_files,
    lists_dir_of,
    read_meta,
    stored_digest,
    write_changes,
    write_meta,
)
from .model import Member, MemberStatus
from .sync.delta import Delta
from .sync.hotlist import Hotlist
from .sync.records import EMPTY_DIGEST, ListDigest, validate_member
from .sync.snapshot import Manifest
from .sync.topics import check_scope

log = logging.getLogger("unionterm.members")

#: The list of members loaded by hand (simulator, demo), kept in the home database.
LOCAL = "local"
#: Bumped when the layout changes; a store of another layout is refused, not guessed at.
SCHEMA_VERSION = 2

_HOME_SCHEMA = LIST_SCHEMA + """
CREATE TABLE IF NOT EXISTS hotlist (
    ref BLOB PRIMARY KEY, reason TEXT NOT NULL, added_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hotlist_meta (
    one INTEGER PRIMARY KEY CHECK (one = 1), version INTEGER NOT NULL, issued INTEGER NOT NULL,
    expires INTEGER NOT NULL);
"""
#: Every member a card ref names (one, unless a list is wrong). Not ORDER BY ... LIMIT 1:
#: SQLite sorts even one row through a temporary B-tree, a tenth of a cold look-up.
_LOOKUP_SQL = "SELECT m.member_no, m.line FROM cards c JOIN members m ON m.id = c.member_id WHERE c.ref = ?"

#: json.loads on bytes first sniffs their encoding in Python; on a CPU cold from waiting for
#: a card that was a third of decoding a member. Stored lines are the canonical UTF-8 signed over.
_DECODE = json.JSONDecoder().raw_decode


@dataclass(frozen=True)
class Lookup:
    """Result of a card look-up: the member (if any) and whether the card is hot-listed.

    ``scope`` names the list the member was found in.
    """

    member: Member | None
    hot: bool
    hot_reason: str = ""
    scope: str = ""


@dataclass(frozen=True)
class HotlistState:
    """The hot-list sequence number held (0 none) and the validity of its last message."""

    version: int = 0
    issued: int = 0
    expires: int = 0


def member_from_line(line: bytes) -> Member:
    """The model's view of one stored canonical line."""
    rec, _end = _DECODE(line.decode())
    return Member(
        member_no=rec["member_no"], name=rec["name"], org=rec["org"],
        status=MemberStatus(rec["status"]), tier=rec["tier"], canteen_group=rec["canteen_group"],
        access_groups=tuple(rec["access_groups"]), valid_from=rec["valid_from"],
        valid_until=rec["valid_until"], batch=rec["batch"], role=rec["role"],
        pin_hash=rec["pin_hash"],
    )


class MemberStore:
    """The member lists a terminal serves, and the hot list that overrides them.

    ``scopes`` are the synced lists to consult, in order (the first that
    knows a card wins), then the local list; ``None`` serves every list
    found on disk.
    """

    def __init__(self, path: str | Path, scopes: Sequence[str] | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lists_dir = lists_dir_of(self.path)
        self.lists_dir.mkdir(exist_ok=True)
        self._now = now
        self._conn = connect(self.path)
        self._create()
        if scopes is None:
            scopes = sorted(held_list_files(self.lists_dir))
        self.scopes: tuple[str, ...] = tuple(check_scope(s) for s in scopes)
        self._lists: dict[str, tuple[sqlite3.Connection, Path] | None] = {}
        self.held: dict[str, HeldList] = {}
        for scope in self.scopes:
            self._open_list(scope)

    def _create(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        tables = self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version not in (0, SCHEMA_VERSION) or (version == 0 and tables):
            raise StorageError(f"{self.path}: member store layout {version} is not {SCHEMA_VERSION}; "
                               "move the file away and let the lists download again")
        self._conn.executescript(_HOME_SCHEMA)
        self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _open_list(self, scope: str) -> None:
        pointer = self.lists_dir / f"{scope}{POINTER_SUFFIX}"
        try:
            name = pointer.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            self._lists[scope] = None
            self.held[scope] = HeldList(scope)
            return
        path = self.lists_dir / name
        if not path.is_file():
            raise StorageError(f"{pointer}: names {name}, which is missing")
        conn = connect(path)
        conn.execute("PRAGMA query_only=1")
        self._lists[scope] = (conn, path)
        self.held[scope] = read_meta(conn, scope)

    def close(self) -> None:
        for entry in self._lists.values():
            if entry is not None:
                entry[0].close()
        self._lists.clear()
        self._conn.close()

    # -- reads (hot path) ---------------------------------------------------------

    def _sources(self) -> Iterator[tuple[str, sqlite3.Connection]]:
        for scope in self.scopes:
            entry = self._lists.get(scope)
            if entry is not None:
                yield scope, entry[0]
        yield LOCAL, self._conn

    def lookup(self, ref: bytes) -> Lookup:
        """Find the member behind a card reference; the hot list is read first and wins."""
        hot = self._conn.execute("SELECT reason FROM hotlist WHERE ref = ?", (ref,)).fetchone()
        for scope, conn in self._sources():
            rows = conn.execute(_LOOKUP_SQL, (ref,)).fetchall()
            if rows:  # a card on two members (a list error) gets the lowest member number, every time
                line = rows[0][1] if len(rows) == 1 else min(rows)[1]
                return Lookup(member_from_line(line), hot is not None, hot[0] if hot else "", scope)
        return Lookup(None, hot is not None, hot[0] if hot else "")

    def member(self, member_no: str) -> Member | None:
        for _scope, conn in self._sources():
            row = conn.execute("SELECT line FROM members WHERE member_no = ?", (member_no,)).fetchone()
            if row is not None:
                return member_from_line(row[0])
        return None

    def count(self) -> int:
        """Members held over all lists (one in two scopes counts twice)."""
        local = self._conn.execute("SELECT count(*) FROM members").fetchone()[0]
        return local + sum(self.held[s].count for s in self.scopes)

    def list_path(self, scope: str) -> Path | None:
        entry = self._lists.get(scope)
        return entry[1] if entry else None

    def hotlist_state(self) -> HotlistState:
        row = self._conn.execute("SELECT version, issued, expires FROM hotlist_meta").fetchone()
        return HotlistState(*row) if row else HotlistState()

    def digest(self, scope: str) -> tuple[int, str]:
        """Recompute one list's count and digest from its stored lines (slow at full size)."""
        entry = self._lists.get(scope)
        return stored_digest(entry[0]) if entry else (0, EMPTY_DIGEST)

    # -- local list and manual blocks ------------------------------------------------

    def upsert(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Insert or replace members of the local list (the back office's record shape)."""
        checked = [validate_member(r, f"records[{i}]") for i, r in enumerate(records)]
        checked = list({r["member_no"]: r for r in checked}.values())  # the last of repeats wins
        with self._conn:
            self._conn.execute("BEGIN")
            write_changes(self._conn, checked)
        return len(checked)

    def block(self, ref: bytes, reason: str, added_at: int) -> None:
        """Put a card on the hot list; it wins over everything else at the next tap."""
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO hotlist (ref, reason, added_at) VALUES (?, ?, ?)",
                               (ref, reason, added_at))

    def unblock(self, ref: bytes) -> None:
        with self._conn:
            self._conn.execute("DELETE FROM hotlist WHERE ref = ?", (ref,))

    # -- sync writes -------------------------------------------------------------------

    def new_build(self, manifest: Manifest) -> SnapshotBuild:
        """A builder for ``manifest``'s list; run it in a worker thread, then :meth:`install` it."""
        if manifest.scope not in self._lists:
            raise ValueError(f"scope {manifest.scope!r} is not served by this store")
        return SnapshotBuild(self.lists_dir, manifest, self._now)

    def install(self, build: SnapshotBuild, held: HeldList) -> Path | None:
        """Serve a finished build (its pointer is already switched); returns the old file to delete.

        Runs on the event-loop thread, between two look-ups: open the new
        file, swap the connection, close the old one.
        """
        conn = connect(build.path)
        conn.execute("PRAGMA query_only=1")
        old = self._lists.get(build.scope)
        self._lists[build.scope] = (conn, build.path)
        self.held[build.scope] = held
        if old is None:
            return None
        old[0].close()
        return old[1]

    def apply_delta(self, delta: Delta) -> HeldList:
        """Apply a verified delta in one transaction, or refuse it and change nothing.

        Worker-thread safe (own connection). The held count and digest,
        moved by every line the delta removes and adds, must equal the
        delta's stated ones inside the transaction; otherwise it is rolled
        back and :class:`PayloadError` names the difference (the caller then
        asks for a resync).
        """
        path = self.list_path(delta.scope)
        if path is None:
            raise ReplayError("delta", f"no list of {delta.scope!r} held to apply it to")
        conn = connect(path)
        conn.execute("PRAGMA wal_autocheckpoint=0")  # see checkpoint(): not on the delta's clock
        try:
            conn.execute("BEGIN IMMEDIATE")
            held = read_meta(conn, delta.scope)
            if held.version != delta.base:
                raise ReplayError("delta.base", f"base {delta.base}, held version {held.version}")
            figures = ListDigest(held.count, held.digest)
            write_changes(conn, delta.upserts, delta.removals, figures)
            count, digest = figures.count, figures.hexdigest()
            if (count, digest) != (delta.count, delta.digest):
                raise PayloadError("delta.digest", f"v{delta.version} gives {count} members with "
                                   f"digest {digest}, the delta says {delta.count} / {delta.digest}")
            new = HeldList(delta.scope, delta.version, count, digest, delta.issued, delta.expires,
                           int(self._now()))
            write_meta(conn, new)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()
        return new

    def checkpoint(self, scope: str) -> None:
        """Fold a list's WAL back into its file and truncate it (worker thread, after a delta).

        A committed delta already serves; copying its pages into the main
        file (and the fsync that comes with it) is housekeeping that need not
        delay the report.
        """
        path = self.list_path(scope)
        if path is None:
            return
        conn = connect(path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def adopt(self, manifest: Manifest) -> HeldList:
        """Take a manifest's version and validity for a list whose content it already matches.

        A back office re-signs an unchanged list to keep it fresh; with the
        count and digest equal there is nothing to download.
        """
        path = self.list_path(manifest.scope)
        held = self.held[manifest.scope]
        if path is None or (held.count, held.digest) != (manifest.count, manifest.digest):
            raise ValueError(f"{manifest.scope}: manifest v{manifest.version} is not the held content")
        conn = connect(path)
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                new = HeldList(manifest.scope, manifest.version, held.count, held.digest,
                               manifest.issued, manifest.expires, int(self._now()))
                write_meta(conn, new)
        finally:
            conn.close()
        self.held[manifest.scope] = new
        return new

    def refresh(self, scope: str, held: HeldList) -> None:
        """Record a change made by a worker thread (the loop's cached view of the list)."""
        self.held[scope] = held

    def apply_hotlist(self, hotlist: Hotlist) -> HotlistState:
        """Apply a hot-list change (or replace it all, for ``hotlist.full``) in one transaction.

        Worker-thread safe (own connection); an entry is in force the moment
        this returns.
        """
        conn = connect(self.path)
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                held = conn.execute("SELECT version FROM hotlist_meta").fetchone()
                if held is not None and hotlist.version <= held[0]:
                    raise ReplayError("hotlist", f"sequence {hotlist.version} is not after {held[0]}")
                if hotlist.full:
                    conn.execute("DELETE FROM hotlist")
                conn.executemany("INSERT OR REPLACE INTO hotlist (ref, reason, added_at) VALUES (?, ?, ?)",
                                 [(e.ref_bytes, e.reason, hotlist.issued)
                                  for e in hotlist.entries if e.op == "add"])
                conn.executemany("DELETE FROM hotlist WHERE ref = ?",
                                 [(e.ref_bytes,) for e in hotlist.entries if e.op == "remove"])
                conn.execute("INSERT OR REPLACE INTO hotlist_meta (one, version, issued, expires) "
                             "VALUES (1, ?, ?, ?)", (hotlist.version, hotlist.issued, hotlist.expires))
        finally:
            conn.close()
        return HotlistState(hotlist.version, hotlist.issued, hotlist.expires)

    # -- housekeeping ------------------------------------------------------------------

    def spool_dir(self, scope: str) -> Path:
        return self.lists_dir / "spool" / check_scope(scope)

    def sweep(self) -> list[str]:
        """Delete what no pointer names: builds cut short, replaced lists, old spools.

        Only the process that syncs calls this (at start): another process
        opening the store must not delete a build in progress.
        """
        keep: set[str] = set()
        for path in held_list_files(self.lists_dir).values():
            keep.update({path.name, f"{path.name}-wal", f"{path.name}-shm"})
        removed = []
        for entry in self.lists_dir.iterdir():
            if entry.name.endswith(POINTER_SUFFIX) or entry.name in keep:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
        return removed
