"""``unionterm-sim demo``: complete simulated terminals and a scripted scene for each mode.

Everything real except the cards, pins and display memory: a private pcscd
with a vpcd reader, a mosquitto broker, the production terminal code, and for
the merchant counter a cash register on a pty. ``--mode all`` (the default,
what ``make demo`` runs) plays the door, the merchant counter and the
canteen one after the other. Prints one line per step and the records the
back office received, and leaves every screen as a PNG (true 128x64 and a 4x
copy) under ``<out>/<mode>/``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from terminal import eventloop
from terminal.taps import Outcome
from terminal.cardref import card_ref
from terminal.modes.pos import PendingSale, PendingVoid
from terminal.rules.clock import TZ
from terminal.rules.door import DoorMode

from .cards.uid import UidCard
from .ecr import PtyCashRegister
from .observer import Observer
from .rig import Rig
from .vcard import CardBehaviour

MODES = ("access", "pos", "canteen")
STRANGER = UidCard(bytes.fromhex("04C0FFEE123456"))


class SimClock:
    """A wall clock set at will that then runs on in real time, and the monotonic clock under it.

    Given to the terminal as ``clock=`` and ``mono=``, it lets a scenario
    start at "a Monday at 11:58" and step the wall clock back an hour, while
    relay pulses and alarms still run in real seconds. ``synced`` is what the
    kernel would say (False: not NTP-synchronised, as on a Pi just booted).
    """

    def __init__(self, start: float | None = None, synced: bool = True) -> None:
        self._offset = 0.0
        self.synced = synced
        self.set(time.time() if start is None else start)

    def wall(self) -> tuple[int, bool]:
        return int((time.monotonic() + self._offset) * 1000), self.synced

    def mono(self) -> float:
        return time.monotonic()

    def now(self) -> float:
        return time.monotonic() + self._offset

    def set(self, unix: float) -> None:
        self._offset = unix - time.monotonic()

    def step(self, seconds: float) -> None:
        """Move the wall clock (negative: backwards, as an NTP correction or a technician may)."""
        self._offset += seconds

    def options(self) -> dict[str, object]:
        """``Terminal`` keyword arguments (``Rig(terminal_options=...)``)."""
        return {"clock": self.wall, "mono": self.mono}


def local_unix(text: str) -> float:
    """Unix time of an Asia/Shanghai ``YYYY-MM-DD HH:MM:SS``."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=TZ).timestamp()


# -- the configs the scenes run with (same schema as config/*.toml) --------------------------------

DOOR = """
[door]
door_id = "GATE-1"
release_s = 2
held_open_s = 3
failure_mode = "fail_secure"
grants = { "main-gate" = "always" }
lockdown_groups = ["security"]
"""

POS = """
[pos]
merchant_id = "MER-2001"
category = "pharmacy"
rates_bp.pharmacy = { "1" = 500, "3" = 800 }
max_subsidy_per_tx_fen = 2000
member_day_cap_fen = 3000
member_month_cap_fen = 20000
merchant_month_budget_fen = 5000000
offline_floor_fen = 5000
pin_above_fen = 50000
void_window_s = 600
"""

CANTEEN = """
[canteen]
canteen_id = "CANTEEN-1"
mode = "fixed"
calendar = { holidays = ["2027-01-01"] }

[[canteen.windows]]
name = "breakfast"
start = "06:30"
end = "09:00"
prices.staff = { price_fen = 500, allowance_fen = 300 }

[[canteen.windows]]
name = "lunch"
start = "11:00"
end = "13:30"
prices.staff = { price_fen = 1500, allowance_fen = 1000 }
prices."*" = { price_fen = 1800, allowance_fen = 0 }

[[canteen.windows]]
name = "night"
start = "22:00"
end = "02:00"
prices.staff = { price_fen = 1200, allowance_fen = 1200 }
days = ["workday"]
"""


def save_screen(src: Path, dest: Path) -> None:
    """Keep the screen at its true 128x64 size, and a 4x copy that is easy to look at."""
    shutil.copy(src, dest)
    with Image.open(src) as image:
        image.resize((image.width * 4, image.height * 4), Image.NEAREST).save(
            dest.with_name(dest.stem + "@4x.png"))


def _print(line: str) -> None:
    print(line, flush=True)


