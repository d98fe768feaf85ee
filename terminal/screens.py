"""The screens of the three modes: money at the counter, meals at the canteen, the door.

Built as :class:`terminal.ui.Screen` values (a headline and at most three
short lines) so :func:`terminal.ui.render` draws them with the same bitmap
CJK font as every other screen, and tests read their text without OCR.
Reason words come from :data:`terminal.ui.TEXTS`; the labels the modes add
(original price, subsidy, to pay, meal names, door states) live here.

A 128x64 OLED line holds about ten Chinese characters, so every line is a
label and one value: ``原价 ¥19.99``, ``已售 12份``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .model import Decision, Member
from .rules.counters import ALREADY_SERVED
from .ui import Screen, text

LABELS: dict[str, dict[str, str]] = {
    "zh": {
        "sale_ok": "交易成功",
        "meal_ok": "请用餐",
        "visit_ok": "欢迎光临",
        "void_ok": "撤销成功",
        "amount": "原价",
        "subsidy": "优惠",
        "to_pay": "实付",
        "allowance": "补贴",
        "full_price": "请付全款",
        "sale_pending": "请刷会员卡",
        "enter_amount": "请输入金额",
        "enter_pin": "请输入密码",
        "void_pending": "撤销 请刷主管卡",
        "void_of": "撤销",
        "mode_pending": "请刷主管卡",
        "first_at": "首次 {time}",
        "served": "已售 {n}份",
        "meal_no": "第{n}份",
        "counted": "已计数 第{n}份",
        "headcount": "今日第{n}位",
        "remaining": "本期剩余 {n}次",
        "offering": "项目 {name}",
        "no_window": "当前非供餐时间",
        "window_times": "{start}-{end}",
        "door_closed": "门已关闭",
        "door_open": "门已开启",
        "door_released": "已开锁",
        "alarm": "报警",
        "held_open": "门未关闭",
        "forced_open": "强行开门",
        "alarm_cleared": "报警解除",
        "breakfast": "早餐",
        "lunch": "午餐",
        "dinner": "晚餐",
        "night": "夜宵",
        "untrusted": "时钟未同步",
        "normal": "恢复正常",
    },
    "en": {
        "sale_ok": "Approved",
        "meal_ok": "Enjoy your meal",
        "visit_ok": "Welcome",
        "void_ok": "Voided",
        "amount": "Price",
        "subsidy": "Discount",
        "to_pay": "To pay",
        "allowance": "Allowance",
        "full_price": "Pay full price",
        "sale_pending": "Tap member card",
        "enter_amount": "Enter amount",
        "enter_pin": "Enter PIN",
        "void_pending": "Void: supervisor card",
        "void_of": "Void",
        "mode_pending": "Supervisor card",
        "first_at": "First at {time}",
        "served": "Served {n}",
        "meal_no": "Meal {n}",
        "counted": "Counted, no. {n}",
        "headcount": "Visitor no. {n} today",
        "remaining": "{n} visits left",
        "offering": "Offer {name}",
        "no_window": "No meal served now",
        "window_times": "{start}-{end}",
        "door_closed": "Door closed",
        "door_open": "Door open",
        "door_released": "Unlocked",
        "alarm": "ALARM",
        "held_open": "Door held open",
        "forced_open": "Door forced open",
        "alarm_cleared": "Alarm cleared",
        "breakfast": "Breakfast",
        "lunch": "Lunch",
        "dinner": "Dinner",
        "night": "Night meal",
        "untrusted": "Clock not synced",
        "normal": "Back to normal",
    },
}


def label(lang: str, key: str, **values: object) -> str:
    """A mode label (else a reason word from :mod:`terminal.ui`, else the key itself), filled in."""
    table = LABELS.get(lang, LABELS["en"])
    words = table[key] if key in table else text(lang, key)
    return words.format(**values) if values else words


def money(fen: int) -> str:
    """Integer fen as yuan for the screen: ``1999`` -> ``¥19.99``."""
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _screen(headline: str, lines: Iterable[str], alert: bool = False) -> Screen:
    return Screen(headline, tuple(line for line in lines if line)[:3], alert)


def denied(lang: str, decision: Decision, *more: str) -> Screen:
    """A refusal: the reason in words on the first line, then what to do about it."""
    return _screen(text(lang, "denied"), (text(lang, decision.reason), *more), alert=True)


def money_lines(lang: str, amount_fen: int, subsidy_fen: int, to_pay_fen: int,
                subsidy_key: str = "subsidy") -> tuple[str, str, str]:
    """Original amount, the union's part and what the member pays: the three numbers that must agree."""
    return (f"{label(lang, 'amount')} {money(amount_fen)}",
            f"{label(lang, subsidy_key)} {money(subsidy_fen)}",
            f"{label(lang, 'to_pay')} {money(to_pay_fen)}")


# -- merchant counter and venue ------------------------------------------------------------------


def sale_pending(lang: str, amount_fen: int, ecr_ref: str = "") -> Screen:
    """A sale waits for the member's card."""
    return _screen(label(lang, "sale_pending"), (f"{label(lang, 'amount')} {money(amount_fen)}", ecr_ref))


def amount_entry(lang: str, typed_fen: int, status: str = "") -> Screen:
    """The cashier keys the amount in fen; the screen shows it as yuan while typed."""
    return _screen(label(lang, "enter_amount"), (money(typed_fen), status))


