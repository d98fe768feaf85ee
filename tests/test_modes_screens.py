"""The mode screens: every reason a rule can give has words in both languages, money is
shown to the fen, and the longest lines still fit the 128-pixel OLED."""

from __future__ import annotations

import pytest
from PIL import ImageFont

from terminal.model import Decision, Member, MemberStatus, Verdict
from terminal.rules import canteen, door, pin, pos, venue
from terminal.rules.clock import CLOCK_UNTRUSTED
from terminal.screens import LABELS, alarm, door_idle, meal_result, money, sale_pending, sale_result
from terminal.ui import FONT_BODY, TEXTS

REASONS = pos.REASONS | venue.REASONS | canteen.REASONS | door.REASONS | pin.REASONS | {CLOCK_UNTRUSTED}
ELIGIBILITY = {"unknown_card", "card_blocked", "member_suspended", "member_left", "expired", "not_yet_valid",
               "list_stale", "no_sale"}
MEMBER = Member("M1", "欧阳*明", "org", MemberStatus.ACTIVE)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_every_reason_has_words(lang: str) -> None:
    missing = sorted(r for r in REASONS | ELIGIBILITY if r not in TEXTS[lang])
    assert missing == []


def test_labels_exist_in_both_languages() -> None:
    assert set(LABELS["zh"]) == set(LABELS["en"])


@pytest.mark.parametrize(("fen", "text"), [(0, "¥0.00"), (1, "¥0.01"), (99, "¥0.99"), (1999, "¥19.99"),
                                           (100_000_000, "¥1000000.00"), (-2000, "-¥20.00")])
def test_money_to_the_fen(fen: int, text: str) -> None:
    assert money(fen) == text


def test_english_by_config() -> None:
    d = Decision(Verdict.APPROVE, "ok", 1999, 99, 1900, True)
    assert sale_result("en", d).lines == ("Price ¥19.99", "Discount ¥0.99", "To pay ¥19.00")
    assert sale_result("en", Decision.deny("limit_reached"), 1999).lines == ("Limit reached", "Pay full price ¥19.99")
    assert alarm("en", "held_open", "GATE-1").lines == ("Door held open", "GATE-1")


def width(line: str) -> float:
    path, index, size = FONT_BODY
    return ImageFont.truetype(path, size, index=index).getlength(line)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_longest_lines_fit_the_display(lang: str) -> None:
    big = Decision(Verdict.APPROVE, "ok", 999_999, 20_000, 979_999, True,
                   {"window": "breakfast", "served_in_window": 999})
    screens = [sale_result(lang, big), sale_pending(lang, 999_999, "X" * 20), meal_result(lang, big, MEMBER),
               door_idle(lang, "GATE-0001", "normal", True), alarm(lang, "forced_open", "GATE-0001")]
    for screen in screens:
        for line in screen.lines:
            assert width(line) <= 126, (lang, line)
