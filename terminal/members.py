"""The locally cached member list: who a card belongs to, offline.

Card identifiers are kept only as keyed hashes (see :mod:`terminal.cardref`).
The hot list of lost and stolen cards is a table of its own and is checked
before anything else, so a blocked card is refused even when the member is
active.

Look-ups run on the event-loop thread on purpose: a primary-key probe in
SQLite costs tens of microseconds, far less than a hop to a worker thread,
and WAL mode lets a concurrent writer (a sync in progress) leave readers
undisturbed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from .model import Member, MemberStatus

log = logging.getLogger("unionterm.members")

_MEMBER_COLUMNS = {
    "member_no": str, "name": str, "org": str, "status": str, "tier": int,
    "canteen_group": str, "access_groups": str, "valid_from": int, "valid_until": int,
    "batch": int, "role": str, "pin_hash": str,
}


@dataclass(frozen=True)
class Lookup:
    """Result of a card look-up: the member (if any) and whether the card is hot-listed."""

    member: Member | None
    hot: bool
    hot_reason: str = ""


class MemberStore:
    """SQLite member list (WAL, ``synchronous=NORMAL``: it can be re-downloaded)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self.db = sqlite_utils.Database(self._conn)
        self._create()

    def _create(self) -> None:
        self.db["members"].create(_MEMBER_COLUMNS, pk="member_no", if_not_exists=True)
        self.db["cards"].create({"ref": bytes, "member_no": str, "kind": str},
                                pk="ref", if_not_exists=True)
        self.db["hotlist"].create({"ref": bytes, "reason": str, "added_at": int},
                                  pk="ref", if_not_exists=True)
        self.db["cards"].create_index(["member_no"], if_not_exists=True)

    def close(self) -> None:
        self._conn.close()

    # -- reads (hot path) ---------------------------------------------------------

    def lookup(self, ref: bytes) -> Lookup:
        """Find the member behind a card reference, hot list first."""
        hot = self._conn.execute("SELECT reason FROM hotlist WHERE ref = ?", (ref,)).fetchone()
        row = self._conn.execute(
            "SELECT m.* FROM cards c JOIN members m ON m.member_no = c.member_no WHERE c.ref = ?",
            (ref,),
        ).fetchone()
        member = _row_to_member(row) if row else None
        return Lookup(member=member, hot=hot is not None, hot_reason=hot[0] if hot else "")

    def member(self, member_no: str) -> Member | None:
        row = self._conn.execute("SELECT * FROM members WHERE member_no = ?", (member_no,)).fetchone()
        return _row_to_member(row) if row else None

    def count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM members").fetchone()[0]

    # -- writes -------------------------------------------------------------------

    def upsert(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Insert or replace member records (the back office's JSON shape) in one transaction."""
        n = 0
        with self._conn:
            self._conn.execute("BEGIN")
            for rec in records:
                row = {k: rec.get(k, "" if t is str else 0) for k, t in _MEMBER_COLUMNS.items()}
                row["access_groups"] = json.dumps(list(rec.get("access_groups", ())), ensure_ascii=False)
                self.db["members"].insert(row, replace=True)
                self._conn.execute("DELETE FROM cards WHERE member_no = ?", (row["member_no"],))
                for card in rec.get("cards", ()):
                    self._conn.execute(
                        "INSERT OR REPLACE INTO cards (ref, member_no, kind) VALUES (?, ?, ?)",
                        (bytes.fromhex(card["ref"]), row["member_no"], card["kind"]),
                    )
                n += 1
        return n

    def block(self, ref: bytes, reason: str, added_at: int) -> None:
        """Put a card on the hot list; it wins over everything else at the next tap."""
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO hotlist (ref, reason, added_at) VALUES (?, ?, ?)",
                (ref, reason, added_at),
            )

    def unblock(self, ref: bytes) -> None:
        with self._conn:
            self._conn.execute("DELETE FROM hotlist WHERE ref = ?", (ref,))


def _row_to_member(row: tuple[Any, ...]) -> Member:
    (member_no, name, org, status, tier, canteen_group, access_groups,
     valid_from, valid_until, batch, role, pin_hash) = row
    try:
        groups = tuple(json.loads(access_groups)) if access_groups else ()
    except ValueError:
        groups = ()
    try:
        st = MemberStatus(status)
    except ValueError:
        st = MemberStatus.SUSPENDED  # an unknown status must never grant anything
    return Member(
        member_no=member_no, name=name, org=org, status=st, tier=tier,
        canteen_group=canteen_group, access_groups=groups, valid_from=valid_from,
        valid_until=valid_until, batch=batch, role=role, pin_hash=pin_hash,
    )
