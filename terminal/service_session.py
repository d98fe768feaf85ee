"""Technician service mode on the terminal: the session that runs the menu.

:class:`ServiceSession` runs the pure :class:`~terminal.service_menu.ServiceMenu`
on the terminal: it journals the entry, every action (before acting, like a
tap: the relay test opens a door) and the exit, gathers the status snapshot,
draws, and ends on exit, idle timeout or a stop request. It runs inside the
terminal's decision stage, so taps that arrive meanwhile wait in the decision
queue and are served, in order, once the technician leaves.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from .exceptions import StorageError
from .hardware import Hardware, Light
from .journal import Journal, Record, TxEntry
from .model import Decision, Verdict, CardIdentity, Member
from .rules.membership import check_eligibility
from .rules.pin import verify_pin
from .ui import Screen

if TYPE_CHECKING:
    from .config import Config
    from .telemetry import ListInfo
    from .uplink import Uplink

from .service_menu import (
    Action,
    CheckPin,
    Effect,
    Exit,
    HISTORY_SIZE,
    KIND_ACTION,
    KIND_ENTER,
    KIND_EXIT,
    ListState,
    Page,
    Perform,
    ServiceMenu,
    Status,
    TECHNICIAN,
    TxLine,
)

log = logging.getLogger("unionterm.service")

#: What listeners see when a service card opens the menu (it grants nothing).
SERVICE_DECISION = Decision(Verdict.APPROVE, KIND_ENTER)


class ServiceHost(Protocol):
    """What a session needs from the terminal (:class:`terminal.app.Terminal` provides it)."""

    cfg: "Config"
    hw: Hardware
    journal: Journal | None
    uplink: "Uplink | None"
    readers_online: set[str]
    clock: Callable[[], tuple[int, bool]]
    list_versions: Callable[[], Mapping[str, "ListInfo"]]

    def show(self, screen: Screen, hold_s: float = 0.0) -> None: ...

    def sync_now(self) -> None: ...


def is_service_card(member: Member | None, hot: bool, now_s: int) -> bool:
    """A technician in good standing (a hot-listed or suspended technician card is an ordinary refusal)."""
    return (member is not None and member.role == TECHNICIAN
            and check_eligibility(member, hot, now_s) is None)


def local_addresses() -> tuple[str, ...]:
    """IPv4 addresses of the network interfaces (not loopback), asked of the kernel directly.

    No DNS and no packets: the status page must come up at once on a
    terminal whose network is exactly what is broken.
    """
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            if name == "lo":
                continue
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
            except OSError:
                continue  # interface without an IPv4 address
            found.append(socket.inet_ntoa(packed[20:24]))
    return tuple(found)


class ServiceSession:
    """One technician's visit: journaled entry, the menu on screen and keypad, journaled exit.

    ``keys`` is fed by the terminal's input loop while the session is the
    terminal's ``service_session``.
    """

    def __init__(self, host: ServiceHost, member: Member, identity: CardIdentity | None,
                 reader: str = "", addresses: Callable[[], tuple[str, ...]] = local_addresses) -> None:
        self.host = host
        self.member = member
        self.identity = identity
        self.reader = reader
        self.keys: asyncio.Queue[str] = asyncio.Queue()
        self.menu = ServiceMenu(pin_required=bool(member.pin_hash), lang=host.cfg.terminal.language)
        self.timeout_s = host.cfg.keypad.service_timeout_s
        self.actions = 0
        self.exit_reason = ""
        self._addresses = addresses
        self._started = time.monotonic()

    def _entry(self, kind: str, decision: str, reason: str, grants_value: bool = False,
               **detail: object) -> TxEntry:
        identity = self.identity
        return TxEntry(mode=self.host.cfg.terminal.mode, kind=kind, decision=decision, reason=reason,
                       card_ref=identity.card_ref.hex() if identity else "",
                       profile=identity.profile if identity else "",
                       strength=identity.strength.value if identity else "",
                       member_no=self.member.member_no, grants_value=grants_value, detail=dict(detail))

    async def enter(self) -> Record:
        """Journal the entry; raises :class:`StorageError` (and nothing opens) if it cannot be."""
        assert self.host.journal is not None
        record = await self.host.journal.append(self._entry(
            KIND_ENTER, "approve", TECHNICIAN, reader=self.reader, pin=self.menu.pin_required))
        log.info("event=service_mode_entered seq=%d member=%s pin=%s",
                 record.seq, self.member.member_no, self.menu.pin_required)
        return record

    async def run(self, stop: asyncio.Event) -> str:
        """Serve keys until the technician leaves, the idle timeout passes or the terminal stops."""
        await self.draw()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                getter = asyncio.ensure_future(self.keys.get())
                done, _ = await asyncio.wait({getter, stopping}, timeout=self.timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    self.exit_reason = "stopping" if stopping in done else "timeout"
                    break
                effect = await self._handle(getter.result())
                if isinstance(effect, Exit):
                    self.exit_reason = effect.reason
                    break
                await self.draw()
        finally:
            stopping.cancel()
        await self._journal_exit()
        return self.exit_reason

    async def _handle(self, key: str) -> Effect | None:
        history = await self.history() if self.menu.page is Page.HISTORY else ()
        effect = self.menu.key(key, len(history))
        if isinstance(effect, CheckPin):
            ok = await asyncio.to_thread(verify_pin, self.member.pin_hash, effect.pin)  # PBKDF2: off the loop
            log.info("event=service_pin ok=%s member=%s", ok, self.member.member_no)
            effect = self.menu.pin_checked(ok)
        if isinstance(effect, Perform):
            self.menu.performed(effect.action, await self.perform(effect.action))
            effect = None
        return effect

    async def perform(self, action: Action) -> bool:
        """Journal ``action``, then do it; ``False`` (and nothing done) if it could not be journaled."""
        assert self.host.journal is not None
        try:
            record = await self.host.journal.append(self._entry(
                KIND_ACTION, "approve", action.value, grants_value=action.grants_value))
        except StorageError as exc:
            log.error("event=service_action_refused action=%s error=%r", action.value, str(exc))
            return False
        outputs = self.host.hw.outputs
        if action is Action.RELAY:
            outputs.pulse_relay(self.host.cfg.access.pulse_ms / 1000)
        elif action in (Action.GREEN, Action.RED):
            outputs.flash(Light.GREEN if action is Action.GREEN else Light.RED, 1.0)
        elif action is Action.BUZZER:
            outputs.beep((0.2, 0.1, 0.2))
        else:
            self.host.sync_now()
            if self.host.uplink is not None:
                self.host.uplink.kick()
        self.actions += 1
        log.info("event=service_action action=%s seq=%d", action.value, record.seq)
        return True

    async def _journal_exit(self) -> None:
        assert self.host.journal is not None
        seconds = round(time.monotonic() - self._started, 1)
        try:
            await self.host.journal.append(self._entry(
                KIND_EXIT, "none", self.exit_reason, pages=list(self.menu.visited), actions=self.actions,
                seconds=seconds))
        except StorageError as exc:  # the entry is on record; a lost exit must not block the taps waiting
            log.error("event=service_exit_unrecorded error=%r", str(exc))
        log.info("event=service_mode_left reason=%s actions=%d seconds=%.1f",
                 self.exit_reason, self.actions, seconds)

    # -- what the pages show -----------------------------------------------------------------

    async def status(self) -> Status:
        """A fresh snapshot for the status pages (taken at every redraw, so the pages are live)."""
        host = self.host
        assert host.journal is not None
        stats = await host.journal.stats()
        wall_ms, clock_ok = host.clock()
        lists = tuple(ListState(scope, info.version, info.updated_at)
                      for scope, info in sorted(host.list_versions().items()))
        connected = host.uplink is not None and host.uplink.connected.is_set()
        return Status(host.cfg.terminal.id, host.cfg.terminal.mode, self._addresses(), connected, lists,
                      stats.unpublished, stats.unacked, tuple(sorted(host.readers_online)), wall_ms, clock_ok,
                      stats.state.value)

    async def history(self) -> list[TxLine]:
        """The last :data:`HISTORY_SIZE` transactions, newest first (service records left out)."""
        journal = self.host.journal
        assert journal is not None
        window = HISTORY_SIZE * 4
        try:
            records = await journal.records_after(max(0, journal.last_seq - window), window)
        except StorageError:
            return []  # the status page says why; the menu itself must keep working
        lines = [TxLine.from_record(r) for r in records]
        return [tx for tx in reversed(lines) if not tx.kind.startswith("service_")][:HISTORY_SIZE]

    async def draw(self) -> None:
        """Show the current page; the page name is logged, the keys typed never are (PINs)."""
        history = await self.history() if self.menu.page is Page.HISTORY else ()
        self.host.show(self.menu.screen(await self.status(), history))
        log.info("event=service_page page=%s", self.menu.name)
