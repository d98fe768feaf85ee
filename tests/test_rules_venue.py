"""Venues: member price by tier, visits per period, attendance and head count."""

from __future__ import annotations

import tomllib

import pytest
from rulekit import member, moment

from terminal.configschema import load_section
from terminal.exceptions import ConfigError
from terminal.model import Verdict
from terminal.rules.clock import Moment
from terminal.rules.counters import Outcome, apply
from terminal.rules.venue import Offering, VenueConfig, VisitRequest, decide_visit

CFG = VenueConfig(
    venue_id="palace",
    kind="culture",
    offerings={
        "concert": Offering(list_price_fen=8000, member_price_fen={"0": 5000, "3": 3000}, visits_per_period=2),
        "spa": Offering(list_price_fen=20000, member_price_fen={"1": 12000}, period="year", visits_per_period=1),
        "course": Offering(attendance=True, groups=("trainees",), period="week", visits_per_period=3),
    },
)


def visit(code: str, when: str | Moment = "2024-05-06 19:00:00", tallies: dict | None = None, **who: object) -> Outcome:
    m = moment(when) if isinstance(when, str) else when
    return decide_visit(CFG, member(**who), VisitRequest(code), m, tallies or {})


@pytest.mark.parametrize(
    ("code", "tier", "amount", "subsidy", "to_pay"),
    [
        ("concert", 1, 8000, 3000, 5000),
        ("concert", 3, 8000, 5000, 3000),
        ("spa", 0, 20000, 0, 20000),  # tier 0 is below every listed tier: list price
        ("spa", 2, 20000, 8000, 12000),
    ],
)
def test_member_price_by_tier(code: str, tier: int, amount: int, subsidy: int, to_pay: int) -> None:
    d = visit(code, tier=tier).decision
    assert (d.verdict, d.amount_fen, d.subsidy_fen, d.to_pay_fen, d.grants_value) == (
        Verdict.APPROVE, amount, subsidy, to_pay, True,
    )  # fmt: skip


def test_visits_per_month_up_to_the_limit_then_a_new_month() -> None:
    tallies: dict = {}
    got = []
    for when in ("2024-05-01 19:00:00", "2024-05-20 19:00:00", "2024-05-31 23:59:59", "2024-06-01 00:00:00"):
        out = visit("concert", when, tallies)
        got.append((out.decision.reason, out.decision.detail.get("remaining")))
        tallies = apply(tallies, out.bumps)
    assert got == [("ok", 1), ("ok", 0), ("limit_reached", None), ("ok", 1)]


def test_yearly_visit() -> None:
    tallies = apply({}, visit("spa", "2024-01-01 10:00:00", tier=1).bumps)
    d = visit("spa", "2024-12-31 10:00:00", tallies, tier=1).decision
    assert (d.reason, d.detail["period"], d.detail["used"]) == ("limit_reached", "year", 1)
    assert visit("spa", "2025-01-01 10:00:00", tallies, tier=1).decision.reason == "ok"


def test_attendance_once_a_day_with_head_count() -> None:
    trainee = {"access_groups": ("trainees",)}
    tallies: dict = {}
    out = visit("course", "2024-05-06 09:00:05", tallies, **trainee)
    assert (out.decision.reason, out.decision.amount_fen, out.decision.detail["headcount"]) == ("ok", 0, 1)
    tallies = apply(tallies, out.bumps)
    d = visit("course", "2024-05-06 14:00:00", tallies, **trainee).decision
    assert (d.reason, d.detail["first_at"]) == ("already_served", "09:00:05")
    other = visit("course", "2024-05-06 09:01:00", tallies, member_no="M0002", **trainee).decision
    assert (other.reason, other.detail["headcount"], other.detail["visit_no"]) == ("ok", 2, 1)
    assert visit("course", "2024-05-07 09:00:00", tallies, **trainee).decision.detail["visit_no"] == 2


def test_refusals() -> None:
    assert visit("opera").decision.reason == "unknown_offering"
    assert visit("course").decision.reason == "not_eligible"
    untrusted = Moment(moment("2024-05-06 19:00:00").now, trusted=False)
    assert visit("concert", untrusted).decision.reason == "clock_untrusted"


def test_config_from_toml_and_validation() -> None:
    table = tomllib.loads(
        """
        venue_id = "sanatorium-1"
        kind = "sanatorium"
        [offerings.stay]
        list_price_fen = 100000
        period = "year"
        visits_per_period = 1
        member_price_fen = { "0" = 60000 }
        """
    )
    cfg = load_section(VenueConfig, table, "terminal.toml", "venue")
    assert cfg.offerings["stay"].price_for(5) == 60000
    with pytest.raises(ConfigError, match="must be 0..100"):
        Offering(list_price_fen=100, member_price_fen={"0": 101})
    with pytest.raises(ConfigError, match="must be one of"):
        load_section(VenueConfig, {**table, "offerings": {"x": {"period": "decade"}}}, "terminal.toml", "venue")
