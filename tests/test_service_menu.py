"""Technician service mode: the pure menu, then the whole flow on the simulator.

The end-to-end test runs the production terminal on real pcscd + vpcd and
mosquitto (the ``rig`` stack), taps a technician's card, and drives the menu
through the real matrix-keypad driver on simulated copper. Every page it
visits is saved as docs/screens/service-<page>.png.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from PIL import Image, ImageChops

from drivers.keypad import MatrixKeypad
from simulator.cards.uid import UidCard
from simulator.keypad import SimulatedMatrix
from simulator.people import Person, uid_for
from simulator.rig import Rig
from simulator.services import Mosquitto, Pcscd
from terminal.config import KeypadSection
from terminal.model import Member, MemberStatus
from terminal.rules.pin import hash_pin
from terminal.service_menu import (
    KIND_ACTION,
    KIND_ENTER,
    KIND_EXIT,
    Action,
    CheckPin,
    Exit,
    ListState,
    Page,
    Perform,
    ServiceMenu,
    Status,
    TxLine,
    age_text,
)
from terminal.service_session import ServiceSession, is_service_card

SCREENS = Path(__file__).resolve().parents[1] / "docs" / "screens"
NOW_MS = 1_780_000_000_000  # 2026-05-29 04:26:40 in Shanghai
PIN = "2468"


def status(**changes: object) -> Status:
    values: dict[str, object] = dict(
        terminal_id="GATE-0042", mode="access", addresses=("10.20.30.40",), broker_connected=True,
        lists=(ListState("all", 17, NOW_MS // 1000 - 7200),), unsent=3, unacked=5,
        readers=("ACS ACR1252 00 00",), wall_ms=NOW_MS, clock_ok=True, storage="ok")
    values.update(changes)
    return Status(**values)  # type: ignore[arg-type]


def keys(menu: ServiceMenu, typed: str, history_len: int = 10) -> list[object]:
    return [menu.key(k, history_len) for k in typed]


# --- the pure menu ---------------------------------------------------------------------------


def test_navigation_between_pages_and_out() -> None:
    menu = ServiceMenu(pin_required=False)
    assert menu.page is Page.MENU
    assert keys(menu, "1") == [None] and menu.name == "status-1"
    keys(menu, "#B")
    assert menu.name == "status-3"
    keys(menu, "#")
    assert menu.name == "status-1"  # paging wraps
    keys(menu, "A")
    assert menu.name == "status-3"
    keys(menu, "*2")
    assert menu.page is Page.TESTS
    assert keys(menu, "1234") == [Perform(Action.RELAY), Perform(Action.GREEN), Perform(Action.RED),
                                  Perform(Action.BUZZER)]
    keys(menu, "*3")
    assert keys(menu, "#") == [Perform(Action.SYNC)]
    assert menu.key("D") == Exit("exit")  # D leaves from anywhere
    keys(menu, "*")
    assert menu.key("*") == Exit("exit")  # * from the main menu leaves too
    assert menu.visited == ["menu", "status", "tests", "sync"]


def test_pin_entry_masks_counts_and_locks_out() -> None:
    menu = ServiceMenu(pin_required=True, lang="en")
    assert menu.page is Page.PIN
    assert menu.key("D") is None and menu.key("1") is None  # D does not bypass the PIN
    keys(menu, "23*")
    assert menu.pin.text == "12"
    assert menu.screen(status()).lines[1] == "**"
    assert menu.key("#") == CheckPin("12")
    assert menu.pin.text == ""
    assert menu.pin_checked(False) is None
    assert "1/3" in menu.screen(status()).lines[2]
    menu.key("9"), menu.key("#")
    assert menu.pin_checked(False) is None
    menu.key("9"), menu.key("#")
    assert menu.pin_checked(False) == Exit("wrong_pin")


def test_right_pin_opens_the_menu_and_star_on_empty_pin_cancels() -> None:
    menu = ServiceMenu(pin_required=True)
    keys(menu, PIN)
    assert menu.key("#") == CheckPin(PIN)
    assert menu.pin_checked(True) is None and menu.page is Page.MENU
    assert ServiceMenu(pin_required=True).key("*") == Exit("cancelled")


def test_action_results_are_shown() -> None:
    menu = ServiceMenu(pin_required=False, lang="en")
    keys(menu, "2")
    menu.performed(Action.RELAY, True)
    assert menu.screen(status()).lines[2] == "Tested relay"
    menu.performed(Action.GREEN, False)
    assert menu.screen(status()).lines[2] == "Not done: storage"


def test_status_pages_show_the_snapshot() -> None:
    menu = ServiceMenu(pin_required=False, lang="en")
    keys(menu, "1")
    page1 = menu.screen(status())
    assert page1.headline == "Status 1/3"
    assert page1.lines == ("GATE-0042 access", "IP 10.20.30.40", "Broker connected")
    assert menu.screen(status(addresses=(), broker_connected=False)).lines[1:] == ("IP no network", "Broker offline")
    keys(menu, "#")
    assert menu.screen(status()).lines == ("Lists all v17 2h", "Unsent 3 unacked 5", "Reader ok 1")
    assert menu.screen(status(lists=(), readers=())).lines[0::2] == ("Lists none", "Reader offline")
    keys(menu, "#")
    page3 = menu.screen(status(clock_ok=False, storage="disk_full"))
    assert page3.lines == ("2026-05-29 04:26:40", "Clock NOT synced", "Storage full")
    assert menu.screen(status()).lines[1:] == ("Clock synced", "Storage ok")


def test_history_pages_three_lines_at_a_time() -> None:
    history = [TxLine(100 - i, NOW_MS - i * 60_000, "tap", "approve" if i % 2 else "deny", f"M{i:07d}")
               for i in range(10)]
    menu = ServiceMenu(pin_required=False, lang="en")
    keys(menu, "4")
    first = menu.screen(status(), history)
    assert first.headline == "History 1/4"
    assert first.lines == ("04:26 denied M0000000", "04:25 ok M0000001", "04:24 denied M0000002")
    keys(menu, "BBB")
    last = menu.screen(status(), history)
    assert last.headline == "History 4/4" and last.lines == ("04:17 ok M0000009",)
    assert menu.screen(status(), []).lines == ("no records",)


@pytest.mark.parametrize(("seconds", "shown"), [(0, "0s"), (59, "59s"), (60, "1m"), (7199, "1h"),
                                                 (86400 * 3 + 5, "3d"), (-5, "0s")])
def test_age_text(seconds: int, shown: str) -> None:
    assert age_text(seconds) == shown


def member(role: str = "technician", status_: MemberStatus = MemberStatus.ACTIVE, valid_until: int = 0) -> Member:
    return Member("T0000001", "维*修", "ORG-1001", status_, role=role, valid_until=valid_until)


def test_only_a_technician_in_good_standing_opens_service_mode() -> None:
    now = NOW_MS // 1000
    assert is_service_card(member(), False, now)
    assert not is_service_card(member(), True, now)  # hot-listed
    assert not is_service_card(member(status_=MemberStatus.SUSPENDED), False, now)
    assert not is_service_card(member(valid_until=now - 1), False, now)
    assert not is_service_card(member(role="member"), False, now)
    assert not is_service_card(None, False, now)


# --- end to end on the simulator ---------------------------------------------------------------


class ServiceRig(Rig):
    """The standard rig with a ``[keypad]`` section (the service timeout under test)."""

    def __init__(self, *args: object, timeout_s: float = 30.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.timeout_s = timeout_s

    def write_config(self) -> Path:
        path = super().write_config()
        with path.open("a") as fh:
            fh.write(f"\n[keypad]\nservice_timeout_s = {self.timeout_s}\n")
        return path


def technician(rig: Rig, pin: str = "") -> Person:
    """Add a technician (with ``pin``, if given) to the running terminal's member list."""
    person = Person("T0000001", "维*修", "active", uid_for("T0000001"))
    record = person.record(rig.card_key, "ORG-1001")
    record.update(role="technician", pin_hash=hash_pin(pin, b"saltsalt", iterations=1000) if pin else "")
    assert rig.terminal.members is not None
    rig.terminal.members.upsert([record])
    return person


