"""The door in the running terminal: the relay by failure mode, the contact monitor's alarms
journaled, the exit button, lockdown and free passage, a supervisor's card, duress, anti-passback."""

from __future__ import annotations

import asyncio
from pathlib import Path

from modekit import Bench, bench, journal_bodies, wait_until
from rulekit import PIN, PIN_HASH, at

from simulator.demo import SimClock
from terminal.rules.pin import duress_variant
from terminal.rules.door import DoorMode

MONDAY_NOON = at("2026-12-07 12:00:00")

DOOR = """
[door]
door_id = "GATE-1"
release_s = 1
held_open_s = 1
failure_mode = "{failure}"
grants = {{ "main-gate" = "always", "night-shift" = "nights" }}
lockdown_groups = ["security"]
passback = "{passback}"
side = "in"
pin_required = {pin}
duress = true
profiles.nights.intervals = {{ mon = [["22:00", "24:00"]] }}
"""


def door(failure: str = "fail_secure", passback: str = "off", pin: bool = False) -> str:
    return DOOR.format(failure=failure, passback=passback, pin=str(pin).lower())


def alarms(b: Bench) -> list[str]:
    return [r["reason"] for r in journal_bodies(b) if r["kind"] == "alarm"]


async def test_member_opens_then_door_held_open_into_an_alarm(tmp_path: Path) -> None:
    async with bench(tmp_path, "access", door(), clock=SimClock(MONDAY_NOON)) as b:
        b.pin("door").drive_low()  # the door is shut
        opened = await b.tap(b.people[0])
        assert opened.decision.approved and b.history("relay") == [False, True]  # fail-secure: power opens
        b.pin("door").drive_high()  # pushed open within the release
        await asyncio.sleep(0.3)
        assert alarms(b) == []
        await wait_until(lambda: alarms(b) == ["held_open"], 3)
        assert b.screen.headline == "报警" and b.screen.lines[0] == "门未关闭" and b.screen.alert
        assert True in b.history("buzzer")
        b.pin("door").drive_low()
        await wait_until(lambda: alarms(b) == ["held_open", "alarm_cleared"])
        assert b.history("relay")[-1] is False  # closed: relocked
        stranger = await b.tap(bytes.fromhex("04C0FFEE123456"))
        assert stranger.decision.reason == "unknown_card" and b.history("relay") == [False, True, False]
        outside = b.people[1]
        b.upsert(outside, access_groups=["night-shift"])
        assert (await b.tap(outside)).decision.reason == "outside_hours"
        b.upsert(outside, access_groups=["canteen"])
        assert (await b.tap(outside)).decision.reason == "no_access"


async def test_forced_open_and_exit_button(tmp_path: Path) -> None:
    async with bench(tmp_path, "access", door(), clock=SimClock(MONDAY_NOON)) as b:
        b.pin("door").drive_low()
        b.pin("door").drive_high()  # nobody released it
        await wait_until(lambda: alarms(b) == ["forced_open"])
        b.pin("door").drive_low()
        await wait_until(lambda: alarms(b) == ["forced_open", "alarm_cleared"])
        b.pin("exit").drive_low()  # pressed: the door releases for the member going out
        await wait_until(lambda: b.history("relay")[-1:] == [True])
        b.pin("exit").drive_high()
        b.pin("door").drive_high()
        await asyncio.sleep(0.2)
        assert alarms(b) == ["forced_open", "alarm_cleared"]  # an exit is not a forced door
        kinds = [(r["kind"], r["reason"]) for r in journal_bodies(b)]
        assert ("door", "exit_button") in kinds


async def test_fail_safe_lock_is_held_by_power_and_opens_when_stopped(tmp_path: Path) -> None:
    async with bench(tmp_path, "access", door(failure="fail_safe"), clock=SimClock(MONDAY_NOON)) as b:
        assert b.history("relay") == [False, True]  # locked means powered
        await b.tap(b.people[0])
        await wait_until(lambda: b.history("relay") == [False, True, False, True], 3)  # released, relocked
        factory = b.factory
    assert [bool(s.state) for s in factory.pin(17).states][-1] is False  # stopped: power off, door free
    async with bench(tmp_path / "secure", "access", door(), clock=SimClock(MONDAY_NOON)) as b:
        assert b.history("relay") == [False]
        factory = b.factory
    assert [bool(s.state) for s in factory.pin(17).states] == [False]  # fail-secure stays locked


async def test_lockdown_by_command_and_by_supervisor_card(tmp_path: Path) -> None:
    async with bench(tmp_path, "access", door(), clock=SimClock(MONDAY_NOON), keypad=True) as b:
        assert b.keypad is not None
        guard, supervisor, member = b.people[0], b.people[1], b.people[2]
        b.upsert(guard, access_groups=["security"])
        b.upsert(supervisor, role="supervisor")
        b.terminal.set_door_mode(DoorMode.LOCKDOWN)  # what a signed "lockdown" command calls
        assert b.screen.headline == "封闭管理中"
        assert (await b.tap(member)).decision.reason == "lockdown"
        assert (await b.tap(guard)).decision.detail["lockdown_override"] is True
        await b.keypad.type("B")  # free passage, then the supervisor's card confirms
        await wait_until(lambda: b.screen.headline == "请刷主管卡")
        assert (await b.tap(member)).decision.reason == "not_supervisor"
        assert b.terminal.door_mode is DoorMode.LOCKDOWN
        await b.keypad.type("B")
        await wait_until(lambda: b.screen.headline == "请刷主管卡")
        changed = await b.tap(supervisor)
        assert changed.decision.reason == "free_passage" and changed.record.fields["kind"] == "door_mode"
        assert b.terminal.door_mode is DoorMode.FREE_PASSAGE
        await wait_until(lambda: b.history("relay")[-1:] == [True])  # held open for everyone


async def test_duress_pin_opens_and_raises_a_silent_alarm(tmp_path: Path) -> None:
    async with bench(tmp_path, "access", door(pin=True), clock=SimClock(MONDAY_NOON), keypad=True) as b:
        assert b.keypad is not None
        member = b.people[0]
        b.upsert(member, pin_hash=PIN_HASH)
        tapped = asyncio.create_task(b.tap(member, timeout=20))
        await wait_until(lambda: b.screen.headline == "请输入密码")
        await b.keypad.type(duress_variant(PIN) + "#")
        outcome = await tapped
        assert outcome.decision.approved and outcome.decision.detail["silent_alarm"] == "duress"
        await wait_until(lambda: alarms(b) == ["duress"])
        await asyncio.sleep(0.3)
        assert b.history("relay")[:2] == [False, True]
        assert b.history("buzzer") == [False, True, False]  # the approval's one short beep, no alarm sound


async def test_anti_passback_survives_a_restart(tmp_path: Path) -> None:
    clock = SimClock(MONDAY_NOON)
    async with bench(tmp_path, "access", door(passback="hard"), clock=clock) as b:
        assert (await b.tap(b.people[0])).decision.approved
        assert (await b.tap(b.people[0])).decision.reason == "passback"
    async with bench(tmp_path, "access", door(passback="hard"), clock=clock, restart_of=b) as again:
        assert (await again.tap(again.people[0])).decision.reason == "passback"
        assert (await again.tap(again.people[1])).decision.approved
