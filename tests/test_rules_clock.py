"""Trusted time, business days, calendar and the counters keyed by them."""

from __future__ import annotations

from datetime import date

import pytest
from rulekit import at

from terminal.exceptions import ConfigError
from terminal.rules.clock import (
    Calendar,
    ClockPolicy,
    ClockState,
    DayType,
    business_date,
    observe,
    parse_hms,
    rebase,
    unix_at,
)
from terminal.rules.counters import Bump, Tally, apply, period_tag, reverse, stale, tally

POLICY = ClockPolicy(floor_unix=at("2024-01-01 00:00:00"), ceiling_unix=at("2040-01-01 00:00:00"))
T0 = at("2024-05-07 00:10:00")


def test_normal_progress_follows_the_wall_clock() -> None:
    state, m1 = observe(ClockState(), T0, 100.0, POLICY)
    state, m2 = observe(state, T0 + 30, 130.0, POLICY)
    assert (m1.now, m2.now, m2.trusted, m2.wall_lag_s) == (T0, T0 + 30, True, 0)
    assert state.high_water == T0 + 30


def test_clock_stepped_back_an_hour_keeps_time_running_on_monotonic() -> None:
    state, _ = observe(ClockState(), T0, 100.0, POLICY)
    state, m = observe(state, T0 + 10 - 3600, 110.0, POLICY)
    assert m.now == T0 + 10 and m.trusted and m.wall_lag_s == 3600
    # the business day stays the 7th, although the wall clock says the 6th
    assert business_date(m.now) == date(2024, 5, 7)
    assert business_date(T0 + 10 - 3600) == date(2024, 5, 6)
    state, m = observe(state, T0 + 20 - 3600, 120.0, POLICY)
    assert m.now == T0 + 20


def test_after_restart_a_stepped_back_clock_holds_still_until_it_catches_up() -> None:
    state, _ = observe(ClockState(), T0, 100.0, POLICY)
    booted = state.after_boot()
    assert booted.anchor_mono is None
    _, m = observe(booted, T0 - 3600, 2.0, POLICY)
    assert m.now == T0 and m.trusted
    _, m = observe(booted, T0 + 5, 3.0, POLICY)
    assert m.now == T0 + 5


def test_boot_in_1970_is_untrusted_and_carries_the_policy() -> None:
    policy = ClockPolicy(floor_unix=POLICY.floor_unix, on_untrusted="count_only")
    booted = ClockState(high_water=T0)
    state, m = observe(booted, 12.0, 12.0, policy)
    assert state == booted
    assert (m.now, m.trusted, m.allows_value, m.count_only_fallback) == (T0, False, False, True)
    assert m.epoch_tag == f"u{T0}"
    _, fresh = observe(ClockState(), 12.0, 12.0, POLICY)
    assert (fresh.now, fresh.trusted, fresh.allows_value, fresh.count_only_fallback) == (0, False, False, False)


@pytest.mark.parametrize(("policy", "value"), [("deny_value", False), ("count_only", False), ("allow", True)])
def test_untrusted_policy_decides_value(policy: str, value: bool) -> None:
    untrusted = ClockPolicy(POLICY.floor_unix, on_untrusted=policy)  # type: ignore[arg-type]
    _, m = observe(ClockState(), 0.0, 1.0, untrusted)
    assert m.allows_value is value


def test_rtc_reset_to_1970_mid_run_is_bridged_by_the_monotonic_clock() -> None:
    state, _ = observe(ClockState(), T0, 100.0, POLICY)
    state, m = observe(state, 5.0, 160.0, POLICY)
    assert m.trusted and m.now == T0 + 60


def test_a_reading_the_kernel_does_not_vouch_for_is_not_believed() -> None:
    _, m = observe(ClockState(high_water=T0), T0 + 7200, 1.0, POLICY, synced=False)
    assert not m.trusted and m.now == T0
    state, _ = observe(ClockState(), T0, 1.0, POLICY)
    _, m = observe(state, T0 + 7200, 11.0, POLICY, synced=False)
    assert m.trusted and m.now == T0 + 10  # carried by the monotonic clock only


def test_reading_beyond_the_ceiling_is_not_time() -> None:
    _, m = observe(ClockState(high_water=T0), at("2099-01-01 00:00:00"), 1.0, POLICY)
    assert not m.trusted and m.now == T0


def test_rebase_is_the_only_way_back() -> None:
    ahead = at("2039-12-31 00:00:00")
    state, _ = observe(ClockState(), ahead, 1.0, POLICY)
    _, stuck = observe(state.after_boot(), T0, 1.0, POLICY)
    assert stuck.now == ahead
    state = rebase(T0, 2.0)
    _, m = observe(state, T0 + 1, 3.0, POLICY)
    assert m.now == T0 + 1


