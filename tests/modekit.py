"""A terminal for the mode glue tests: the production app on mock pins, no card reader.

Everything but the card reader is the real thing: the app loop, the modes,
the journal and counter store on disk, gpiozero's ``MockFactory`` pins
through the production GPIO driver, luma's ``dummy`` display, and the cash
register on a pty through pyserial. Cards arrive already identified through
:meth:`terminal.app.Terminal.submit` (the documented entry for the card
stage, the FIFO and benches), so these tests need no pcscd and take
milliseconds a tap; the end-to-end tests (``test_e2e_modes.py``) tap real
virtual cards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory
from luma.core.device import dummy

from drivers.gpio import GpioInputs, GpioOutputs
from drivers.keypad import MatrixKeypad
from drivers.oled import LumaDisplay
from drivers.serialport import PySerialLink
from simulator.demo import SimClock
from simulator.keypad import SimulatedMatrix
from simulator.people import Person, cast, records
from simulator.rig import PINS, sim_config_text
from simulator.services import free_port
from terminal.app import Terminal
from terminal.cardref import card_ref
from terminal.config import KeypadSection, load
from terminal.hardware import Hardware, ReaderEvent
from terminal.model import CardIdentity, Strength
from terminal.taps import Outcome, Tap
from terminal.ui import Screen


class NoReader:
    """A card reader nobody taps: cards come in through ``Terminal.submit``."""

    async def _never(self) -> AsyncIterator[ReaderEvent]:
        await asyncio.Event().wait()
        yield  # pragma: no cover - unreachable, makes this an async generator

    def events(self) -> AsyncIterator[ReaderEvent]:
        return self._never()

    def connect(self, reader: str) -> Any:
        raise AssertionError("NoReader has no card to connect to")


@dataclass
class Bench:
    """A running terminal and what it did: outcomes, screens shown, pins."""

    terminal: Terminal
    factory: MockFactory
    card_key: bytes
    clock: SimClock
    people: list[Person]
    outcomes: list[Outcome] = field(default_factory=list)
    screens: list[Screen] = field(default_factory=list)
    keypad: SimulatedMatrix | None = None

    async def tap(self, who: Person | bytes, timeout: float = 10.0) -> Outcome:
        """Present ``who``'s legacy badge (or a raw UID) and wait for the decision."""
        uid = who.uid if isinstance(who, Person) else who
        before = len(self.outcomes)
        now = time.perf_counter()
        identity = CardIdentity("uid", card_ref(self.card_key, "uid", uid), Strength.WEAK)
        self.terminal.submit(Tap("bench", now, identity, read_at=now))
        await wait_until(lambda: len(self.outcomes) > before, timeout)
        return self.outcomes[before]

    def pin(self, name: str) -> Any:
        return self.factory.pin(PINS[name])

    def history(self, name: str) -> list[bool]:
        return [bool(s.state) for s in self.pin(name).states]

    @property
    def screen(self) -> Screen:
        return self.screens[-1]

    def upsert(self, person: Person, **changes: Any) -> None:
        """Change ``person``'s record in the running terminal's member list (role, PIN, groups ...)."""
        record = person.record(self.card_key, "ORG-1001")
        record.update(changes)
        assert self.terminal.members is not None
        self.terminal.members.upsert([record])


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def bench(tmp_path: Path, mode: str, sections: str = "", *, clock: SimClock, ecr_port: str = "",
                keypad: bool = False, restart_of: Bench | None = None) -> AsyncIterator[Bench]:
    """Run a terminal in ``mode`` with ``sections``; ``restart_of`` keeps the state dir and key."""
    state = tmp_path / "state"
    tmp_path.mkdir(parents=True, exist_ok=True)
    key_file = tmp_path / "card.key"
    if not key_file.exists():
        key_file.write_text(secrets.token_hex(32))
    config = tmp_path / "terminal.toml"
    config.write_text(sim_config_text(state, mode, free_port(), tmp_path / "screens", profiles=("uid-legacy",),
                                      ecr_port=ecr_port, sections=sections))
    cfg = load(config)
    factory = MockFactory()
    matrix = None
    keys = KeypadSection(driver="matrix", scan_ms=5)
    if keypad:  # the matrix first: its column pins must be the simulated ones
        matrix = SimulatedMatrix(factory, keys)
    async with contextlib.AsyncExitStack() as stack:
        outputs = GpioOutputs(cfg.gpio, factory)
        stack.callback(outputs.close)
        inputs = GpioInputs(cfg.gpio, factory)
        stack.callback(inputs.close)
        display = LumaDisplay(dummy(width=128, height=64, mode="1"), cfg.display.capture_dir)
        serial = {}
        if ecr_port:
            serial["ecr"] = PySerialLink(ecr_port)
            stack.callback(serial["ecr"].close)
        hardware = Hardware(reader=NoReader(), outputs=outputs, inputs=inputs, display=display, serial=serial)
        terminal = Terminal(cfg, hardware, clock=clock.wall, mono=clock.mono)
        people = restart_of.people if restart_of else cast(8)
        result = Bench(terminal, factory, bytes.fromhex(key_file.read_text()), clock, people, keypad=matrix)
        terminal.listeners.append(result.outcomes.append)
        shown = terminal.show

        def record_screen(screen: Screen, hold_s: float = 0.0) -> None:
            result.screens.append(screen)
            shown(screen, hold_s)

        terminal.show = record_screen  # type: ignore[method-assign]
        if matrix is not None:
            pad = MatrixKeypad(keys, factory)
            stack.callback(pad.close)
            terminal.attach_inputs(pad)
        task = asyncio.get_running_loop().create_task(terminal.run())
        await asyncio.wait_for(terminal.started.wait(), 10)
        if restart_of is None:
            assert terminal.members is not None
            terminal.members.upsert(records(people, result.card_key))
        try:
            yield result
        finally:
            terminal.request_stop()
            await asyncio.wait_for(task, 10)


def journal_bodies(bench_: Bench, after: int = 0) -> list[dict[str, Any]]:
    """The journal's records as published (read-only, like the counter store's replay)."""
    cfg = bench_.terminal.cfg
    path = cfg.state_path(cfg.journal.db)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT body FROM tx WHERE seq > ? ORDER BY seq", (after,)).fetchall()
    finally:
        conn.close()
    return [json.loads(body) for (body,) in rows]
