"""Signed remote commands on a running terminal: what acts, what is refused, and never twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from simulator.observer import Observer
from simulator.services import Mosquitto, Pcscd
from terminal import signing
from terminal.commands import (LOCKDOWN, NORMAL, OPEN_DOOR, SHOW_MESSAGE, SYNC_NOW, build_command,
                               decode_command_body, decode_result, encode_command_body)
from terminal.exceptions import PayloadError
from terminal.rules.door import DoorMode
from terminal.ui import Screen
from txkit import TxRig, running_rig, shows, tap, wait_until

pytestmark = pytest.mark.stack

TERMINAL = "SIM-0001"
CMD = f"unionterm/v1/t/{TERMINAL}/cmd"


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
async def rig(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto, key: Ed25519PrivateKey) -> AsyncIterator[TxRig]:
    async with running_rig(tmp_path / "rig", pcscd, broker, {"cmd.pub": key.public_key()}, pulse_ms=300,
                           tables={"commands": {"public_keys": ["cmd.pub"], "max_ttl_s": 600}}) as running:
        yield running


@pytest.fixture
async def results(broker: Mosquitto) -> AsyncIterator[Observer]:
    async with Observer(broker.port, f"unionterm/v1/t/{TERMINAL}/#").running() as seen:
        yield seen


async def send(broker: Mosquitto, blob: bytes, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"test-bo-{time.monotonic_ns()}") as c:
        await c.publish(CMD, blob, qos=1, retain=retain)


async def result(seen: Observer, n: int) -> dict:
    """The ``n``-th distinct command result (1-based), decoded with the back office's decoder."""
    msgs = await seen.wait_for("/cmd/result", n, distinct=True)
    return decode_result(msgs[n - 1].payload).__dict__


def relay_pulses(rig: TxRig) -> int:
    return rig.pin_history("relay").count(True)


def command(key: Ed25519PrivateKey, action: str, version: int = 1, **kwargs) -> bytes:
    return build_command(key, TERMINAL, version, action, **kwargs)


def test_body_codec_checks_every_field() -> None:
    body = encode_command_body("ab" * 8, SHOW_MESSAGE, {"text": "食堂今日停业", "seconds": 30})
    assert decode_command_body(body) == ("ab" * 8, SHOW_MESSAGE, {"text": "食堂今日停业", "seconds": 30})
    for nonce, action, args in [("short", OPEN_DOOR, {}), ("ab" * 8, "self_destruct", {}),
                                ("ab" * 8, OPEN_DOOR, {"times": 2}), ("ab" * 8, SHOW_MESSAGE, {"text": "x"}),
                                ("ab" * 8, SHOW_MESSAGE, {"text": "x" * 41, "seconds": 5}),
                                ("ab" * 8, SHOW_MESSAGE, {"text": "x", "seconds": 601})]:
        with pytest.raises(PayloadError):
            encode_command_body(nonce, action, args)


async def test_open_door_acts_once_is_journaled_and_reported(rig: TxRig, broker: Mosquitto,
                                                            results: Observer, key: Ed25519PrivateKey) -> None:
    blob = command(key, OPEN_DOOR)
    before = rig.terminal.journal.last_seq
    await send(broker, blob)
    first = await result(results, 1)
    assert (first["status"], first["action"], first["version"]) == ("done", OPEN_DOOR, 1)
    await wait_until(lambda: relay_pulses(rig) == 1, 2, "the relay pulse")
    record = (await rig.terminal.journal.records_after(before, 5))[0].fields
    assert (record["kind"], record["reason"], record["grants_value"]) == ("command", OPEN_DOOR, True)
    assert record["detail"]["nonce"] == first["nonce"]
    await send(broker, blob)  # the same envelope again: a replay
    second = await result(results, 2)
    assert (second["status"], second["reason"], second["nonce"]) == ("refused", "replayed", first["nonce"])
    await asyncio.sleep(0.5)
    assert relay_pulses(rig) == 1 and rig.terminal.journal.last_seq == before + 1


async def test_lockdown_denies_taps_survives_restart_and_normal_lifts_it(
        rig: TxRig, broker: Mosquitto, results: Observer, key: Ed25519PrivateKey) -> None:
    member = rig.people[0]
    await send(broker, command(key, LOCKDOWN, 1))
    assert (await result(results, 1))["status"] == "done"
    tap(rig, member)
    await wait_until(lambda: len(rig.outcomes) == 1, 5, "the tap")
    assert rig.outcomes[0].decision.reason == "lockdown" and relay_pulses(rig) == 0
    status = [m.json() for m in results.on("/status") if m.json().get("door_mode") == "lockdown"]
    assert status and status[-1]["state"] == "online"
    await rig.stop_terminal()
    await rig.start_terminal()
    assert rig.terminal.door_mode is DoorMode.LOCKDOWN  # persisted with the nonces
    await asyncio.wait_for(rig.terminal.uplink.connected.wait(), 10)
    await send(broker, command(key, NORMAL, 2))
    assert (await result(results, 2))["status"] == "done"
    tap(rig, member)
    await wait_until(lambda: len(rig.outcomes) == 2, 5, "the second tap")
    assert rig.outcomes[1].decision.approved


