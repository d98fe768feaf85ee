"""Eligibility and the first door rule, as a table: pure, no I/O."""

from __future__ import annotations

import pytest

from terminal.model import Member, MemberStatus, Verdict
from terminal.rules.access import decide_access

NOW = 1_800_000_000


def member(status: MemberStatus = MemberStatus.ACTIVE, valid_from: int = 0, valid_until: int = 0) -> Member:
    return Member("M1", "王*明", "ORG-1", status, valid_from=valid_from, valid_until=valid_until)


@pytest.mark.parametrize(
    "who, hot, verdict, reason",
    [
        (member(), False, Verdict.APPROVE, "ok"),
        (member(), True, Verdict.DENY, "card_blocked"),           # hot list wins over an active member
        (None, True, Verdict.DENY, "card_blocked"),
        (None, False, Verdict.DENY, "unknown_card"),
        (member(MemberStatus.SUSPENDED), False, Verdict.DENY, "member_suspended"),
        (member(MemberStatus.LEFT), False, Verdict.DENY, "member_left"),
        (member(valid_from=NOW), False, Verdict.APPROVE, "ok"),     # valid from this very second
        (member(valid_from=NOW + 1), False, Verdict.DENY, "not_yet_valid"),
        (member(valid_until=NOW + 1), False, Verdict.APPROVE, "ok"),  # last valid second
        (member(valid_until=NOW), False, Verdict.DENY, "expired"),    # valid_until is exclusive
    ],
)
def test_access_table(who: Member | None, hot: bool, verdict: Verdict, reason: str) -> None:
    decision = decide_access(who, hot, NOW, pulse_ms=2500)
    assert (decision.verdict, decision.reason) == (verdict, reason)
    assert decision.grants_value is (verdict is Verdict.APPROVE)
    if decision.approved:
        assert decision.detail["pulse_ms"] == 2500