class Scene:
    """One mode's run: the rig, its clock, and the steps that leave a numbered screen each."""

    def __init__(self, rig: Rig, clock: SimClock, out: Path, ecr: PtyCashRegister | None = None) -> None:
        self.rig = rig
        self.clock = clock
        self.out = out
        self.ecr = ecr
        self.n = 0

    def shot(self, label: str) -> None:
        """Save what the OLED shows now as ``NN-<label>.png``."""
        display = self.rig.hardware.display
        if display is not None and display.last_capture is not None:
            save_screen(display.last_capture, self.out / f"{self.n:02d}-{label}.png")

    def step(self, text: str, label: str) -> None:
        self.n += 1
        _print(f"  {self.n:2d}. {text}")
        self.shot(label)

    async def tap(self, label: str, card: CardBehaviour) -> Outcome:
        outcome = await self.rig.tap(card)
        member = outcome.lookup.member if outcome.lookup else None
        d = outcome.decision
        who = f"{member.member_no} {member.name}" if member else "-"
        money = f" amount {d.amount_fen} subsidy {d.subsidy_fen} to_pay {d.to_pay_fen}" if d.amount_fen else ""
        self.step(f"tap: {label:<26} member {who:<16} -> {d.verdict.value.upper():<7} {d.reason:<16} "
                  f"{outcome.timings_ms['decide']:6.2f} ms{money}", f"{d.verdict.value}-{d.reason}")
        return outcome

    async def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the demo waited in vain")
            await asyncio.sleep(0.02)

    async def record(self, kind: str, reason: str = "", timeout: float = 10.0) -> dict[str, Any]:
        """The first journal record of ``kind`` (and ``reason``), once there is one (an alarm, a summary)."""
        journal = self.rig.terminal.journal
        assert journal is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in await journal.records_after(0, 1000):
                if record.fields["kind"] == kind and reason in ("", record.fields["reason"]):
                    return record.fields
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no {kind} record")

    def card(self, person_index: int) -> UidCard:
        return UidCard(self.rig.people[person_index].uid)

    def upsert(self, index: int, **changes: object) -> None:
        """Give a cast member a role or groups for this scene."""
        record = self.rig.people[index].record(self.rig.card_key, "ORG-1001")
        record.update(changes)
        assert self.rig.terminal.members is not None
        self.rig.terminal.members.upsert([record])


# -- the scenes ------------------------------------------------------------------------------------


async def door_scene(s: Scene) -> None:
    rig = s.rig
    contact = rig.pin("door")
    contact.drive_low()  # the door is shut
    suspended = next(i for i, p in enumerate(rig.people) if p.status == "suspended")
    s.upsert(4, access_groups=["main-gate", "security"])
    await s.tap(f"member {rig.people[0].member_no}", s.card(0))
    contact.drive_high()
    await asyncio.sleep(0.5)
    contact.drive_low()  # through and shut again: no alarm
    await s.tap(f"member {rig.people[2].member_no}", s.card(2))
    contact.drive_high()  # ... and left open
    await s.record("alarm", "held_open")
    s.step("door held open for 3 s: alarm journaled and sent", "alarm-held_open")
    contact.drive_low()
    await asyncio.sleep(0.1)
    s.step("door closed: alarm cleared", "alarm_cleared")
    await s.tap("stranger", STRANGER)
    await s.tap(f"suspended {rig.people[suspended].member_no}", s.card(suspended))
    rig.terminal.members.block(card_ref(rig.card_key, "uid", rig.people[1].uid), "lost", 0)
    await s.tap(f"blocked card of {rig.people[1].member_no}", s.card(1))
    await asyncio.sleep(2.5)  # the last release has ended
    contact.drive_high()
    await s.record("alarm", "forced_open")
    s.step("door pushed open without a card: forced-open alarm", "alarm-forced_open")
    contact.drive_low()
    await s.until(lambda: not s.rig.terminal.mode.monitor.is_open)  # type: ignore[attr-defined]
    rig.terminal.set_door_mode(DoorMode.LOCKDOWN)
    s.step("lockdown (what the signed back-office command sets)", "lockdown")
    await s.tap(f"member {rig.people[3].member_no} in lockdown", s.card(3))
    await s.tap(f"security {rig.people[4].member_no} in lockdown", s.card(4))
    rig.terminal.set_door_mode(DoorMode.NORMAL)


