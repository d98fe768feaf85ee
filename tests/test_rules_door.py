"""Doors: profiles, groups, anti-passback, PIN and duress, first card,
visitors, lockdown / free passage, lock output and the contact monitor."""

from __future__ import annotations

import tomllib
from dataclasses import replace

import pytest
from rulekit import PIN, at, member, moment

from terminal.configschema import load_section
from terminal.exceptions import ConfigError
from terminal.model import Member
from terminal.rules.clock import Calendar, Moment
from terminal.rules.counters import apply
from terminal.rules.door import (
    DoorConfig,
    DoorEvent,
    DoorMode,
    DoorMonitor,
    DoorOutcome,
    DoorRequest,
    DoorState,
    Passage,
    TimeProfile,
    decide_door,
    lock_released,
    relay_energised,
    step,
)
from terminal.rules.pin import duress_variant

WORKDAYS = {d: (("08:00", "18:00"),) for d in ("mon", "tue", "wed", "thu", "fri")}
CFG = DoorConfig(
    door_id="d1",
    grants={"office": "office", "security": "always", "evening": "late"},
    profiles={
        "office": TimeProfile(WORKDAYS),
        "late": TimeProfile({"sun": (("18:00", "24:00"),), "holiday": (("09:00", "12:00"),)}),
    },
    calendar=Calendar(holidays=("2024-05-01",), extra_workdays=("2024-05-11",)),
)
MON = "2024-05-06"


def door(when: str | Moment, cfg: DoorConfig = CFG, who: Member | None = None, state: DoorState = DoorState(),
         tallies: dict | None = None, passages: dict | None = None, pin: str | None = None) -> DoorOutcome:  # fmt: skip
    m = moment(when) if isinstance(when, str) else when
    return decide_door(cfg, state, who or member(), DoorRequest(pin), m, tallies or {}, passages or {})


@pytest.mark.parametrize(
    ("when", "groups", "reason"),
    [
        (f"{MON} 07:59:59", ("office",), "outside_hours"),
        (f"{MON} 08:00:00", ("office",), "ok"),
        (f"{MON} 17:59:59", ("office",), "ok"),
        (f"{MON} 18:00:00", ("office",), "outside_hours"),
        ("2024-05-11 09:00:00", ("office",), "ok"),  # make-up Saturday runs the Monday intervals
        ("2024-05-12 09:00:00", ("office",), "outside_hours"),  # an ordinary Sunday
        ("2024-05-01 10:00:00", ("office",), "outside_hours"),  # Labour Day (a Wednesday)
        ("2024-05-01 10:00:00", ("evening",), "ok"),  # holiday intervals replace the weekday ones
        ("2024-05-12 23:59:59", ("evening",), "ok"),  # "24:00" ends at midnight
        ("2024-05-13 00:00:00", ("evening",), "outside_hours"),
        ("2024-05-01 03:00:00", ("security",), "ok"),  # the built-in always profile
        (f"{MON} 12:00:00", ("canteen",), "no_access"),
        (f"{MON} 12:00:00", (), "no_access"),
        (f"{MON} 07:00:00", ("office", "security"), "ok"),  # any granting group will do
    ],
)
def test_time_profiles_and_groups(when: str, groups: tuple[str, ...], reason: str) -> None:
    d = door(when, who=member(access_groups=groups)).decision
    assert d.reason == reason
    assert d.grants_value is d.approved is (reason == "ok")


def test_untrusted_time_believes_only_the_always_profile() -> None:
    untrusted = Moment(at(f"{MON} 12:00:00"), trusted=False)
    assert door(untrusted).decision.reason == "outside_hours"
    assert door(untrusted, who=member(access_groups=("security",))).decision.reason == "ok"
    assert door(replace(untrusted, on_untrusted="allow")).decision.reason == "ok"


APB = replace(CFG, passback="hard", apb_area="hall", apb_reset_s=3600)
EXIT = replace(APB, side="out")


