"""Outages through the real stacks: a flapping broker, lost PUBACKs, a full disk, a read-only disk.

The 5,000-tap test drives taps into the production decision path
(:func:`txkit.tap`, i.e. ``Terminal.submit``) instead of through vpcd: a
vpcd card read takes ~0.8 s, so 5,000 real reads would take over an hour.
Everything from the decision on is the production code: member lookup,
journal commit, relay and screen, uplink, a real mosquitto restarted 20
times, and the reference back office consuming and acknowledging.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from simulator.backoffice.txconsume import TxConsumer, TxStore
from simulator.observer import Observer
from simulator.services import Mosquitto, Pcscd
from terminal.journal import Journal, TxEntry
from terminal.storage import StorageState, screen_text
from terminal.ui import Screen, text
from terminal.uplink import Uplink
from txkit import BrokerProxy, TxRig, shows, tap, uplink_config, wait_until

pytestmark = pytest.mark.stack

TERMINAL = "SIM-0001"


def assert_exactly_once(store: TxStore, terminal: str, last: int) -> None:
    assert store.seqs(terminal) == list(range(1, last + 1))
    report = store.report(terminal)
    assert report.ok and report.records == last, report
    assert store.counts(terminal).conflicts == 0


@pytest.fixture
async def backoffice(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[TxConsumer]:
    store = TxStore(tmp_path / "backoffice.db")
    async with TxConsumer(store, port=broker.port, client_id="bo-outages").running() as consumer:
        yield consumer
    store.close()


async def test_broker_restarted_20_times_during_5000_taps(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto,
                                                          backoffice: TxConsumer) -> None:
    if not pcscd.running:
        pcscd.start()
    async with TxRig(tmp_path / "rig", pcscd=pcscd, broker=broker, pulse_ms=100, capture=False,
                     tables={"uplink": {"ack_timeout_s": 3.0}}) as rig:
        members = [p for p in rig.people if p.status == "active"]
        order = [members[i % len(members)] for i in range(5000)]

        async def taps() -> None:  # spread over the ~25 s of flapping, ~200 taps/s
            for i, person in enumerate(order):
                tap(rig, person)
                if i % 10 == 9:
                    await asyncio.sleep(0.05)

        async def flap() -> None:  # up long enough for the terminal's backoff to find it most times
            for _ in range(20):
                await asyncio.sleep(0.95)
                await asyncio.to_thread(broker.stop)
                await asyncio.sleep(0.3)
                await asyncio.to_thread(broker.start)

        await asyncio.gather(taps(), flap())
        await wait_until(lambda: len(rig.outcomes) == 5000, 120, "all 5,000 taps served")
        await wait_until(lambda: backoffice.store.counts(TERMINAL).contiguous == 5000, 120,
                         "the back office to hold all 5,000")
        assert [o.record.seq for o in rig.outcomes] == list(range(1, 5001))
        assert all(o.decision.approved for o in rig.outcomes)
        await wait_until(lambda: rig.terminal.journal.acked_seq == 5000, 10, "the terminal to hear the last ack")
        assert rig.terminal.uplink.connects >= 15  # the outages really cut the uplink, over and over
    store = backoffice.store
    assert_exactly_once(store, TERMINAL, 5000)
    assert [b["member_no"] for b in store.bodies(TERMINAL)] == [p.member_no for p in order]
    # Arrival order itself is not the order: across a broker restart mosquitto delivers the back
    # office's persisted queue interleaved with the terminal's resends, so the receiver orders by seq.
    # Every arrival is stored: resends still in flight when the last ack was heard are stored as
    # their batch commits, so the count is compared once the back office has caught up.
    await wait_until(lambda: len(backoffice.arrivals) == store.counts(TERMINAL).raw, 10,
                     "the back office to store every arrival")
    assert store.counts(TERMINAL).raw >= 5000


class PubackDropper(BrokerProxy):
    """A TCP proxy in front of the broker that can swallow everything the broker says back.

    While ``swallow`` is set, PUBACKs and PUBLISHes from the broker (the back
    office's acks) are cut out of the stream packet by packet, as if the
    broker had died after receiving the terminal's records and before
    answering. Everything else passes, so the session itself stays up.
    """

    def __init__(self, broker_port: int) -> None:
        super().__init__(broker_port)
        self.swallow = False
        self.swallowed = 0

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readexactly(1)
                length, shift, raw = 0, 0, b""
                while True:  # MQTT remaining length: base-128 varint
                    b = await reader.readexactly(1)
                    raw += b
                    length |= (b[0] & 0x7F) << shift
                    shift += 7
                    if not b[0] & 0x80:
                        break
                body = await reader.readexactly(length)
                if self.swallow and head[0] >> 4 in (3, 4):  # PUBLISH, PUBACK
                    self.swallowed += 1
                    continue
                writer.write(head + raw + body)
                await writer.drain()
        writer.close()


async def test_lost_pubacks_bring_duplicates_that_dedup_removes(tmp_path: Path, broker: Mosquitto,
                                                                backoffice: TxConsumer) -> None:
    async with PubackDropper(broker.port) as proxy:
        cfg = uplink_config(tmp_path / "state", proxy.port, TERMINAL, uplink={"ack_timeout_s": 1.0})
        async with Journal(tmp_path / "state" / "journal.db", TERMINAL, lambda: (int(time.time() * 1000), True),
                           cfg.journal) as journal:
            uplink = Uplink(cfg, journal)
            task = asyncio.create_task(uplink.run())
            entries = [TxEntry("access", "tap", "approve", "ok", member_no=f"M{i}", grants_value=True)
                       for i in range(300)]
            await journal.append_batch(entries[:100])
            await wait_until(lambda: journal.acked_seq == 100, 10, "the first hundred acknowledged")
            proxy.swallow = True
            await journal.append_batch(entries[100:200])
            window = 100 + cfg.mqtt.inflight  # without PUBACKs, one in-flight window goes out
            await wait_until(lambda: backoffice.store.counts(TERMINAL).contiguous == window, 10,
                             "the back office to store records the terminal never hears about")
            await asyncio.sleep(0.5)
            assert (journal.published_seq, journal.acked_seq, uplink.highest_sent) == (100, 100, window)
            assert proxy.swallowed >= cfg.mqtt.inflight
            proxy.refuse()  # the terminal comes back only after the back office has (below)
            await asyncio.to_thread(broker.stop, True)  # kill -9: it dies before it ever answers
            await wait_until(lambda: not backoffice.connected.is_set(), 10, "the back office to notice")
            await asyncio.to_thread(broker.start)
            await asyncio.wait_for(backoffice.connected.wait(), 10)
            proxy.swallow = False
            await proxy.listen()
            await journal.append_batch(entries[200:])
            await wait_until(lambda: journal.acked_seq == 300, 30, "everything acknowledged in the end")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    counts = backoffice.store.counts(TERMINAL)
    assert counts.duplicates >= cfg.mqtt.inflight and counts.raw == 300 + counts.duplicates  # 101..120 twice
    assert_exactly_once(backoffice.store, TERMINAL, 300)


# -- storage faults ---------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def ext4_loop(image: Path, path: Path) -> Iterator[Path]:
    """A small ext4 file system that the kernel switches to read-only on an error, as on an SD card."""
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system has no room left."""
    filler = directory / "filler"
    with open(filler, "wb") as fh:
        chunk = b"\0" * 65536
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def storage_rig(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto, journal_dir: Path) -> TxRig:
    return TxRig(tmp_path / "rig", pcscd=pcscd, broker=broker, pulse_ms=100, capture=False,
                 journal={"db": str(journal_dir / "journal.db"), "probe_s": 0.2, "min_free_kb": 64},
                 tables={"telemetry": {"interval_s": 0.3}})


async def served(rig: TxRig, person) -> object:
    n = len(rig.outcomes)
    tap(rig, person)
    await wait_until(lambda: len(rig.outcomes) == n + 1, 5, "the tap to be served")
    return rig.outcomes[-1]


async def telemetry_state(seen: Observer, state: StorageState) -> dict:
    def latest() -> dict | None:
        msgs = seen.on("/telemetry")
        return msgs[-1].json() if msgs else None
    await wait_until(lambda: (latest() or {}).get("storage", {}).get("state") == state.value, 10,
                     f"telemetry saying {state.value}")
    return latest() or {}


async def assert_refuses_value_keeps_serving(rig: TxRig, seen: Observer, state: StorageState) -> None:
    member, stranger = rig.people[0], rig.people[1]  # the stranger is anyone with an unknown badge
    pulses = rig.pin_history("relay").count(True)
    refused = await served(rig, member)
    assert (refused.decision.approved, refused.decision.reason, refused.record) == (False, state.value, None)
    assert shows(rig, Screen(text("zh", "denied"), (screen_text(state, "zh"),), alert=True))
    assert rig.pin_history("relay").count(True) == pulses  # nothing granted
    stranger_outcome = await served(rig, dataclasses.replace(stranger, uid=bytes.fromhex("04FFFFFFFF0001")))
    assert stranger_outcome.decision.reason == "unknown_card"  # a denial is still answered properly
    report = await telemetry_state(seen, state)
    assert report["storage"]["disk_free_bytes"] >= 0 and report["queue"]["last_seq"] == rig.terminal.journal.last_seq
    assert not rig._task.done()  # still running: no crash, no restart loop


async def test_disk_full_refuses_value_says_so_and_recovers_by_itself(
        tmp_path: Path, pcscd: Pcscd, broker: Mosquitto, backoffice: TxConsumer) -> None:
    if not pcscd.running:
        pcscd.start()
    with tmpfs(tmp_path / "jfs", "2m") as jfs:
        async with storage_rig(tmp_path, pcscd, broker, jfs) as rig, \
                Observer(broker.port, f"unionterm/v1/t/{TERMINAL}/telemetry").running() as seen:
            member = rig.people[0]
            assert (await served(rig, member)).decision.approved
            filler = fill(jfs)
            await assert_refuses_value_keeps_serving(rig, seen, StorageState.DISK_FULL)
            filler.unlink()
            await wait_until(lambda: rig.terminal.journal.state is StorageState.OK, 5, "recovery")
            idle = rig.terminal._idle_screen()
            assert shows(rig, idle) and not idle.alert  # the warning is gone from the screen
            assert screen_text(StorageState.DISK_FULL, "zh") not in idle.lines
            back = await served(rig, member)
            assert back.decision.approved and back.record is not None
            await telemetry_state(seen, StorageState.OK)
            last = rig.terminal.journal.last_seq
            await wait_until(lambda: backoffice.store.counts(TERMINAL).contiguous == last, 10, "delivery")
    assert_exactly_once(backoffice.store, TERMINAL, last)


async def test_read_only_file_system_refuses_value_survives_restart_and_recovers(
        tmp_path: Path, pcscd: Pcscd, broker: Mosquitto, backoffice: TxConsumer) -> None:
    if not pcscd.running:
        pcscd.start()
    image = tmp_path / "sd.img"
    with ext4_loop(image, tmp_path / "jfs") as jfs:
        async with storage_rig(tmp_path, pcscd, broker, jfs) as rig, \
                Observer(broker.port, f"unionterm/v1/t/{TERMINAL}/telemetry").running() as seen:
            member = rig.people[0]
            assert (await served(rig, member)).decision.approved
            device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(jfs)], capture_output=True,
                                    text=True, check=True).stdout.strip()
            Path(f"/sys/fs/ext4/{os.path.basename(device)}/trigger_fs_error").write_text("test")
            await assert_refuses_value_keeps_serving(rig, seen, StorageState.READ_ONLY)
            await rig.stop_terminal()  # systemd would restart it: it must come up, not loop
            await rig.start_terminal()
            assert rig.terminal.journal.state is StorageState.READ_ONLY
            await assert_refuses_value_keeps_serving(rig, seen, StorageState.READ_ONLY)
            # The technician's repair: unmount, fsck, mount again. The terminal let go of its
            # files when the disk turned read-only, so the old mount can go away.
            subprocess.run(["umount", "-l", str(jfs)], check=True)
            fsck = subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, text=True)
            assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
            subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(jfs)], check=True)
            await wait_until(lambda: rig.terminal.journal.state is StorageState.OK, 10, "recovery")
            back = await served(rig, member)
            assert back.decision.approved and back.record.seq == 2  # the chain simply continues
            await telemetry_state(seen, StorageState.OK)
            await wait_until(lambda: backoffice.store.counts(TERMINAL).contiguous == 2, 10, "delivery")
    assert_exactly_once(backoffice.store, TERMINAL, 2)
