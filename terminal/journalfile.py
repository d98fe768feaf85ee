"""A journal database file that cannot be trusted: judged, moved aside, and where to resume.

Kept apart from :mod:`terminal.journal` because it is the rare path with its
own rules: a damaged or foreign file is never deleted (it is moved aside
byte for byte, with its WAL), and a fresh journal continues the sequence and
the hash chain from the best of what the moved file still yields and what
the sidecar head (:mod:`terminal.journalhead`) says.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .journalhead import GENESIS, Head
from .storage import fsync_path

log = logging.getLogger("unionterm.journal")

#: SQLite primary result codes that mean the file itself is damaged.
CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


@dataclass(frozen=True)
class Resume:
    """Where a fresh journal continues after its predecessor was lost, and why."""

    seq: int
    hash: str
    reason: str
    detail: dict[str, Any]


class CorruptFile(Exception):
    """The database file is damaged (or belongs to another terminal): move it aside."""


def check_file(path: Path, terminal_id: str) -> None:
    """Raise :class:`CorruptFile` for a damaged or foreign file; I/O trouble propagates."""
    conn = None
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        rows = conn.execute("PRAGMA integrity_check").fetchall()
        if rows != [("ok",)]:
            raise CorruptFile(f"integrity_check: {'; '.join(str(r[0]) for r in rows[:3])}")
        owner = None
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            owner = conn.execute("SELECT v FROM meta WHERE k = 'terminal'").fetchone()
        if owner is not None and owner[0] != terminal_id:
            raise CorruptFile(f"foreign: journal of terminal {owner[0]!r}")
    except sqlite3.DatabaseError as exc:
        if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in CORRUPT_CODES:
            raise CorruptFile(f"unreadable: {exc}") from None
        raise
    finally:
        if conn is not None:
            conn.close()

def salvage(source: Path, terminal_id: str) -> Head | None:
    """The last record still readable in a moved-aside file, if any."""
    try:
        conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            seq, digest = conn.execute("SELECT seq, hash FROM tx ORDER BY seq DESC LIMIT 1").fetchone()
            owner = conn.execute("SELECT v FROM meta WHERE k = 'terminal'").fetchone()
        finally:
            conn.close()
    except (sqlite3.Error, TypeError):
        return None
    if owner is not None and owner[0] != terminal_id:
        return None
    return Head(int(seq), str(digest), terminal_id)

def move_aside(path: Path, terminal_id: str, problem: str, head: Head | None) -> Resume | None:
    """Move a damaged or foreign file (with its WAL) aside, kept; where a fresh journal resumes."""
    kind = "foreign" if problem.startswith("foreign") else "corrupt"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.{kind}-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.{kind}-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, Path(f"{aside}{suffix}"))
    fsync_path(path.parent)
    log.error("event=journal_moved_aside problem=%r moved_to=%s", problem, aside.name)
    salvaged = salvage(aside, terminal_id)
    best = max((h for h in (salvaged, head) if h is not None), key=lambda h: h.seq, default=None)
    detail = {"moved_to": aside.name, "problem": problem[:200],
              "salvaged_seq": salvaged.seq if salvaged else 0, "head_seq": head.seq if head else 0}
    if best is None:
        if kind == "foreign":
            return None  # this terminal never wrote a record: a fresh start at 1 is right
        log.critical("event=journal_head_unknown moved_to=%s", aside.name)
        return Resume(0, GENESIS, "corrupt_head_unknown", detail)
    return Resume(best.seq, best.hash, kind, detail)


def file_id(path: Path) -> tuple[int, int] | None:
    """Size and mtime: enough to check an unchanged file only once."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
