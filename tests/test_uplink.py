"""The uplink through a real mosquitto: order, windows, resends, and acks that must change nothing."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from simulator.backoffice.txconsume import TxConsumer, TxStore
from simulator.observer import Observer
from simulator.services import Mosquitto
from terminal import uplink as uplink_module
from terminal.cancels import bounded
from terminal.journal import Journal, Record, TxEntry
from terminal.uplink import Ack, Uplink, encode_ack

from txkit import BrokerProxy, uplink_config, wait_until

pytestmark = pytest.mark.stack

ACK_TOPIC = "unionterm/v1/t/T-1/ack"


def clock() -> tuple[int, bool]:
    return int(time.time() * 1000), True


def entry(i: int) -> TxEntry:
    return TxEntry(mode="access", kind="tap", decision="approve", reason="ok", member_no=f"M{i}", grants_value=True)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, broker: Mosquitto, records: int = 0,
                  **sections: dict) -> AsyncIterator[tuple[Journal, Uplink, list[Record]]]:
    cfg = uplink_config(tmp_path / "state", broker.port, **sections)
    async with Journal(tmp_path / "state" / "journal.db", "T-1", clock, cfg.journal) as journal:
        written = await journal.append_batch(entry(i) for i in range(records))
        uplink = Uplink(cfg, journal)
        task = asyncio.create_task(uplink.run())
        try:
            yield journal, uplink, written
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def acker(broker: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-acker") as client:
        yield client


async def send_ack(client: aiomqtt.Client, payload: bytes) -> None:
    await client.publish(ACK_TOPIC, payload, qos=1)


def seqs(seen: Observer) -> list[int]:
    return [m.json()["seq"] for m in seen.on("/tx")]


async def test_records_go_out_in_order_and_acks_move_the_watermark(tmp_path: Path, broker: Mosquitto) -> None:
    async with Observer(broker.port, "unionterm/v1/t/T-1/tx").running() as seen, \
            running(tmp_path, broker, records=30) as (journal, uplink, records), acker(broker) as bo:
        await seen.wait_for("/tx", 30)
        assert seqs(seen) == list(range(1, 31))
        await wait_until(lambda: journal.published_seq == 30, 5, "PUBACKs")
        await send_ack(bo, encode_ack(Ack(30, records[29].hash)))
        # The uplink counts the ack once the journal's thread has taken it, so wait for the count.
        await wait_until(lambda: uplink.acks["accepted"] == 1, 5, "the ack")
        assert uplink.highest_sent == 30 and journal.acked_seq == 30


async def test_duplicate_stale_out_of_order_and_foreign_acks_change_nothing(
        tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    async with Observer(broker.port, "unionterm/v1/t/T-1/tx").running() as seen, \
            running(tmp_path, broker, records=10) as (journal, uplink, records), acker(broker) as bo:
        await seen.wait_for("/tx", 10)
        h = {r.seq: r.hash for r in records}
        sends = [Ack(8, h[8]), Ack(8, h[8]), Ack(6, h[6]), Ack(9, h[8]), Ack(50, "0" * 64)]
        for i, ack in enumerate(sends):
            await send_ack(bo, encode_ack(ack))
            await wait_until(lambda: sum(uplink.acks.values()) == i + 1, 5, f"ack {ack}")
        assert journal.acked_seq == 8
        assert dict(uplink.acks) == {"accepted": 1, "duplicate": 1, "stale": 1, "mismatch": 1, "above_sent": 1}
        refused = [r.getMessage() for r in caplog.records if "event=ack_refused" in r.getMessage()]
        assert any("reason=above_sent seq=50 highest_sent=10" in m for m in refused)
        assert any("reason=mismatch seq=9" in m for m in refused)
        garbage = [b"not json", b"\xff\xfe", b'{"seq": true, "hash": "' + b"0" * 64 + b'"}',
                   b'{"seq": 9}', b'{"seq": 9, "hash": "' + b"a" * 64 + b'", "x": 1}', b"{" * 600]
        caplog.clear()
        for payload in garbage:
            await send_ack(bo, payload)
        await wait_until(lambda: sum("event=inbound_refused" in r.getMessage() for r in caplog.records)
                         == len(garbage), 5, "every malformed ack refused with a log line")
        assert journal.acked_seq == 8
        await send_ack(bo, encode_ack(Ack(10, h[10])))
        await wait_until(lambda: journal.acked_seq == 10, 5, "a good ack after all that")


async def test_unacked_window_bounds_what_runs_ahead(tmp_path: Path, broker: Mosquitto) -> None:
    async with Observer(broker.port, "unionterm/v1/t/T-1/tx").running() as seen, \
            running(tmp_path, broker, records=20, uplink={"unacked_window": 5, "ack_timeout_s": 30.0}) \
            as (journal, uplink, records), acker(broker) as bo:
        await seen.wait_for("/tx", 5)
        await asyncio.sleep(0.5)
        assert seqs(seen) == [1, 2, 3, 4, 5]
        await send_ack(bo, encode_ack(Ack(3, records[2].hash)))
        await seen.wait_for("/tx", 8)
        await asyncio.sleep(0.3)
        assert seqs(seen) == list(range(1, 9))
        assert journal.acked_seq == 3 and uplink.highest_sent == 8


async def test_silence_from_the_back_office_makes_the_terminal_resend(tmp_path: Path, broker: Mosquitto) -> None:
    async with Observer(broker.port, "unionterm/v1/t/T-1/tx").running() as seen, \
            running(tmp_path, broker, records=4, uplink={"ack_timeout_s": 0.5}) as (journal, uplink, records), \
            acker(broker) as bo:
        await seen.wait_for("/tx", 8, timeout=5)  # everything once, then again after 0.5 s of silence
        assert seqs(seen)[:8] == [1, 2, 3, 4, 1, 2, 3, 4]
        await send_ack(bo, encode_ack(Ack(4, records[3].hash)))
        await wait_until(lambda: journal.acked_seq == 4, 5, "the ack")
        count = len(seen.on("/tx"))
        await asyncio.sleep(1.5)
        assert len(seen.on("/tx")) == count  # acknowledged: nothing is sent again
        assert uplink.resends >= 1


async def test_a_new_connection_resends_everything_unacknowledged(tmp_path: Path, broker: Mosquitto) -> None:
    async with Observer(broker.port, "unionterm/v1/t/T-1/tx", persistent_id="bo-resend").running() as seen, \
            running(tmp_path, broker, records=6) as (journal, uplink, records), acker(broker) as bo:
        await seen.wait_for("/tx", 6)
        await send_ack(bo, encode_ack(Ack(2, records[1].hash)))
        await wait_until(lambda: journal.acked_seq == 2, 5, "the ack")
    await asyncio.to_thread(broker.restart)
    async with Observer(broker.port, "unionterm/v1/t/T-1/tx", persistent_id="bo-resend").running() as seen, \
            running(tmp_path, broker) as (journal, uplink, _):
        await seen.wait_for("/tx", 4)
        assert seqs(seen)[-4:] == [3, 4, 5, 6]
        assert journal.published_seq == 6


async def test_a_long_backlog_drains_without_starving_live_taps(tmp_path: Path, broker: Mosquitto) -> None:
    """5,000 records wait; live appends every 20 ms keep their pace and their latency while they drain."""
    store = TxStore(tmp_path / "bo.db")
    async with TxConsumer(store, port=broker.port, client_id="bo-backlog").running(), \
            running(tmp_path, broker, records=5000) as (journal, uplink, _):
        latencies: list[float] = []
        start = time.perf_counter()
        while journal.acked_seq < 5000:
            t = time.perf_counter()
            await journal.append(entry(0))
            latencies.append(time.perf_counter() - t)
            await asyncio.sleep(0.02)
            assert time.perf_counter() - start < 60, "the backlog did not drain"
        drained_s = time.perf_counter() - start
        live = journal.last_seq
        await wait_until(lambda: journal.acked_seq == live, 10, "the live taps delivered after the backlog")
    assert store.seqs("T-1") == list(range(1, live + 1)) and store.report("T-1").ok
    store.close()
    expected = drained_s / 0.02  # if nothing held the loop, one append per 20 ms plus its own time
    assert len(latencies) >= expected * 0.5, (len(latencies), expected)
    latencies.sort()
    assert latencies[len(latencies) * 95 // 100] < 0.1 and latencies[-1] < 0.5, latencies[-5:]


async def test_a_cancel_swallowed_by_wait_for_still_stops_the_task() -> None:
    """Python 3.11's wait_for (inside every aiomqtt call) loses a cancel that lands as the call ends."""

    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    after: list[str] = []

    async def caller() -> None:
        await bounded(asyncio.wait_for(fut, 10))
        after.append("carried on")  # what a terminal that never stops did
        await asyncio.Event().wait()

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)
    fut.set_result("published")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert after == []


