"""Canteen meals: windows to the second, the night window across midnight,
holidays, quotas, the three modes, soft spending caps with PIN, summaries."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import date

import pytest
from rulekit import PIN, at, member, moment

from terminal.configschema import load_section
from terminal.exceptions import ConfigError
from terminal.model import Member, Verdict
from terminal.rules.canteen import (
    CanteenConfig,
    MealPrice,
    MealRequest,
    MealWindow,
    decide_meal,
    window_summary,
    windows_closed,
)
from terminal.rules.clock import Calendar, ClockPolicy, ClockState, Moment, observe
from terminal.rules.counters import Outcome, apply

STAFF_AND_GUESTS = {"staff": MealPrice(1500, 1000), "*": MealPrice(1800, 0)}
CFG = CanteenConfig(
    canteen_id="c1",
    windows=(
        MealWindow("breakfast", "06:30:00", "09:00:00", {"staff": MealPrice(500, 800)}, days=("workday", "restday")),
        MealWindow("lunch", "11:00:00", "13:30:00", STAFF_AND_GUESTS),
        MealWindow("night", "22:00:00", "02:00:00", {"staff": MealPrice(1200, 1200)}, days=("workday",)),
    ),
    calendar=Calendar(holidays=("2024-05-01", "2024-05-02")),
)


def meal(when: str | Moment, cfg: CanteenConfig = CFG, tallies: dict | None = None, who: Member | None = None,
         **kw: object) -> Outcome:  # fmt: skip
    m = moment(when) if isinstance(when, str) else when
    return decide_meal(cfg, who or member(), MealRequest(**kw), m, tallies or {})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("when", "reason", "window"),
    [
        ("2024-05-06 10:59:59", "outside_hours", None),
        ("2024-05-06 11:00:00", "ok", "lunch"),
        ("2024-05-06 13:29:59", "ok", "lunch"),
        ("2024-05-06 13:30:00", "outside_hours", None),
        ("2024-05-06 21:59:59", "outside_hours", None),
        ("2024-05-06 22:00:00", "ok", "night"),
        ("2024-05-07 00:00:00", "ok", "night"),
        ("2024-05-07 01:59:59", "ok", "night"),
        ("2024-05-07 02:00:00", "outside_hours", None),
        ("2024-05-11 07:00:00", "ok", "breakfast"),  # Saturday: a rest day, breakfast still served
        ("2024-05-01 07:00:00", "closed_today", "breakfast"),  # Labour Day
        ("2024-05-01 12:00:00", "ok", "lunch"),  # lunch serves holidays too
        ("2024-05-01 01:00:00", "ok", "night"),  # opened on 30 April, a workday
        ("2024-05-01 22:00:00", "closed_today", "night"),  # opens on a holiday
        ("2024-05-03 00:30:00", "closed_today", "night"),  # opened on 2 May, a holiday
    ],
)
def test_windows_to_the_second(when: str, reason: str, window: str | None) -> None:
    d = meal(when).decision
    assert d.reason == reason
    assert d.detail.get("window") == window


@pytest.mark.parametrize(
    ("group", "reason", "amount", "subsidy"),
    [("staff", "ok", 1500, 1000), ("visitors", "ok", 1800, 0)],
)
def test_fixed_prices_by_canteen_group(group: str, reason: str, amount: int, subsidy: int) -> None:
    d = meal("2024-05-06 12:00:00", who=member(canteen_group=group)).decision
    assert (d.reason, d.amount_fen, d.subsidy_fen, d.to_pay_fen, d.grants_value) == (
        reason, amount, subsidy, amount - subsidy, True,
    )  # fmt: skip


def test_group_without_a_price_is_not_served_and_allowance_never_exceeds_price() -> None:
    d = meal("2024-05-06 07:00:00", who=member(canteen_group="retirees")).decision
    assert (d.reason, d.detail["group"]) == ("not_eligible", "retirees")
    d = meal("2024-05-06 07:00:00").decision  # breakfast: allowance 800 on a 500 meal
    assert (d.amount_fen, d.subsidy_fen, d.to_pay_fen) == (500, 500, 0)


def test_second_tap_is_already_served_with_the_time_of_the_first() -> None:
    first = meal("2024-05-06 12:01:02")
    tallies = apply({}, first.bumps)
    d = meal("2024-05-06 13:29:59", tallies=tallies).decision
    assert (d.reason, d.detail["first_at"], d.detail["window"]) == ("already_served", "12:01:02", "lunch")
    assert d.detail["first_at_unix"] == at("2024-05-06 12:01:02")
    assert meal("2024-05-07 11:00:00", tallies=tallies).decision.reason == "ok"  # a new day


def test_night_window_quota_spans_midnight() -> None:
    tallies = apply({}, meal("2024-05-06 23:00:00").bumps)
    d = meal("2024-05-07 00:30:00", tallies=tallies).decision
    assert (d.reason, d.detail["first_at"]) == ("already_served", "23:00:00")
    assert meal("2024-05-07 22:00:00", tallies=tallies).decision.reason == "ok"


def test_quota_of_two_and_running_count() -> None:
    cfg = replace(CFG, windows=(replace(CFG.windows[1], quota=2),))
    tallies: dict = {}
    seen = []
    for who in ("A", "A", "A", "B"):
        out = meal("2024-05-06 12:00:00", cfg, tallies, member(member_no=who))
        d = out.decision
        seen.append((d.reason, d.detail.get("meal_no"), d.detail.get("served_in_window")))
        tallies = apply(tallies, out.bumps)
    assert seen == [("ok", 1, 1), ("ok", 2, 2), ("already_served", None, None), ("ok", 1, 3)]


@pytest.mark.parametrize(
    ("amount", "reason", "subsidy", "to_pay"),
    [(800, "ok", 800, 0), (1000, "ok", 1000, 0), (1001, "ok", 1000, 1), (0, "bad_amount", 0, 0),
     (100_000, "ok", 1000, 99_000), (100_001, "bad_amount", 0, 0)],
)  # fmt: skip
def test_keyed_amount_mode(amount: int, reason: str, subsidy: int, to_pay: int) -> None:
    d = meal("2024-05-06 12:00:00", replace(CFG, mode="keyed"), amount_fen=amount).decision
    assert (d.reason, d.subsidy_fen, d.to_pay_fen) == (reason, subsidy, to_pay)


def test_count_only_mode_has_no_money_but_a_quota() -> None:
    cfg = replace(CFG, mode="count")
    out = meal("2024-05-06 12:00:00", cfg)
    d = out.decision
    assert (d.verdict, d.amount_fen, d.subsidy_fen, d.to_pay_fen, d.grants_value) == (Verdict.APPROVE, 0, 0, 0, True)
    assert meal("2024-05-06 12:10:00", cfg, apply({}, out.bumps)).decision.reason == "already_served"


def test_spending_above_the_window_and_day_caps_needs_the_pin() -> None:
    lunch = replace(CFG.windows[1], quota=5, pin_above_fen=1000, prices={"staff": MealPrice(0, 0)})
    dinner = MealWindow("dinner", "17:00:00", "19:00:00", {"staff": MealPrice(0, 0)}, quota=5)
    cfg = replace(CFG, mode="keyed", windows=(lunch, dinner), pin_above_day_fen=1500)
    tallies: dict = {}
    steps = [("12:00:00", 600, None, "ok"), ("12:01:00", 400, None, "ok"),  # exactly 1000 in the window
             ("12:02:00", 1, None, "pin_required"), ("12:02:05", 1, PIN, "ok"),
             ("18:00:00", 499, None, "ok"),  # day total 1500: exactly at the day cap
             ("18:01:00", 1, None, "pin_required"), ("18:01:05", 1, "0000", "wrong_pin")]  # fmt: skip
    for clock, amount, pin, reason in steps:
        out = meal(f"2024-05-06 {clock}", cfg, tallies, amount_fen=amount, pin=pin)
        assert out.decision.reason == reason, clock
        tallies = apply(tallies, out.bumps)


def test_untrusted_clock_policies() -> None:
    boot = Moment(at("2024-05-06 08:00:00"), trusted=False)
    assert meal(boot).decision.reason == "clock_untrusted"
    assert meal(boot, replace(CFG, mode="count")).decision.reason == "clock_untrusted"  # a meal is value
    counting = replace(boot, on_untrusted="count_only")
    for cfg in (CFG, replace(CFG, mode="count")):
        out = meal(counting, cfg)
        d = out.decision
        assert (d.reason, d.amount_fen, d.grants_value, d.detail["clock"]) == ("ok", 0, True, "untrusted")
        again = meal(counting, cfg, apply({}, out.bumps)).decision
        assert again.reason == "already_served"
    allowed = replace(boot, on_untrusted="allow", now=at("2024-05-06 12:00:00"))
    assert meal(allowed).decision.amount_fen == 1500


def test_clock_stepped_back_never_serves_a_second_meal() -> None:
    policy = ClockPolicy(floor_unix=at("2024-01-01 00:00:00"), on_untrusted="count_only")
    state, m = observe(ClockState(), at("2024-05-07 12:00:00"), 10.0, policy)
    tallies = apply({}, meal(m).bumps)
    state, m = observe(state, at("2024-05-07 11:00:00"), 20.0, policy)  # an hour back
    assert meal(m, tallies=tallies).decision.reason == "already_served"
    booted = state.after_boot()
    _, m = observe(booted, at("2024-05-06 12:00:00"), 1.0, policy)  # a day back, after restart
    assert meal(m, tallies=tallies).decision.reason == "already_served"
    _, m = observe(booted, 0.0, 1.0, policy)  # 1970 boot: counted once, never a priced meal
    out = meal(m, tallies=tallies)
    assert (out.decision.reason, out.decision.amount_fen, out.decision.detail["count_only"]) == ("ok", 0, True)


def test_window_summary_and_which_windows_closed() -> None:
    tallies: dict = {}
    for who, group in (("A", "staff"), ("B", "staff"), ("C", "visitors")):
        tallies = apply(tallies, meal("2024-05-06 12:00:00", tallies=tallies, who=member(member_no=who,
                                                                                        canteen_group=group)).bumps)
    lunch = CFG.windows[1]
    s = window_summary(CFG, lunch, date(2024, 5, 6), tallies)
    assert (s["meals"], s["amount_fen"], s["subsidy_fen"], s["to_pay_fen"]) == (3, 4800, 2000, 2800)
    assert (s["opened_at"], s["closed_at"]) == (at("2024-05-06 11:00:00"), at("2024-05-06 13:30:00"))
    closed = windows_closed(CFG, at("2024-05-06 13:29:59"), at("2024-05-06 13:30:00"))
    assert [(w.name, d) for w, d in closed] == [("lunch", date(2024, 5, 6))]
    assert windows_closed(CFG, at("2024-05-06 13:30:00"), at("2024-05-06 13:30:05")) == []
    closed = windows_closed(CFG, at("2024-04-30 12:00:00"), at("2024-05-03 03:00:00"))
    assert [(w.name, d.isoformat()) for w, d in closed] == [
        ("lunch", "2024-04-30"), ("night", "2024-04-30"), ("lunch", "2024-05-01"), ("lunch", "2024-05-02"),
    ]  # fmt: skip


def test_config_from_toml_and_validation() -> None:
    table = tomllib.loads(
        """
        canteen_id = "c1"
        mode = "keyed"
        [calendar]
        holidays = ["2024-05-01"]
        [[windows]]
        name = "night"
        start = "22:00"
        end = "02:00"
        days = ["workday"]
        [windows.prices.staff]
        price_fen = 1200
        allowance_fen = 1200
        """
    )
    cfg = load_section(CanteenConfig, table, "terminal.toml", "canteen")
    assert cfg.windows[0].crosses_midnight and cfg.windows[0].prices["staff"].allowance_fen == 1200
    with pytest.raises(ConfigError, match="same time"):
        MealWindow("x", "12:00", "12:00:00")
    with pytest.raises(ConfigError, match="days"):
        MealWindow("x", "12:00", "13:00", days=("weekday",))
    with pytest.raises(ConfigError, match="must be one of"):
        load_section(CanteenConfig, {**table, "mode": "free"}, "terminal.toml", "canteen")