def test_business_day_may_start_after_midnight() -> None:
    assert business_date(at("2024-05-07 03:59:59"), 4 * 3600) == date(2024, 5, 6)
    assert business_date(at("2024-05-07 04:00:00"), 4 * 3600) == date(2024, 5, 7)


@pytest.mark.parametrize(
    ("text", "seconds"), [("00:00", 0), ("11:30:15", 41415), ("23:59:59", 86399), ("24:00:00", 86400)]
)
def test_parse_hms(text: str, seconds: int) -> None:
    assert parse_hms(text) == seconds


@pytest.mark.parametrize("text", ["7:00", "24:00:01", "12:60", "12:00:60", "noon", "12:00:00:00"])
def test_parse_hms_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_hms(text)


def test_unix_at_is_shanghai_local() -> None:
    assert unix_at(date(2024, 5, 6), 0) == 1714924800  # 2024-05-05T16:00:00Z
    assert unix_at(date(2024, 5, 6), 86400) == unix_at(date(2024, 5, 7), 0)


def test_calendar_day_types() -> None:
    cal = Calendar(holidays=("2024-05-01",), extra_workdays=("2024-05-11",))
    assert cal.day_type(date(2024, 5, 1)) is DayType.HOLIDAY  # a Wednesday
    assert cal.day_type(date(2024, 5, 11)) is DayType.WORKDAY  # a make-up Saturday
    assert cal.day_type(date(2024, 5, 12)) is DayType.RESTDAY
    assert cal.day_type(date(2024, 5, 13)) is DayType.WORKDAY
    with pytest.raises(ConfigError, match="holidays"):
        Calendar(holidays=("2024-13-01",))


def test_counters_apply_and_reverse() -> None:
    key = ("pos", "member", "M1", "d2024-05-06")
    first = Bump(key, 100, 1, 1000, 80)
    t = apply({}, [first, Bump(key, 200, 1, 500, 40)])
    assert t[key] == Tally(2, 1500, 120, 100, 200)
    assert t[key].to_pay_fen == 1380
    undone = apply(t, reverse([first], 300))
    assert undone[key] == Tally(1, 500, 40, 100, 300)
    assert tally({}, key) == Tally()


@pytest.mark.parametrize(
    ("period", "day", "tag"),
    [
        ("day", date(2024, 5, 6), "d2024-05-06"),
        ("week", date(2024, 12, 30), "w2025-W01"),  # ISO week belongs to next year
        ("month", date(2024, 2, 29), "m2024-02"),
        ("year", date(2024, 2, 29), "y2024"),
    ],
)
def test_period_tags(period: str, day: date, tag: str) -> None:
    assert period_tag(period, day) == tag


@pytest.mark.parametrize(
    ("tag", "today", "gone"),
    [
        ("d2024-05-06", date(2024, 5, 7), False),  # yesterday: a night window may still be open
        ("d2024-05-05", date(2024, 5, 7), True),
        ("m2024-04", date(2024, 5, 1), False),
        ("m2024-04", date(2024, 5, 2), True),
        ("w2024-W18", date(2024, 5, 6), False),
        ("w2024-W18", date(2024, 5, 7), True),
        ("y2023", date(2024, 1, 2), True),
        ("u1714924800", date(2024, 5, 7), True),
    ],
)
def test_stale(tag: str, today: date, gone: bool) -> None:
    assert stale(("x", tag), today) is gone


def test_the_kernel_sync_state_is_asked_at_most_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tap reads the wall clock twice; the NTP flag behind it is reused for SYNC_STATE_TTL_S."""
    from terminal import timesource

    answers = iter([False, True])
    calls: list[float] = []
    mono = [1000.0]

    def asked() -> bool:
        calls.append(mono[0])
        return next(answers)

    monkeypatch.setattr(timesource, "kernel_synchronised", asked)
    monkeypatch.setattr(timesource.time, "monotonic", lambda: mono[0])
    monkeypatch.setattr(timesource, "_sync_seen", (float("-inf"), None))
    assert [timesource.wall_clock()[1] for _ in range(3)] == [False] * 3  # unsynchronised, asked once
    mono[0] += timesource.SYNC_STATE_TTL_S
    assert timesource.wall_clock()[1] is True  # a second later the kernel is asked again
    assert calls == [1000.0, 1000.0 + timesource.SYNC_STATE_TTL_S]