@pytest.mark.parametrize(
    ("cfg", "last", "reason", "flagged"),
    [
        (APB, None, "ok", False),
        (APB, Passage("in", at(f"{MON} 09:00:00")), "passback", False),
        (APB, Passage("in", at(f"{MON} 08:00:01")), "passback", False),  # 3599 s: not yet forgiven
        (APB, Passage("in", at(f"{MON} 08:00:00")), "ok", False),  # 3600 s: forgiven
        (APB, Passage("out", at(f"{MON} 09:00:00")), "ok", False),
        (EXIT, Passage("out", at(f"{MON} 09:00:00")), "passback", False),
        (replace(APB, passback="soft"), Passage("in", at(f"{MON} 09:00:00")), "ok", True),
        (replace(APB, apb_reset_s=0), Passage("in", at("2024-01-01 09:00:00")), "passback", False),
    ],
)
def test_anti_passback(cfg: DoorConfig, last: Passage | None, reason: str, flagged: bool) -> None:
    out = door(f"{MON} 09:00:00", cfg, passages={"M0001": last} if last else {})
    assert out.decision.reason == reason
    assert out.decision.detail.get("passback", False) is flagged
    assert out.passage == (Passage(cfg.side, at(f"{MON} 09:00:00")) if reason == "ok" else None)


def test_no_passage_recorded_without_anti_passback() -> None:
    assert door(f"{MON} 09:00:00").passage is None


PIN_DOOR = replace(CFG, pin_required=True, duress=True, card_only_profile="office")


@pytest.mark.parametrize(
    ("cfg", "when", "pin", "reason", "alarm"),
    [
        (PIN_DOOR, f"{MON} 09:00:00", None, "ok", None),  # office hours: card only
        (PIN_DOOR, "2024-05-12 09:00:00", None, "pin_required", None),
        (PIN_DOOR, "2024-05-12 09:00:00", PIN, "ok", None),
        (PIN_DOOR, "2024-05-12 09:00:00", duress_variant(PIN), "ok", "duress"),
        (PIN_DOOR, "2024-05-12 09:00:00", "1357", "wrong_pin", None),
        (replace(PIN_DOOR, duress=False), "2024-05-12 09:00:00", duress_variant(PIN), "wrong_pin", None),
    ],
)
def test_card_and_pin_with_duress(cfg: DoorConfig, when: str, pin: str | None, reason: str, alarm: str | None) -> None:
    d = door(when, cfg, member(access_groups=("security",)), pin=pin).decision
    assert (d.reason, d.detail.get("silent_alarm")) == (reason, alarm)


def test_pin_tries_lock_the_door_pin() -> None:
    who = member(access_groups=("security",))
    tallies: dict = {}
    for _ in range(3):
        tallies = apply(tallies, door("2024-05-12 09:00:00", PIN_DOOR, who, tallies=tallies, pin="0000").bumps)
    assert door("2024-05-12 09:00:00", PIN_DOOR, who, tallies=tallies, pin=PIN).decision.reason == "pin_locked"


FIRST = replace(CFG, first_card_groups=("managers",), first_card_profile="office")


def test_first_card_unlocks_until_the_profile_interval_ends() -> None:
    manager = member(member_no="B1", access_groups=("office", "managers"))
    out = door(f"{MON} 08:30:00", FIRST, manager)
    assert out.decision.detail["first_card"] is True
    assert out.state == DoorState(free_until=at(f"{MON} 18:00:00"))
    assert door(f"{MON} 08:00:00", FIRST).state is None  # an ordinary member does not unlock
    assert door(f"{MON} 07:59:00", FIRST, member(access_groups=("security", "managers"))).state is None
    stranger = member(member_no="X", access_groups=())
    assert door(f"{MON} 12:00:00", FIRST, stranger, out.state).decision.reason == "door_free"
    assert door(f"{MON} 18:00:00", FIRST, stranger, out.state).decision.reason == "no_access"
    mon = DoorMonitor()
    assert lock_released(FIRST, out.state, mon, at(f"{MON} 17:59:59"))
    assert not lock_released(FIRST, out.state, mon, at(f"{MON} 18:00:00"))


def test_visitors_need_a_bounded_window_and_never_unlock() -> None:
    open_ended = member(role="visitor", access_groups=("office", "managers"))
    assert door(f"{MON} 09:00:00", FIRST, open_ended).decision.reason == "visitor_unbounded"
    bounded = replace(open_ended, valid_from=at(f"{MON} 08:00:00"), valid_until=at(f"{MON} 17:00:00"))
    out = door(f"{MON} 09:00:00", FIRST, bounded)
    assert out.decision.reason == "ok" and out.state is None


@pytest.mark.parametrize(
    ("mode", "who", "reason"),
    [
        (DoorMode.LOCKDOWN, member(), "lockdown"),
        (DoorMode.LOCKDOWN, member(access_groups=("guards",)), "ok"),
        (DoorMode.LOCKDOWN, member(role="visitor", valid_until=1, access_groups=("guards",)), "lockdown"),
        (DoorMode.FREE_PASSAGE, member(access_groups=()), "free_passage"),
    ],
)
def test_lockdown_and_free_passage(mode: DoorMode, who: Member, reason: str) -> None:
    cfg = replace(CFG, lockdown_groups=("guards",))
    assert door(f"{MON} 09:00:00", cfg, who, DoorState(mode)).decision.reason == reason


