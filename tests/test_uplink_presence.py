"""What a running terminal says about itself (presence, telemetry) and what it shrugs off (bad input)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from simulator.backoffice.txconsume import TxConsumer, TxStore
from simulator.observer import Observer
from simulator.services import Mosquitto, Pcscd
from terminal import __version__
from terminal.telemetry import ListInfo
from txkit import TxRig, running_rig, tap, wait_until

pytestmark = pytest.mark.stack

TERMINAL = "SIM-0001"
BASE = f"unionterm/v1/t/{TERMINAL}"


@pytest.fixture
async def rig(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> AsyncIterator[TxRig]:
    """A terminal with member-list sync on too, so that every inbound topic there is is subscribed."""
    async with running_rig(tmp_path / "rig", pcscd, broker, {"lists.pub": Ed25519PrivateKey.generate().public_key()},
                           pulse_ms=100, tables={"telemetry": {"interval_s": 0.3},
                                                 "sync": {"trusted_keys": ["lists.pub"]}}) as running:
        yield running


async def test_presence_is_retained_online_and_offline_after_a_clean_stop(rig: TxRig, broker: Mosquitto) -> None:
    rig.terminal.list_versions = lambda: {"all": ListInfo(12, int(time.time()) - 30)}
    assert await rig.terminal.uplink.refresh_presence()
    async with Observer(broker.port, f"{BASE}/status").running() as seen:  # joins late: gets the retained copy
        (status,) = await seen.wait_for("/status")
    body = status.json()
    assert status.retain and body["state"] == "online"
    assert (body["version"], body["mode"], body["door_mode"], body["lists"]) == (__version__, "access", "normal",
                                                                                   {"all": 12})
    assert body["readers"] == sorted(rig.terminal.readers_online) != []
    await rig.stop_terminal()
    async with Observer(broker.port, f"{BASE}/status").running() as seen:
        (status,) = await seen.wait_for("/status")
    assert status.retain and status.json()["state"] == "offline"
    await rig.start_terminal()


async def test_telemetry_reports_queue_storage_lists_and_readers(rig: TxRig, broker: Mosquitto,
                                                                 tmp_path: Path) -> None:
    rig.terminal.list_versions = lambda: {"org-7": ListInfo(3, int(time.time()) - 120)}
    async with Observer(broker.port, f"{BASE}/telemetry").running() as seen:
        for person in rig.people[:3]:
            tap(rig, person)
        await wait_until(lambda: any(m.json()["queue"]["unacked"] == 3 for m in seen.on("/telemetry")), 5,
                         "telemetry counting three unacknowledged records")
        await asyncio.sleep(1.1)
        report = seen.on("/telemetry")[-1].json()
        assert report["queue"]["last_seq"] == 3 and report["queue"]["oldest_unacked_age_s"] >= 1.0
        assert report["journal"] == {"rows": 3, "capacity": 500_000, "state": "ok"}
        assert report["storage"]["state"] == "ok" and report["storage"]["disk_free_bytes"] > 0
        assert report["readers"] == {"state": "online", "online": sorted(rig.terminal.readers_online)}
        assert 119 <= report["lists"]["org-7"]["age_s"] <= 125 and report["lists"]["org-7"]["version"] == 3
        assert report["door_mode"] == "normal" and report["uptime_s"] >= 0 and report["terminal"] == TERMINAL
        store = TxStore(tmp_path / "bo.db")
        async with TxConsumer(store, port=broker.port).running():
            rig.terminal.uplink.kick()  # the back office only now subscribed: resend at once ("sync now")
            await wait_until(lambda: seen.on("/telemetry")[-1].json()["queue"]["unacked"] == 0, 10,
                             "telemetry after the back office caught up")
        store.close()


BAD_PAYLOADS = [b"", b"\xff\xfe\x00garbage", b"null", b"[]", b'{"seq": "1"}', b"{}", b"{" * 5000,
                b"\x00" * (1 << 20), b"x" * ((1 << 20) + 1)]


async def test_malformed_payloads_on_every_subscribed_topic_are_refused_and_logged(
        rig: TxRig, broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Ours (ack, cmd) log ``event=inbound_refused topic=...`` per message; the member-list
    topics log their own refusal words, so there every non-empty message must leave a warning."""
    filters = rig.terminal.uplink.topic_filters
    ours = [f"{BASE}/ack", f"{BASE}/cmd"]
    assert set(ours) < set(filters) and any("/members/" in f for f in filters)
    topics = [f.replace("+", "x").replace("#", "x") for f in filters]
    caplog.clear()
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-fuzzer") as client:
        for topic in topics:
            for payload in BAD_PAYLOADS:
                await client.publish(topic, payload, qos=1)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name.startswith("unionterm") and r.levelno >= logging.WARNING]
    expected = len(ours) * len(BAD_PAYLOADS) + (len(topics) - len(ours)) * (len(BAD_PAYLOADS) - 1)
    await wait_until(lambda: len(warnings()) >= expected, 30, "a log line for every malformed message")
    for topic in ours:
        assert sum(f"event=inbound_refused topic={topic} " in w for w in warnings()) == len(BAD_PAYLOADS)
    assert not any("inbound_handler_error" in w for w in warnings())  # refused, not crashed
    assert not rig._task.done() and rig.terminal.journal.last_seq == 0
    store = TxStore(tmp_path / "bo.db")
    async with TxConsumer(store, port=broker.port).running():  # and it still serves and delivers
        tap(rig, rig.people[0])
        await wait_until(lambda: store.counts(TERMINAL).contiguous == 1, 10, "the next tap delivered")
    assert rig.outcomes[-1].decision.approved
    store.close()