async def test_a_cancel_count_left_behind_does_not_stop_later_calls() -> None:
    """3.11's TaskGroup can leave the count raised after a child failed; that is not a request."""

    async def caller() -> str:
        asyncio.current_task().cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)  # taken and dropped without uncancel(): the count stays at 1
        return await bounded(asyncio.sleep(0, "published"))

    assert await asyncio.wait_for(asyncio.create_task(caller()), 2) == "published"


async def test_a_stop_that_lands_as_the_broker_accepts_still_stops_the_uplink(tmp_path: Path,
                                                                            broker: Mosquitto) -> None:
    """The CONNACK wait inside ``async with client`` is a wait_for too (a terminal that never stopped in CI).

    The stop lands before the session begins, so none is counted.
    """
    cfg = uplink_config(tmp_path / "state", broker.port)
    async with Journal(tmp_path / "state" / "journal.db", "T-1", clock, cfg.journal) as journal:
        uplink = Uplink(cfg, journal)
        make_client = uplink._new_client

        def stopped_at_connack() -> aiomqtt.Client:
            client = make_client()
            # aiomqtt resolves this future on CONNACK; stop the uplink in that very callback round
            client._connected.add_done_callback(lambda _: task.cancel())
            return client

        uplink._new_client = stopped_at_connack  # type: ignore[method-assign]
        task = asyncio.create_task(uplink.run())
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        assert uplink.connects == 0 and not uplink.connected.is_set()


