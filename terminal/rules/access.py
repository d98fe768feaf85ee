"""Door mode, first cut: an eligible member opens the door for the pulse time.

Time profiles, access groups, anti-passback and the other door rules build
on this; the shape stays a pure function of (member, state, time, request).
"""

from __future__ import annotations

from ..model import Decision, Member, Verdict
from .membership import check_eligibility


def decide_access(member: Member | None, hot: bool, now: int, pulse_ms: int) -> Decision:
    """Grant the door to an eligible member; otherwise deny with the reason."""
    denied = check_eligibility(member, hot, now)
    if denied is not None:
        return denied
    return Decision(Verdict.APPROVE, "ok", grants_value=True, detail={"pulse_ms": pulse_ms})