@pytest.mark.parametrize(
    ("failure_mode", "mode", "released_until", "fault", "released", "energised"),
    [
        ("fail_secure", DoorMode.NORMAL, 0.0, False, False, False),
        ("fail_secure", DoorMode.NORMAL, 105.0, False, True, True),
        ("fail_safe", DoorMode.NORMAL, 0.0, False, False, True),  # a maglock is held shut by power
        ("fail_safe", DoorMode.NORMAL, 105.0, False, True, False),
        ("fail_safe", DoorMode.NORMAL, 0.0, True, True, False),  # fault: fail safe opens
        ("fail_secure", DoorMode.FREE_PASSAGE, 0.0, True, False, False),  # fault: fail secure stays shut
        ("fail_secure", DoorMode.FREE_PASSAGE, 0.0, False, True, True),
        ("fail_secure", DoorMode.LOCKDOWN, 105.0, False, True, True),  # an override grant
    ],
)
def test_lock_output(
    failure_mode: str, mode: DoorMode, released_until: float, fault: bool, released: bool, energised: bool
) -> None:
    cfg = replace(CFG, failure_mode=failure_mode)  # type: ignore[arg-type]
    got = lock_released(cfg, DoorState(mode), DoorMonitor(released_until=released_until), 100.0, fault)
    assert got is released
    assert relay_energised(got, cfg.failure_mode) is energised


def run(events: list[tuple[DoorEvent, float]], free: bool = False) -> list[str]:
    mon, notices = DoorMonitor(), []
    for event, t in events:
        mon, out = step(mon, event, t, held_open_s=30, free=free, until=t + 5)
        notices += [f"{t:g}:{n}" for n in out]
    return notices


def test_monitor_authorised_opening_then_held_open_then_cleared() -> None:
    events = [(DoorEvent.RELEASE, 0), (DoorEvent.OPENED, 2), (DoorEvent.TICK, 31.9), (DoorEvent.TICK, 32),
              (DoorEvent.TICK, 40), (DoorEvent.CLOSED, 50)]  # fmt: skip
    assert run(events) == ["32:held_open", "50:alarm_cleared"]


def test_monitor_forced_open_and_expired_release() -> None:
    assert run([(DoorEvent.OPENED, 1), (DoorEvent.TICK, 60), (DoorEvent.CLOSED, 70)]) == [
        "1:forced_open", "70:alarm_cleared",
    ]  # fmt: skip
    assert run([(DoorEvent.RELEASE, 0), (DoorEvent.OPENED, 5)]) == ["5:forced_open"]  # release ran out at 5
    assert run([(DoorEvent.RELEASE, 0), (DoorEvent.OPENED, 4.9), (DoorEvent.CLOSED, 6)]) == []


def test_monitor_closing_relocks_so_one_grant_opens_once() -> None:
    events = [(DoorEvent.RELEASE, 0), (DoorEvent.OPENED, 1), (DoorEvent.CLOSED, 2), (DoorEvent.OPENED, 3)]
    assert run(events) == ["3:forced_open"]


def test_monitor_free_door_never_alarms() -> None:
    assert run([(DoorEvent.OPENED, 1), (DoorEvent.TICK, 500), (DoorEvent.CLOSED, 600)], free=True) == []


def test_config_from_toml_and_validation() -> None:
    table = tomllib.loads(
        """
        door_id = "d1"
        passback = "hard"
        side = "out"
        failure_mode = "fail_safe"
        [grants]
        office = "office"
        [profiles.office.intervals]
        mon = [["08:00", "12:00"], ["13:00", "18:00"]]
        holiday = []
        """
    )
    cfg = load_section(DoorConfig, table, "terminal.toml", "door")
    assert cfg.profiles["office"].active_until(cfg.calendar, at(f"{MON} 13:00:00")) == at(f"{MON} 18:00:00")
    assert cfg.profiles["office"].active_until(cfg.calendar, at(f"{MON} 12:30:00")) is None
    with pytest.raises(ConfigError, match="unknown profile"):
        DoorConfig("d", grants={"g": "nights"})
    with pytest.raises(ConfigError, match="mon..sun"):
        TimeProfile({"monday": ()})
    with pytest.raises(ConfigError, match="end later"):
        TimeProfile({"mon": (("18:00", "08:00"),)})