async def service_rig(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto, timeout_s: float) -> ServiceRig:
    if not pcscd.running:
        pcscd.start()
    return ServiceRig(tmp_path / "rig", pcscd=pcscd, broker=broker, pulse_ms=300, timeout_s=timeout_s)


class Panel:
    """The technician's side: a keypad attached to the terminal, and the screen it sees."""

    def __init__(self, rig: Rig) -> None:
        cfg = KeypadSection(driver="matrix", scan_ms=5)
        factory = MockFactory()
        self.matrix = SimulatedMatrix(factory, cfg)
        self.keypad = MatrixKeypad(cfg, factory)
        self.rig = rig
        rig.terminal.attach_inputs(self.keypad)
        self.display = rig.hardware.display
        self.shots: dict[str, Image.Image] = {}

    @property
    def session(self) -> ServiceSession:
        session = self.rig.terminal.service_session
        assert session is not None, "not in service mode"
        return session

    async def press(self, typed: str, expect: str) -> None:
        """Type ``typed``; wait until page ``expect`` is on screen after the last key."""
        for key in typed:
            frames = self.display.frames
            await self.matrix.tap(key)
            deadline = time.monotonic() + 5
            while self.display.frames == frames:
                assert time.monotonic() < deadline, f"no redraw after key {key!r}"
                await asyncio.sleep(0.01)
        assert self.session.menu.name == expect

    def shoot(self, name: str) -> None:
        self.shots[name] = self.display.device.image.copy()


