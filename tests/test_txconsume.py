"""The back office's intake: exactly once per (terminal, seq), chains verified, acks, CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from simulator.backoffice.txconsume import (AddResult, TxStore, main, parse_tx, tx_filter,
                                            verify_chain)
from terminal.config import JournalSection
from terminal.exceptions import PayloadError
from terminal.journal import Journal, Record, TxEntry
from terminal.uplink import decode_ack

PREFIX = "unionterm/v1"
T0_MS = 1_800_000_000_000  # 2027-01-15 16:00:00 Asia/Shanghai


def clock() -> tuple[int, bool]:
    return T0_MS, True


async def journal_records(tmp_path: Path, terminal: str, n: int) -> list[Record]:
    """Records exactly as a terminal's journal writes and publishes them."""
    async with Journal(tmp_path / f"{terminal}.db", terminal, clock, JournalSection()) as j:
        return await j.append_batch(
            TxEntry(mode="canteen", kind="tap", decision="approve", reason="ok", member_no=f"M{i:04d}",
                    amount_fen=1200, subsidy_fen=800, to_pay_fen=400, grants_value=True)
            for i in range(n))


def message(record: Record, terminal: str = "T-1"):
    return parse_tx(f"{PREFIX}/t/{terminal}/tx", record.body.encode(), PREFIX)


@pytest.fixture
def store(tmp_path: Path):
    s = TxStore(tmp_path / "bo.db")
    yield s
    s.close()


async def test_parse_recomputes_the_chain_hash(tmp_path: Path) -> None:
    records = await journal_records(tmp_path, "T-1", 2)
    msg = message(records[1])
    assert (msg.terminal, msg.seq, msg.hash, msg.prev_hash) == ("T-1", 2, records[1].hash, records[0].hash)
    assert tx_filter(PREFIX) == "unionterm/v1/t/+/tx"


@pytest.mark.parametrize("topic, payload, where", [
    ("unionterm/v1/t/T-1/telemetry", b"{}", "not a transaction topic"),
    ("unionterm/v1/t/T-2/tx", None, "published on 'T-2'"),
    ("unionterm/v1/t/T-1/tx", b"\xff\xfe", "not UTF-8"),
    ("unionterm/v1/t/T-1/tx", b"[1, 2]", "expected a JSON object"),
    ("unionterm/v1/t/T-1/tx", b'{"terminal": "T-1", "seq": true, "prev_hash": "' + b"0" * 64 + b'"}', "integer"),
    ("unionterm/v1/t/T-1/tx", b'{"terminal": "T-1", "seq": 1}', "required key missing"),
    ("unionterm/v1/t/T-1/tx", b"{" + b" " * (70 * 1024) + b"}", "over the"),
])
async def test_malformed_records_are_refused(tmp_path: Path, topic: str, payload: bytes | None, where: str) -> None:
    if payload is None:
        payload = (await journal_records(tmp_path, "T-1", 1))[0].body.encode()
    with pytest.raises(PayloadError, match=where):
        parse_tx(topic, payload, PREFIX)


async def test_duplicates_dropped_conflicts_kept_aside(tmp_path: Path, store: TxStore) -> None:
    records = await journal_records(tmp_path, "T-1", 3)
    assert store.add(message(records[0])) is AddResult.NEW
    assert store.add(message(records[0])) is AddResult.DUPLICATE
    forged = records[1].body.replace('"M0001"', '"M9999"')
    assert store.add(parse_tx(f"{PREFIX}/t/T-1/tx", forged.encode(), PREFIX)) is AddResult.NEW
    assert store.add(message(records[1])) is AddResult.CONFLICT  # the genuine one, second: not a repeat
    store.commit()
    counts = store.counts("T-1")
    assert (counts.raw, counts.duplicates, counts.conflicts) == (4, 1, 1)
    assert store.seqs("T-1") == [1, 2]
    assert not store.report("T-1").ok  # a conflict is a fault until someone looks


