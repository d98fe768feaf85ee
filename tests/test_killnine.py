"""``kill -9`` of the real terminal process, 50 times, while cards are being tapped.

Each trial starts ``python -m terminal.cli run --config ...`` (real pcscd
reader, gpiozero mock pins, luma dummy display, real mosquitto), taps cards
and kills the process with SIGKILL at a random moment. Taps come from the
config's test-only ``[simulator] tap_fifo`` rather than from vpcd: a vpcd
card read takes ~0.8 s, which would allow about one tap per trial; through
the FIFO a trial serves dozens, so the kills land in every phase of a tap
(deciding, committing, pulsing the relay, logging) and between taps. The
card read is the only thing skipped; decision, journal, outputs, screen and
uplink are the production code in a production process.

What must hold: every transaction the terminal showed as approved (its
``event=tap ... decision=approve`` line, written after the commit and the
relay pulse) is at the back office exactly once with the same member and
decision; nothing is approved without a journal record; after all the kills
the back office holds every seq from 1 to the journal's last exactly once
and the hash chain verifies; and each kill left the retained status
"offline" (the broker's LWT).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from simulator.backoffice.txconsume import TxConsumer, TxStore
from simulator.observer import Observer
from simulator.people import cast, records
from simulator.rig import sim_config_text
from simulator.services import Mosquitto, Pcscd
from terminal.members import MemberStore
from txkit import toml_section, wait_until

pytestmark = pytest.mark.stack

TRIALS = 50
SEED = 20240607
ROOT = Path(__file__).resolve().parent.parent
TAP_LINE = re.compile(r"event=tap seq=(\d+) .*member=(\S+) decision=(\w+)")
STRANGER_UID = bytes.fromhex("04AABBCCDD0001")


class TerminalProcess:
    """One ``unionterm run`` child whose log lines are collected as they come."""

    def __init__(self, config: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "terminal.cli", "run", "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def seen(self, needle: str) -> bool:
        return any(needle in line for line in self.lines)

    def finish(self) -> str:
        self.proc.wait(timeout=20)
        self._reader.join(timeout=5)
        return "".join(self.lines)


def journal_rows(db: Path) -> dict[int, tuple[str, str, str]]:
    """seq -> (hash, member_no, decision), read beside the running terminal (WAL allows it)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT seq, hash, json_extract(body, '$.member_no'),"
                            " json_extract(body, '$.decision') FROM tx").fetchall()
    finally:
        conn.close()
    return {seq: (h, member, decision) for seq, h, member, decision in rows}


async def test_kill_nine_fifty_times_loses_and_doubles_nothing(tmp_path: Path, pcscd: Pcscd,
                                                               broker: Mosquitto) -> None:
    if not pcscd.running:
        pcscd.start()
    rng = random.Random(SEED)
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "card.key").write_text("5a" * 32)
    people = [p for p in cast(10) if p.status == "active"]
    store = MemberStore(state / "members.db")
    store.upsert(records(cast(10), bytes.fromhex("5a" * 32)))
    store.close()
    fifo = state / "taps.fifo"
    os.mkfifo(fifo)
    config = tmp_path / "terminal.toml"
    config.write_text(sim_config_text(state, "access", broker.port, pulse_ms=200)
                      + "\n" + toml_section("simulator", {"tap_fifo": str(fifo)}))
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # holds the FIFO open across the kills
    approved: dict[int, str] = {}
    denied = 0
    bo = TxStore(tmp_path / "backoffice.db")
    async with TxConsumer(bo, port=broker.port, client_id="bo-killnine").running() as consumer, \
            Observer(broker.port, "unionterm/v1/t/SIM-0001/status").running() as status:
        for trial in range(TRIALS):
            term = TerminalProcess(config)
            await wait_until(lambda: term.seen("event=broker_connected") or term.proc.poll() is not None,
                             30, f"trial {trial}: the terminal to start")
            assert term.proc.poll() is None, term.finish()
            kill_at = time.monotonic() + rng.uniform(0.02, 0.6)
            while time.monotonic() < kill_at:  # a steady stream of members and strangers
                person = rng.choice(people)
                uid = STRANGER_UID if rng.random() < 0.2 else person.uid
                os.write(writer, uid.hex().encode() + b"\n")
                await asyncio.sleep(0.008)
            term.proc.send_signal(signal.SIGKILL)
            output = term.finish()
            assert term.proc.returncode == -signal.SIGKILL
            assert "Traceback" not in output, output
            for seq, member, decision in TAP_LINE.findall(output):
                if decision == "approve":
                    assert int(seq) not in approved, f"seq {seq} approved twice"
                    approved[int(seq)] = member
                else:
                    denied += 1
            await wait_until(lambda: sum(m.json()["state"] == "offline" for m in status.on("/status"))
                             == trial + 1, 10, f"trial {trial}: the LWT")

        final = TerminalProcess(config)  # one last, undisturbed start drains what is left
        await wait_until(lambda: final.seen("event=broker_connected"), 30, "the final start")
        last = max(journal_rows(state / "journal.db"))
        await wait_until(lambda: bo.counts("SIM-0001").contiguous == last, 60,
                         f"the back office to hold 1..{last}")
        final.proc.send_signal(signal.SIGTERM)
        assert "event=terminal_stopped" in final.finish()
    os.close(writer)

    journal = journal_rows(state / "journal.db")
    assert len(approved) > TRIALS and denied > 0, (len(approved), denied)  # the kills hit real traffic
    for seq, member in approved.items():
        _, j_member, j_decision = journal[seq]
        assert (j_member, j_decision) == (member, "approve"), f"seq {seq}: approved without its record"
    backoffice = {b["seq"]: b for b in bo.bodies("SIM-0001")}
    assert sorted(backoffice) == list(range(1, last + 1)) == sorted(journal)
    for seq, member in approved.items():
        assert (backoffice[seq]["member_no"], backoffice[seq]["decision"]) == (member, "approve")
    report = bo.report("SIM-0001")
    assert report.ok and report.records == last and not report.declared_lost
    assert bo.hashes("SIM-0001") == {seq: row[0] for seq, row in journal.items()}  # the very records journaled
    assert consumer.received >= last
    bo.close()
