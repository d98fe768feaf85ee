"""Counters that caps and quotas depend on, and the outcome a rule returns.

A rule never mutates anything: it reads :class:`Tally` values from a mapping
and returns the :class:`Bump` list its decision causes; the core applies the
bumps to its SQLite copy in the same transaction as the journal row, so a
crash can never count a meal that was not journaled (or the reverse).

Keys are tuples of strings whose last element is a period tag (``d2024-05-06``,
``w2024-W19``, ``m2024-05``, ``y2024``, or ``u<mark>`` for an untrusted-clock
stretch). The period is part of the key, so a new day is simply a new key:
nothing is ever "reset", and a wall clock stepped back cannot reopen a day
whose key is derived from the never-decreasing trusted time.
"""

from __future__ import annotations

import calendar as _cal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta

from terminal.model import Decision
from terminal.rules.clock import local

CounterKey = tuple[str, ...]


@dataclass(frozen=True)
class Tally:
    """Taps and money counted under one key; ``first_at`` answers "when was
    the first meal" for the already-served screen."""

    count: int = 0
    amount_fen: int = 0
    subsidy_fen: int = 0
    first_at: int = 0
    last_at: int = 0

    @property
    def to_pay_fen(self) -> int:
        """What members paid in total; derived, so it cannot disagree."""
        return self.amount_fen - self.subsidy_fen


@dataclass(frozen=True)
class Bump:
    """One change to one counter; negative values undo (void, PIN reset)."""

    key: CounterKey
    at: int
    count: int = 1
    amount_fen: int = 0
    subsidy_fen: int = 0


@dataclass(frozen=True)
class Outcome:
    """A decision plus the counter changes the core must apply if it acts on it."""

    decision: Decision
    bumps: tuple[Bump, ...] = ()


ZERO = Tally()

#: Reason word of a second tap where the quota is one (meal, attendance).
ALREADY_SERVED = "already_served"


def already_served(first: Tally, **detail: object) -> Decision:
    """Deny a repeat tap, telling the member when the first one was."""
    at = local(first.first_at).strftime("%H:%M:%S")
    return Decision.deny(ALREADY_SERVED, first_at=at, first_at_unix=first.first_at, **detail)


def tally(tallies: Mapping[CounterKey, Tally], key: CounterKey) -> Tally:
    """The tally under ``key``, zero when never counted."""
    return tallies.get(key, ZERO)


def apply(tallies: Mapping[CounterKey, Tally], bumps: Iterable[Bump]) -> dict[CounterKey, Tally]:
    """Return a copy of ``tallies`` with ``bumps`` applied (the core's cache
    and the tests use the same arithmetic)."""
    out = dict(tallies)
    for b in bumps:
        t = out.get(b.key, ZERO)
        first = t.first_at if t.count > 0 else (b.at if b.count > 0 else 0)
        out[b.key] = Tally(
            count=t.count + b.count,
            amount_fen=t.amount_fen + b.amount_fen,
            subsidy_fen=t.subsidy_fen + b.subsidy_fen,
            first_at=first,
            last_at=max(t.last_at, b.at),
        )
    return out


def reverse(bumps: Iterable[Bump], at: int) -> tuple[Bump, ...]:
    """The bumps that undo ``bumps`` (a void), stamped ``at``."""
    return tuple(
        replace(b, at=at, count=-b.count, amount_fen=-b.amount_fen, subsidy_fen=-b.subsidy_fen) for b in bumps
    )


def day_tag(day: date) -> str:
    return "d" + day.isoformat()


def period_tag(period: str, day: date) -> str:
    """Tag of the period of kind ``period`` that contains ``day``."""
    if period == "day":
        return day_tag(day)
    if period == "week":
        year, week, _ = day.isocalendar()
        return f"w{year}-W{week:02d}"
    if period == "month":
        return f"m{day.year}-{day.month:02d}"
    if period == "year":
        return f"y{day.year}"
    raise ValueError(f"unknown period {period!r}")


def _period_end(tag: str) -> date | None:
    """Last day of a tagged period; None for an untrusted stretch."""
    kind, body = tag[0], tag[1:]
    if kind == "d":
        return date.fromisoformat(body)
    if kind == "w":
        year, week = body.split("-W")
        return date.fromisocalendar(int(year), int(week), 7)
    if kind == "m":
        year, month = (int(p) for p in body.split("-"))
        return date(year, month, _cal.monthrange(year, month)[1])
    if kind == "y":
        return date(int(body), 12, 31)
    return None


def stale(key: CounterKey, today: date) -> bool:
    """May the core drop this counter? Periods that ended before yesterday
    can no longer be asked for (yesterday stays: a night window opened then);
    untrusted-stretch counters go as soon as a trusted day is known."""
    end = _period_end(key[-1])
    return end is None or end < today - timedelta(days=1)
