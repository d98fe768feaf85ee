"""POS discount: rates, rounding, caps to the fen, offline floor, PIN, void;
and the PIN hash format the POS introduced."""

from __future__ import annotations

import re
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from rulekit import PIN, PIN_HASH, at, member, moment

from terminal.configschema import load_section
from terminal.exceptions import ConfigError
from terminal.model import Verdict
from terminal.rules import canteen, door, pin, pos, venue
from terminal.rules.clock import ClockPolicy, ClockState, Moment, observe
from terminal.rules.counters import Outcome, Tally, apply
from terminal.rules.pin import duress_variant, hash_pin, usable, verify_pin
from terminal.rules.pos import PosConfig, SaleRecord, SaleRequest, VoidRequest, decide_sale, decide_void

CFG = PosConfig(
    merchant_id="shop-1",
    category="food",
    rates_bp={"food": {"0": 500, "3": 800}, "books": {"0": 1000}},
)
NOON = moment("2024-05-06 12:00:00")
DAY = ("pos", "member", "M0001", "d2024-05-06")
MONTH = ("pos", "member", "M0001", "m2024-05")
BUDGET = ("pos", "merchant", "shop-1", "m2024-05")


def sale(amount: int, cfg: PosConfig = CFG, tallies: dict | None = None, at_: Moment = NOON, **kw: object) -> Outcome:
    who = kw.pop("who", member())
    return decide_sale(cfg, who, SaleRequest(amount, "REF1", **kw), at_, tallies or {})  # type: ignore[arg-type]


def used(subsidy: int) -> Tally:
    return Tally(1, subsidy * 20, subsidy, at("2024-05-06 09:00:00"), at("2024-05-06 09:00:00"))


@pytest.mark.parametrize(
    ("amount", "tier", "subsidy"),
    [
        (2000, 1, 100),  # 5 %
        (1999, 1, 99),  # 99.95 rounds down to the fen
        (19, 1, 0),  # 0.95 fen -> nothing, still approved
        (2000, 3, 160),  # tier 3 and up: 8 %
        (2000, 9, 160),
    ],
)
def test_rate_by_tier_and_rounding_down(amount: int, tier: int, subsidy: int) -> None:
    out = sale(amount, who=member(tier=tier))
    d = out.decision
    assert (d.verdict, d.reason, d.amount_fen, d.subsidy_fen, d.to_pay_fen) == (
        Verdict.APPROVE, "ok", amount, subsidy, amount - subsidy,
    )  # fmt: skip
    assert d.grants_value is (subsidy > 0)
    assert {b.key for b in out.bumps} == {DAY, MONTH, BUDGET}
    assert all((b.count, b.amount_fen, b.subsidy_fen) == (1, amount, subsidy) for b in out.bumps)


def test_tier_below_every_listed_rate_gets_no_discount() -> None:
    cfg = replace(CFG, rates_bp={"food": {"2": 500}})
    out = sale(2000, cfg)
    assert out.decision.reason == "no_discount" and out.bumps == ()


@pytest.mark.parametrize("amount", [0, -5, 10_000_001])
def test_bad_amounts(amount: int) -> None:
    assert sale(amount).decision.reason == "bad_amount"


CAPS = [
    # (config change, tallies, amount, verdict, reason, subsidy, capped_by)
    ({"max_subsidy_per_tx_fen": 100}, {}, 2000, "approve", "ok", 100, None),  # exactly at the cap
    ({"max_subsidy_per_tx_fen": 100}, {}, 2020, "approve", "ok", 100, "per_tx"),  # one fen over
    ({"member_day_cap_fen": 300}, {DAY: used(200)}, 2000, "approve", "ok", 100, None),
    ({"member_day_cap_fen": 300}, {DAY: used(201)}, 2000, "approve", "ok", 99, "member_day"),
    ({"member_day_cap_fen": 300}, {DAY: used(300)}, 2000, "deny", "limit_reached", 0, None),
    ({"member_month_cap_fen": 1000}, {MONTH: used(999)}, 2000, "approve", "ok", 1, "member_month"),
    ({"member_month_cap_fen": 1000}, {MONTH: used(1000)}, 2000, "deny", "limit_reached", 0, None),
    ({"merchant_month_budget_fen": 50_000}, {BUDGET: used(49_900)}, 2000, "approve", "ok", 100, None),
    ({"merchant_month_budget_fen": 50_000}, {BUDGET: used(49_901)}, 2000, "approve", "ok", 99, "merchant_month"),
    ({"merchant_month_budget_fen": 50_000}, {BUDGET: used(50_000)}, 2000, "deny", "budget_exhausted", 0, None),
    # yesterday's day counter does not count today
    ({"member_day_cap_fen": 300}, {DAY[:3] + ("d2024-05-05",): used(300)}, 2000, "approve", "ok", 100, None),
]


