"""Union venues (sanatorium, cultural palace, training centre): member price,
visit limits and attendance.

A venue terminal sells offerings (a sanatorium stay, a concert, a course
session). The member pays the member price for their tier; the union pays the
difference to the list price. Visits are limited per member per period; an
offering marked ``attendance`` counts at most one check-in per member per
business day, and keeps a head count so the organiser sees who came.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from terminal.configschema import bounded
from terminal.model import Decision, Member, Verdict
from terminal.rules.clock import CLOCK_UNTRUSTED, Moment, business_date
from terminal.rules.counters import (
    ALREADY_SERVED, Bump, CounterKey, Outcome, Tally, already_served, day_tag, period_tag, tally,
)
from terminal.rules.pos import by_tier, check_tier_table

OK = "ok"
UNKNOWN_OFFERING = "unknown_offering"
NOT_ELIGIBLE = "not_eligible"
LIMIT_REACHED = "limit_reached"

REASONS = frozenset({OK, UNKNOWN_OFFERING, NOT_ELIGIBLE, ALREADY_SERVED, LIMIT_REACHED, CLOCK_UNTRUSTED})


@dataclass(frozen=True)
class Offering:
    """Something a venue sells or checks members into (keyed by its code).

    ``member_price_fen`` maps tier -> price (highest listed tier not above the
    member's applies; a tier below all listed pays the list price).
    ``groups`` limits the offering to members of those access groups (empty:
    every member); ``visits_per_period`` None means unlimited.
    """

    list_price_fen: int = bounded(0, 0)
    member_price_fen: dict[str, int] = field(default_factory=dict)
    period: Literal["day", "week", "month", "year"] = "month"
    visits_per_period: int | None = bounded(None, 1)
    attendance: bool = False
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_tier_table(self.member_price_fen, "venue", "offerings.member_price_fen", self.list_price_fen)

    def price_for(self, tier: int) -> int:
        return by_tier(self.member_price_fen, tier, self.list_price_fen)


@dataclass(frozen=True)
class VenueConfig:
    """A venue terminal; ``kind`` is for reports and the back office."""

    venue_id: str
    kind: Literal["sanatorium", "culture", "training"] = "culture"
    offerings: dict[str, Offering] = field(default_factory=dict)
    day_start_s: int = bounded(0, 0, 86_399)


@dataclass(frozen=True)
class VisitRequest:
    """The offering the operator selected before the member tapped."""

    offering: str


def headcount_key(offering: str, day_tag_: str) -> CounterKey:
    """Counter of everyone checked in to an offering on a day."""
    return ("venue", "headcount", offering, day_tag_)


def decide_visit(
    config: VenueConfig, member: Member, request: VisitRequest, moment: Moment, tallies: Mapping[CounterKey, Tally]
) -> Outcome:
    """Decide one check-in or sale at a venue for an eligible member."""
    code = request.offering
    offering = config.offerings.get(code)
    if offering is None:
        return Outcome(Decision.deny(UNKNOWN_OFFERING, offering=code))
    if offering.groups and not set(offering.groups) & set(member.access_groups):
        return Outcome(Decision.deny(NOT_ELIGIBLE, offering=code))
    if not moment.allows_value:
        return Outcome(Decision.deny(CLOCK_UNTRUSTED))
    price = offering.price_for(member.tier)
    subsidy = offering.list_price_fen - price
    day = business_date(moment.now, config.day_start_s)
    today = day_tag(day)
    visit_key = ("venue", "visits", code, member.member_no, period_tag(offering.period, day))
    attend_key = ("venue", "attend", code, member.member_no, today)
    if offering.attendance:
        seen = tally(tallies, attend_key)
        if seen.count > 0:
            return Outcome(already_served(seen, offering=code))
    used = tally(tallies, visit_key).count
    limit = offering.visits_per_period
    if limit is not None and used >= limit:
        return Outcome(Decision.deny(LIMIT_REACHED, limit=limit, period=offering.period, used=used))
    head = tally(tallies, headcount_key(code, today)).count + 1
    detail: dict[str, object] = {"offering": code, "visit_no": used + 1, "headcount": head}
    if limit is not None:
        detail["remaining"] = limit - used - 1
    decision = Decision(Verdict.APPROVE, OK, offering.list_price_fen, subsidy, price, True, detail)
    money = {"amount_fen": offering.list_price_fen, "subsidy_fen": subsidy}
    keys = [visit_key, headcount_key(code, today)] + ([attend_key] if offering.attendance else [])
    return Outcome(decision, tuple(Bump(k, moment.now, 1, **money) for k in keys))
