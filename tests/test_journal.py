"""The journal: durable order, hash chain, watermarks, capacity, retention, corruption."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid
from pathlib import Path

import pytest

from terminal.config import JournalSection
from terminal.exceptions import StorageError
from terminal.journal import GENESIS, KIND_RESET, AckResult, HeadFile, Journal, TxEntry, chain_hash
from terminal.journalhead import Head
from terminal.storage import StorageState

T0_MS = 1_800_000_000_000
DAY_MS = 86_400_000


class Clock:
    """A wall clock the test moves; the journal stamps records and prunes by it."""

    def __init__(self, ms: int = T0_MS, ok: bool = True) -> None:
        self.ms, self.ok = ms, ok

    def __call__(self) -> tuple[int, bool]:
        return self.ms, self.ok


def entry(i: int, value: bool = False, pad: int = 0) -> TxEntry:
    detail = {"pad": "x" * pad} if pad else {}
    return TxEntry(mode="access", kind="tap", decision="approve" if value else "deny",
                   reason="ok" if value else "unknown_card", member_no=f"M{i}", grants_value=value,
                   detail=detail)


def journal(tmp_path: Path, clock: Clock | None = None, terminal: str = "T-1", **settings: object) -> Journal:
    return Journal(tmp_path / "j.db", terminal, clock or Clock(), JournalSection(**settings))


def pages(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA page_count").fetchone()[0]


def aside_files(tmp_path: Path, kind: str) -> list[Path]:
    return sorted(p for p in tmp_path.iterdir() if f".{kind}-" in p.name and not p.name.endswith(("-wal", "-shm")))


async def test_append_chains_and_orders(tmp_path: Path) -> None:
    async with journal(tmp_path) as j:
        records = [await j.append(entry(i)) for i in range(5)]
    prev = GENESIS
    for i, record in enumerate(records, start=1):
        body = json.loads(record.body)
        assert body["seq"] == i and body["terminal"] == "T-1" and body["prev_hash"] == prev
        assert record.hash == chain_hash(prev, record.body)
        prev = record.hash
    assert len({json.loads(r.body)["txid"] for r in records}) == 5


async def test_transaction_ids_are_distinct_random_uuids_through_bursts_and_reopens(tmp_path: Path) -> None:
    # Taps one by one take ids drawn ahead between taps; a batch larger than that stock draws its own.
    async with journal(tmp_path) as j:
        records = [await j.append(entry(i)) for i in range(6)]
        records += await j.append_batch([entry(i) for i in range(10)])
        records.append(await j.append(entry(99)))
    async with journal(tmp_path) as j:
        records.append(await j.append(entry(100)))
    ids = [json.loads(r.body)["txid"] for r in records]
    assert len(set(ids)) == len(ids) == 18
    for txid in ids:
        parsed = uuid.UUID(txid)
        assert str(parsed) == txid and parsed.version == 4 and parsed.variant == uuid.RFC_4122


async def test_reopen_continues_sequence_and_chain(tmp_path: Path) -> None:
    async with journal(tmp_path) as j:
        first = await j.append(entry(1))
    async with journal(tmp_path) as j:
        second = await j.append(entry(2))
    assert json.loads(second.body)["seq"] == 2
    assert json.loads(second.body)["prev_hash"] == first.hash


async def test_settings_are_durable_and_space_is_reusable(tmp_path: Path) -> None:
    async with journal(tmp_path) as j:
        await j.append(entry(1))
        conn = sqlite3.connect(tmp_path / "j.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        conn.close()
        sync = await j._run(lambda: j._conn.execute("PRAGMA synchronous").fetchone()[0])
        assert sync == 2  # FULL


async def test_watermarks_survive_reopen_and_never_go_back(tmp_path: Path) -> None:
    async with journal(tmp_path) as j:
        records = await j.append_batch(entry(i) for i in range(10))
        assert await j.backlog() == 10
        assert [r.seq for r in await j.unpublished(limit=3)] == [1, 2, 3]
        await j.mark_published(4)
        await j.mark_published(2)  # a late, lower watermark changes nothing
        assert j.published_seq == 4 and [r.seq for r in await j.unpublished(limit=2)] == [5, 6]
        assert await j.ack(3, records[2].hash) is AckResult.ACCEPTED
    async with journal(tmp_path) as j:
        assert (j.published_seq, j.acked_seq, await j.backlog()) == (4, 3, 6)
        assert [r.seq for r in await j.records_after(j.acked_seq, 100)] == list(range(4, 11))


async def test_acks_only_move_forward_onto_the_exact_record(tmp_path: Path) -> None:
    async with journal(tmp_path) as j:
        records = await j.append_batch(entry(i) for i in range(10))
        h = {r.seq: r.hash for r in records}
        assert await j.ack(5, h[5]) is AckResult.ACCEPTED
        assert await j.ack(5, h[5]) is AckResult.DUPLICATE
        assert await j.ack(3, h[3]) is AckResult.STALE
        assert await j.ack(7, h[6]) is AckResult.MISMATCH
        assert await j.ack(11, "0" * 64) is AckResult.UNKNOWN
        assert j.acked_seq == 5
        assert await j.ack(10, h[10]) is AckResult.ACCEPTED
        assert j.acked_seq == 10 and j.published_seq == 10  # stored by the back office = delivered


async def test_also_commits_with_the_record_or_not_at_all(tmp_path: Path) -> None:
    async with journal(tmp_path) as j:
        await j.transact(lambda c: c.execute("CREATE TABLE counters (k TEXT PRIMARY KEY, n INTEGER)"))
        await j.append(entry(1), also=lambda c: c.execute("INSERT INTO counters VALUES ('meals', 1)"))

        def broken(c: sqlite3.Connection) -> None:
            c.execute("UPDATE counters SET n = n + 1")
            c.execute("INSERT INTO counters VALUES ('meals', 9)")  # primary key clash: the whole tx fails

        with pytest.raises(StorageError):
            await j.append(entry(2), also=broken)
        assert j.last_seq == 1
        third = await j.append(entry(3))
        n = await j.transact(lambda c: c.execute("SELECT n FROM counters").fetchone()[0])
    assert n == 1 and json.loads(third.body)["seq"] == 2  # the failed record took no number


async def test_capacity_refuse_value_keeps_rows_and_a_reserve_for_refusals(tmp_path: Path) -> None:
    seen: list[StorageState] = []
    async with journal(tmp_path, capacity=100, warn_at=80) as j:
        j.listeners.append(seen.append)
        records = await j.append_batch(entry(i, value=True) for i in range(79))
        assert j.state is StorageState.OK
        await j.append(entry(79, value=True))
        assert j.state is StorageState.NEAR_FULL
        records += await j.append_batch(entry(i) for i in range(20))
        assert await j.ack(100, records[-1].hash) is AckResult.ACCEPTED
        assert j.state is StorageState.JOURNAL_FULL and not j.state.accepts_value
        with pytest.raises(StorageError, match="full"):
            await j.append(entry(101, value=True))
        await j.append_batch(entry(i) for i in range(10))  # refusals still recorded, into the reserve
        with pytest.raises(StorageError, match="full"):
            await j.append(entry(111))
        assert j.rows == 110 and j.last_seq == 110  # nothing acknowledged was dropped
    assert seen == [StorageState.NEAR_FULL, StorageState.JOURNAL_FULL]


async def test_capacity_drop_acked_drops_only_acknowledged_rows(tmp_path: Path) -> None:
    async with journal(tmp_path, capacity=100, warn_at=90, full_policy="drop_acked") as j:
        records = await j.append_batch(entry(i, value=True) for i in range(100))
        assert await j.ack(60, records[59].hash) is AckResult.ACCEPTED
        for i in range(60):
            await j.append(entry(100 + i, value=True))
        assert j.rows == 100 and j.last_seq == 160
        first = await j.records_after(0, 1)
        assert first[0].seq == 61  # the 60 acknowledged rows made room, oldest first
        with pytest.raises(StorageError, match="full"):  # the rest is unacknowledged: never dropped
            await j.append(entry(999, value=True))
        assert [r.seq for r in await j.records_after(60, 200)] == list(range(61, 161))


async def test_retention_prunes_old_acked_rows_and_releases_pages(tmp_path: Path) -> None:
    clock = Clock()
    async with journal(tmp_path, clock, retention_days=30) as j:
        records = []
        for _ in range(4):
            records += await j.append_batch(entry(i, pad=400) for i in range(500))
        assert await j.ack(1500, records[1499].hash) is AckResult.ACCEPTED
        clock.ms += 29 * DAY_MS
        assert await j.prune() == 0  # not old enough yet
        pages_before = await j.transact(pages)
        clock.ms += 2 * DAY_MS
        assert await j.prune() == 1500
        assert j.rows == 500 and [r.seq for r in await j.records_after(0, 1)] == [1501]
        free_pages = await j.transact(lambda c: c.execute("PRAGMA freelist_count").fetchone()[0])
        pages_after = await j.transact(pages)
        later = await j.append(entry(2001))
    assert free_pages < 10  # handed back to the file system, not kept on the free list
    assert pages_after < pages_before * 0.4
    conn = sqlite3.connect(tmp_path / "j.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert os.path.getsize(tmp_path / "j.db") <= (pages_after + 1) * 4096
    assert json.loads(later.body)["seq"] == 2001


async def test_prune_never_trusts_an_unsynchronised_clock(tmp_path: Path) -> None:
    clock = Clock()
    async with journal(tmp_path, clock, retention_days=1) as j:
        records = await j.append_batch(entry(i) for i in range(10))
        await j.ack(10, records[-1].hash)
        clock.ms += 10 * DAY_MS
        clock.ok = False
        assert await j.prune() == 0
        clock.ok = True
        assert await j.prune() == 9  # the newest row always stays: it anchors the chain
        assert j.rows == 1


async def test_corrupt_file_is_moved_aside_and_the_chain_continues_from_it(tmp_path: Path) -> None:
    async with journal(tmp_path) as j:
        for _ in range(30):
            records = await j.append_batch(entry(i, pad=300) for i in range(20))
    last = records[-1]
    (tmp_path / "j.db.head").unlink()  # the salvage alone must carry the chain here
    with open(tmp_path / "j.db", "r+b") as fh:
        fh.seek(4096 * 5 + 200)
        fh.write(os.urandom(2000))
    damaged = (tmp_path / "j.db").read_bytes()
    async with journal(tmp_path) as j:
        reset = (await j.records_after(0, 10))[0]
        nxt = await j.append(entry(1))
    (aside,) = aside_files(tmp_path, "corrupt")
    assert aside.read_bytes() == damaged  # kept byte for byte, never deleted
    body = reset.fields
    assert body["kind"] == KIND_RESET and body["seq"] == 601 and body["prev_hash"] == last.hash
    assert body["detail"]["salvaged_seq"] == 600 and body["detail"]["moved_to"] == aside.name
    assert nxt.seq == 602 and nxt.fields["prev_hash"] == reset.hash


async def test_the_sidecar_follows_each_append_while_the_journal_runs(tmp_path: Path) -> None:
    async with journal(tmp_path) as j:
        for n in range(1, 4):
            record = await j.append(entry(n))
            for _ in range(100):  # written once the loop is next free, by the journal's thread
                head = HeadFile(tmp_path / "j.db.head").read()
                if head is not None and head.seq == n:
                    break
                await asyncio.sleep(0.01)
            assert head is not None and (head.seq, head.hash) == (n, record.hash)


async def test_closing_writes_the_sidecar_an_abandoned_append_left_behind(tmp_path: Path) -> None:
    async with journal(tmp_path) as j:
        await j.append(entry(1))
        while (HeadFile(tmp_path / "j.db.head").read() or Head(0, "", "")).seq != 1:
            await asyncio.sleep(0.01)
        # A commit whose answer the loop never took (its task was cancelled): nothing queued the sidecar.
        (last,) = await j._run(j._append, (entry(2),), None)
        await asyncio.sleep(0.05)
        assert HeadFile(tmp_path / "j.db.head").read().seq == 1
    head = HeadFile(tmp_path / "j.db.head").read()
    assert head is not None and (head.seq, head.hash) == (2, last.hash)


async def test_unreadable_file_continues_from_the_sidecar(tmp_path: Path) -> None:
    async with journal(tmp_path) as j:
        records = await j.append_batch(entry(i) for i in range(7))
    (tmp_path / "j.db").write_bytes(b"this is no longer a database" * 100)
    async with journal(tmp_path) as j:
        assert j.state is StorageState.OK
        reset = (await j.records_after(0, 1))[0]
        assert j.acked_seq == 7 and j.published_seq == 7  # only the reset record waits
    assert len(aside_files(tmp_path, "corrupt")) == 1
    body = reset.fields
    assert (body["seq"], body["prev_hash"]) == (8, records[-1].hash)
    assert body["detail"]["head_seq"] == 7 and body["detail"]["salvaged_seq"] == 0


async def test_restored_old_file_never_reuses_sequence_numbers(tmp_path: Path) -> None:
    async with journal(tmp_path) as j:
        await j.append_batch(entry(i) for i in range(5))
    backup = (tmp_path / "j.db").read_bytes()
    async with journal(tmp_path) as j:
        records = await j.append_batch(entry(i) for i in range(5))
    (tmp_path / "j.db").write_bytes(backup)
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / 'j.db'}{suffix}").unlink(missing_ok=True)
    async with journal(tmp_path) as j:
        reset = (await j.records_after(5, 1))[0]
    assert reset.fields["kind"] == KIND_RESET and reset.fields["reason"] == "behind_head"
    assert (reset.seq, reset.fields["prev_hash"]) == (11, records[-1].hash)


async def test_foreign_journal_is_moved_aside_and_a_fresh_one_starts(tmp_path: Path) -> None:
    async with journal(tmp_path, terminal="T-2") as j:
        await j.append_batch(entry(i) for i in range(3))
    async with journal(tmp_path, terminal="T-1") as j:
        first = await j.append(entry(1))
    assert len(aside_files(tmp_path, "foreign")) == 1
    assert first.seq == 1 and first.fields["prev_hash"] == GENESIS and first.fields["terminal"] == "T-1"


def test_sidecar_block_round_trips_and_a_torn_one_is_ignored(tmp_path: Path) -> None:
    head = HeadFile(tmp_path / "h")
    from terminal.journal import Head

    head.write(Head(42, "ab" * 32, "T-1"))
    head.close()
    raw = (tmp_path / "h").read_bytes()
    assert len(raw) == HeadFile.SIZE and HeadFile.decode(raw) == Head(42, "ab" * 32, "T-1")
    torn = raw[:20] + b"9" + raw[21:]
    assert HeadFile.decode(torn) is None
    assert HeadFile.decode(b"\xff" * 256) is None


async def test_stats_report_queue_ages(tmp_path: Path) -> None:
    clock = Clock()
    async with journal(tmp_path, clock) as j:
        first = await j.append(entry(1))
        clock.ms += 5_000
        second = await j.append(entry(2))
        await j.mark_published(1)
        stats = await j.stats()
        assert (stats.unpublished, stats.unacked) == (1, 2)
        assert stats.oldest_unpublished_ms == T0_MS + 5_000 and stats.oldest_unacked_ms == T0_MS
        await j.ack(2, second.hash)
        stats = await j.stats()
        assert (stats.unacked, stats.oldest_unacked_ms, stats.state) == (0, 0, StorageState.OK)
        assert stats.disk_free > 0 and first.seq == 1