@pytest.mark.parametrize(("change", "tallies", "amount", "verdict", "reason", "subsidy", "capped_by"), CAPS)
def test_caps_to_the_fen(
    change: dict, tallies: dict, amount: int, verdict: str, reason: str, subsidy: int, capped_by: str | None
) -> None:
    d = sale(amount, replace(CFG, **change), tallies).decision
    assert (d.verdict.value, d.reason, d.subsidy_fen, d.to_pay_fen) == (verdict, reason, subsidy, amount - subsidy)
    assert d.detail.get("capped_by") == capped_by
    assert d.amount_fen == amount  # a denial still tells the cash register the full price


def test_day_cap_fills_up_over_sales() -> None:
    cfg = replace(CFG, member_day_cap_fen=250)
    tallies: dict = {}
    got = []
    for _ in range(4):
        out = sale(2000, cfg, tallies)
        got.append((out.decision.reason, out.decision.subsidy_fen))
        tallies = apply(tallies, out.bumps)
    assert got == [("ok", 100), ("ok", 100), ("ok", 50), ("limit_reached", 0)]
    assert tallies[DAY].subsidy_fen == 250 and tallies[DAY].count == 3


def test_clock_stepped_back_over_midnight_does_not_reopen_yesterdays_cap() -> None:
    cfg = replace(CFG, member_day_cap_fen=100)
    policy = ClockPolicy(floor_unix=at("2024-01-01 00:00:00"))
    state, m = observe(ClockState(), at("2024-05-07 00:10:00"), 50.0, policy)
    tallies = apply({}, sale(2000, cfg, {}, m).bumps)
    for mono, wall in ((60.0, "2024-05-06 23:10:10"), (70.0, "2024-05-06 23:10:20")):
        state, m = observe(state, at(wall), mono, policy)
        assert sale(2000, cfg, tallies, m).decision.reason == "limit_reached"
        state, m = observe(state.after_boot(), at(wall), 1.0, policy)  # and after a restart
        assert sale(2000, cfg, tallies, m).decision.reason == "limit_reached"


@pytest.mark.parametrize(("amount", "reason"), [(3000, "ok"), (3001, "offline_limit")])
def test_offline_floor_limit(amount: int, reason: str) -> None:
    cfg = replace(CFG, offline_floor_fen=3000)
    assert sale(amount, cfg, online=False).decision.reason == reason
    assert sale(amount, cfg, online=True).decision.reason == "ok"


def test_untrusted_clock_denies_unless_policy_allows() -> None:
    assert sale(2000, at_=Moment(NOON.now, trusted=False)).decision.reason == "clock_untrusted"
    assert sale(2000, at_=Moment(NOON.now, trusted=False, on_untrusted="allow")).decision.reason == "ok"


PIN_CFG = replace(CFG, pin_above_fen=5000)
FAILS = ("pin_fail", "M0001", "d2024-05-06")


def test_pin_needed_only_above_the_threshold() -> None:
    assert sale(5000, PIN_CFG).decision.reason == "ok"
    d = sale(5001, PIN_CFG).decision
    assert (d.reason, d.detail["tries_left"]) == ("pin_required", 3)
    assert sale(5001, PIN_CFG, pin=PIN).decision.reason == "ok"


def test_wrong_pins_lock_for_the_day_and_a_good_pin_clears_the_count() -> None:
    tallies: dict = {}
    reasons = []
    for entered in ("1111", "2222", "3333", PIN):
        out = sale(6000, PIN_CFG, tallies, pin=entered)
        reasons.append(out.decision.reason)
        tallies = apply(tallies, out.bumps)
    assert reasons == ["wrong_pin", "wrong_pin", "pin_locked", "pin_locked"]
    assert tallies[FAILS].count == 3
    tomorrow = moment("2024-05-07 08:00:00")
    assert sale(6000, PIN_CFG, tallies, tomorrow, pin=PIN).decision.reason == "ok"

    one_fail = apply({}, sale(6000, PIN_CFG, pin="0000").bumps)
    ok = sale(6000, PIN_CFG, one_fail, pin=PIN)
    assert ok.decision.reason == "ok"
    assert apply(one_fail, ok.bumps)[FAILS].count == 0


def test_member_without_usable_pin_cannot_pass_a_pin_step() -> None:
    assert sale(6000, PIN_CFG, who=member(pin_hash=""), pin=PIN).decision.detail == {"pin_hash": "missing"}
    broken = member(pin_hash=PIN_HASH.replace("pbkdf2_sha256", "md5"))
    d = sale(6000, PIN_CFG, who=broken, pin=PIN).decision
    assert (d.reason, d.detail) == ("pin_not_set", {"pin_hash": "malformed"})