class ConnackHolder(BrokerProxy):
    """A TCP proxy in front of the broker that holds back what the broker says until released.

    It keeps a connecting client waiting for its CONNACK for as long as a test
    needs.
    """

    def __init__(self, broker_port: int) -> None:
        super().__init__(broker_port)
        self.held = bytearray()
        self.released = asyncio.Event()

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not self.released.is_set():
                    self.held += data
                    await self.released.wait()
                    data, self.held = bytes(self.held), bytearray()
                writer.write(data)
            writer.close()


async def test_a_stop_while_waiting_for_connack_closes_the_half_open_connection(tmp_path: Path,
                                                                               broker: Mosquitto) -> None:
    """aiomqtt cancelled in its CONNACK wait leaves the socket open with no owner.

    That connection then lived on until the next session with the same
    client id took it over, and its end was logged as "Future exception was
    never retrieved" (seen when a bench stopped a terminal just started).
    """
    loop_errors: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    try:
        async with ConnackHolder(broker.port) as holder:
            cfg = uplink_config(tmp_path / "state", holder.port)
            async with Journal(tmp_path / "state" / "journal.db", "T-1", clock, cfg.journal) as journal:
                uplink = Uplink(cfg, journal)
                task = asyncio.create_task(uplink.run())
                await wait_until(lambda: holder.held, 5, "the broker's CONNACK")
                task.cancel()
                await asyncio.sleep(0.1)  # the stop lands first; then the CONNACK comes through
                holder.released.set()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, 10)
                assert uplink.connects == 0 and not uplink.connected.is_set()
                await asyncio.wait_for(holder.client_closed.wait(), 3)
        del task, uplink
        gc.collect()
        await asyncio.sleep(0.1)
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert not loop_errors, [str(context.get("exception") or context["message"]) for context in loop_errors]


async def test_a_connect_that_times_out_waiting_for_connack_closes_its_connection(
        tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiomqtt gives up on the CONNACK but kept the socket: one per try against a broker that says nothing.

    Each lived until paho's keepalive closed it, and one answered late could
    take the client id's session over from the connection that replaced it.
    """
    monkeypatch.setattr(uplink_module, "CONNECT_TIMEOUT_S", 0.5)
    async with ConnackHolder(broker.port) as holder:  # never released: no CONNACK ever comes
        cfg = uplink_config(tmp_path / "state", holder.port)
        async with Journal(tmp_path / "state" / "journal.db", "T-1", clock, cfg.journal) as journal:
            uplink = Uplink(cfg, journal)
            task = asyncio.create_task(uplink.run())
            try:
                await wait_until(lambda: holder.held, 5, "the broker's CONNACK")
                await asyncio.wait_for(holder.client_closed.wait(), 3)
                assert uplink.connects == 0
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
