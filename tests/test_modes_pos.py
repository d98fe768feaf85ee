"""The merchant counter in the running terminal: the cash register on a pty, replies only after
the journal, retransmissions, PIN above the limit, supervisor void, keyed amounts, the daily cap
across a clock stepped back over midnight, and a union venue."""

from __future__ import annotations

import asyncio
from pathlib import Path

from modekit import Bench, bench, journal_bodies, wait_until
from rulekit import PIN, PIN_HASH, at

from simulator.demo import SimClock
from simulator.ecr import PtyCashRegister
from terminal.ecr import ErrorReply, Reply, Sale, StatusReply, encode
from terminal.modes.pos import PendingSale, PendingVoid

POS = """
[pos]
merchant_id = "MER-2001"
category = "pharmacy"
max_subsidy_per_tx_fen = 2000
member_day_cap_fen = {day_cap}
pin_above_fen = 20000
offline_floor_fen = {floor}
void_window_s = 600
rates_bp.pharmacy = {{ "1" = 500, "3" = 800 }}
"""


def pos(day_cap: int = 3000, floor: int = 1_000_000) -> str:
    return POS.format(day_cap=day_cap, floor=floor)


async def sale(b: Bench, ecr: PtyCashRegister, amount: int, ref: str, who: object) -> tuple[Reply, object]:
    """The cash register asks, the terminal shows the sale, ``who`` taps, the reply comes back."""
    asked = asyncio.create_task(ecr.sale(amount, ref, timeout=10))
    await wait_until(lambda: isinstance(b.terminal.mode.pending, PendingSale))
    outcome = await b.tap(who)  # type: ignore[arg-type]
    return await asked, outcome


async def test_sale_over_the_cash_register_link(tmp_path: Path) -> None:
    clock = SimClock(at("2026-12-07 10:00:00"))
    async with PtyCashRegister() as ecr, bench(tmp_path, "pos", pos(), clock=clock, ecr_port=ecr.port) as b:
        assert (await ecr.status()).state == "offline"  # no broker here, but serving (offline floor)
        asked = asyncio.create_task(ecr.sale(1999, "POS1-000123", timeout=10))
        await wait_until(lambda: isinstance(b.terminal.mode.pending, PendingSale))
        assert b.screen.headline == "请刷会员卡" and b.screen.lines == ("原价 ¥19.99", "POS1-000123")
        assert (await ecr.status()).state == "busy"
        outcome = await b.tap(b.people[0])
        reply = await asked
        assert (reply.approved, reply.reason, reply.amount_fen, reply.discount_fen, reply.to_pay_fen) == (
            True, "ok", 1999, 99, 1900)  # 5 % rounded down, as docs/ecr-link.md's example
        assert reply.tx_id == f"SIM-0001-{outcome.record.seq:06d}"
        assert b.screen.lines == ("原价 ¥19.99", "优惠 ¥0.99", "实付 ¥19.00")
        body = journal_bodies(b)[-1]
        assert (body["amount_fen"], body["subsidy_fen"], body["to_pay_fen"]) == (1999, 99, 1900)
        assert body["detail"]["ecr_ref"] == "POS1-000123" and body["detail"]["source"] == "ecr"

        # The cash register missed the reply and sends the same request again: same answer, no new record.
        seq_before = b.terminal.journal.last_seq
        ecr.send(Sale(reply.seq, 1999, "POS1-000123"))
        again = await ecr.next_frame()
        assert again == reply and b.terminal.journal.last_seq == seq_before

        refused, stranger = await sale(b, ecr, 8800, "POS1-000124", bytes.fromhex("04C0FFEE123456"))
        assert (refused.approved, refused.reason, refused.discount_fen, refused.to_pay_fen) == (
            False, "unknown_card", 0, 8800)
        assert b.screen.lines == ("非会员卡", "请付全款 ¥88.00")
        assert b.terminal.mode.pending is None