async def merchant_scene(s: Scene) -> None:
    rig, ecr = s.rig, s.ecr
    assert ecr is not None
    s.upsert(3, role="supervisor")
    await s.until(lambda: rig.terminal.uplink is not None and rig.terminal.uplink.connected.is_set())
    status = await ecr.status()
    s.step(f"cash register STATUS -> {status.state}", "idle")

    async def sale(amount: int, ref: str, label: str, card: CardBehaviour) -> None:
        asked = asyncio.create_task(ecr.sale(amount, ref, timeout=30))
        await s.until(lambda: isinstance(rig.terminal.mode.pending, PendingSale))  # type: ignore[attr-defined]
        s.step(f"cash register SALE {amount} fen, ref {ref}: waiting for the card", f"sale-{ref}")
        await s.tap(label, card)
        r = await asked
        _print(f"      cash register REPLY {'A' if r.approved else 'D'} {r.reason}: amount {r.amount_fen} "
               f"discount {r.discount_fen} to pay {r.to_pay_fen} tx {r.tx_id or '-'}")

    await sale(1999, "POS1-000123", f"union card {rig.people[0].member_no}", rig.union_card(rig.people[0]))
    await sale(8800, "POS1-000124", "stranger", STRANGER)
    await sale(45000, "POS1-000125", f"member {rig.people[2].member_no}", s.card(2))
    asked = asyncio.create_task(ecr.void(ecr_ref="POS1-000125", timeout=30))
    await s.until(lambda: isinstance(rig.terminal.mode.pending, PendingVoid))  # type: ignore[attr-defined]
    s.step("cash register VOID ref POS1-000125: waiting for a supervisor card", "void-pending")
    await s.tap(f"supervisor {rig.people[3].member_no}", s.card(3))
    r = await asked
    _print(f"      cash register REPLY {'A' if r.approved else 'D'} {r.reason}: discount {r.discount_fen} returned")


async def canteen_scene(s: Scene) -> None:
    rig = s.rig
    s.rig.terminal.show_idle()
    s.step("Monday 11:58, lunch is served", "idle-lunch")
    suspended = next(i for i, p in enumerate(rig.people) if p.status == "suspended")
    await s.tap(f"member {rig.people[0].member_no}", s.card(0))
    s.clock.step(97)
    await s.tap(f"member {rig.people[0].member_no} again", s.card(0))
    await s.tap(f"member {rig.people[2].member_no}", s.card(2))
    await s.tap("stranger", STRANGER)
    await s.tap(f"suspended {rig.people[suspended].member_no}", s.card(suspended))
    s.clock.set(local_unix("2026-12-07 13:29:59"))
    summary = await s.record("window_summary")
    s.rig.terminal.show_idle()
    d = summary["detail"]
    s.step(f"13:30: lunch closed; summary journaled and sent: {d['meals']} meals, amount {d['amount_fen']} "
           f"subsidy {d['subsidy_fen']} paid {d['to_pay_fen']}", "idle-closed")


@dataclass(frozen=True)
class Play:
    """A mode's scene: the config it adds, when it starts (local time), and its steps."""

    sections: str
    start: str
    script: Callable[[Scene], Awaitable[None]]
    ecr: bool = False


PLAYS = {
    "access": Play(DOOR, "2026-12-07 08:00:00", door_scene),
    "pos": Play(POS, "2026-12-07 10:00:00", merchant_scene, ecr=True),
    "canteen": Play(CANTEEN, "2026-12-07 11:58:00", canteen_scene),
}


async def run_mode(out: Path, mode: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    shutil.rmtree(out / "work", ignore_errors=True)
    play = PLAYS[mode]
    clock = SimClock(local_unix(play.start))
    async with PtyCashRegister() as ecr:
        async with Rig(out / "work", mode=mode, ecr_port=ecr.port if play.ecr else "", sections=play.sections,
                       terminal_options=clock.options()) as rig:
            _print(f"unionterm demo: mode {mode}, terminal {rig.config.terminal.id}, "
                   f"pcscd reader {rig.reader_name!r}, mosquitto 127.0.0.1:{rig.broker.port}, "
                   f"clock {play.start} Asia/Shanghai" + (f", cash register on {ecr.port}" if play.ecr else ""))
            async with Observer(rig.broker.port).running() as seen:
                await play.script(Scene(rig, clock, out, ecr if play.ecr else None))
                assert rig.terminal.journal is not None
                await seen.wait_for("/tx", rig.terminal.journal.last_seq, timeout=15)
            _print("  records the back office received (t/SIM-0001/tx):")
            for msg in seen.on("/tx"):
                r = msg.json()
                money = (f" amount {r['amount_fen']} subsidy {r['subsidy_fen']} to_pay {r['to_pay_fen']}"
                         if r["amount_fen"] else "")
                _print(f"    seq {r['seq']:>2} {r['kind']:<14} {r['decision']:<7} {r['reason']:<16} "
                       f"member {r['member_no'] or '-':<9}{money}")
    _print(f"  screens (PNG, 128x64 and @4x): {out.resolve()}")


async def run_demo(out: Path, mode: str = "all") -> int:
    for name in MODES if mode == "all" else (mode,):
        await run_mode(out / name, name)
    return 0


def main(out: str, mode: str) -> int:
    return eventloop.run(run_demo(Path(out), mode))
