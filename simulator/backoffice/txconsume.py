"""The back office's transaction intake: store each record once, verify every chain, ack, export.

Terminals deliver at least once: a record whose PUBACK or ack was lost comes
again, possibly many times (docs/protocol-tx.md). This is the reference
receiver that makes that exactly once: a record is keyed by (terminal, seq);
a repeat with the same bytes is counted and dropped, a repeat with different
bytes is a *conflict*, kept aside and reported, never silently dropped or
allowed to replace the first.

Each terminal's records form a SHA-256 chain (``terminal.journal.chain_hash``)
and :func:`verify_chain` checks it end to end: every link, every gap, and the
gaps a terminal itself declared with a ``journal_reset`` record after its
journal file was lost.

Acknowledgement is cumulative: after each durable commit the receiver
publishes, per terminal it heard from, the highest seq up to which it holds
every record (gaps declared lost by a reset count as held), together with
that record's hash, on ``t/{id}/ack``. The terminal then stops resending
and may prune.

Use as a library (:class:`TxStore`, :class:`TxConsumer`) or from the command
line: ``python -m simulator.backoffice.txconsume consume|verify|export``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import enum
import json
import logging
import random
import re
import signal
import sqlite3
import sys
import time
import zoneinfo
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiomqtt

from terminal import logs
from terminal.cancels import bounded, connection
from terminal.exceptions import PayloadError
from terminal.journal import GENESIS, KIND_RESET, chain_hash
from terminal.signing import MAX_INT
from terminal.sync.strict import TOKEN_RE, check_str, get_hex64, get_int, loads_object
from terminal.uplink import NO_DELAY, Ack, encode_ack, payload_bytes

log = logging.getLogger("unionterm.backoffice.tx")

DEFAULT_PREFIX = "unionterm/v1"
#: A transaction record is well under 2 KiB; anything this big is not one.
MAX_TX_BYTES = 64 * 1024
LOCAL_TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
CSV_COLUMNS = ("terminal", "seq", "txid", "time_local", "clock_ok", "kind", "mode", "decision", "reason",
               "member_no", "card_ref", "profile", "strength", "amount_fen", "subsidy_fen", "to_pay_fen",
               "grants_value", "hash")


@dataclass(frozen=True)
class TxMessage:
    """One received record, with the chain hash recomputed from its own bytes."""

    terminal: str
    seq: int
    body: str
    hash: str
    prev_hash: str
    kind: str


def tx_filter(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/t/+/tx"


def parse_tx(topic: str, payload: bytes, prefix: str = DEFAULT_PREFIX) -> TxMessage:
    """Check one ``t/{id}/tx`` message; the body must name the terminal of its topic."""
    m = re.fullmatch(re.escape(prefix) + r"/t/([^/]+)/tx", topic)
    if m is None:
        raise PayloadError(topic, "not a transaction topic")
    terminal = check_str(m.group(1), f"{topic}:terminal", 64, TOKEN_RE, allow_empty=False)
    if len(payload) > MAX_TX_BYTES:
        raise PayloadError(topic, f"{len(payload)} bytes is over the {MAX_TX_BYTES}-byte limit")
    obj = loads_object(payload, "tx")
    if obj.get("terminal") != terminal:
        raise PayloadError("tx.terminal", f"{str(obj.get('terminal'))[:40]!r} published on {terminal!r}'s topic")
    seq = get_int(obj, "seq", "tx", 1, MAX_INT) if "seq" in obj else _missing("seq")
    prev = get_hex64(obj, "prev_hash", "tx") if "prev_hash" in obj else _missing("prev_hash")
    kind = check_str(obj.get("kind", ""), "tx.kind", 32, allow_empty=False)
    body = payload.decode("utf-8")
    return TxMessage(terminal, seq, body, chain_hash(prev, body), prev, kind)


def _missing(key: str) -> Any:
    raise PayloadError(f"tx.{key}", "required key missing")


class AddResult(enum.Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class ChainReport:
    """What one terminal's stored chain looks like.

    ``gaps`` are missing ranges nobody explained; ``declared_lost`` are the
    ranges before a ``journal_reset`` record, which the terminal says it lost
    (ranges are inclusive ``(first, last)``). ``breaks`` are seqs whose
    ``prev_hash`` is not the previous record's hash.
    """

    terminal: str
    records: int
    first_seq: int
    last_seq: int
    gaps: tuple[tuple[int, int], ...] = ()
    declared_lost: tuple[tuple[int, int], ...] = ()
    breaks: tuple[int, ...] = ()
    conflicts: int = 0

    @property
    def ok(self) -> bool:
        return not self.gaps and not self.breaks and not self.conflicts


def verify_chain(terminal: str, rows: Iterable[tuple[int, str, str, str]], conflicts: int = 0) -> ChainReport:
    """Check ``(seq, hash, prev_hash, kind)`` rows of one terminal, given in seq order.

    A record's own hash is recomputed when it is received (:func:`parse_tx`),
    so what is checked here is every link between consecutive records, the
    genesis link of seq 1, and that every gap is one a reset record declared.
    """
    gaps: list[tuple[int, int]] = []
    lost: list[tuple[int, int]] = []
    breaks: list[int] = []
    count, first, prev_seq, prev_hash = 0, 0, 0, GENESIS
    for seq, digest, link, kind in rows:
        count += 1
        first = first or seq
        expected_from = prev_seq + 1
        if seq > expected_from:
            (lost if kind == KIND_RESET else gaps).append((expected_from, seq - 1))
        if seq == expected_from and link != prev_hash:
            breaks.append(seq)
        prev_seq, prev_hash = seq, digest
    return ChainReport(terminal, count, first, prev_seq, tuple(gaps), tuple(lost), tuple(breaks), conflicts)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tx (
    terminal TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    hash TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (terminal, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tx_resets ON tx(terminal, seq) WHERE kind = 'journal_reset';
CREATE TABLE IF NOT EXISTS terminals (
    terminal TEXT PRIMARY KEY,
    contiguous INTEGER NOT NULL DEFAULT 0,
    contiguous_hash TEXT NOT NULL DEFAULT '',
    raw INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    conflicts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS conflicts (
    terminal TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);
"""


