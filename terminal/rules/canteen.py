"""Canteen meals: windows, prices and allowances by canteen group, quotas.

A meal window is ``[start, end)`` in local time to the second; a window whose
end is not after its start crosses midnight (a night shift 22:00-02:00) and
its occurrence belongs to the date it opened, so a night-shift meal at 01:00
counts against the evening before, including for the holiday calendar.

Modes: ``fixed`` (the window price), ``keyed`` (the cashier keys the amount
and the allowance comes off it) and ``count`` (no money, the tap is counted).
The allowance is the union's money: ``subsidy = min(allowance, amount)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

from terminal.configschema import bounded
from terminal.exceptions import ConfigError
from terminal.model import Decision, Member, Verdict
from terminal.rules.clock import (
    CLOCK_UNTRUSTED, DAY_S, Calendar, DayType, Moment, local, parse_hms, seconds_of_day, unix_at,
)  # fmt: skip
from terminal.rules.counters import (
    ALREADY_SERVED, Bump, CounterKey, Outcome, Tally, already_served, day_tag, tally,
)  # fmt: skip
from terminal.rules.pin import PinPolicy, check_pin

OK = "ok"
OUTSIDE_HOURS = "outside_hours"
CLOSED_TODAY = "closed_today"
NOT_ELIGIBLE = "not_eligible"
BAD_AMOUNT = "bad_amount"

REASONS = frozenset({OK, OUTSIDE_HOURS, CLOSED_TODAY, NOT_ELIGIBLE, BAD_AMOUNT, ALREADY_SERVED, CLOCK_UNTRUSTED})

#: Group key of the price that applies to every canteen group not listed.
ANY_GROUP = "*"

#: Longest gap :func:`windows_closed` looks back over (a terminal off for a week).
MAX_SUMMARY_DAYS = 8


#: ``fixed`` charges the window price, ``keyed`` the amount the cashier
#: keys, ``count`` only counts taps.
CanteenMode = Literal["fixed", "keyed", "count"]


@dataclass(frozen=True)
class MealPrice:
    """Price of a meal and the allowance the union pays towards it, in fen."""

    price_fen: int = 0
    allowance_fen: int = 0

    def __post_init__(self) -> None:
        # A negative price or allowance would turn a meal into a payout to the member.
        for key in ("price_fen", "allowance_fen"):
            if getattr(self, key) < 0:
                raise ConfigError("canteen", key, f"must be at least 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class MealWindow:
    """One serving window; ``days`` lists the day types it serves on."""

    name: str
    start: str
    end: str
    prices: dict[str, MealPrice] = field(default_factory=dict)
    days: tuple[str, ...] = ("workday", "restday", "holiday")
    quota: int = bounded(1, 1, 100)
    pin_above_fen: int | None = bounded(None, 0)

    def __post_init__(self) -> None:
        if self.start_s == self.end_s:
            raise ConfigError("canteen", f"windows.{self.name}", "start and end are the same time")
        valid = {t.value for t in DayType}
        if not set(self.days) <= valid:
            raise ConfigError("canteen", f"windows.{self.name}.days", f"allowed: {', '.join(sorted(valid))}")

    @property
    def start_s(self) -> int:
        return parse_hms(self.start)

    @property
    def end_s(self) -> int:
        """End in seconds of day; ``24:00`` is midnight, i.e. 0 of the next day."""
        return parse_hms(self.end) % DAY_S

    @property
    def crosses_midnight(self) -> bool:
        return self.end_s < self.start_s

    def occurrence(self, now: int) -> date | None:
        """Date this window opened on, if ``now`` is inside it."""
        t, today = seconds_of_day(now), local(now).date()
        if not self.crosses_midnight:
            return today if self.start_s <= t < self.end_s else None
        if t >= self.start_s:
            return today
        return today - timedelta(days=1) if t < self.end_s else None

    def bounds(self, day: date) -> tuple[int, int]:
        """Unix open and close of the occurrence that opens on ``day``."""
        close_day = day + timedelta(days=1) if self.crosses_midnight else day
        return unix_at(day, self.start_s), unix_at(close_day, self.end_s)

    def price_for(self, group: str) -> MealPrice | None:
        return self.prices.get(group) or self.prices.get(ANY_GROUP)


@dataclass(frozen=True)
class CanteenConfig:
    """A canteen terminal. ``pin_above_day_fen`` and each window's
    ``pin_above_fen`` are soft caps: spending past them needs the PIN."""

    canteen_id: str
    windows: tuple[MealWindow, ...] = ()
    mode: CanteenMode = "fixed"
    calendar: Calendar = field(default_factory=Calendar)
    pin_above_day_fen: int | None = bounded(None, 0)
    max_keyed_fen: int = bounded(100_000, 1)
    pin: PinPolicy = field(default_factory=PinPolicy)

    def serves(self, window: MealWindow, day: date) -> bool:
        """Does ``window`` open on ``day`` given the holiday calendar?"""
        return self.calendar.day_type(day).value in window.days


@dataclass(frozen=True)
class MealRequest:
    """A tap at the canteen; ``amount_fen`` is the keyed amount (keyed mode)."""

    amount_fen: int = 0
    pin: str | None = None


def current_window(config: CanteenConfig, now: int) -> tuple[MealWindow, date] | None:
    """The first configured window ``now`` falls in, with its occurrence date."""
    for window in config.windows:
        day = window.occurrence(now)
        if day is not None:
            return window, day
    return None


def running_key(window: str, tag: str) -> CounterKey:
    """Counter of all meals of one window occurrence (the running count)."""
    return ("canteen", "window", window, tag)


def _count_untrusted(member: Member, moment: Moment, tallies: Mapping[CounterKey, Tally]) -> Outcome:
    """Count a tap while time is untrusted: once per member for the stretch,
    since without time no window (and so no quota key) can be known."""
    key = ("canteen", "untrusted", member.member_no, moment.epoch_tag)
    seen = tally(tallies, key)
    if seen.count:
        return Outcome(already_served(seen, clock="untrusted"))
    running = running_key("untrusted", moment.epoch_tag)
    detail = {"count_only": True, "clock": "untrusted", "served_in_window": tally(tallies, running).count + 1}
    decision = Decision(Verdict.APPROVE, OK, grants_value=True, detail=detail)
    return Outcome(decision, (Bump(key, moment.now), Bump(running, moment.now)))


def _amounts(config: CanteenConfig, price: MealPrice, request: MealRequest) -> tuple[int, int] | None:
    """(amount, subsidy) of this meal, None for a keyed amount out of range."""
    if config.mode == "count":
        return 0, 0
    amount = price.price_fen if config.mode == "fixed" else request.amount_fen
    if config.mode == "keyed" and not 0 < amount <= config.max_keyed_fen:
        return None
    return amount, min(price.allowance_fen, amount)


def _over(cap: int | None, spent: int, to_pay: int) -> bool:
    return cap is not None and to_pay > 0 and spent + to_pay > cap


def decide_meal(
    config: CanteenConfig, member: Member, request: MealRequest, moment: Moment, tallies: Mapping[CounterKey, Tally]
) -> Outcome:
    """Decide one canteen tap by an eligible member."""
    if not moment.allows_value:
        if moment.count_only_fallback:
            return _count_untrusted(member, moment, tallies)
        return Outcome(Decision.deny(CLOCK_UNTRUSTED))
    found = current_window(config, moment.now)
    if found is None:
        return Outcome(Decision.deny(OUTSIDE_HOURS))
    window, day = found
    if not config.serves(window, day):
        return Outcome(Decision.deny(CLOSED_TODAY, window=window.name, day_type=config.calendar.day_type(day).value))
    price = window.price_for(member.canteen_group)
    if price is None:
        return Outcome(Decision.deny(NOT_ELIGIBLE, window=window.name, group=member.canteen_group))
    tag = day_tag(day)
    meal_key = ("canteen", "meal", member.member_no, window.name, tag)
    served = tally(tallies, meal_key)
    if served.count >= window.quota:
        return Outcome(already_served(served, window=window.name, quota=window.quota))
    amounts = _amounts(config, price, request)
    if amounts is None:
        return Outcome(Decision.deny(BAD_AMOUNT, max_amount_fen=config.max_keyed_fen))
    amount, subsidy = amounts
    to_pay = amount - subsidy
    spend_key = ("canteen", "spend", member.member_no, tag)
    extra: tuple[Bump, ...] = ()
    if _over(window.pin_above_fen, served.to_pay_fen, to_pay) or _over(
        config.pin_above_day_fen, tally(tallies, spend_key).to_pay_fen, to_pay
    ):
        pin = check_pin(member, request.pin, tallies, config.pin, day, moment.now)
        if not pin.ok:
            return Outcome(pin.decision, pin.bumps)  # type: ignore[arg-type]
        extra = pin.bumps
    running = running_key(window.name, tag)
    detail: dict[str, object] = {
        "window": window.name,
        "meal_no": served.count + 1,
        "quota": window.quota,
        "served_in_window": tally(tallies, running).count + 1,
    }
    decision = Decision(Verdict.APPROVE, OK, amount, subsidy, to_pay, True, detail)
    bumps = tuple(Bump(k, moment.now, 1, amount, subsidy) for k in (meal_key, spend_key, running))
    return Outcome(decision, bumps + extra)


def windows_closed(config: CanteenConfig, after: int, until: int) -> list[tuple[MealWindow, date]]:
    """Window occurrences that closed in ``(after, until]``, oldest first:
    the ones whose summary record is now due. Looks back at most
    :data:`MAX_SUMMARY_DAYS`."""
    first = max(local(after).date(), local(until).date() - timedelta(days=MAX_SUMMARY_DAYS)) - timedelta(days=1)
    found: list[tuple[int, int, MealWindow, date]] = []
    day = first
    while day <= local(until).date():
        for i, window in enumerate(config.windows):
            close = window.bounds(day)[1]
            if after < close <= until and config.serves(window, day):
                found.append((close, i, window, day))
        day += timedelta(days=1)
    return [(w, d) for _, _, w, d in sorted(found, key=lambda f: (f[0], f[1]))]


def window_summary(
    config: CanteenConfig, window: MealWindow, day: date, tallies: Mapping[CounterKey, Tally]
) -> dict[str, object]:
    """End-of-window record for the journal and uplink (JSON-able)."""
    total = tally(tallies, running_key(window.name, day_tag(day)))
    opened, closed = window.bounds(day)
    return {
        "type": "canteen_window_summary",
        "canteen_id": config.canteen_id,
        "window": window.name,
        "date": day.isoformat(),
        "opened_at": opened,
        "closed_at": closed,
        "mode": config.mode,
        "meals": total.count,
        "amount_fen": total.amount_fen,
        "subsidy_fen": total.subsidy_fen,
        "to_pay_fen": total.to_pay_fen,
        "first_at": total.first_at,
        "last_at": total.last_at,
    }
