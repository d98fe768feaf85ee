"""Eligibility every mode checks first: is this card a member in good standing?

Pure: the look-up result and the time come in, a denial (or ``None`` when the
member may proceed to the mode's own rules) comes out. Order matters and is
deliberate: the hot list wins over everything, then the card must be known,
then the member's status and validity period.
"""

from __future__ import annotations

from ..model import Decision, Member, MemberStatus


def check_eligibility(member: Member | None, hot: bool, now: int) -> Decision | None:
    """Return a denial, or ``None`` when ``member`` may be served at unix time ``now``."""
    if hot:
        return Decision.deny("card_blocked")
    if member is None:
        return Decision.deny("unknown_card")
    if member.status is MemberStatus.SUSPENDED:
        return Decision.deny("member_suspended")
    if member.status is MemberStatus.LEFT:
        return Decision.deny("member_left")
    if member.valid_from and now < member.valid_from:
        return Decision.deny("not_yet_valid")
    if member.valid_until and now >= member.valid_until:
        return Decision.deny("expired")
    return None
