"""A whole simulated terminal on the real stacks, in one async context.

The rig starts (or borrows) a private pcscd with a vpcd reader and a real
mosquitto, writes a terminal config that selects the PC/SC driver, gpiozero's
``MockFactory`` and luma's ``dummy`` display capturing PNGs, seeds a member
list, and runs the production :class:`terminal.app.Terminal` against them.
Only the lowest layers are simulated: the cards (vpcd clients), the pins and
the display memory; all protocol and decision code is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from drivers.factory import open_hardware
from terminal.app import Terminal
from terminal.config import Config, load
from terminal.members import MemberStore
from terminal.taps import Outcome

from .cards.desfire import UnionCard
from .people import Person, cast, records
from .qr import EcardIssuer, PtyScanner
from .services import Mosquitto, Pcscd
from .vcard import CardBehaviour, VirtualCard

PINS = {"relay": 17, "green": 27, "red": 22, "buzzer": 23, "door": 5, "exit": 6}

#: Card profiles a simulated terminal takes unless told otherwise: the union card first,
#: and the legacy UID too, so the UID-card taps of the walking skeleton keep working.
SIM_PROFILES = ("union-app", "bank-pan", "uid-legacy")
SAM_KEY_FILE = "sam.keys"
QR_KEY_FILE = "qr-issuer.pub"


def sim_config_text(state_dir: Path, mode: str, mqtt_port: int, capture_dir: Path | str = "",
                    terminal_id: str = "SIM-0001", pulse_ms: int = 3000, reader: str = "Sim Reader",
                    profiles: tuple[str, ...] = SIM_PROFILES, sam: str = "software", sam_reader: str = "",
                    qr_port: str = "", ecr_port: str = "", sections: str = "") -> str:
    """The TOML a simulated terminal runs with (same schema as on a Pi).

    ``qr_port`` (a pty) adds the scanner port that the ``qr-ecard`` profile reads;
    ``ecr_port`` (a pty, :class:`simulator.ecr.PtyCashRegister`) the cash-register link;
    ``sections`` is appended as it is (the modes' ``[pos]``, ``[canteen]``, ``[door]``, ``[clock]``).
    """
    qr = f'qr_scanner = "qr"\nqr_public_keys = ["{QR_KEY_FILE}"]\n\n[serial.qr]\nport = "{qr_port}"\n' \
        if qr_port else ""
    ecr = f'\n[serial.ecr]\nport = "{ecr_port}"\n\n' if ecr_port else ""
    return f"""# Simulated terminal: real pcscd+vpcd, gpiozero MockFactory, luma dummy, real mosquitto.
[terminal]
id = "{terminal_id}"
mode = "{mode}"
site = "simulator"
state_dir = "{state_dir}"
language = "zh"
log_level = "info"

[reader]
driver = "pcsc"
name = "{reader}"
reconnect_s = 0.2

[gpio]
driver = "mock"
relay_pin = {PINS['relay']}
green_led_pin = {PINS['green']}
red_led_pin = {PINS['red']}
buzzer_pin = {PINS['buzzer']}
door_contact_pin = {PINS['door']}
exit_button_pin = {PINS['exit']}

[display]
driver = "dummy"
capture_dir = "{capture_dir}"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
reconnect_min_s = 0.1
reconnect_max_s = 1.0

[members]
db = "members.db"
card_key_file = "card.key"

[journal]
db = "journal.db"

[access]
pulse_ms = {pulse_ms}

[cards]
profiles = {json.dumps(list(profiles))}
sam = "{sam}"
sam_key_file = "{SAM_KEY_FILE}"
sam_reader = "{sam_reader}"
{qr}{ecr}{sections}"""


class Rig:
    """A running simulated terminal; use as ``async with Rig(...) as rig``."""

    def __init__(self, workdir: Path | None = None, *, mode: str = "access", pcscd: Pcscd | None = None,
                 broker: Mosquitto | None = None, people: list[Person] | None = None,
                 capture: bool = True, pulse_ms: int = 3000, profiles: tuple[str, ...] = SIM_PROFILES,
                 sam: str = "software", reader: str = "Sim Reader", sam_reader: str = "",
                 ecr_port: str = "", sections: str = "", terminal_options: dict[str, Any] | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="unionterm-rig-"))
        self.mode = mode
        self._own_pcscd = pcscd is None
        self._own_broker = broker is None
        self.pcscd = pcscd or Pcscd(workdir=self.workdir / "pcscd")
        self.broker = broker or Mosquitto(workdir=self.workdir / "mosquitto")
        self.people = people if people is not None else cast(10)
        self.capture_dir = self.workdir / "screens" if capture else None
        self.pulse_ms = pulse_ms
        self.profiles = profiles
        self.sam = sam
        self.reader = reader
        self.sam_reader = sam_reader
        self.ecr_port = ecr_port  # [modes] cash-register pty, mode sections, an injected clock
        self.sections = sections
        self.terminal_options = terminal_options or {}
        self.scanner: PtyScanner | None = None
        self.issuer = EcardIssuer()
        self.outcomes: list[Outcome] = []
        #: When the card of the last :meth:`tap` was placed (``perf_counter``, as ``Tap.detected_at``).
        self.placed_at = 0.0
        self._stack = contextlib.ExitStack()
        self.terminal: Terminal
        self.config: Config
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[Outcome]]] = []

    # -- setup -----------------------------------------------------------------------------

    def write_config(self) -> Path:
        state = self.workdir / "state"
        state.mkdir(parents=True, exist_ok=True)
        key_file = self.workdir / "card.key"
        if not key_file.exists():
            key_file.write_text(secrets.token_hex(32))
            os.chmod(key_file, 0o600)
        sam_keys = self.workdir / SAM_KEY_FILE
        if not sam_keys.exists():  # the software SAM's master keys, readable by the owner only
            fd = os.open(sam_keys, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({str(slot): secrets.token_hex(16) for slot in (1, 2)}, fh)
        if "qr-ecard" in self.profiles and self.scanner is None:
            self.scanner = PtyScanner()
            self._stack.callback(self.scanner.close)
            self.issuer.write_public_key(self.workdir / QR_KEY_FILE)
        path = self.workdir / "terminal.toml"
        path.write_text(sim_config_text(state, self.mode, self.broker.port, self.capture_dir or "",
                                        pulse_ms=self.pulse_ms, reader=self.reader, profiles=self.profiles,
                                        sam=self.sam, sam_reader=self.sam_reader,
                                        qr_port=self.scanner.port if self.scanner else "",
                                        ecr_port=self.ecr_port, sections=self.sections))
        return path

    def seed_members(self) -> None:
        store = MemberStore(self.config.state_path(self.config.members.db))
        try:
            store.upsert(records(self.people, self.card_key))
        finally:
            store.close()

    @property
    def card_key(self) -> bytes:
        return bytes.fromhex((self.workdir / "card.key").read_text().strip())

    @property
    def sam_masters(self) -> dict[int, bytes]:
        """The union master keys by SAM slot (1: read key, 2: UID key), as the rig wrote them."""
        raw = json.loads((self.workdir / SAM_KEY_FILE).read_text())
        return {int(slot): bytes.fromhex(key) for slot, key in raw.items()}

    def union_card(self, person: Person, **options: object) -> UnionCard:
        """``person``'s union card, personalised from this rig's master keys."""
        masters = self.sam_masters
        return person.union_card(masters[1], masters[2], **options)

    async def __aenter__(self) -> "Rig":
        if self._own_pcscd:
            await asyncio.to_thread(self.pcscd.start)
            self._stack.callback(self.pcscd.stop)
        if self._own_broker:
            await asyncio.to_thread(self.broker.start)
            self._stack.callback(self.broker.stop)
        self.config = load(self.write_config())
        self.seed_members()
        await self.start_terminal()
        return self

    async def start_terminal(self) -> None:
        """Open the hardware and run the terminal as a task (again after :meth:`stop_terminal`)."""
        hw_stack = contextlib.AsyncExitStack()
        hardware = await hw_stack.enter_async_context(open_hardware(self.config))
        self.hardware = hardware
        self.terminal = Terminal(self.config, hardware, **self.terminal_options)
        self.terminal.listeners.append(self._on_outcome)
        self._hw_stack = hw_stack
        self._task = asyncio.create_task(self.terminal.run(), name="terminal")
        await asyncio.wait_for(self.terminal.started.wait(), 10)
        deadline = time.monotonic() + 10
        while not self.terminal.readers_online:
            if self._task.done():
                await self._task
            if time.monotonic() > deadline:
                raise TimeoutError("the terminal saw no reader within 10 s")
            await asyncio.sleep(0.02)

    async def stop_terminal(self) -> None:
        if self._task is not None:
            self.terminal.request_stop()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 15)
            except TimeoutError:
                _dump_tasks("terminal did not stop within 15 s")
                raise
            self._task = None
            try:
                await asyncio.wait_for(self._hw_stack.aclose(), 15)
            except TimeoutError:
                _dump_tasks("hardware did not close within 15 s")
                raise

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._task is not None and not self._task.done():
                # pcscd polls vpcd every ~0.4 s: a card lifted and another placed within
                # one poll is never seen as removed, so leave the reader visibly empty.
                with contextlib.suppress(TimeoutError):
                    await self.wait_card_gone()
            await self.stop_terminal()
        finally:
            await asyncio.to_thread(self._stack.close)

    # -- acting ---------------------------------------------------------------------------

    def _on_outcome(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        for n, fut in list(self._waiters):
            if len(self.outcomes) >= n and not fut.done():
                fut.set_result(self.outcomes[n - 1])
                self._waiters.remove((n, fut))

    def card(self, behaviour: CardBehaviour, slot: int = 0) -> VirtualCard:
        return VirtualCard(behaviour, self.pcscd.card_port(0, slot))

    @property
    def reader_name(self) -> str:
        return sorted(self.terminal.readers_online)[0]

    async def tap(self, behaviour: CardBehaviour, timeout: float = 10.0) -> Outcome:
        """Place a card, wait for the terminal's decision, lift the card, wait until it is seen gone."""
        fut = self._next_outcome()
        card = self.card(behaviour)
        await asyncio.to_thread(card.place)
        self.placed_at = card.placed_at or 0.0
        try:
            outcome = await asyncio.wait_for(fut, timeout)
        finally:
            await asyncio.to_thread(card.remove)
        await self.wait_card_gone()
        return outcome

    async def scan(self, code: str | bytes, timeout: float = 10.0) -> Outcome:
        """Show ``code`` to the QR scanner and wait for the terminal's decision."""
        assert self.scanner is not None, "the rig runs without qr-ecard"
        fut = self._next_outcome()
        self.scanner.scan(code)
        return await asyncio.wait_for(fut, timeout)

    def _next_outcome(self) -> asyncio.Future[Outcome]:
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters.append((len(self.outcomes) + 1, fut))
        return fut

    async def wait_card_gone(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while any(self.terminal.cards_present.values()):
            if time.monotonic() > deadline:
                raise TimeoutError("card still seen as present")
            await asyncio.sleep(0.01)

    # -- looking ---------------------------------------------------------------------------

    def pin(self, name: str) -> Any:
        """The MockFactory pin behind an output or input (``relay``, ``green`` ...)."""
        return self.hardware.outputs.factory.pin(PINS[name])

    def pin_history(self, name: str) -> list[bool]:
        return [bool(s.state) for s in self.pin(name).states]


def _dump_tasks(why: str) -> None:
    """Print every task's stack: a stop that hangs must say where, not just time out."""
    import sys

    print(f"--- {why}; asyncio tasks:", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(limit=12, file=sys.stderr)