async def test_corrupt_frames_are_answered_never_acted_on(tmp_path: Path) -> None:
    clock = SimClock(at("2026-12-07 10:00:00"))
    async with PtyCashRegister() as ecr, bench(tmp_path, "pos", pos(), clock=clock, ecr_port=ecr.port) as b:
        frame = bytearray(encode(Sale(7, 1999, "POS1-9")))
        frame[-3] ^= 0x01  # one bit of the CRC
        ecr.send_raw(bytes(frame))
        error = await ecr.next_frame()
        assert isinstance(error, ErrorReply) and error.code == "checksum"
        ecr.send_raw(encode(Sale(8, 500, "POS1-10"))[:-4])  # a frame cut short, then silence
        error = await ecr.next_frame()
        assert isinstance(error, ErrorReply) and error.code == "timeout"
        ecr.send(StatusReply(9, "ready", "X"))  # a terminal-only message from the register
        assert await ecr.next_frame() == ErrorReply(9, "format")
        assert b.terminal.mode.pending is None and journal_bodies(b) == []


async def test_pin_above_the_limit_typed_on_the_keypad(tmp_path: Path) -> None:
    clock = SimClock(at("2026-12-07 10:00:00"))
    async with PtyCashRegister() as ecr, \
            bench(tmp_path, "pos", pos(), clock=clock, ecr_port=ecr.port, keypad=True) as b:
        assert b.keypad is not None
        member = b.people[0]
        b.upsert(member, pin_hash=PIN_HASH)
        asked = asyncio.create_task(ecr.sale(25000, "POS1-500", timeout=20))
        await wait_until(lambda: isinstance(b.terminal.mode.pending, PendingSale))
        tapped = asyncio.create_task(b.tap(member, timeout=20))
        await wait_until(lambda: b.screen.headline == "请输入密码")
        assert b.screen.lines == ("_", "¥250.00")
        await b.keypad.type(PIN[:2])
        await wait_until(lambda: b.screen.lines[0] == "**")  # stars, never the digits
        await b.keypad.type(PIN[2:] + "#")
        outcome = await tapped
        reply = await asked
        assert outcome.decision.approved and (reply.discount_fen, reply.to_pay_fen) == (1250, 23750)

        asked = asyncio.create_task(ecr.sale(30000, "POS1-501", timeout=20))
        await wait_until(lambda: isinstance(b.terminal.mode.pending, PendingSale))
        tapped = asyncio.create_task(b.tap(member, timeout=20))
        await wait_until(lambda: b.screen.headline == "请输入密码")
        await b.keypad.type("1111#")
        assert (await tapped).decision.reason == "wrong_pin"
        reply = await asked
        assert (reply.approved, reply.reason, reply.to_pay_fen) == (False, "wrong_pin", 30000)
        fails = [r for r in journal_bodies(b) if r["reason"] == "wrong_pin"]
        assert fails[0]["detail"]["bumps"][0]["key"][0] == "pin_fail"  # the try counts across restarts


async def test_supervisor_voids_the_last_sale(tmp_path: Path) -> None:
    clock = SimClock(at("2026-12-07 10:00:00"))
    async with PtyCashRegister() as ecr, bench(tmp_path, "pos", pos(day_cap=1000), clock=clock,
                                               ecr_port=ecr.port) as b:
        member, supervisor = b.people[0], b.people[1]
        b.upsert(supervisor, role="supervisor")
        first, _ = await sale(b, ecr, 20000, "POS1-1", member)
        assert first.discount_fen == 1000  # the whole daily cap
        capped, _ = await sale(b, ecr, 2000, "POS1-2", member)
        assert (capped.approved, capped.reason) == (False, "limit_reached")

        asked = asyncio.create_task(ecr.void(ecr_ref="POS1-1", timeout=10))
        await wait_until(lambda: isinstance(b.terminal.mode.pending, PendingVoid))
        assert b.screen.headline == "撤销 请刷主管卡"
        wrong = await b.tap(member)
        assert wrong.decision.reason == "not_supervisor"
        assert (await asked).reason == "not_supervisor"
        asked = asyncio.create_task(ecr.void(ecr_ref="POS1-1", timeout=10))
        await wait_until(lambda: isinstance(b.terminal.mode.pending, PendingVoid))
        voided = await b.tap(supervisor)
        reply = await asked
        assert (reply.approved, reply.reason, reply.amount_fen, reply.discount_fen) == (True, "voided", 20000, 1000)
        assert voided.record.fields["kind"] == "void"
        assert b.screen.headline == "撤销成功"
        again, _ = await sale(b, ecr, 2000, "POS1-3", member)  # the void gave the day's cap back
        assert (again.approved, again.discount_fen) == (True, 100)

        twice = asyncio.create_task(ecr.void(ecr_ref="POS1-1", timeout=10))
        await wait_until(lambda: isinstance(b.terminal.mode.pending, PendingVoid))
        await b.tap(supervisor)
        assert (await twice).reason == "nothing_to_void"  # only the last sale, and POS1-3 is it now


