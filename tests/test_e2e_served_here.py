"""A tap decided and journaled on the thread that read its card, through real pcscd + vpcd.

The PC/SC monitor thread serves a tap itself while the loop is idle (it holds
the loop's StateGuard meanwhile), and leaves it to the loop's decision stage
otherwise; either way the decision, the journal and what reaches the back
office are the same.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from rulekit import at
from test_e2e_modes import mode_rig
from test_journal import entry
from test_modes_canteen import canteen
from txkit import running_rig

from simulator.cards.uid import UidCard
from simulator.demo import SimClock
from simulator.observer import Observer
from simulator.rig import Rig
from simulator.services import Mosquitto, Pcscd
from terminal import app
from terminal.eventloop import guard_of
from terminal.exceptions import StorageError
from terminal.storage import StorageState

pytestmark = pytest.mark.stack


async def test_an_idle_terminal_serves_the_union_card_on_the_reader_thread(rig: Rig) -> None:
    person = rig.people[0]
    async with Observer(rig.broker.port).running() as seen:
        outcome = await rig.tap(rig.union_card(person))
        tx = (await seen.wait_for("/tx"))[0].json()
    here = outcome.tap.here
    assert here is not None and here.record is not None and outcome.decision.approved
    assert outcome.record is here.record and outcome.committed_at == here.committed_at
    assert outcome.tap.detected_at < here.decided_at <= here.committed_at
    assert (tx["seq"], tx["member_no"], tx["profile"]) == (here.record.seq, person.member_no, "union")
    assert rig.terminal.journal.last_seq == here.record.seq
    await asyncio.sleep(rig.pulse_ms / 1000 + 0.3)
    assert [bool(s.state) for s in rig.pin("relay").states] == [False, True, False]  # act ran on the loop


async def test_a_tap_while_the_loop_is_held_is_decided_on_the_loop(rig: Rig) -> None:
    """The reader waits GUARD_WAIT_S for the loop to be between callbacks, then hands the tap over."""
    guard = guard_of(asyncio.get_running_loop())
    assert guard is not None
    held = threading.Event()

    def hold_the_loop() -> None:
        guard.acquire()
        held.set()
        threading.Event().wait(0.6 + app.GUARD_WAIT_S)  # past the card's detection (0.4 s poll) and wait
        guard.release()

    person = rig.people[1]
    holder = threading.Thread(target=hold_the_loop)
    tap = asyncio.ensure_future(rig.tap(UidCard(person.uid)))
    await asyncio.sleep(0)  # the card is placed
    holder.start()
    await asyncio.to_thread(held.wait, 2.0)
    outcome = await tap
    holder.join()
    assert outcome.tap.here is None  # the loop's decision stage served it
    assert outcome.decision.approved and outcome.lookup.member.member_no == person.member_no
    assert rig.terminal.journal.last_seq == outcome.record.seq == 1


async def test_counters_changed_on_the_reader_thread_decide_the_next_tap(
        tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> None:
    clock = SimClock(at("2026-12-07 11:58:00"))
    async with mode_rig(tmp_path, pcscd, broker, "canteen", canteen(), clock) as rig:
        person = rig.people[0]
        lunch = await rig.tap(rig.union_card(person))
        clock.step(60)
        second = await rig.tap(rig.union_card(person))
        other = await rig.tap(rig.union_card(rig.people[1]))
    assert [o.tap.here is not None for o in (lunch, second, other)] == [True, True, True]
    assert lunch.decision.approved and second.decision.reason == "already_served" and other.decision.approved
    assert [o.record.seq for o in (lunch, second, other)] == [1, 2, 3]


async def test_a_commit_refused_on_the_reader_thread_grants_nothing_and_serving_goes_on(
        tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> None:
    """A full journal refuses the door's record in the reader thread: the loop denies, the relay stays."""
    async with running_rig(tmp_path / "rig", pcscd, broker, pulse_ms=100,
                           journal={"db": "journal.db", "capacity": 100}) as rig:
        await rig.terminal.journal.append_batch(entry(i) for i in range(100))
        member = rig.people[0]
        refused = await rig.tap(rig.union_card(member))
        here = refused.tap.here
        assert here is not None and here.record is None and isinstance(here.result, StorageError)
        assert (refused.decision.approved, refused.decision.reason, refused.record) == (
            False, StorageState.JOURNAL_FULL.value, None)
        assert rig.terminal.journal.last_seq == 100
        stranger = await rig.tap(UidCard(bytes.fromhex("04FFFFFFFF0001")))  # a denial grants nothing: kept
        assert stranger.tap.here is not None and stranger.decision.reason == "unknown_card"
        assert stranger.record is not None and stranger.record.seq == 101
        await asyncio.sleep(rig.pulse_ms / 1000 + 0.2)
        assert True not in rig.pin_history("relay")  # the door never opened
