"""Journal and uplink throughput: durable append latency, and draining a 100,000-record backlog.

Two numbers matter in the field. The append latency is on every tap's
critical path (nothing is granted before the commit is on disk), so it is
measured one record at a time, at the shipped settings (WAL,
``synchronous=FULL``, sidecar head). The drain rate says how long a terminal
that was offline for a week needs to catch up: 100,000 journaled records are
published through a real mosquitto to the reference back office
(:mod:`simulator.backoffice.txconsume`), which stores each durably and acks,
until the terminal's acked watermark reaches the last one. While it drains,
a "tap" is appended every 50 ms and timed, since a backlog must not starve
live taps.

The backlog itself is written with ``Journal.append_batch`` (one transaction
per 1,000 records) so filling it does not dominate the run; it is the same
chain, the same table and the same bytes as 100,000 single appends.

``run()`` returns a flat dict of numbers; ``python -m bench.journal_bench``
prints it as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from simulator.backoffice.txconsume import TxStore
from simulator.services import Mosquitto
from terminal import eventloop
from terminal.config import Config, parse
from terminal.journal import Journal, TxEntry
from terminal.uplink import Uplink

TERMINAL = "BENCH-0001"


def _config(state: Path, port: int) -> Config:
    return parse(f"""
[terminal]
id = "{TERMINAL}"
mode = "access"
state_dir = "{state}"

[mqtt]
port = {port}
reconnect_min_s = 0.1
reconnect_max_s = 1.0
""", "bench")


def _entry(i: int) -> TxEntry:
    return TxEntry(mode="access", kind="tap", decision="approve", reason="ok", card_ref=f"{i:064x}",
                   profile="uid-legacy", strength="weak", member_no=f"M{i:07d}", grants_value=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _wait_line(proc: subprocess.Popen[str], needle: str) -> None:
    """Read the child's log until ``needle``, then keep draining it so it never blocks."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if needle in line:
            break
    else:
        raise RuntimeError(f"back office exited before {needle!r}")
    stream = proc.stdout
    threading.Thread(target=lambda: stream.read(), daemon=True).start()


def _clock() -> tuple[int, bool]:
    return int(time.time() * 1000), True


async def _append_latency(journal: Journal, count: int) -> list[float]:
    times = []
    for i in range(count):
        t = time.perf_counter()
        await journal.append(_entry(i))
        times.append((time.perf_counter() - t) * 1000)
    return times


async def _run(backlog: int, appends: int, workdir: Path) -> dict[str, Any]:
    broker = Mosquitto(workdir=workdir / "mosquitto")
    await asyncio.to_thread(broker.start)
    try:
        cfg = _config(workdir / "state", broker.port)
        async with Journal(workdir / "state" / "journal.db", TERMINAL, _clock, cfg.journal) as journal:
            single = await _append_latency(journal, appends)
            t0 = time.perf_counter()
            remaining = backlog - journal.last_seq
            while remaining > 0:
                chunk = min(1000, remaining)
                await journal.append_batch(_entry(i) for i in range(chunk))
                remaining -= chunk
            fill_s = time.perf_counter() - t0

            # The back office is another machine in the field: give it its own process.
            backoffice = subprocess.Popen(
                [sys.executable, "-m", "simulator.backoffice.txconsume", "consume",
                 "--db", str(workdir / "backoffice.db"), "--port", str(broker.port)],
                cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True)
            await asyncio.to_thread(_wait_line, backoffice, "event=backoffice_connected")
            uplink = Uplink(cfg, journal)
            during: list[float] = []
            start = time.perf_counter()
            tasks = [asyncio.create_task(uplink.run())]
            target = journal.last_seq
            while journal.acked_seq < target:
                await asyncio.sleep(0.05)
                t = time.perf_counter()
                await journal.append(_entry(0))  # a live tap while the backlog drains
                during.append((time.perf_counter() - t) * 1000)
            drain_s = time.perf_counter() - start
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            backoffice.terminate()
            backoffice.wait(10)
            store = TxStore(workdir / "backoffice.db")
            counts = store.counts(TERMINAL)
            chain_ok = store.report(TERMINAL).ok
            store.close()
    finally:
        await asyncio.to_thread(broker.stop)
    return {
        "backlog_100k_drain_tx_per_s": round(target / drain_s, 1),
        "backlog_drain_s": round(drain_s, 2),
        "backlog_records": target,
        "backlog_fill_s": round(fill_s, 2),
        "backlog_raw_received": counts.raw,
        "backlog_duplicates": counts.duplicates,
        "backlog_chain_ok": chain_ok,
        "journal_append_p50_ms": round(statistics.median(single), 3),
        "journal_append_p99_ms": round(_percentile(single, 0.99), 3),
        "journal_append_during_drain_p99_ms": round(_percentile(during, 0.99), 3) if during else 0.0,
        "journal_append_during_drain_max_ms": round(max(during), 3) if during else 0.0,
    }


def run(backlog: int = 100_000, appends: int = 2_000) -> dict[str, Any]:
    """Measure; ``backlog`` records are drained, ``appends`` single appends are timed."""
    with tempfile.TemporaryDirectory(prefix="unionterm-journal-bench-") as tmp:
        return eventloop.run(_run(backlog, appends, Path(tmp)))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
