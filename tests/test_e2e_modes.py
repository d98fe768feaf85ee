"""The three modes end to end: real pcscd + vpcd cards, gpiozero MockFactory pins, luma dummy
screen, mosquitto with a back-office observer, and the cash register on a pty.

For each mode the screen is checked pixel for pixel against the screen rendered from the
numbers the *other* side saw (the cash register's reply, the MQTT record), so the subsidy,
the screen and the uplink record are shown to agree, not each to look plausible.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image, ImageChops
from rulekit import at
from test_modes_access import door
from test_modes_canteen import canteen
from test_modes_pos import pos

from simulator.cards.uid import UidCard
from simulator.demo import SimClock
from simulator.ecr import PtyCashRegister
from simulator.observer import Observer
from simulator.rig import Rig
from simulator.services import Mosquitto, Pcscd
from terminal.modes.pos import PendingSale
from terminal.screens import money
from terminal.ui import Screen, render

pytestmark = pytest.mark.stack

STRANGER = UidCard(bytes.fromhex("04C0FFEE123456"))


@contextlib.asynccontextmanager
async def mode_rig(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto, mode: str, sections: str, clock: SimClock,
                   ecr_port: str = "") -> AsyncIterator[Rig]:
    if not pcscd.running:
        pcscd.start()
    async with Rig(tmp_path / "rig", mode=mode, pcscd=pcscd, broker=broker, pulse_ms=400, ecr_port=ecr_port,
                   sections=sections, terminal_options=clock.options()) as rig:
        yield rig


def shows(rig: Rig, expected: Screen) -> bool:
    """Is ``expected`` exactly what the OLED shows now (the captured PNG)?"""
    capture = rig.hardware.display.last_capture
    assert capture is not None and capture.exists()
    with Image.open(capture) as shown:
        return ImageChops.difference(shown.convert("L"), render(expected).convert("L")).getbbox() is None


async def until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_member_buys_at_a_partner_merchant_over_the_cash_register(
        tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> None:
    async with PtyCashRegister() as ecr, \
            mode_rig(tmp_path, pcscd, broker, "pos", pos(), SimClock(at("2026-12-07 10:00:00")), ecr.port) as rig, \
            Observer(broker.port).running() as backoffice:
        await until(lambda: rig.terminal.uplink.connected.is_set())
        assert (await ecr.status()).state == "ready"
        person = rig.people[0]
        asked = asyncio.create_task(ecr.sale(12345, "POS7-000042", timeout=15))
        await until(lambda: isinstance(rig.terminal.mode.pending, PendingSale))
        outcome = await rig.tap(rig.union_card(person))  # the member's DESFire union card
        reply = await asked
        tx = (await backoffice.wait_for("/tx"))[0].json()
        assert shows(rig, Screen("交易成功", (f"原价 {money(tx['amount_fen'])}", f"优惠 {money(tx['subsidy_fen'])}",
                                            f"实付 {money(tx['to_pay_fen'])}")))
    assert outcome.lookup.member.member_no == person.member_no and outcome.lookup.hot is False
    assert (reply.approved, reply.amount_fen, reply.discount_fen, reply.to_pay_fen) == (True, 12345, 617, 11728)
    assert (tx["member_no"], tx["profile"], tx["amount_fen"], tx["subsidy_fen"], tx["to_pay_fen"]) == (
        person.member_no, "union", reply.amount_fen, reply.discount_fen, reply.to_pay_fen)
    assert tx["detail"]["ecr_ref"] == "POS7-000042" and reply.tx_id == f"SIM-0001-{tx['seq']:06d}"


async def test_canteen_lunch_then_a_second_tap(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> None:
    clock = SimClock(at("2026-12-07 11:58:00"))
    async with mode_rig(tmp_path, pcscd, broker, "canteen", canteen(), clock) as rig, \
            Observer(broker.port).running() as backoffice:
        person = rig.people[0]
        lunch = await rig.tap(UidCard(person.uid))
        assert shows(rig, Screen("午餐 请用餐", (f"{person.name} 已售 1份", "补贴 ¥10.00", "实付 ¥5.00")))
        clock.step(120)
        second = await rig.tap(UidCard(person.uid))
        assert shows(rig, Screen("拒绝", ("已就餐", "首次 11:58:00", "午餐"), alert=True))
        txs = [m.json() for m in await backoffice.wait_for("/tx", 2)]
    assert lunch.decision.approved and second.decision.reason == "already_served"
    assert [(t["decision"], t["reason"], t["to_pay_fen"]) for t in txs] == [
        ("approve", "ok", 500), ("deny", "already_served", 0)]
    assert txs[1]["detail"]["first_at"] == "11:58:00" and txs[1]["member_no"] == person.member_no


async def test_door_opened_held_open_into_an_alarm_and_a_stranger_denied(
        tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> None:
    async with mode_rig(tmp_path, pcscd, broker, "access", door(), SimClock(at("2026-12-07 08:00:00"))) as rig, \
            Observer(broker.port).running() as backoffice:
        contact = rig.pin("door")
        contact.drive_low()  # shut
        member = rig.people[0]
        opened = await rig.tap(UidCard(member.uid))
        assert rig.pin_history("relay") == [False, True]
        contact.drive_high()  # the member walks through ... and the door stays open
        await backoffice.wait_for("/tx", 2, timeout=5)
        assert shows(rig, Screen("报警", ("门未关闭", "GATE-1"), alert=True))
        contact.drive_low()
        stranger = await rig.tap(STRANGER)
        txs = [m.json() for m in await backoffice.wait_for("/tx", 4)]
        assert rig.pin_history("relay") == [False, True, False]  # relocked, and never for the stranger
    assert opened.decision.approved and stranger.decision.reason == "unknown_card"
    assert [(t["kind"], t["reason"]) for t in txs] == [
        ("tap", "ok"), ("alarm", "held_open"), ("alarm", "alarm_cleared"), ("tap", "unknown_card")]
    assert txs[1]["detail"]["door_id"] == "GATE-1" and txs[0]["member_no"] == member.member_no