async def test_daily_cap_holds_when_the_clock_steps_back_over_midnight(tmp_path: Path) -> None:
    clock = SimClock(at("2026-12-08 00:10:00"))  # Tuesday, just after midnight
    async with bench(tmp_path, "pos", pos(day_cap=500), clock=clock, keypad=True) as b:
        assert b.keypad is not None
        await b.keypad.type("10000#")  # no cash register: the cashier keys ¥100.00
        await wait_until(lambda: isinstance(b.terminal.mode.pending, PendingSale))
        assert (await b.tap(b.people[0])).decision.subsidy_fen == 500
        clock.step(-3600)  # Monday 23:10 on the wall: Monday's cap would still be unused
        await b.keypad.type("10000#")
        await wait_until(lambda: isinstance(b.terminal.mode.pending, PendingSale))
        assert (await b.tap(b.people[0])).decision.reason == "limit_reached"
    async with bench(tmp_path, "pos", pos(day_cap=500), clock=clock, keypad=True, restart_of=b) as again:
        assert again.keypad is not None
        await again.keypad.type("10000#")
        await wait_until(lambda: isinstance(again.terminal.mode.pending, PendingSale))
        assert (await again.tap(again.people[0])).decision.reason == "limit_reached"


async def test_offline_above_the_floor_is_refused(tmp_path: Path) -> None:
    clock = SimClock(at("2026-12-07 10:00:00"))
    async with PtyCashRegister() as ecr, bench(tmp_path, "pos", pos(floor=5000), clock=clock,
                                               ecr_port=ecr.port) as b:
        small, _ = await sale(b, ecr, 5000, "POS1-1", b.people[0])
        big, _ = await sale(b, ecr, 5001, "POS1-2", b.people[0])
        assert (small.approved, big.approved, big.reason) == (True, False, "offline_limit")


VENUE = """
[venue]
venue_id = "PALACE-1"
kind = "culture"
offerings.concert = { list_price_fen = 8000, member_price_fen = { "1" = 3000 }, period = "month", visits_per_period = 2 }
offerings.course = { list_price_fen = 0, attendance = true }
"""


async def test_union_venue_member_price_and_visits(tmp_path: Path) -> None:
    clock = SimClock(at("2026-12-07 19:00:00"))
    async with bench(tmp_path, "pos", VENUE, clock=clock, keypad=True) as b:
        assert b.keypad is not None
        member = b.people[0]
        visits = [(await b.tap(member)).decision for _ in range(3)]
        assert [(d.reason, d.to_pay_fen, d.subsidy_fen) for d in visits] == [
            ("ok", 3000, 5000), ("ok", 3000, 5000), ("limit_reached", 0, 0)]
        await b.keypad.type("2#")  # the operator selects the course
        await wait_until(lambda: b.terminal.mode.offering == "course")
        attend = await b.tap(member)
        assert attend.decision.approved and attend.record.fields["kind"] == "visit"
        assert (await b.tap(member)).decision.reason == "already_served"