async def test_ack_is_highest_contiguous_with_its_hash(tmp_path: Path, store: TxStore) -> None:
    a = await journal_records(tmp_path, "T-1", 5)
    b = await journal_records(tmp_path, "T-2", 2)
    for r in (a[0], a[2], a[1]):
        store.add(message(r))
    store.add(message(b[1], "T-2"))  # T-2's first record has not arrived: nothing to ack yet
    due = dict(store.commit())
    assert set(due) == {"T-1"} and (due["T-1"].seq, due["T-1"].hash) == (3, a[2].hash)
    store.add(message(a[4]))
    assert dict(store.commit())["T-1"].seq == 3  # a gap at 4: the ack stays put (and is repeated)
    store.add(message(a[3]))
    store.add(message(b[0], "T-2"))
    due = dict(store.commit())
    assert (due["T-1"].seq, due["T-2"].seq, due["T-2"].hash) == (5, 2, b[1].hash)


async def test_a_reset_record_settles_the_gap_it_declares(tmp_path: Path, store: TxStore) -> None:
    records = await journal_records(tmp_path, "T-1", 4)
    (tmp_path / "T-1.db").write_bytes(b"garbage, as if the card died")
    async with Journal(tmp_path / "T-1.db", "T-1", clock, JournalSection()) as j:
        reset = (await j.records_after(0, 1))[0]
        after = await j.append(TxEntry(mode="access", kind="tap", decision="deny", reason="unknown_card"))
    for r in (records[0], records[1], reset, after):  # 3 and 4 were never delivered
        store.add(message(r))
    due = dict(store.commit())
    assert due["T-1"].seq == 6 and due["T-1"].hash == after.hash
    report = store.report("T-1")
    assert report.ok and report.declared_lost == ((3, 4),) and report.gaps == ()


async def test_chain_verification_finds_gaps_and_breaks(tmp_path: Path) -> None:
    records = await journal_records(tmp_path, "T-1", 6)
    msgs = [message(r) for r in records]

    def rows(ms: list) -> list[tuple[int, str, str, str]]:
        return [(m.seq, m.hash, m.prev_hash, m.kind) for m in ms]
    assert verify_chain("T-1", rows(msgs)).ok
    edited = json.loads(records[2].body)
    edited["amount_fen"] = 1
    tampered = parse_tx(f"{PREFIX}/t/T-1/tx", json.dumps(edited).encode(), PREFIX)
    report = verify_chain("T-1", rows(msgs[:2] + [tampered] + msgs[3:]))
    assert report.breaks == (4,) and report.gaps == ()  # record 4 no longer links to record 3
    report = verify_chain("T-1", rows(msgs[:2] + msgs[4:]))
    assert report.gaps == ((3, 4),) and not report.ok
    assert verify_chain("T-1", rows(msgs[1:])).gaps == ((1, 1),)


async def test_export_csv_in_local_time(tmp_path: Path, store: TxStore) -> None:
    for r in await journal_records(tmp_path, "T-2", 2) + await journal_records(tmp_path, "T-1", 1):
        store.add(message(r, r.fields["terminal"]))
    store.commit()
    out = io.StringIO()
    assert store.export_csv(out) == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [(r["terminal"], r["seq"]) for r in rows] == [("T-1", "1"), ("T-2", "1"), ("T-2", "2")]
    assert rows[0]["time_local"] == "2027-01-15T16:00:00.000+08:00"
    assert (rows[1]["member_no"], rows[1]["to_pay_fen"], rows[1]["grants_value"]) == ("M0000", "400", "True")


async def test_command_line_verify_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = await journal_records(tmp_path, "T-1", 3)
    db = tmp_path / "bo.db"
    s = TxStore(db)
    for r in records:
        s.add(message(r))
    s.commit()
    s.close()
    assert main(["verify", "--db", str(db)]) == 0
    assert "T-1: records=3 seq=1..3 acked=3" in capsys.readouterr().out
    out = tmp_path / "tx.csv"
    assert main(["export", "--db", str(db), "--out", str(out)]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4
    s = TxStore(db)
    s.add(message(records[2]))
    s.add(parse_tx(f"{PREFIX}/t/T-1/tx", records[1].body.replace("M0001", "M0002").encode(), PREFIX))
    s.commit()
    s.close()
    assert main(["verify", "--db", str(db)]) == 1  # the conflicting copy is a fault
    assert main(["verify", "--db", str(tmp_path / "missing.db")]) == 2


def test_ack_payload_decodes_on_the_terminal() -> None:
    from terminal.uplink import Ack, encode_ack

    assert decode_ack(encode_ack(Ack(7, "ab" * 32))) == Ack(7, "ab" * 32)
