"""The rig the workbench runs: the simulator's :class:`Rig` with every peer the page lets a person use.

On top of the plain rig (pcscd + vpcd reader, mosquitto, mock pins, luma
dummy) it keeps, for as long as the workbench lives and across restarts of
the terminal in another mode:

- the demo's trusted, settable clock (:class:`simulator.demo.SimClock`): the
  container's kernel reports its clock as unsynchronised, and a pos or
  canteen terminal grants no value on a time nobody vouches for;
- a cash register on a pty (:class:`simulator.ecr.PtyCashRegister`), linked
  to the terminal as ``[serial.ecr]`` when the mode is ``pos``;
- a 4x4 keypad matrix on simulated copper (:class:`simulator.keypad.SimulatedMatrix`)
  under the production driver, with the ``[keypad]`` section that declares it;
- the QR scanner, and a back office (:class:`.desk.Desk`, publishing and answering) whose signed lists the
  terminal's member sync trusts.

Each mode runs with the config sections of its demo scene (``simulator.demo.PLAYS``),
so the page, ``make demo`` and the end-to-end tests show the same door,
merchant and canteen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from drivers.keypad import MatrixKeypad, open_keypad
from terminal.config import load
from terminal.rules.canteen import CanteenConfig, current_window
from terminal.rules.clock import local, parse_hms, unix_at

from ..demo import PLAYS, SimClock
from ..ecr import PtyCashRegister
from ..keypad import SimulatedMatrix
from ..people import records
from ..rig import SIM_PROFILES, Rig
from .desk import SCOPE, Desk, until

log = logging.getLogger("unionterm.sim.web")

#: The modes the workbench switches between, in the page's order.
MODES = tuple(PLAYS)
#: The keypad on the front panel: the default 4x4 legends and pins, scanned often enough for a quick finger.
KEYPAD = '\n[keypad]\ndriver = "matrix"\nscan_ms = 10\n'
#: The rig's card profiles plus the QR scanner, so e-cards can be shown from the rack.
PROFILES = (*SIM_PROFILES, "qr-ecard")
#: How long the start waits for the terminal to take the back office's first list.
FIRST_LIST_S = 10.0


def known_mode(mode: str) -> str:
    """``mode`` if the workbench can run it (it has a demo scene); a ValueError says which it can."""
    if mode not in PLAYS:
        raise ValueError(f"no mode {mode!r} (modes: {', '.join(MODES)})")
    return mode


#: How long a scene (or a test) may use the meal it was given after its clock was set.
SCENE_S = 15 * 60


def next_local(now: float, hms: str) -> float:
    """The first moment at or after ``now`` whose Asia/Shanghai time of day is ``hms``."""
    day = local(now).date()
    at = unix_at(day, parse_hms(hms))
    return float(at if at >= now else unix_at(day + timedelta(days=1), parse_hms(hms)))


def scene_time(canteen: CanteenConfig | None, now: float, hms: str) -> float | None:
    """Where the clock must go for a canteen to serve the meal its demo scene serves (at ``hms``).

    None when it serves that meal already and will for :data:`SCENE_S` more
    (a scene that starts as the meal closes would be refused halfway), or for
    a terminal without meal windows: a door or a counter works at any hour, so
    their clock is left alone.
    """
    if canteen is None:
        return None
    target = next_local(now, hms)
    wanted = current_window(canteen, int(target))
    if wanted is None:
        return None
    serving = [current_window(canteen, int(at)) for at in (now, now + SCENE_S)]
    if all(window is not None and window[0].name == wanted[0].name for window in serving):
        return None
    return target


class WorkbenchRig(Rig):
    """A :class:`Rig` in one of :data:`MODES`, with the clock, cash register, keypad and back office."""

    def __init__(self, workdir: Path, *, mode: str = "access", clock: SimClock | None = None,
                 **options: Any) -> None:
        super().__init__(workdir, mode=known_mode(mode), profiles=PROFILES, **options)
        self.clock = clock or SimClock()
        self.terminal_options = self.clock.options()
        self.ecr = PtyCashRegister()
        self.desk = Desk(self.workdir / "backoffice", self.broker.port)
        self.keypad: SimulatedMatrix | None = None
        self._keypad_driver: MatrixKeypad | None = None
        self._desk_task: asyncio.Task[None] | None = None

    # -- config ---------------------------------------------------------------------------------

    def write_config(self) -> Path:
        """The rig's config with the mode's scene sections, the keypad, the sync keys, and the ECR link for pos."""
        play = PLAYS[self.mode]
        self.sections = play.sections + KEYPAD + self.desk.sync_section()
        self.ecr_port = self.ecr.port if play.ecr else ""
        return super().write_config()

    @property
    def ecr_linked(self) -> bool:
        """Does the running terminal have the cash register on its serial port?"""
        return "ecr" in self.config.serial

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> "WorkbenchRig":
        await self.ecr.__aenter__()
        try:
            self.desk.open()
            try:
                await super().__aenter__()
                # The back office listens before it publishes, so it hears the report of the list it sends.
                self._desk_task = asyncio.create_task(self.desk.serve(), name="workbench-desk")
                await until(lambda: self.desk.connected, FIRST_LIST_S)
                await self.desk.publish_members(records(self.people, self.card_key))
                if not await until(lambda: self.terminal.members.held[SCOPE].version > 0, FIRST_LIST_S):
                    log.warning("event=web_first_list_late scope=%s", SCOPE)
            except BaseException:  # what did start (pcscd, broker, terminal) stops again
                await self._stop_desk()
                await super().__aexit__(None, None, None)
                raise
        except BaseException:
            self.desk.close()
            self.ecr.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._stop_desk()
            await super().__aexit__(*exc)
        finally:
            self.desk.close()
            self.ecr.close()

    async def _stop_desk(self) -> None:
        task, self._desk_task = self._desk_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def start_terminal(self) -> None:
        """Set the clock for the mode's scene, start the terminal, then wire the keypad to it.

        The simulated matrix takes its pins before the driver does (its column
        pins must be the simulated ones); both go with the terminal, since a
        new terminal brings a new pin factory.
        """
        moved = scene_time(self.config.canteen, self.clock.now(), PLAYS[self.mode].start.split()[1])
        if moved is not None:
            log.info("event=web_clock_moved mode=%s to=%s", self.mode, local(moved).isoformat())
            self.clock.set(moved)
        await super().start_terminal()
        factory = self.hardware.outputs.factory
        self.keypad = SimulatedMatrix(factory, self.config.keypad)
        self._keypad_driver = open_keypad(self.config.keypad, factory)
        if self._keypad_driver is not None:
            self.terminal.attach_inputs(self._keypad_driver)

    async def stop_terminal(self) -> None:
        driver, self._keypad_driver = self._keypad_driver, None
        self.keypad = None
        if driver is not None:  # its scan thread first: no key may reach a terminal that is stopping
            await asyncio.to_thread(driver.close)
        await super().stop_terminal()

    async def switch(self, mode: str) -> None:
        """Restart the terminal in ``mode`` (same state folder, members, journal, clock)."""
        known_mode(mode)
        with contextlib.suppress(TimeoutError):  # pcscd must see the reader empty before the next terminal
            await self.wait_card_gone()
        await self.stop_terminal()
        self.mode = mode
        self.config = load(self.write_config())
        await self.start_terminal()