def test_pin_hash_format_matches_rfc7914_pbkdf2_vector() -> None:
    # RFC 7914 section 11: PBKDF2-HMAC-SHA256, P="passwd", S="salt", c=1 (first 32 bytes)
    assert hash_pin("passwd", b"salt", 1) == (
        "pbkdf2_sha256$1$73616c74$55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
    )


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "pbkdf2_sha256$1000$0001020304050607",  # missing hash
        "pbkdf2_sha256$0$000102030405060708090a0b0c0d0e0f$" + "00" * 32,  # zero iterations
        "pbkdf2_sha256$1000$0001$" + "00" * 32,  # salt too short
        "pbkdf2_sha256$1000$zz0102030405060708090a0b0c0d0e0f$" + "00" * 32,
        "pbkdf2_sha256$1000$000102030405060708090a0b0c0d0e0f$" + "00" * 31,
    ],
)
def test_malformed_hashes_never_verify(stored: str) -> None:
    assert not usable(stored)
    assert not verify_pin(stored, PIN)


def test_verify_and_duress_variant() -> None:
    assert verify_pin(PIN_HASH, PIN) and not verify_pin(PIN_HASH, "2467") and not verify_pin(PIN_HASH, "")
    assert (duress_variant("2468"), duress_variant("1239")) == ("2469", "1230")


# --- void ---------------------------------------------------------------------

SUPER = member(member_no="S9", role="supervisor")


def _sold() -> tuple[SaleRecord, dict]:
    out = sale(2000)
    record = SaleRecord.of("T-1", "M0001", SaleRequest(2000, "REF1"), out, NOON.now)
    return record, apply({}, out.bumps)


@pytest.mark.parametrize(("after_s", "reason"), [(0, "voided"), (600, "voided"), (601, "void_expired")])
def test_void_within_the_window(after_s: int, reason: str) -> None:
    record, tallies = _sold()
    out = decide_void(CFG, SUPER, record, VoidRequest(tx_id="T-1"), Moment(NOON.now + after_s))
    assert out.decision.reason == reason
    if reason == "voided":
        d = out.decision
        assert (d.amount_fen, d.subsidy_fen, d.to_pay_fen, d.detail["voids"]) == (2000, 100, 1900, "T-1")
        back = apply(tallies, out.bumps)
        assert all((back[k].count, back[k].subsidy_fen) == (0, 0) for k in (DAY, MONTH, BUDGET))


def test_void_refusals() -> None:
    record, _ = _sold()
    by_ref = VoidRequest(ecr_ref="REF1")
    assert decide_void(CFG, member(), record, by_ref, NOON).decision.reason == "not_supervisor"
    assert decide_void(CFG, SUPER, None, by_ref, NOON).decision.reason == "nothing_to_void"
    assert decide_void(CFG, SUPER, record, VoidRequest(ecr_ref="REF2"), NOON).decision.reason == "nothing_to_void"
    assert decide_void(CFG, SUPER, replace(record, voided=True), by_ref, NOON).decision.reason == "already_voided"
    untrusted = Moment(NOON.now, trusted=False, on_untrusted="allow")
    assert decide_void(CFG, SUPER, record, by_ref, untrusted).decision.reason == "clock_untrusted"
    assert decide_void(CFG, SUPER, record, by_ref, NOON).decision.reason == "voided"


def test_void_does_not_restore_pin_tries() -> None:
    out = sale(6000, PIN_CFG, apply({}, sale(6000, PIN_CFG, pin="0000").bumps), pin=PIN)
    record = SaleRecord.of("T-2", "M0001", SaleRequest(6000), out, NOON.now)
    assert {b.key[0] for b in out.bumps} == {"pos", "pin_fail"}
    assert {b.key[0] for b in record.bumps} == {"pos"}


def test_config_from_toml_and_validation() -> None:
    table = tomllib.loads(
        """
        merchant_id = "shop-1"
        category = "food"
        member_day_cap_fen = 300
        [rates_bp.food]
        "0" = 500
        "3" = 800
        """
    )
    cfg = load_section(PosConfig, table, "terminal.toml", "pos")
    assert cfg.rate_bp(4) == 800 and cfg.member_day_cap_fen == 300 and cfg.pin.max_tries == 3
    with pytest.raises(ConfigError, match="must be 0..10000"):
        PosConfig("m", "food", {"food": {"0": 10_001}})
    with pytest.raises(ConfigError, match="whole number"):
        PosConfig("m", "food", {"food": {"gold": 100}})
    with pytest.raises(ConfigError, match="at least 0"):
        load_section(PosConfig, {**table, "offline_floor_fen": -1}, "terminal.toml", "pos")


def test_every_reason_word_has_member_texts_in_the_modes_doc() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "modes.md").read_text(encoding="utf-8")
    table = re.finditer(r"^\| `(\w+)` \|([^|]+)\|([^|]+)\|$", doc, re.M)
    rows = {m.group(1): (m.group(2).strip(), m.group(3).strip()) for m in table}
    words = pos.REASONS | venue.REASONS | canteen.REASONS | door.REASONS | pin.REASONS
    assert words <= set(rows), sorted(words - set(rows))
    assert all(zh and en for zh, en in rows.values())
