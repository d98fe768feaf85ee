"""The counters caps and quotas depend on, and the clock's high-water mark, on disk.

The journal is the truth: every decision's counter changes (``Bump`` list)
and state changes travel inside its journal record (``detail["bumps"]``,
``detail["state"]``). This store is a derived copy kept in its own SQLite
file, so that the rules can read tallies in microseconds and so that the
journal's internals stay the journal's business.

Order of writes for one tap: the journal commits the record first; then
:meth:`CounterStore.apply` writes the record's effects together with
``applied_seq = record.seq`` in one transaction. A crash between the two
commits leaves ``applied_seq`` behind the journal, and :meth:`replay`, run
at every start, re-applies exactly the records after it; a record at or
below ``applied_seq`` is never applied again. So a count can neither be lost
nor doubled, and the copy needs no ``fsync`` of its own (``synchronous=NORMAL``):
whatever a power cut takes from it, the journal gives back.

State values (the last sale a supervisor may void, anti-passback passages, a
door's first-card unlock, the last window summarised) are JSON, stored with
the sequence number of the record that set them: that number is also how a
receipt's transaction id is derived.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from .exceptions import StorageError
from .rules.counters import Bump, CounterKey, Tally, stale
from .rules.counters import apply as apply_bumps

log = logging.getLogger("unionterm.counters")

#: File name of the store inside ``terminal.state_dir``.
COUNTERS_DB = "counters.db"

#: Journal records read per replay query (a long outage leaves many behind).
REPLAY_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counter (
    key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL,
    subsidy_fen INTEGER NOT NULL,
    first_at INTEGER NOT NULL,
    last_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (k TEXT PRIMARY KEY, v TEXT NOT NULL, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Stored:
    """A state value and the journal sequence number of the record that set it."""

    value: Any
    seq: int


# -- the wire form inside journal records --------------------------------------------------------


def bumps_to_json(bumps: Iterable[Bump]) -> list[dict[str, Any]]:
    """Bumps as the journal record carries them (JSON, readable by the back office too)."""
    return [{"key": list(b.key), "at": b.at, "count": b.count, "amount_fen": b.amount_fen,
             "subsidy_fen": b.subsidy_fen} for b in bumps]


def bumps_from_json(items: Iterable[Mapping[str, Any]]) -> tuple[Bump, ...]:
    """Inverse of :func:`bumps_to_json`; raises ``KeyError``/``TypeError`` on a foreign shape."""
    return tuple(Bump(tuple(str(k) for k in item["key"]), int(item["at"]), int(item["count"]),
                      int(item["amount_fen"]), int(item["subsidy_fen"])) for item in items)


def effects_of(body: Mapping[str, Any]) -> tuple[tuple[Bump, ...], dict[str, Any]]:
    """The counter and state effects a journal record body carries (none for most kinds)."""
    detail = body.get("detail") or {}
    if not isinstance(detail, Mapping):
        return (), {}
    state = detail.get("state") or {}
    return bumps_from_json(detail.get("bumps") or ()), dict(state) if isinstance(state, Mapping) else {}


def _key_text(key: CounterKey) -> str:
    return json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))


# -- the store -------------------------------------------------------------------------------------


class CounterStore:
    """Tallies and state in memory for the rules, mirrored to SQLite for restarts.

    All methods run on the event loop: a commit without ``fsync`` in WAL mode
    is far below a millisecond. A failing write is logged, never raised into
    a tap: the in-memory copy stays right for this run, and the next start's
    replay repairs the file from the journal.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None,
                                         check_same_thread=False)  # a tap served by its reader
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            self._tallies: dict[CounterKey, Tally] = {
                tuple(json.loads(k)): Tally(c, a, s, f, la)
                for k, c, a, s, f, la in self._conn.execute("SELECT * FROM counter")}
            self._state = {k: Stored(json.loads(v), seq) for k, v, seq in self._conn.execute("SELECT * FROM state")}
            meta = dict(self._conn.execute("SELECT k, v FROM meta"))
        except sqlite3.Error as exc:
            raise StorageError(f"counter store {self.path}: {exc}") from exc
        self._applied = int(meta.get("applied_seq", 0))
        self._high_water = float(meta.get("high_water", 0.0))
        self._failing = False

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    # -- reading ----------------------------------------------------------------------------------

    @property
    def tallies(self) -> Mapping[CounterKey, Tally]:
        """What the rules read; a live view, so never hand it to another thread."""
        return self._tallies

    @property
    def applied_seq(self) -> int:
        """The last journal record whose effects are in this store."""
        return self._applied

    @property
    def high_water(self) -> float:
        """The persisted clock mark (:class:`terminal.rules.clock.ClockState`)."""
        return self._high_water

    def get(self, key: str) -> Stored | None:
        return self._state.get(key)

    # -- writing ----------------------------------------------------------------------------------

    def apply(self, seq: int, bumps: Iterable[Bump], state: Mapping[str, Any] | None = None,
              high_water: float | None = None) -> bool:
        """Apply the effects of journal record ``seq``; False (and nothing done) if already applied."""
        if seq <= self._applied:
            return False
        bumps = tuple(bumps)
        self._tallies = apply_bumps(self._tallies, bumps)
        for key, value in (state or {}).items():
            if value is None:
                self._state.pop(key, None)
            else:
                self._state[key] = Stored(value, seq)
        self._applied = seq
        if high_water is not None:
            self._high_water = max(self._high_water, high_water)

        def write(conn: sqlite3.Connection) -> None:
            rows = [(_key_text(k), t.count, t.amount_fen, t.subsidy_fen, t.first_at, t.last_at)
                    for k in {b.key for b in bumps} for t in (self._tallies[k],)]
            conn.executemany("INSERT OR REPLACE INTO counter VALUES (?, ?, ?, ?, ?, ?)", rows)
            for key, value in (state or {}).items():
                if value is None:
                    conn.execute("DELETE FROM state WHERE k = ?", (key,))
                else:
                    conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?, ?)",
                                 (key, json.dumps(value, ensure_ascii=False), seq))
            self._write_meta(conn)

        self._transaction(write, f"apply seq={seq}")
        return True

    def rebase(self, seq: int) -> None:
        """Continue under a journal that starts again below :attr:`applied_seq` (moved aside as
        corrupt with its head lost, or reset by provisioning): counts are kept, sequence numbers
        are the new journal's from here on."""
        log.error("event=counters_rebased applied_seq=%d journal_seq=%d", self._applied, seq)
        self._applied = seq
        self._transaction(self._write_meta, "rebase")

    def save_clock(self, high_water: float) -> None:
        """Persist a higher clock mark (periodically and at shutdown)."""
        if high_water > self._high_water:
            self._high_water = high_water
            self._transaction(self._write_meta, "save_clock")

    def prune(self, today: date) -> int:
        """Forget counters of periods that can no longer be asked for; call with a trusted day only."""
        old = [k for k in self._tallies if stale(k, today)]
        if not old:
            return 0
        for key in old:
            del self._tallies[key]

        def delete(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM counter WHERE key = ?", [(_key_text(k),) for k in old])

        self._transaction(delete, "prune")
        log.info("event=counters_pruned keys=%d", len(old))
        return len(old)

    def replay(self, journal_db: str | Path) -> int:
        """Re-apply effects of journal records after :attr:`applied_seq`; returns how many.

        The journal is read through its own read-only connection: only the
        ``tx(seq, body)`` table is assumed, never the journal's code.
        """
        path = Path(journal_db)
        if not path.exists():
            return 0
        done = 0
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            log.error("event=counters_replay_failed error=%r", str(exc))
            return 0
        try:
            for seq, body in self._records_after(conn, self._applied):
                try:
                    bumps, state = effects_of(json.loads(body))
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("event=counters_replay_skipped seq=%d error=%r", seq, str(exc))
                    continue
                if (bumps or state) and self.apply(seq, bumps, state):
                    done += 1
        except sqlite3.Error as exc:
            log.error("event=counters_replay_failed after_seq=%d error=%r", self._applied, str(exc))
        finally:
            conn.close()
        if done:
            log.warning("event=counters_replayed records=%d applied_seq=%d", done, self._applied)
        return done

    @staticmethod
    def _records_after(conn: sqlite3.Connection, after: int) -> Iterator[tuple[int, str]]:
        while True:
            rows = conn.execute("SELECT seq, body FROM tx WHERE seq > ? ORDER BY seq LIMIT ?",
                                (after, REPLAY_BATCH)).fetchall()
            yield from rows
            if len(rows) < REPLAY_BATCH:
                return
            after = rows[-1][0]

    # -- SQLite -----------------------------------------------------------------------------------

    def _write_meta(self, conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)",
                         [("applied_seq", self._applied), ("high_water", self._high_water)])

    def _rewrite_all(self, conn: sqlite3.Connection) -> None:
        """Make the file equal to memory, after a write failed (its changes never reached the file)."""
        conn.execute("DELETE FROM counter")
        conn.executemany("INSERT INTO counter VALUES (?, ?, ?, ?, ?, ?)",
                         [(_key_text(k), t.count, t.amount_fen, t.subsidy_fen, t.first_at, t.last_at)
                          for k, t in self._tallies.items()])
        conn.execute("DELETE FROM state")
        conn.executemany("INSERT INTO state VALUES (?, ?, ?)",
                         [(k, json.dumps(s.value, ensure_ascii=False), s.seq) for k, s in self._state.items()])
        self._write_meta(conn)

    def _transaction(self, work: Callable[[sqlite3.Connection], None], what: str) -> None:
        """Run ``work`` in one transaction; once a write has failed, every later one rewrites
        the whole file instead, so the file never holds a later ``applied_seq`` without the
        changes before it."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            (self._rewrite_all if self._failing else work)(conn)
            conn.execute("COMMIT")
            if self._failing:
                log.info("event=counters_write_recovered applied_seq=%d", self._applied)
            self._failing = False
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            if not self._failing:  # the journal still holds it all; the next start's replay mends the file
                log.error("event=counters_write_failed what=%s error=%r", what, str(exc))
            self._failing = True