async def test_retained_and_redelivered_commands_never_act_twice(
        rig: TxRig, broker: Mosquitto, key: Ed25519PrivateKey) -> None:
    results = Observer(broker.port, f"{CMD}/result", persistent_id="bo-results")  # survives the broker restart
    async with results.running():
        await send(broker, command(key, OPEN_DOOR, 7), retain=True)
        assert (await result(results, 1))["status"] == "done"
        await wait_until(lambda: relay_pulses(rig) == 1, 2, "the door released")
        await rig.stop_terminal()  # a reboot: the retained command arrives again on subscribe
        await rig.start_terminal()
        second = await result(results, 2)
        assert (second["status"], second["reason"]) == ("refused", "replayed")
    await asyncio.to_thread(broker.restart)  # and again when the broker comes back
    async with results.running():
        third = await result(results, 3)
    assert (third["status"], third["reason"]) == ("refused", "replayed")
    assert relay_pulses(rig) == 0  # the pin history is per start: nothing moved since the reboot
    assert rig.terminal.commands.done == 0 and rig.terminal.commands.refused == 2


async def test_forged_expired_and_misdirected_commands_change_nothing(
        rig: TxRig, broker: Mosquitto, results: Observer, key: Ed25519PrivateKey) -> None:
    now = int(time.time())
    stranger = Ed25519PrivateKey.generate()
    good = command(key, OPEN_DOOR)
    body = encode_command_body("cd" * 8, OPEN_DOOR)
    cases = [
        (command(stranger, OPEN_DOOR), "bad_signature"),                     # unknown key
        (good[:-70] + bytes([good[-70] ^ 1]) + good[-69:], "bad_signature"),  # one bit flipped in the body
        (body, "unsigned"),
        (command(key, OPEN_DOOR, issued=now - 400, ttl_s=300), "expired"),
        (command(key, OPEN_DOOR, ttl_s=3600), "validity_too_long"),
        (command(key, OPEN_DOOR, issued=now + 3600), "not_yet_valid"),
        (build_command(key, "SIM-0002", 1, OPEN_DOOR), "bad_signature"),      # another terminal's
        (signing.sign(key, signing.KIND_DELTA, TERMINAL, 1, now, now + 60, body), "bad_signature"),
        (signing.sign(key, signing.KIND_COMMAND, TERMINAL, 1, now, now + 60, b'{"action":"open_door"}'),
         "malformed"),
    ]
    before = (rig.terminal.journal.last_seq, rig.terminal.door_mode)
    for i, (blob, reason) in enumerate(cases[:5], start=1):
        await send(broker, blob)
        got = await result(results, i)
        assert (got["status"], got["reason"], got["nonce"]) == ("refused", reason, ""), (i, got)
    await asyncio.sleep(10)  # refusals are reported at most 5 per 10 s: let the window pass
    for i, (blob, reason) in enumerate(cases[5:], start=6):
        await send(broker, blob)
        got = await result(results, i)
        assert (got["status"], got["reason"]) == ("refused", reason), (i, got)
    assert relay_pulses(rig) == 0 and (rig.terminal.journal.last_seq, rig.terminal.door_mode) == before
    assert rig.terminal.commands.refused == len(cases)


async def test_message_sync_and_reload(rig: TxRig, broker: Mosquitto, results: Observer,
                                       key: Ed25519PrivateKey) -> None:
    await send(broker, command(key, SHOW_MESSAGE, args={"text": "明日停电", "seconds": 60}))
    assert (await result(results, 1))["status"] == "done"
    assert shows(rig, Screen("明日停电", (TERMINAL,)))
    await send(broker, command(key, SYNC_NOW))
    assert (await result(results, 2))["status"] == "done" and rig.terminal.sync_requested.is_set()
    good = rig.workdir / "terminal.toml"
    text = good.read_text()
    good.write_text(text.replace('mode = "access"', 'mode = "teleport"'))
    await send(broker, command(key, "reload_config"))
    refused = await result(results, 3)
    assert refused["status"] == "refused" and "mode" in refused["reason"]
    assert not rig.terminal.reload_requested
    good.write_text(text)
    await send(broker, command(key, "reload_config"))
    assert (await result(results, 4))["status"] == "done"  # reported before the terminal stops
    await asyncio.wait_for(rig._task, 10)  # it stops so that a fresh start loads the file
    assert rig.terminal.reload_requested
