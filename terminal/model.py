"""The plain values that flow through a tap: who the card is, who the member is,
what was decided.

They are frozen dataclasses with no I/O so that rules can be table-tested and
the journal can serialise them without surprises.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class MemberStatus(enum.Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    LEFT = "left"


class Strength(enum.Enum):
    """How sure the terminal is that the card is genuine.

    ``WEAK`` marks identification by a copyable identifier alone (a MIFARE UID);
    such transactions are flagged in the journal and uplink.
    """

    STRONG = "strong"
    WEAK = "weak"


@dataclass(frozen=True)
class CardIdentity:
    """What the card layer proved about the card in the field.

    ``card_ref`` is the keyed hash (HMAC-SHA256 with the deployment key) of
    ``kind`` and the card identifier; the raw identifier never leaves the
    card layer.
    """

    profile: str
    card_ref: bytes
    strength: Strength
    member_no: str | None = None


@dataclass(frozen=True)
class Member:
    """A member as the local list knows them."""

    member_no: str
    name: str
    org: str
    status: MemberStatus
    tier: int = 0
    canteen_group: str = ""
    access_groups: tuple[str, ...] = ()
    valid_from: int = 0
    valid_until: int = 0
    batch: int = 1
    role: str = "member"
    pin_hash: str = ""


class Verdict(enum.Enum):
    APPROVE = "approve"
    DENY = "deny"


@dataclass(frozen=True)
class Decision:
    """The outcome of a rule: approve or deny, the reason word and any amounts.

    ``reason`` is a stable machine word (``ok``, ``unknown_card``, ...); the
    screen text for it lives in :mod:`terminal.ui`.
    """

    verdict: Verdict
    reason: str
    amount_fen: int = 0
    subsidy_fen: int = 0
    to_pay_fen: int = 0
    grants_value: bool = False
    detail: dict[str, object] = field(default_factory=dict)

    @property
    def approved(self) -> bool:
        return self.verdict is Verdict.APPROVE

    @classmethod
    def deny(cls, reason: str, **detail: object) -> "Decision":
        return cls(Verdict.DENY, reason, detail=dict(detail))
