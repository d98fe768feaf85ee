"""Merchant counter (POS) discount: how much of a sale the union pays.

Money rule: ``subsidy = floor(amount * rate_bp / 10000)``, then clipped by
every cap in turn; ``to_pay = amount - subsidy``. Rounding the subsidy down
means the union never pays a fraction of a fen more than its rate says, and
all amounts stay integer fen end to end.

Caps are on the subsidy (the union's money): per transaction, per member per
business day and per month at this terminal, and the merchant's monthly
budget. A cap that leaves some room shrinks the subsidy (approve, with
``capped_by`` in the detail); a cap with no room left denies, and the
decision still carries the full price so the cash register can charge it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from terminal.configschema import bounded
from terminal.exceptions import ConfigError
from terminal.model import Decision, Member, Verdict
from terminal.rules.clock import CLOCK_UNTRUSTED, Moment, business_date
from terminal.rules.counters import Bump, CounterKey, Outcome, Tally, day_tag, period_tag, reverse, tally
from terminal.rules.pin import PinPolicy, check_pin

OK = "ok"
BAD_AMOUNT = "bad_amount"
OFFLINE_LIMIT = "offline_limit"
NO_DISCOUNT = "no_discount"
LIMIT_REACHED = "limit_reached"
BUDGET_EXHAUSTED = "budget_exhausted"
VOIDED = "voided"
NOT_SUPERVISOR = "not_supervisor"
NOTHING_TO_VOID = "nothing_to_void"
ALREADY_VOIDED = "already_voided"
VOID_EXPIRED = "void_expired"

REASONS = frozenset(
    {
        OK, BAD_AMOUNT, OFFLINE_LIMIT, NO_DISCOUNT, LIMIT_REACHED, BUDGET_EXHAUSTED, VOIDED,
        NOT_SUPERVISOR, NOTHING_TO_VOID, ALREADY_VOIDED, VOID_EXPIRED, CLOCK_UNTRUSTED,
    }
)  # fmt: skip

BP_WHOLE = 10_000


def by_tier(table: Mapping[str, int], tier: int, default: int = 0) -> int:
    """Value for the highest listed tier not above ``tier``.

    Tiers are ordered (a higher tier never gets less), so a config need only
    list the tiers where the value changes. Keys are decimal strings because
    TOML table keys are strings.
    """
    listed = [int(t) for t in table if int(t) <= tier]
    return table[str(max(listed))] if listed else default


def check_tier_table(table: Mapping[str, int], section: str, key: str, hi: int) -> None:
    """Reject a tier table a config author got wrong (tier not a number,
    value outside 0..hi) before it can price a sale."""
    for tier, value in table.items():
        if not (tier.isascii() and tier.isdigit()):  # str.isdigit() takes "²", int() does not
            raise ConfigError(section, f"{key}.{tier}", "tier must be a whole number")
        if not 0 <= value <= hi:
            raise ConfigError(section, f"{key}.{tier}", f"must be 0..{hi}")


@dataclass(frozen=True)
class PosConfig:
    """One merchant counter. ``None`` caps are absent; amounts in fen.

    ``rates_bp`` maps merchant category -> member tier -> basis points; this
    terminal uses the row of its own ``category``.
    """

    merchant_id: str
    category: str
    rates_bp: dict[str, dict[str, int]] = field(default_factory=dict)
    max_subsidy_per_tx_fen: int | None = bounded(None, 0)
    member_day_cap_fen: int | None = bounded(None, 0)
    member_month_cap_fen: int | None = bounded(None, 0)
    merchant_month_budget_fen: int | None = bounded(None, 0)
    offline_floor_fen: int = bounded(0, 0)
    pin_above_fen: int | None = bounded(None, 0)
    max_amount_fen: int = bounded(10_000_000, 1)
    void_window_s: int = bounded(600, 0, 86_400)
    day_start_s: int = bounded(0, 0, 86_399)
    pin: PinPolicy = field(default_factory=PinPolicy)

    def __post_init__(self) -> None:
        for category, table in self.rates_bp.items():
            check_tier_table(table, "pos", f"rates_bp.{category}", BP_WHOLE)

    def rate_bp(self, tier: int) -> int:
        """Discount rate for a member tier at this merchant."""
        return by_tier(self.rates_bp.get(self.category, {}), tier)


@dataclass(frozen=True)
class SaleRequest:
    """A sale the cash register (or the keypad) asks to discount.

    ``pin`` is None until the member has typed it; ``online`` is whether the
    uplink is up, which decides the offline floor limit.
    """

    amount_fen: int
    ecr_ref: str = ""
    pin: str | None = None
    online: bool = True


@dataclass(frozen=True)
class SaleRecord:
    """What the core keeps of the last approved sale so a supervisor can void it."""

    tx_id: str
    member_no: str
    at: int
    amount_fen: int
    subsidy_fen: int
    ecr_ref: str = ""
    bumps: tuple[Bump, ...] = ()
    voided: bool = False

    @classmethod
    def of(cls, tx_id: str, member_no: str, request: SaleRequest, outcome: Outcome, at: int) -> "SaleRecord":
        """Record an approved sale; keeps only its money counters (not the
        PIN-try reset), because only those a void must take back."""
        d = outcome.decision
        value = tuple(b for b in outcome.bumps if b.key[0] == "pos")
        return cls(tx_id, member_no, at, d.amount_fen, d.subsidy_fen, request.ecr_ref, value)


@dataclass(frozen=True)
class VoidRequest:
    """Void the last sale, named by terminal tx id or cash-register reference."""

    tx_id: str = ""
    ecr_ref: str = ""

    def matches(self, record: SaleRecord) -> bool:
        return bool(
            (self.tx_id and self.tx_id == record.tx_id) or (self.ecr_ref and self.ecr_ref == record.ecr_ref)
        )


def decide_sale(
    config: PosConfig, member: Member, request: SaleRequest, moment: Moment, tallies: Mapping[CounterKey, Tally]
) -> Outcome:
    """Decide the discount for one sale by an eligible member."""
    amount = request.amount_fen
    if not moment.allows_value:
        return Outcome(Decision.deny(CLOCK_UNTRUSTED))
    if not 0 < amount <= config.max_amount_fen:
        return Outcome(Decision.deny(BAD_AMOUNT, max_amount_fen=config.max_amount_fen))
    if not request.online and amount > config.offline_floor_fen:
        return Outcome(Decision.deny(OFFLINE_LIMIT, offline_floor_fen=config.offline_floor_fen))
    day = business_date(moment.now, config.day_start_s)
    extra: tuple[Bump, ...] = ()
    if config.pin_above_fen is not None and amount > config.pin_above_fen:
        pin = check_pin(member, request.pin, tallies, config.pin, day, moment.now)
        if not pin.ok:
            return Outcome(pin.decision, pin.bumps)  # type: ignore[arg-type]
        extra = pin.bumps
    bp = config.rate_bp(member.tier)
    if bp == 0:
        return Outcome(Decision.deny(NO_DISCOUNT, tier=member.tier, category=config.category))

    month = period_tag("month", day)
    keys = {
        "member_day": ("pos", "member", member.member_no, day_tag(day)),
        "member_month": ("pos", "member", member.member_no, month),
        "merchant_month": ("pos", "merchant", config.merchant_id, month),
    }
    caps = (
        ("per_tx", config.max_subsidy_per_tx_fen, 0),
        ("member_day", config.member_day_cap_fen, tally(tallies, keys["member_day"]).subsidy_fen),
        ("member_month", config.member_month_cap_fen, tally(tallies, keys["member_month"]).subsidy_fen),
        ("merchant_month", config.merchant_month_budget_fen, tally(tallies, keys["merchant_month"]).subsidy_fen),
    )
    subsidy = amount * bp // BP_WHOLE
    capped_by = ""
    for name, cap, used in caps:
        if cap is None:
            continue
        room = max(0, cap - used)
        if room == 0 and name != "per_tx":
            reason = BUDGET_EXHAUSTED if name == "merchant_month" else LIMIT_REACHED
            full = Decision(Verdict.DENY, reason, amount, 0, amount, False, {"limit": name, "cap_fen": cap})
            return Outcome(full, extra)
        if subsidy > room:
            subsidy, capped_by = room, name
    detail: dict[str, object] = {"rate_bp": bp}
    if capped_by:
        detail["capped_by"] = capped_by
    decision = Decision(Verdict.APPROVE, OK, amount, subsidy, amount - subsidy, subsidy > 0, detail)
    bumps = tuple(Bump(k, moment.now, 1, amount, subsidy) for k in keys.values())
    return Outcome(decision, bumps + extra)


def decide_void(
    config: PosConfig, operator: Member, last: SaleRecord | None, request: VoidRequest, moment: Moment
) -> Outcome:
    """Decide whether a supervisor card may void the last sale.

    Only the last sale can be voided, within ``void_window_s`` by trusted
    time: the window is what stops a void being used to refund yesterday's
    discount after the member is gone.
    """
    if operator.role != "supervisor":
        return Outcome(Decision.deny(NOT_SUPERVISOR))
    if last is None or not request.matches(last):
        return Outcome(Decision.deny(NOTHING_TO_VOID))
    if last.voided:
        return Outcome(Decision.deny(ALREADY_VOIDED, tx_id=last.tx_id))
    if not moment.trusted:
        return Outcome(Decision.deny(CLOCK_UNTRUSTED))
    if moment.now - last.at > config.void_window_s:
        return Outcome(Decision.deny(VOID_EXPIRED, tx_id=last.tx_id, window_s=config.void_window_s))
    detail: dict[str, object] = {"voids": last.tx_id, "ecr_ref": last.ecr_ref, "supervisor": operator.member_no}
    decision = Decision(
        Verdict.APPROVE, VOIDED, last.amount_fen, last.subsidy_fen, last.amount_fen - last.subsidy_fen, False, detail
    )
    return Outcome(decision, reverse(last.bumps, moment.now))