def pin_entry(lang: str, digits: int, amount_fen: int = 0) -> Screen:
    """PIN pad: one star per digit, never the digits."""
    return _screen(label(lang, "enter_pin"), ("*" * digits or "_", money(amount_fen) if amount_fen else ""))


def void_pending(lang: str, ecr_ref: str = "", tx_id: str = "") -> Screen:
    return _screen(label(lang, "void_pending"), (ecr_ref, tx_id))


def sale_result(lang: str, decision: Decision, requested_fen: int = 0) -> Screen:
    """After the tap at a counter: the three amounts on approval, the full price on refusal
    (``requested_fen`` when the refusal came before the rule saw an amount, e.g. not a member)."""
    if decision.reason == "voided":
        return _screen(label(lang, "void_ok"), money_lines(lang, -decision.amount_fen, -decision.subsidy_fen,
                                                           -decision.to_pay_fen))
    if decision.approved:
        return _screen(label(lang, "sale_ok"), money_lines(lang, decision.amount_fen, decision.subsidy_fen,
                                                           decision.to_pay_fen))
    full = decision.amount_fen or requested_fen
    return denied(lang, decision, f"{label(lang, 'full_price')} {money(full)}" if full else "")


def visit_result(lang: str, decision: Decision, member: Member | None) -> Screen:
    """A venue check-in: the member price and the visits left."""
    if not decision.approved:
        return _detail_denial(lang, decision)
    d = decision.detail
    lines = [member.name if member else "", f"{label(lang, 'to_pay')} {money(decision.to_pay_fen)}"]
    lines.append(label(lang, "remaining", n=d["remaining"]) if "remaining" in d
                 else label(lang, "headcount", n=d.get("headcount", 0)))
    return _screen(label(lang, "visit_ok"), lines)


# -- canteen -----------------------------------------------------------------------------------


def window_name(lang: str, name: str) -> str:
    """A meal window's name as members know it; unknown names are shown as configured."""
    return label(lang, name) if name in LABELS["zh"] else name


def meal_result(lang: str, decision: Decision, member: Member | None) -> Screen:
    """After a canteen tap: the meal and what it cost, or why not (with the first time)."""
    if not decision.approved:
        return _detail_denial(lang, decision)
    d = decision.detail
    head = f"{window_name(lang, str(d.get('window', '')))} {label(lang, 'meal_ok')}".strip()
    served = label(lang, "served", n=d.get("served_in_window", 0))
    if d.get("count_only") or (decision.amount_fen == 0 and decision.to_pay_fen == 0):
        return _screen(head, (member.name if member else "", label(lang, "counted", n=d.get("served_in_window", 0))))
    who = f"{member.name} {served}" if member else served
    return _screen(head, (who, f"{label(lang, 'allowance')} {money(decision.subsidy_fen)}",
                          f"{label(lang, 'to_pay')} {money(decision.to_pay_fen)}"))


def _detail_denial(lang: str, decision: Decision) -> Screen:
    """A refusal with the one fact that explains it (when the meal was, which window)."""
    d: Mapping[str, object] = decision.detail
    if decision.reason == ALREADY_SERVED:
        return denied(lang, decision, label(lang, "first_at", time=d.get("first_at", "")),
                      window_name(lang, str(d.get("window", d.get("offering", "")))))
    return denied(lang, decision)


def canteen_idle(lang: str, window: str | None, times: tuple[str, str] | None, served: int,
                 status: str = "", keyed_fen: int = 0) -> Screen:
    """Waiting at the canteen: which meal is served now and how many so far (the running count)."""
    if window is None:
        return _screen(text(lang, "idle"), (label(lang, "no_window"), status))
    start, end = times or ("", "")
    first = f"{window_name(lang, window)} {label(lang, 'window_times', start=start[:5], end=end[:5])}"
    amount = f"{label(lang, 'amount')} {money(keyed_fen)}" if keyed_fen else ""
    return _screen(text(lang, "idle"), (first, label(lang, "served", n=served), amount or status))


# -- doors ---------------------------------------------------------------------------------------


def door_idle(lang: str, terminal_id: str, door_mode: str, is_open: bool, status: str = "") -> Screen:
    """Waiting at the door: the door's state (and lockdown / free passage, which members must know)."""
    state = label(lang, "door_open" if is_open else "door_closed")
    if door_mode != "normal":
        return _screen(text(lang, door_mode), (state, f"{text(lang, 'terminal')} {terminal_id}", status),
                       alert=door_mode == "lockdown")
    return _screen(text(lang, "idle"), (state, f"{text(lang, 'terminal')} {terminal_id}", status))


def door_result(lang: str, decision: Decision, member: Member | None) -> Screen:
    if not decision.approved:
        return denied(lang, decision)
    return _screen(label(lang, decision.reason), (member.name if member else "", label(lang, "door_released")))


def alarm(lang: str, notice: str, door_id: str) -> Screen:
    """A door alarm: inverted headline, what happened, which door."""
    if notice == "alarm_cleared":
        return _screen(label(lang, "alarm_cleared"), (door_id,))
    return _screen(label(lang, "alarm"), (label(lang, notice), door_id), alert=True)


def mode_change_pending(lang: str, target: str) -> Screen:
    """A door-state change keyed in, waiting for a supervisor's card."""
    return _screen(label(lang, "mode_pending"), (label(lang, target),))