def journal_kinds(rig: Rig, after: int) -> list[dict[str, object]]:
    import sqlite3

    path = rig.config.state_path(rig.config.journal.db)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT body FROM tx WHERE seq > ? ORDER BY seq", (after,)).fetchall()
    import json

    return [json.loads(body) for (body,) in rows]


@pytest.fixture
async def running(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> AsyncIterator[ServiceRig]:
    async with await service_rig(tmp_path, pcscd, broker, timeout_s=30.0) as rig:
        yield rig


@pytest.mark.stack
async def test_service_card_flow_end_to_end(running: ServiceRig) -> None:
    rig = running
    for person in rig.people[:2]:  # something for the history page
        assert (await rig.tap(UidCard(person.uid))).decision.approved
    tech = technician(rig, PIN)
    panel = Panel(rig)
    try:
        start_seq = rig.terminal.journal.last_seq
        outcome = await rig.tap(UidCard(tech.uid))
        assert outcome.decision.reason == KIND_ENTER and outcome.record is not None
        assert panel.session.menu.page is Page.PIN

        await panel.press("1111#", "pin")  # wrong once: stays, says so
        assert "1/3" in panel.session.menu.message
        await panel.press(PIN[:3], "pin")
        panel.shoot("pin")
        await panel.press(PIN[3] + "#", "menu")
        panel.shoot("menu")
        for n, key in enumerate("1##", start=1):
            await panel.press(key, f"status-{n}")
            panel.shoot(f"status-{n}")
        await panel.press("*2", "tests")
        relay_before = len(rig.pin_history("relay"))
        await panel.press("1", "tests")
        await asyncio.sleep(0.05)
        assert True in rig.pin_history("relay")[relay_before:]  # the relay test energised the strike
        await panel.press("4", "tests")
        panel.shoot("tests")
        await panel.press("*3", "sync")
        assert not rig.terminal.sync_requested.is_set()
        await panel.press("#", "sync")
        assert rig.terminal.sync_requested.is_set()
        panel.shoot("sync")
        await panel.press("*4", "history-1")
        panel.shoot("history-1")
        await panel.press("*", "menu")

        # A member taps meanwhile: the tap is read at once but decided only after the technician leaves.
        waiting = asyncio.create_task(rig.tap(UidCard(rig.people[2].uid), timeout=20))
        await asyncio.sleep(1.5)
        assert not waiting.done()
        await panel.matrix.tap("*")
        served = await waiting
        assert served.decision.approved and rig.terminal.service_session is None
    finally:
        panel.keypad.close()

    records = journal_kinds(rig, start_seq)
    kinds = [(r["kind"], r["reason"]) for r in records]
    assert kinds == [(KIND_ENTER, "technician"), (KIND_ACTION, "relay"), (KIND_ACTION, "buzzer"),
                     (KIND_ACTION, "sync"), (KIND_EXIT, "exit"), ("tap", "ok")]
    assert records[0]["member_no"] == tech.member_no and records[0]["detail"]["pin"] is True
    assert records[1]["grants_value"] is True and records[2]["grants_value"] is False
    assert records[4]["detail"]["pages"] == ["pin", "menu", "status", "tests", "sync", "history"]

    # The screens: one per page, none blank, no two alike; saved for the docs at 4x.
    SCREENS.mkdir(parents=True, exist_ok=True)
    shots = panel.shots
    assert set(shots) == {"pin", "menu", "status-1", "status-2", "status-3", "tests", "sync", "history-1"}
    for name, image in shots.items():
        assert image.getbbox() is not None, f"{name} is blank"
        image.resize((image.width * 4, image.height * 4), Image.NEAREST).save(SCREENS / f"service-{name}.png")
    names = sorted(shots)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert ImageChops.difference(shots[a].convert("L"), shots[b].convert("L")).getbbox(), f"{a} == {b}"


@pytest.mark.stack
async def test_idle_service_session_times_out(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> None:
    async with await service_rig(tmp_path, pcscd, broker, timeout_s=1.5) as rig:
        tech = technician(rig)  # no PIN: straight to the menu
        start_seq = rig.terminal.journal.last_seq
        outcome = await rig.tap(UidCard(tech.uid))
        assert outcome.decision.reason == KIND_ENTER
        session = rig.terminal.service_session
        assert session is not None and session.menu.page is Page.MENU
        deadline = time.monotonic() + 5
        while rig.terminal.service_session is not None:
            assert time.monotonic() < deadline, "service mode did not time out"
            await asyncio.sleep(0.05)
        assert session.exit_reason == "timeout"
        records = journal_kinds(rig, start_seq)
        assert [(r["kind"], r["reason"]) for r in records] == [(KIND_ENTER, "technician"), (KIND_EXIT, "timeout")]
        assert records[0]["detail"]["pin"] is False
        # Back to serving: the next member is decided at once.
        assert (await rig.tap(UidCard(rig.people[0].uid))).decision.approved