@dataclass
class Counts:
    """Per-terminal intake figures: every message (``raw``), repeats, conflicts."""

    raw: int = 0
    duplicates: int = 0
    conflicts: int = 0
    contiguous: int = 0


class TxStore:
    """The back office's copy of every terminal's journal, in SQLite.

    Writes are grouped: :meth:`add` many, then :meth:`commit` once (durable),
    and only then may :meth:`acks` be published.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._pending: dict[str, Counts] = {}

    def close(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")
        self._conn.close()

    def _begin(self) -> None:
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN")

    def add(self, msg: TxMessage, received_ms: int | None = None) -> AddResult:
        """Keep ``msg`` unless it is a repeat; a repeat with other bytes is kept aside as a conflict."""
        self._begin()
        now = received_ms if received_ms is not None else int(time.time() * 1000)
        counts = self._pending.setdefault(msg.terminal, Counts())
        counts.raw += 1
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO tx (terminal, seq, body, hash, prev_hash, kind, received_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (msg.terminal, msg.seq, msg.body, msg.hash, msg.prev_hash, msg.kind, now))
        if cur.rowcount:
            return AddResult.NEW
        (held,) = self._conn.execute("SELECT hash FROM tx WHERE terminal = ? AND seq = ?",
                                     (msg.terminal, msg.seq)).fetchone()
        if held == msg.hash:
            counts.duplicates += 1
            return AddResult.DUPLICATE
        counts.conflicts += 1
        self._conn.execute("INSERT INTO conflicts (terminal, seq, body, received_ms) VALUES (?, ?, ?, ?)",
                           (msg.terminal, msg.seq, msg.body, now))
        log.error("event=tx_conflict terminal=%s seq=%d", msg.terminal, msg.seq)
        return AddResult.CONFLICT

    def commit(self) -> list[tuple[str, Ack]]:
        """Make everything added durable (one fsync); returns the acks now due, one per terminal heard from."""
        due: list[tuple[str, Ack]] = []
        if not self._pending:
            if self._conn.in_transaction:
                self._conn.execute("COMMIT")
            return due
        self._begin()
        for terminal, c in sorted(self._pending.items()):
            self._conn.execute("INSERT OR IGNORE INTO terminals (terminal) VALUES (?)", (terminal,))
            self._conn.execute("UPDATE terminals SET raw = raw + ?, duplicates = duplicates + ?,"
                               " conflicts = conflicts + ? WHERE terminal = ?",
                               (c.raw, c.duplicates, c.conflicts, terminal))
            ack = self._advance(terminal)
            if ack is not None:
                due.append((terminal, ack))
        self._conn.execute("COMMIT")
        self._pending.clear()
        return due

    def _advance(self, terminal: str) -> Ack | None:
        hi, digest = self._conn.execute("SELECT contiguous, contiguous_hash FROM terminals WHERE terminal = ?",
                                        (terminal,)).fetchone()
        start = hi
        while True:
            rows = self._conn.execute("SELECT seq, hash FROM tx WHERE terminal = ? AND seq > ? ORDER BY seq"
                                      " LIMIT 1000", (terminal, hi)).fetchall()
            for seq, h in rows:
                if seq != hi + 1:
                    break
                hi, digest = seq, h
            else:
                if len(rows) == 1000:
                    continue
                break
            reset = self._conn.execute("SELECT min(seq) FROM tx WHERE terminal = ? AND seq > ? AND kind = ?",
                                       (terminal, hi + 1, KIND_RESET)).fetchone()[0]
            if reset is None:
                break
            # The terminal declared everything below its reset record settled; the
            # next pass steps onto the reset record itself and takes its hash.
            hi = reset - 1
        if hi > start:
            self._conn.execute("UPDATE terminals SET contiguous = ?, contiguous_hash = ? WHERE terminal = ?",
                               (hi, digest, terminal))
        return Ack(hi, digest) if hi > 0 and digest else None

    # -- reading ---------------------------------------------------------------------------

    def terminals(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT terminal FROM terminals ORDER BY terminal")]

    def counts(self, terminal: str) -> Counts:
        row = self._conn.execute("SELECT raw, duplicates, conflicts, contiguous FROM terminals WHERE terminal = ?",
                                 (terminal,)).fetchone()
        return Counts(*row) if row else Counts()

    def seqs(self, terminal: str) -> list[int]:
        return [r[0] for r in self._conn.execute("SELECT seq FROM tx WHERE terminal = ? ORDER BY seq", (terminal,))]

    def hashes(self, terminal: str) -> dict[int, str]:
        return dict(self._conn.execute("SELECT seq, hash FROM tx WHERE terminal = ?", (terminal,)))

    def bodies(self, terminal: str) -> Iterator[dict[str, Any]]:
        for (body,) in self._conn.execute("SELECT body FROM tx WHERE terminal = ? ORDER BY seq", (terminal,)):
            yield json.loads(body)

    def report(self, terminal: str) -> ChainReport:
        rows = self._conn.execute("SELECT seq, hash, prev_hash, kind FROM tx WHERE terminal = ? ORDER BY seq",
                                  (terminal,))
        return verify_chain(terminal, rows, self.counts(terminal).conflicts)

    def export_csv(self, out: TextIO, terminal: str | None = None) -> int:
        """One row per stored record, in (terminal, seq) order, times in Asia/Shanghai."""
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        query = "SELECT body, hash FROM tx" + (" WHERE terminal = ?" if terminal else "") + " ORDER BY terminal, seq"
        n = 0
        for body, digest in self._conn.execute(query, (terminal,) if terminal else ()):
            writer.writerow(csv_row(json.loads(body), digest))
            n += 1
        return n


def csv_row(rec: dict[str, Any], digest: str) -> list[Any]:
    """One exported line; the wall time is shown local, and flagged when the clock was untrusted."""
    local = dt.datetime.fromtimestamp(rec.get("time_ms", 0) / 1000, LOCAL_TZ).isoformat(timespec="milliseconds")
    values = {**rec, "time_local": local, "hash": digest}
    return [values.get(c, "") for c in CSV_COLUMNS]


@dataclass
class TxConsumer:
    """Subscribes to every terminal's ``tx`` topic with a persistent session, stores, acks."""

    store: TxStore
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = DEFAULT_PREFIX
    client_id: str = "unionterm-backoffice-tx"
    #: Commit and acknowledge after this many messages at most (and whenever the queue is empty):
    #: often enough that a terminal's unacked window never closes while the back office keeps up.
    batch: int = 100
    reconnect_max_s: float = 2.0
    received: int = 0
    refused: int = 0
    acks_sent: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    #: Every parsed message in arrival order as (terminal, seq), for tests and audits.
    arrivals: list[tuple[str, int]] = field(default_factory=list)

    async def run(self) -> None:
        """Forever: connect (persistent session), consume, reconnect with backoff on loss."""
        attempt = 0
        while True:
            client = aiomqtt.Client(self.host, self.port, identifier=self.client_id, clean_session=False,
                                    socket_options=NO_DELAY)
            try:
                async with connection(client):
                    attempt = 0
                    await bounded(client.subscribe(tx_filter(self.prefix), qos=1))
                    self.connected.set()
                    log.info("event=backoffice_connected host=%s port=%d", self.host, self.port)
                    await self._consume(client)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self.store.commit()  # what was received is kept; acks go out after reconnecting
                attempt += 1
                delay = min(self.reconnect_max_s, 0.05 * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0)
                log.warning("event=backoffice_disconnected error=%r retry_s=%.2f", str(exc), delay)
                await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def running(self, timeout: float = 10.0) -> AsyncIterator["TxConsumer"]:
        """Consume in the background for the duration of a ``with`` block (demo, tests, bench)."""
        task = asyncio.create_task(self.run(), name="backoffice-tx")
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.store.commit()

    async def _consume(self, client: aiomqtt.Client) -> None:
        pending = 0
        async for message in client.messages:
            topic = str(message.topic)
            try:
                msg = parse_tx(topic, payload_bytes(message.payload), self.prefix)
            except PayloadError as exc:
                self.refused += 1
                log.warning("event=tx_refused topic=%s reason=%r", topic, str(exc))
                continue
            self.received += 1
            self.arrivals.append((msg.terminal, msg.seq))
            self.store.add(msg)
            pending += 1
            if pending >= self.batch or len(client.messages) == 0:
                pending = 0
                await self._ack(client, self.store.commit())

    async def _ack(self, client: aiomqtt.Client, due: Sequence[tuple[str, Ack]]) -> None:
        for terminal, ack in due:
            await bounded(client.publish(f"{self.prefix}/t/{terminal}/ack", encode_ack(ack), qos=1))
            self.acks_sent += 1


