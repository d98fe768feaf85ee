"""What the member sees and hears: screens, texts, LED and beep patterns.

Screens are values (:class:`Screen`) rendered to a 1-bit PIL image here, in
the core, so the display driver only has to push pixels and the golden-image
tests cover the real layout. Text is Chinese by default. On a 128x64
monochrome OLED anti-aliased faces turn to mush, so the renderer picks
bitmap strikes: WenQuanYi Zen Hei *Sharp* (face 1 of wqy-zenhei.ttc) at 12 px
for body lines and 16 px for the headline (Unifont at 16 px was checked and
reads thinner).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from .hardware import Light, Outputs
from .model import Decision, Member

log = logging.getLogger("unionterm.ui")

FONT_BODY = ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 1, 12)
FONT_HEAD = ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 1, 16)

#: Member-facing words for every reason a decision can carry.
TEXTS: dict[str, dict[str, str]] = {
    "zh": {
        "idle": "请刷卡",
        "ok": "请通行",
        "unknown_card": "非会员卡",
        "card_blocked": "卡已挂失",
        "member_suspended": "会籍已暂停",
        "member_left": "已退会",
        "expired": "会员卡已过期",
        "not_yet_valid": "会员卡未生效",
        "card_not_genuine": "卡片验证失败",
        "card_unreadable": "读卡失败 请重刷",
        "card_removed": "请勿移开卡片",
        "card_error": "读卡失败",
        "sam_unavailable": "安全模块故障",
        "storage_error": "暂停服务",
        "denied": "拒绝",
        "approved": "通过",
        "offline": "离线",
        "clock_unsynced": "时钟未同步",
        "terminal": "终端",
        "goodbye": "停止服务",
        # [modes] the reason words of docs/modes.md
        "list_stale": "名单过旧 请联网",
        "clock_untrusted": "时钟未校准",
        "already_served": "已就餐",
        "limit_reached": "已达限额",
        "budget_exhausted": "优惠额度已用完",
        "offline_limit": "离线限额",
        "bad_amount": "金额无效",
        "no_discount": "无优惠",
        "pin_required": "请输入密码",
        "wrong_pin": "密码错误",
        "pin_locked": "密码已锁定",
        "pin_not_set": "未设密码",
        "voided": "已撤销",
        "not_supervisor": "需主管卡",
        "nothing_to_void": "无可撤销交易",
        "already_voided": "交易已撤销",
        "void_expired": "已超撤销时限",
        "unknown_offering": "项目不存在",
        "not_eligible": "不在服务范围",
        "outside_hours": "非服务时间",
        "closed_today": "今日不开放",
        "no_access": "无权通行",
        "passback": "重复进出",
        "lockdown": "封闭管理中",
        "free_passage": "自由通行",
        "door_free": "门已开放",
        "visitor_unbounded": "访客卡无有效期",
        "no_sale": "请先输入金额",
    },
    "en": {
        "idle": "Tap card",
        "ok": "Welcome",
        "unknown_card": "Not a member",
        "card_blocked": "Card blocked",
        "member_suspended": "Membership paused",
        "member_left": "No longer member",
        "expired": "Card expired",
        "not_yet_valid": "Card not yet valid",
        "card_not_genuine": "Card not genuine",
        "card_unreadable": "Read failed, retry",
        "card_removed": "Keep card still",
        "card_error": "Card read error",
        "sam_unavailable": "Security module down",
        "storage_error": "Out of service",
        "denied": "Denied",
        "approved": "Approved",
        "offline": "Offline",
        "clock_unsynced": "Clock not synced",
        "terminal": "Terminal",
        "goodbye": "Out of service",
        # [modes] the reason words of docs/modes.md
        "list_stale": "Member list too old",
        "clock_untrusted": "Clock not set",
        "already_served": "Already served",
        "limit_reached": "Limit reached",
        "budget_exhausted": "Discount budget used up",
        "offline_limit": "Offline limit",
        "bad_amount": "Invalid amount",
        "no_discount": "No discount",
        "pin_required": "Enter PIN",
        "wrong_pin": "Wrong PIN",
        "pin_locked": "PIN locked",
        "pin_not_set": "No PIN set",
        "voided": "Voided",
        "not_supervisor": "Supervisor card needed",
        "nothing_to_void": "Nothing to void",
        "already_voided": "Already voided",
        "void_expired": "Too late to void",
        "unknown_offering": "Unknown offering",
        "not_eligible": "Not eligible",
        "outside_hours": "Outside hours",
        "closed_today": "Closed today",
        "no_access": "No access",
        "passback": "Anti-passback",
        "lockdown": "Lockdown",
        "free_passage": "Free passage",
        "door_free": "Door open",
        "visitor_unbounded": "Visitor card has no end date",
        "no_sale": "Enter amount first",
    },
}


def text(lang: str, key: str) -> str:
    """The member-facing text for ``key``; falls back to the key itself, never raises."""
    return TEXTS.get(lang, TEXTS["en"]).get(key, key)


@dataclass(frozen=True)
class Screen:
    """One screenful: a headline, up to three body lines, and whether to invert the headline."""

    headline: str
    lines: tuple[str, ...] = ()
    alert: bool = False


def idle_screen(lang: str, terminal_id: str, status: str = "") -> Screen:
    lines = (f"{text(lang, 'terminal')} {terminal_id}",) + ((status,) if status else ())
    return Screen(text(lang, "idle"), lines)


def decision_screen(lang: str, decision: Decision, member: Member | None) -> Screen:
    """The screen after a tap: approve shows the masked name, deny says why in words."""
    if decision.approved:
        lines = [member.name] if member else []
        lines.append(text(lang, "approved"))
        return Screen(text(lang, decision.reason), tuple(lines))
    return Screen(text(lang, "denied"), (text(lang, decision.reason),), alert=True)


@functools.lru_cache(maxsize=8)
def _font(spec: tuple[str, int, int]) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    path, index, size = spec
    if os.path.exists(path):
        return ImageFont.truetype(path, size, index=index)
    log.warning("event=font_missing path=%s fallback=default", path)
    return ImageFont.load_default()


def render(screen: Screen, size: tuple[int, int] = (128, 64)) -> Image.Image:
    """Draw ``screen`` into a mode-"1" image of the display's size."""
    image = Image.new("1", size, 0)
    draw = ImageDraw.Draw(image)
    head, body = _font(FONT_HEAD), _font(FONT_BODY)
    width = size[0]
    if screen.alert:
        draw.rectangle((0, 0, width - 1, 17), fill=1)
    tw = draw.textlength(screen.headline, font=head)
    draw.text(((width - tw) // 2, 0), screen.headline, font=head, fill=0 if screen.alert else 1)
    y = 20
    for line in screen.lines[:3]:
        draw.text((2, y), line, font=body, fill=1)
        y += 14
    return image


# --- lights and sounds -----------------------------------------------------------


@dataclass(frozen=True)
class Feedback:
    """A recognisable light + sound pattern; kept distinct so a member knows by ear."""

    light: Light
    light_s: float
    beep: tuple[float, ...]


APPROVE = Feedback(Light.GREEN, 1.0, (0.08,))
DENY = Feedback(Light.RED, 2.0, (0.6,))
ALARM = Feedback(Light.RED, 5.0, (0.15, 0.1, 0.15, 0.1, 0.15, 0.1, 0.15))


def signal(outputs: Outputs, feedback: Feedback) -> None:
    outputs.flash(feedback.light, feedback.light_s)
    outputs.beep(feedback.beep)
