"""One tap end to end through real pcscd + vpcd, gpiozero MockFactory, luma dummy and mosquitto."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulator.cards.uid import UidCard
from simulator.observer import Observer
from simulator.rig import Rig, sim_config_text
from simulator.services import Mosquitto, Pcscd
from simulator.vcard import VirtualCard
from terminal.cardref import card_ref

pytestmark = pytest.mark.stack

STRANGER = UidCard(bytes.fromhex("04DEADBEEF0001"))


def relay_pulses(rig: Rig) -> list[tuple[bool, float]]:
    """(state, seconds since the previous change) of the relay pin, from the mock pin's history."""
    return [(bool(s.state), s.timestamp) for s in rig.pin("relay").states]


async def test_member_opens_relay_for_pulse_and_tx_reaches_broker(rig: Rig) -> None:
    person = rig.people[0]
    async with Observer(rig.broker.port).running() as seen:
        outcome = await rig.tap(UidCard(person.uid))
        assert outcome.decision.approved and outcome.decision.reason == "ok"
        assert outcome.lookup is not None and outcome.lookup.member.member_no == person.member_no
        await asyncio.sleep(rig.pulse_ms / 1000 + 0.3)
        history = relay_pulses(rig)
        assert [state for state, _ in history] == [False, True, False]
        held = history[2][1]  # MockPin records the time since the previous change
        assert abs(held - rig.pulse_ms / 1000) < 0.1, held
        assert rig.pin_history("green")[:2] == [False, True]
        tx = (await seen.wait_for("/tx"))[0]
    body = tx.json()
    assert tx.topic == "unionterm/v1/t/SIM-0001/tx"
    assert body["member_no"] == person.member_no and body["decision"] == "approve"
    assert body["card_ref"] == card_ref(rig.card_key, "uid", person.uid).hex()
    assert person.uid.hex() not in tx.payload.decode().lower()  # never the raw UID
    assert body["seq"] == outcome.record.seq
    assert rig.hardware.display.last_capture is not None


async def test_stranger_denied_relay_never_moves(rig: Rig) -> None:
    async with Observer(rig.broker.port).running() as seen:
        outcome = await rig.tap(STRANGER)
        tx = (await seen.wait_for("/tx"))[0].json()
    assert not outcome.decision.approved and outcome.decision.reason == "unknown_card"
    assert [state for state, _ in relay_pulses(rig)] == [False]
    assert rig.pin_history("red")[:2] == [False, True]
    assert tx["decision"] == "deny" and tx["reason"] == "unknown_card" and tx["member_no"] == ""


async def test_blocked_and_suspended_are_denied_with_reasons(rig: Rig) -> None:
    suspended = next(p for p in rig.people if p.status == "suspended")
    blocked = rig.people[1]
    rig.terminal.members.block(card_ref(rig.card_key, "uid", blocked.uid), "lost", 0)
    assert (await rig.tap(UidCard(suspended.uid))).decision.reason == "member_suspended"
    assert (await rig.tap(UidCard(blocked.uid))).decision.reason == "card_blocked"
    assert [state for state, _ in relay_pulses(rig)] == [False]


async def test_two_taps_at_once_are_both_served(rig: Rig) -> None:
    """A card on each slot at the same moment: the second waits in the queue, none is lost."""
    a, b = rig.people[0], rig.people[2]
    cards = [rig.card(UidCard(a.uid), slot=0), rig.card(UidCard(b.uid), slot=1)]
    for card in cards:
        card.place()
    try:
        for _ in range(200):
            if len(rig.outcomes) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        for card in cards:
            card.remove()
    await rig.wait_card_gone()
    served = sorted(o.lookup.member.member_no for o in rig.outcomes)
    assert served == sorted([a.member_no, b.member_no])
    assert [o.record.seq for o in rig.outcomes] == [1, 2]


async def test_pcscd_restart_mid_run_next_tap_served(rig: Rig, pcscd: Pcscd) -> None:
    assert (await rig.tap(UidCard(rig.people[0].uid))).decision.approved
    await asyncio.to_thread(pcscd.restart)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the reader went away and must come back by itself
        await asyncio.sleep(0.1)
        if rig.terminal.readers_online:
            break
    outcome = await rig.tap(UidCard(rig.people[2].uid), timeout=15)
    assert outcome.decision.approved and outcome.lookup.member.member_no == rig.people[2].member_no


async def test_broker_down_taps_journaled_then_forwarded(rig: Rig, broker: Mosquitto) -> None:
    people = [rig.people[0], rig.people[2], rig.people[3]]
    async with Observer(broker.port, persistent_id="backoffice-test").running() as seen:
        await seen.wait_for("/status")
    await asyncio.to_thread(broker.stop)
    for person in people:
        outcome = await rig.tap(UidCard(person.uid))
        assert outcome.decision.approved
    assert await rig.terminal.journal.backlog() == 3
    await asyncio.to_thread(broker.start)
    async with Observer(broker.port, persistent_id="backoffice-test").running() as seen:
        txs = await seen.wait_for("/tx", 3, timeout=20)
    bodies = [m.json() for m in txs]
    assert [b["member_no"] for b in bodies][-3:] == [p.member_no for p in people]
    assert sorted({b["seq"] for b in bodies}) == [1, 2, 3]
    for _ in range(100):
        if await rig.terminal.journal.backlog() == 0:
            break
        await asyncio.sleep(0.05)
    assert await rig.terminal.journal.backlog() == 0


async def test_stop_finishes_the_tap_in_flight(rig: Rig) -> None:
    """A stop request while a card is being read: the tap is still decided and journaled."""
    reading = asyncio.Event()
    real_identify = rig.terminal.identify

    async def slow_identify(channel, atr):
        reading.set()
        identity = await real_identify(channel, atr)
        await asyncio.sleep(0.5)
        return identity

    rig.terminal.identify = slow_identify
    card = rig.card(UidCard(rig.people[0].uid))
    card.place()
    try:
        await asyncio.wait_for(reading.wait(), 5)
        rig.terminal.request_stop()
        await asyncio.wait_for(rig._task, 10)
    finally:
        card.remove()
    await asyncio.sleep(0.5)  # the terminal is stopped: give pcscd one poll to see the card gone
    assert len(rig.outcomes) == 1 and rig.outcomes[0].decision.approved
    assert rig.terminal.journal.last_seq == 1


def test_sigterm_exits_cleanly(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> None:
    """The real process under SIGTERM: exit 0, journal closed after the last tap, no traceback."""
    if not pcscd.running:
        pcscd.start()
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "card.key").write_text("11" * 32)
    cfg = tmp_path / "terminal.toml"
    cfg.write_text(sim_config_text(state, "access", broker.port))
    proc = subprocess.Popen([sys.executable, "-m", "terminal.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "event=reader_state" in line and "online=True" in line:
                break
        card = VirtualCard(STRANGER, pcscd.card_port())
        card.place()
        for line in proc.stdout:
            lines.append(line)
            if "event=tap " in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=20)
        card.remove()
        time.sleep(0.5)  # one pcscd poll: the next test's terminal must not find this card still there
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "event=terminal_stopped last_seq=1" in output
    assert "Traceback" not in output
    assert os.path.exists(state / "journal.db")
