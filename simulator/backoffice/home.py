"""The reference back office's state: one folder with its keys and one SQLite database.

Layout of ``--home`` (default ``./backoffice``)::

    keys/<kid>.key      Ed25519 signing seeds (mode 0600), one per generated key
    keys/<kid>.pub      their public halves: install these on the terminals
    keys/current        the key id that signs from now on
    card.key            the deployment card key (hex), the same file the terminals use
    backoffice.db       members, what was published per scope, the hot list, terminal reports

What was *published* is kept apart from the members: a delta is the
difference between the list a scope's terminals hold (the last published
one) and the members now, and a resync answer republishes exactly that
list. sqlite-utils declares the tables; changes are plain SQL on its
connection so that everything a command changes is one transaction (an
interrupted command leaves the previous state; sqlite-utils' own writers
commit as they go).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from terminal.exceptions import ConfigError
from terminal.signing import load_private_key
from terminal.sync.records import canonical_line, validate_member
from terminal.sync.report import Report, decode_report
from terminal.sync.topics import check_scope

from .generate import org_ids
from .keys import generate_keypair
from .publish import records_for_scope

@dataclass(frozen=True)
class Published:
    """The newest list of one scope as the terminals were sent it."""

    scope: str
    version: int
    count: int
    digest: str
    issued: int
    expires: int
    chunks: int


def _line(record: Mapping[str, Any]) -> str:
    """A canonical record as stored here: its canonical JSON, without the newline."""
    return canonical_line(record).decode()[:-1]


def _lines_to_records(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    return (json.loads(line) for line in lines)


class BackOfficeHome:
    """The folder a back office keeps its state in (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.keys_dir = self.path / "keys"
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        # Long commands run their database work in a worker thread, one at a time.
        self.db = sqlite_utils.Database(sqlite3.connect(self.path / "backoffice.db",
                                                        check_same_thread=False))
        self.db.execute("PRAGMA journal_mode=WAL")
        self._create()

    def _create(self) -> None:
        db = self.db
        db["members"].create({"member_no": str, "line": str}, pk="member_no", if_not_exists=True)
        db["orgs"].create({"org_id": str, "name": str}, pk="org_id", if_not_exists=True)
        db["published"].create({"scope": str, "version": int, "count": int, "digest": str,
                                "issued": int, "expires": int, "chunks": int},
                               pk="scope", if_not_exists=True)
        db["published_members"].create({"scope": str, "member_no": str, "line": str},
                                       pk=("scope", "member_no"), if_not_exists=True)
        db["hotlist"].create({"ref": str, "reason": str, "added_at": int}, pk="ref", if_not_exists=True)
        db["counters"].create({"name": str, "value": int}, pk="name", if_not_exists=True)
        db["reports"].create({"terminal": str, "at": int, "received_at": int, "payload": str},
                             pk="terminal", if_not_exists=True)

    def close(self) -> None:
        self.db.close()

    # -- keys ---------------------------------------------------------------------------------

    def generate_key(self, use: bool = False) -> tuple[str, bool]:
        """A new signing key pair; it signs from now on if asked to or if it is the first.

        Returns (key id, whether it is now the current key). Rotation: generate
        the next key, install its ``.pub`` on every terminal (they trust two),
        then ``keys use`` it, then remove the old public key from the terminals.
        """
        tmp_private = self.keys_dir / f"new-{secrets.token_hex(4)}.key"
        tmp_public = tmp_private.with_suffix(".pub")
        kid = generate_keypair(tmp_private, tmp_public)
        tmp_private.rename(self.keys_dir / f"{kid}.key")
        tmp_public.rename(self.keys_dir / f"{kid}.pub")
        current = use or self.current_kid() is None
        if current:
            self.use_key(kid)
        return kid, current

    def use_key(self, kid: str) -> None:
        if not (self.keys_dir / f"{kid}.key").exists():
            raise ConfigError(str(self.keys_dir), None, f"no signing key {kid}")
        (self.keys_dir / "current").write_text(kid + "\n", encoding="ascii")

    def current_kid(self) -> str | None:
        try:
            return (self.keys_dir / "current").read_text(encoding="ascii").strip() or None
        except FileNotFoundError:
            return None

    def key_ids(self) -> list[str]:
        return sorted(p.stem for p in self.keys_dir.glob("*.key"))

    def public_key_path(self, kid: str | None = None) -> Path:
        return self.keys_dir / f"{kid or self.current_kid()}.pub"

    def signer(self) -> Ed25519PrivateKey:
        kid = self.current_kid()
        if kid is None:
            raise ConfigError(str(self.keys_dir), None, "no signing key yet: run 'keys generate'")
        return load_private_key(self.keys_dir / f"{kid}.key")

    @property
    def card_key_path(self) -> Path:
        return self.path / "card.key"

    def card_key(self) -> bytes:
        """The deployment card key, created (32 random bytes, mode 0600) on first use."""
        path = self.card_key_path
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_hex(32) + "\n")
        return bytes.fromhex(path.read_text(encoding="ascii").strip())

    # -- members --------------------------------------------------------------------------------

    def replace_members(self, records: Iterable[Mapping[str, Any]],
                        orgs: Mapping[str, str] | None = None) -> int:
        """Make ``records`` the whole member list (one transaction)."""
        with self.db.conn:
            self.db.execute("DELETE FROM members")
            n = self._insert_members(records)
            self._set_orgs(orgs if orgs is not None else org_ids())
        return n

    def upsert_members(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Add or replace members (one transaction)."""
        with self.db.conn:
            n = self._insert_members(records)
            self._set_orgs(org_ids())
        return n

    def _insert_members(self, records: Iterable[Mapping[str, Any]]) -> int:
        before = self.db.conn.total_changes
        self.db.conn.executemany("INSERT OR REPLACE INTO members (member_no, line) VALUES (?, ?)",
                                 ((r["member_no"], _line(validate_member(r))) for r in records))
        return self.db.conn.total_changes - before

    def _set_orgs(self, orgs: Mapping[str, str]) -> None:
        self.db.conn.executemany("INSERT OR REPLACE INTO orgs (org_id, name) VALUES (?, ?)",
                                 orgs.items())

    def member_count(self) -> int:
        return self.db["members"].count

    def records(self) -> Iterator[dict[str, Any]]:
        """Every member in member_no order."""
        return _lines_to_records(row[0] for row in self.db.execute(
            "SELECT line FROM members ORDER BY member_no"))

    def orgs(self) -> dict[str, str]:
        return {row[0]: row[1] for row in self.db.execute("SELECT org_id, name FROM orgs")}

    def scope_records(self, scope: str) -> Iterator[Mapping[str, Any]]:
        """The members a scope's terminals need, in member_no order."""
        return records_for_scope(self.records(), check_scope(scope), self.orgs())

    # -- published lists ----------------------------------------------------------------------

    def published(self, scope: str) -> Published | None:
        row = self.db.execute("SELECT scope, version, count, digest, issued, expires, chunks "
                              "FROM published WHERE scope = ?", [scope]).fetchone()
        return Published(*row) if row else None

    def all_published(self) -> dict[str, Published]:
        return {row[0]: Published(*row) for row in self.db.execute(
            "SELECT scope, version, count, digest, issued, expires, chunks FROM published")}

    def published_records(self, scope: str) -> Iterator[dict[str, Any]]:
        """The list the scope's terminals were last sent, in member_no order."""
        return _lines_to_records(row[0] for row in self.db.execute(
            "SELECT line FROM published_members WHERE scope = ? ORDER BY member_no", [scope]))

    def record_published(self, published: Published, records: Iterable[Mapping[str, Any]] | None = None,
                         upserts: Iterable[Mapping[str, Any]] = (), removals: Iterable[str] = ()) -> None:
        """Remember a publication: a whole list (``records``) or a change (upserts, removals)."""
        with self.db.conn:
            if records is not None:
                self.db.execute("DELETE FROM published_members WHERE scope = ?", [published.scope])
                upserts = records
            self.db.conn.executemany("DELETE FROM published_members WHERE scope = ? AND member_no = ?",
                                     [(published.scope, m) for m in removals])
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO published_members (scope, member_no, line) VALUES (?, ?, ?)",
                ((published.scope, r["member_no"], _line(r)) for r in upserts))
            self.db.conn.execute(
                "INSERT OR REPLACE INTO published (scope, version, count, digest, issued, expires, "
                "chunks) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (published.scope, published.version, published.count, published.digest,
                 published.issued, published.expires, published.chunks))

    # -- hot list -------------------------------------------------------------------------------

    def hotlist_seq(self) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = 'hotlist'").fetchone()
        return row[0] if row else 0

    def hotlist(self) -> dict[str, str]:
        """Blocked card refs (hex) and why."""
        return {row[0]: row[1] for row in self.db.execute("SELECT ref, reason FROM hotlist ORDER BY ref")}

    def record_hotlist(self, seq: int, add: Mapping[str, str] = {}, remove: Iterable[str] = (),
                       at: int = 0) -> None:
        """Remember hot-list change ``seq`` (refs to block with their reason, refs to release)."""
        with self.db.conn:
            self.db.conn.executemany("INSERT OR REPLACE INTO hotlist (ref, reason, added_at) "
                                     "VALUES (?, ?, ?)", [(r, why, at) for r, why in add.items()])
            self.db.conn.executemany("DELETE FROM hotlist WHERE ref = ?", [(r,) for r in remove])
            self.db.conn.execute("INSERT OR REPLACE INTO counters (name, value) VALUES ('hotlist', ?)",
                                 (seq,))

    # -- terminal reports -------------------------------------------------------------------------

    def store_report(self, terminal: str, payload: bytes, received_at: int) -> Report:
        """Keep a terminal's newest report (validated first; a bad one raises PayloadError)."""
        report = decode_report(payload)
        with self.db.conn:
            self.db.conn.execute("INSERT OR REPLACE INTO reports (terminal, at, received_at, payload) "
                                 "VALUES (?, ?, ?, ?)", (terminal, report.at, received_at, payload.decode()))
        return report

    def reports(self) -> dict[str, Report]:
        return {row[0]: decode_report(row[1].encode()) for row in self.db.execute(
            "SELECT terminal, payload FROM reports ORDER BY terminal")}