# -- command line ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``consume`` (runs until interrupted), ``verify`` (exit 1 on any fault), ``export`` (CSV)."""
    parser = argparse.ArgumentParser(prog="unionterm-backoffice tx", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    consume = sub.add_parser("consume", help="receive, de-duplicate and acknowledge transactions")
    consume.add_argument("--db", required=True)
    consume.add_argument("--host", default="127.0.0.1")
    consume.add_argument("--port", type=int, default=1883)
    consume.add_argument("--prefix", default=DEFAULT_PREFIX)
    consume.add_argument("--client-id", default="unionterm-backoffice-tx")
    verify = sub.add_parser("verify", help="check every terminal's hash chain")
    verify.add_argument("--db", required=True)
    verify.add_argument("--terminal")
    export = sub.add_parser("export", help="write the stored transactions as CSV")
    export.add_argument("--db", required=True)
    export.add_argument("--out", default="-", help="file name, or - for stdout")
    export.add_argument("--terminal")
    args = parser.parse_args(argv)
    if args.command != "consume" and not Path(args.db).exists():
        print(f"{args.db}: no such database", file=sys.stderr)
        return 2
    store = TxStore(args.db)
    try:
        if args.command == "consume":
            logs.setup("info")
            signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: commit, close, exit 0
            consumer = TxConsumer(store, args.host, args.port, args.prefix, args.client_id)
            try:
                asyncio.run(consumer.run())
            except KeyboardInterrupt:
                pass
            return 0
        if args.command == "verify":
            return _verify(store, [args.terminal] if args.terminal else store.terminals())
        if args.out == "-":
            store.export_csv(sys.stdout, args.terminal)
        else:
            with open(args.out, "w", newline="", encoding="utf-8") as fh:
                n = store.export_csv(fh, args.terminal)
            print(f"{n} transactions written to {args.out}")
        return 0
    finally:
        store.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _verify(store: TxStore, terminals: Iterable[str]) -> int:
    bad = 0
    for terminal in terminals:
        r = store.report(terminal)
        c = store.counts(terminal)
        print(f"{terminal}: records={r.records} seq={r.first_seq}..{r.last_seq} acked={c.contiguous} "
              f"raw={c.raw} duplicates={c.duplicates} conflicts={c.conflicts} gaps={list(r.gaps)} "
              f"declared_lost={list(r.declared_lost)} breaks={list(r.breaks)} {'ok' if r.ok else 'FAULT'}")
        bad += not r.ok
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
