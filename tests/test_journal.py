"""The journal: durable order, hash chain, continuation after reopening."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from terminal.journal import GENESIS, Journal, TxEntry, chain_hash


def clock() -> tuple[int, bool]:
    return 1_800_000_000_000, True


def entry(i: int) -> TxEntry:
    return TxEntry(mode="access", kind="tap", decision="approve", reason="ok", member_no=f"M{i}")


async def test_append_chains_and_orders(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.db", "T-1", clock) as journal:
        records = [await journal.append(entry(i)) for i in range(5)]
    prev = GENESIS
    for i, record in enumerate(records, start=1):
        body = json.loads(record.body)
        assert body["seq"] == i and body["terminal"] == "T-1" and body["prev_hash"] == prev
        assert record.hash == chain_hash(prev, record.body)
        prev = record.hash
    assert len({json.loads(r.body)["txid"] for r in records}) == 5


async def test_reopen_continues_sequence_and_chain(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.db", "T-1", clock) as journal:
        first = await journal.append(entry(1))
    async with Journal(tmp_path / "j.db", "T-1", clock) as journal:
        second = await journal.append(entry(2))
    assert json.loads(second.body)["seq"] == 2
    assert json.loads(second.body)["prev_hash"] == first.hash


async def test_settings_are_durable(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.db", "T-1", clock) as journal:
        await journal.append(entry(1))
        conn = sqlite3.connect(tmp_path / "j.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
        sync = await journal._run(lambda: journal._conn.execute("PRAGMA synchronous").fetchone()[0])
        assert sync == 2  # FULL


async def test_unpublished_until_marked(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.db", "T-1", clock) as journal:
        for i in range(3):
            await journal.append(entry(i))
        assert [r.seq for r in await journal.unpublished()] == [1, 2, 3]
        await journal.mark_published([1, 2])
        assert [r.seq for r in await journal.unpublished()] == [3]
        assert await journal.backlog() == 1
