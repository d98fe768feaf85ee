"""Screens: rendered in the core and pushed through luma's dummy device, compared to golden PNGs.

Regenerate the goldens after an intended change with UNIONTERM_UPDATE_GOLDEN=1
and look at them before committing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from luma.core.device import dummy
from PIL import Image, ImageChops

from drivers.oled import LumaDisplay
from terminal.model import Decision, Member, MemberStatus, Verdict
from terminal.ui import decision_screen, idle_screen, render

GOLDEN = Path(__file__).parent / "golden"
MEMBER = Member("M0000001", "王*明", "ORG-1001", MemberStatus.ACTIVE)

SCREENS = {
    "idle_zh": idle_screen("zh", "SIM-0001"),
    "approve_zh": decision_screen("zh", Decision(Verdict.APPROVE, "ok"), MEMBER),
    "deny_blocked_zh": decision_screen("zh", Decision.deny("card_blocked"), None),
    "deny_unknown_en": decision_screen("en", Decision.deny("unknown_card"), None),
}


@pytest.mark.parametrize("name", sorted(SCREENS))
def test_screen_matches_golden(name: str, tmp_path: Path) -> None:
    display = LumaDisplay(dummy(width=128, height=64, mode="1"), capture_dir=tmp_path)
    display.show(render(SCREENS[name], display.size))
    shown = display.device.image.convert("1")
    golden = GOLDEN / f"{name}.png"
    if os.environ.get("UNIONTERM_UPDATE_GOLDEN"):
        shown.save(golden)
    expected = Image.open(golden).convert("1")
    assert ImageChops.difference(shown.convert("L"), expected.convert("L")).getbbox() is None, f"{name} differs from {golden}"
    assert display.last_capture is not None and display.last_capture.exists()


def test_deny_and_approve_differ_and_are_not_blank() -> None:
    a = render(SCREENS["approve_zh"])
    d = render(SCREENS["deny_blocked_zh"])
    assert a.getbbox() is not None and d.getbbox() is not None
    assert ImageChops.difference(a.convert("L"), d.convert("L")).getbbox() is not None
