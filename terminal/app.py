"""The terminal's main loop: card in, decision, journal, outputs, uplink, screen.

Reading a card and deciding about it are two stages. Each reader's card is
read the moment it arrives (the member will not hold it there for long);
the identity then joins one decision queue served in order, so a tap that
arrives while another is being decided waits its turn and is never lost.
When nothing is queued and the loop is idle, the reader's own thread decides
and journals the tap before the loop hears of it (:meth:`Terminal._serve_here`,
under the loop's :class:`~terminal.eventloop.StateGuard`), and the queue then
only concludes it: a tap then crosses no thread before its record is durable.

Every resource is an async context on one :class:`~contextlib.AsyncExitStack`
and every activity a task in one :class:`asyncio.TaskGroup`; a stop request
lets the tap in flight finish, then unwinds it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from .bridge import LoopBridge
from .cardref import load_card_key
from .commands import CommandProcessor
from .config import Config
from .config import load as load_config
from .eventloop import StateGuard, guard_of
from .exceptions import CardError, CardRemoved, StorageError, UniontermError
from .fifotaps import fifo_taps
from .hardware import (CardChannel, CardGone, CardPresent, Hardware, InputEvent,
                       InputKind, Inputs, ReaderState)
from .identify import build as build_card_layer
from .journal import Journal, Record, TxEntry
from .members import Lookup, MemberStore
from .membersync import MemberSync
from .model import CardIdentity, Decision
from .modes import AccessMode, Entry, Mode, Ruling, build_mode
from .rules.clock import Moment
from .rules.door import DoorMode
from .rules.membership import check_eligibility
from .service_session import SERVICE_DECISION, ServiceSession, is_service_card
from .storage import StorageState, screen_text
from .taps import Outcome, Served, Tap
from .telemetry import ListInfo, Telemetry
from .timesource import wall_clock
from .ui import APPROVE, DENY, Screen, decision_screen, render, signal, text
from .uplink import Uplink

log = logging.getLogger("unionterm.app")

#: How long a reader thread waits for the loop to be between callbacks before it leaves the
#: tap to the loop; a loop callback takes microseconds to a few milliseconds.
GUARD_WAIT_S = 0.1

Identify = Callable[[CardChannel, bytes], Awaitable[CardIdentity]]


class Terminal:
    """One terminal: owns the journal, the member store and the uplink, drives the hardware."""

    def __init__(self, cfg: Config, hardware: Hardware, *, identify: Identify | None = None,
                 clock: Callable[[], tuple[int, bool]] = wall_clock,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.hw = hardware
        self.clock = clock
        self.mono = mono  # [modes] carries trusted time across wall-clock steps; times the door
        self.card_key = load_card_key(cfg.config_path(cfg.members.card_key_file))
        self.cards = build_card_layer(cfg, self.card_key, hardware.reader, known_ref=lambda ref: (
            self.members is not None and self.members.lookup(ref).member is not None))
        self._reader_armed = False
        self._guard: StateGuard | None = None  # the running loop's, when it has one (terminal.eventloop)
        self._identify: Identify = identify or self.cards.identify
        self.lang = cfg.terminal.language
        self.members: MemberStore | None = None
        self.journal: Journal | None = None
        self.uplink: Uplink | None = None
        self.listeners: list[Callable[[Outcome], None]] = []
        #: Long-running activities that plug in (member sync, telemetry, ECR link ...):
        #: each is called once the journal, store and uplink exist, and runs in the task group.
        self.services: list[Callable[["Terminal"], Awaitable[None]]] = list(self.cards.services)
        # [members] signed member-list sync (it also replaces list_versions once running)
        self.sync = MemberSync(cfg) if cfg.sync.trusted_keys else None
        if self.sync is not None:
            self.services.append(self.sync.run)
        self.readers_online: set[str] = set()
        self.cards_present: dict[str, bool] = {}
        self.started = asyncio.Event()
        self._taps: asyncio.Queue[Tap] = asyncio.Queue()
        self._inputs: LoopBridge[InputEvent] | None = None
        self._stopping = asyncio.Event()
        self._busy = 0
        self._idle_task: asyncio.Task[None] | None = None
        # [journal/uplink] remote-command state, and the hook telemetry reads list versions from
        self.door_mode = DoorMode.NORMAL
        self.sync_requested = asyncio.Event()
        self.reload_requested = False
        self.list_versions: Callable[[], dict[str, ListInfo]] = dict  # the member sync replaces this
        self.commands: CommandProcessor | None = None
        # [field ops] technician service mode, extra input devices (the keypad), watchdog health
        self.service_session: ServiceSession | None = None
        self._extra_inputs: list[Inputs] = []
        self._reader_task: asyncio.Task[None] | None = None
        # [modes] the mode's rules, screens and services (terminal/modes/)
        self.mode: Mode = build_mode(self)
        self.services += self.mode.services
        if cfg.simulator.tap_fifo:  # [journal/uplink] a test-only tap source
            self.services.append(fifo_taps(cfg.simulator.tap_fifo))

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def identify(self) -> Identify:
        """How a card is read; replacing it while running re-arms the reader."""
        return self._identify

    @identify.setter
    def identify(self, identify: Identify) -> None:
        self._identify = identify
        self._arm_reader()

    def _arm_reader(self) -> None:
        """Let the reader's own thread read each card as it arrives, when the Identify allows it.

        That takes the thread hand-offs out of a tap: the same thread then
        decides and journals it when the loop lets it (:meth:`_serve_here`).
        An Identify that waits on the loop (a PC/SC SAM in another slot) is
        run from the loop instead, and so is every card once the terminal stops.
        """
        read_on_arrival = getattr(self.hw.reader, "read_on_arrival", None)
        if read_on_arrival is not None:
            inline = self._reader_armed and getattr(self._identify, "inline", False)
            read_on_arrival(self._read_and_serve if inline else None)

    def _disarm_reader(self) -> None:
        self._reader_armed = False
        self._arm_reader()

    def request_stop(self) -> None:
        """Stop taking new taps; the one in flight finishes, then :meth:`run` returns."""
        self._stopping.set()

    async def run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            self.members = MemberStore(self.cfg.state_path(self.cfg.members.db),
                                       self.cfg.sync.scopes if self.sync else None)
            stack.callback(self.members.close)
            self.journal = await stack.enter_async_context(
                Journal(self.cfg.state_path(self.cfg.journal.db), self.cfg.terminal.id, self.clock,
                        self.cfg.journal))
            # [journal/uplink] storage state on screen; telemetry; signed commands
            self.journal.listeners.append(lambda state: self.show(self._idle_screen()))
            telemetry = Telemetry(self.cfg.terminal.id, self.journal, lambda: self.readers_online,
                                  lambda: self.list_versions(), lambda: {"door_mode": self.door_mode.value})
            self.uplink = Uplink(self.cfg, self.journal, self._status, telemetry.payload)
            await stack.enter_async_context(self.mode.running())  # [modes] counters caught up with the journal
            self.commands = CommandProcessor(self.cfg, self.journal, self, self.uplink)
            await self.commands.start()
            self._inputs = LoopBridge()
            if self.hw.inputs is not None:
                self.hw.inputs.start(self._inputs.put_threadsafe)
            for extra in self._extra_inputs:
                extra.start(self._inputs.put_threadsafe)
            self.show(self._idle_screen())
            log.info("event=terminal_started id=%s mode=%s members=%d",
                     self.cfg.terminal.id, self.cfg.terminal.mode, self.members.count())
            self.started.set()
            self._guard = guard_of(asyncio.get_running_loop())
            self._reader_armed = True
            self._arm_reader()
            stack.callback(self._disarm_reader)
            try:
                async with asyncio.TaskGroup() as tg:
                    self._reader_task = tg.create_task(self._read_loop(tg), name="cards")
                    tg.create_task(self._decide_loop(), name="decide")
                    tg.create_task(self._input_loop(), name="inputs")
                    tg.create_task(self.uplink.run(), name="uplink")
                    tg.create_task(self._stop_when_asked(), name="stop")
                    for service in self.services:
                        tg.create_task(service(self), name=getattr(service, "__name__", "service"))
            except* _Stopped:
                pass
            self.show(Screen(text(self.lang, "goodbye"), (self.cfg.terminal.id,), alert=True))
            log.info("event=terminal_stopped last_seq=%d", self.journal.last_seq)

    async def _stop_when_asked(self) -> None:
        await self._stopping.wait()
        while self._busy or not self._taps.empty():
            await asyncio.sleep(0.01)
        raise _Stopped

    def _status(self) -> dict[str, Any]:
        return {"readers": sorted(self.readers_online), "door_mode": self.door_mode.value,
                "lists": {scope: info.version for scope, info in self.list_versions().items()}}

    # -- stage 1: read cards as they arrive ----------------------------------------------------

    async def _read_loop(self, tg: asyncio.TaskGroup) -> None:
        async for event in self.hw.reader.events():
            if isinstance(event, CardPresent):
                self.cards_present[event.reader] = True
                served = event.read.value if event.read is not None else None
                if isinstance(served, Tap) and served.here is not None:  # decided and journaled already
                    self._taps.put_nowait(self._arrived_tap(event, served))  # _busy was counted then
                    continue
                if self._stopping.is_set():
                    log.info("event=tap_ignored reason=stopping reader=%r", event.reader)
                    if event.read is not None:
                        event.read.served()
                    continue
                self._busy += 1
                if event.read is not None:  # read as it arrived: nothing left to wait for
                    await self._read_card(event)
                else:
                    tg.create_task(self._read_card(event))
            elif isinstance(event, CardGone):
                self.cards_present[event.reader] = False
                log.debug("event=card_gone reader=%r", event.reader)
            elif isinstance(event, ReaderState):
                (self.readers_online.add if event.online else self.readers_online.discard)(event.reader)
                if not event.online:
                    self.cards_present[event.reader] = False
                log.info("event=reader_state reader=%r online=%s detail=%r",
                         event.reader, event.online, event.detail)

    async def _read_card(self, event: CardPresent) -> None:
        tap = Tap(event.reader, event.detected_at, card=event.read)
        try:
            if event.read is not None:
                tap = self._arrived_tap(event, cast(Tap, event.read.result()))
            else:
                async with self.hw.reader.connect(event.reader) as channel:
                    await self._read(tap, channel, event.atr)
        except CardRemoved as exc:
            log.info("event=card_removed_early reader=%r detail=%r", event.reader, str(exc))
            self._busy -= 1
            tap.served()
            return
        except CardError as exc:  # the card could not even be opened: a refusal like any other
            tap.fail(exc)
            tap.read_at = time.perf_counter()
        self._taps.put_nowait(tap)  # _busy is released by the decision stage

    async def _read(self, tap: Tap, channel: CardChannel, atr: bytes) -> Tap:
        """Identify the card into ``tap``: its identity, or the refusal it is decided as.

        A card taken away mid-read raises :class:`CardRemoved`: there is no tap then.
        """
        try:
            tap.identity = await self.identify(channel, atr)
        except CardRemoved:
            raise
        except CardError as exc:
            tap.fail(exc)
        tap.read_at = time.perf_counter()
        return tap

    @staticmethod
    def _arrived_tap(event: CardPresent, tap: Tap) -> Tap:
        """The tap a reader's arrival work made, with what only the event knows."""
        tap.reader, tap.detected_at, tap.card = event.reader, event.detected_at, event.read
        return tap

    async def _read_and_serve(self, channel: CardChannel, atr: bytes) -> Tap:
        """The reader thread's arrival work: read the card, then serve the tap there if the loop lets it."""
        tap = await self._read(Tap("", 0.0), channel, atr)
        self._serve_here(tap)
        return tap

    def _serve_here(self, tap: Tap) -> None:
        """Reader thread: decide and journal ``tap`` now, exactly as the decision stage would.

        Under the loop's :class:`StateGuard` the loop sits between two
        callbacks, so the terminal's state is this thread's alone for the
        moment. The tap is left to the loop (``tap.here`` stays None) when
        the loop is not guarded or stays busy, when a tap is already queued
        or being served (taps are decided in order, and a decision's effects
        on the mode land in ``act``, on the loop), when stopping, and when
        the tap needs the loop: a PIN to ask for or a technician's card.
        The record is committed before the loop hears of the tap, so before
        anything is granted or shown.
        """
        guard = self._guard
        if guard is None or self.journal is None or not guard.acquire(GUARD_WAIT_S):
            return
        try:
            if self._busy or self._stopping.is_set() or self.service_session is not None:
                return
            if not self.mode.may_journal_here():
                return
            moment = self.mode.time.now()
            ruling, lookup = self.decide(tap, moment)
            if self._service_card(lookup, moment):
                return
            if self.mode.asks(ruling):
                return
            decided_at = time.perf_counter()
            result: Record | StorageError
            try:
                result = self.mode.journal_here(self._entry(tap, ruling, lookup), ruling)
            except StorageError as exc:
                result = exc
            tap.here = Served(ruling, lookup, result, decided_at, time.perf_counter())
            self._busy += 1  # released by the decision stage, which concludes the tap on the loop
        finally:
            guard.release()

    def submit_identity(self, reader: str, result: CardIdentity | CardError, detected_at: float) -> bool:
        """Queue a tap identified outside the card readers (the QR scanner); False once stopping."""
        if self._stopping.is_set():
            return False
        tap = Tap(reader, detected_at, read_at=time.perf_counter())
        if isinstance(result, CardError):
            tap.fail(result)
        else:
            tap.identity = result
        self.submit(tap)
        return True

    # -- stage 2: decide, journal, act ----------------------------------------------------------

    async def _decide_loop(self) -> None:
        while True:
            tap = await self._taps.get()
            try:
                await self._serve(tap)
            except StorageError as exc:
                log.error("event=journal_failed error=%r", str(exc))
                signal(self.hw.outputs, DENY)
                self.show(Screen(text(self.lang, "denied"), (text(self.lang, "storage_error"),), alert=True))
            finally:
                self._busy -= 1
                tap.served()

    def decide(self, tap: Tap, moment: Moment, entry: Entry = Entry()) -> tuple[Ruling, Lookup | None]:
        """Pure part of a tap: eligibility, then the mode's rule ([modes]), at trusted time ``moment``."""
        if tap.error is not None:
            return Ruling(Decision.deny(tap.error.reason)), None
        assert tap.identity is not None
        lookup = self.members.lookup(tap.identity.card_ref) if self.members else Lookup(None, False)
        denied = check_eligibility(lookup.member, lookup.hot, moment.now)
        if denied is not None or lookup.member is None:
            ruling = self.mode.refuse(denied or Decision.deny("unknown_card"))
        else:
            ruling = self.mode.decide(lookup.member, moment, entry)
        if self.sync is not None:  # [members] no value on a list older than the mode allows
            ruling = ruling.gated(self.sync.gate(ruling.decision, moment.now))
        return ruling, lookup

    async def _serve(self, tap: Tap) -> None:
        assert self.journal is not None
        here = tap.here
        if here is not None:  # decided and journaled on its reader's thread (_serve_here)
            result = here.result
            self.journal.after_append(not isinstance(result, StorageError))
            if isinstance(result, StorageError):
                self._unrecorded(tap, here.ruling, here.lookup, here.decided_at, result)
            else:
                await self._conclude(tap, here.ruling, here.lookup, result, here.decided_at, here.committed_at)
            return
        moment = self.mode.time.now()
        ruling, lookup = self.decide(tap, moment)
        decided_at = time.perf_counter()
        if self._service_card(lookup, moment):
            await self._service_mode(tap, lookup, decided_at)  # [field ops]
            return
        typed = await self.mode.ask(ruling)  # [modes] the PIN pad, when the rule asked for a PIN
        if typed is not None:
            ruling, lookup = self.decide(tap, self.mode.time.now(), typed)
            decided_at = time.perf_counter()
        try:
            # committed before anything is granted or shown
            record = await self.mode.journal(self._entry(tap, ruling, lookup), ruling)
        except StorageError as exc:  # [journal/uplink] nothing granted without its record; keep serving
            self._unrecorded(tap, ruling, lookup, decided_at, exc)
            return
        await self._conclude(tap, ruling, lookup, record, decided_at, time.perf_counter())

    @staticmethod
    def _service_card(lookup: Lookup | None, moment: Moment) -> bool:
        """A technician's card: it opens service mode instead of being decided ([field ops])."""
        return lookup is not None and is_service_card(lookup.member, lookup.hot, moment.now)

    def _entry(self, tap: Tap, ruling: Ruling, lookup: Lookup | None) -> TxEntry:
        """The journal entry of a decided tap."""
        decision = ruling.decision
        member = lookup.member if lookup else None
        identity = tap.identity
        return TxEntry(
            mode=self.cfg.terminal.mode,
            kind=ruling.kind,  # [modes] a tap, a sale void, a door-state change; the rule's detail and counters
            decision=decision.verdict.value,
            reason=decision.reason,
            card_ref=identity.card_ref.hex() if identity else "",
            profile=identity.profile if identity else "",
            strength=identity.strength.value if identity else "",
            member_no=member.member_no if member else "",
            amount_fen=decision.amount_fen,
            subsidy_fen=decision.subsidy_fen,
            to_pay_fen=decision.to_pay_fen,
            grants_value=decision.grants_value,
            detail=ruling.journal_detail(),
        )

    async def _conclude(self, tap: Tap, ruling: Ruling, lookup: Lookup | None, record: Record,
                        decided_at: float, committed_at: float) -> None:
        """A journaled tap: what it means (door, cash register), lights, screen, listeners."""
        decision = ruling.decision
        member = lookup.member if lookup else None
        await self.mode.act(ruling, record)  # [modes] the door opens, the cash register gets its reply
        signal(self.hw.outputs, APPROVE if decision.approved else DENY)
        self.show(self.mode.screen(ruling, member), hold_s=3.0)
        outcome = Outcome(tap, decision, lookup, record, decided_at, committed_at, {
            "read": (tap.read_at - tap.detected_at) * 1000,
            "decide": (decided_at - tap.detected_at) * 1000,
            "commit": (committed_at - tap.detected_at) * 1000,
        })
        log.info("event=tap seq=%d reader=%r card=%s member=%s decision=%s reason=%s ms=%.2f here=%s",
                 record.seq, tap.reader, tap.identity.card_ref.hex()[:12] if tap.identity else "",
                 member.member_no if member else "-", decision.verdict.value, decision.reason,
                 outcome.timings_ms["decide"], "reader" if tap.here is not None else "loop")
        for listener in self.listeners:
            listener(outcome)

    # -- inputs ----------------------------------------------------------------------------------

    async def _input_loop(self) -> None:
        assert self._inputs is not None
        async for event in self._inputs:
            if event.kind is InputKind.KEY:  # [field ops] keys belong to service mode; never logged (PINs)
                session = self.service_session
                if session is not None and event.active:
                    session.keys.put_nowait(event.key)
                elif session is None and event.active:
                    self.mode.on_input(event)  # [modes] PIN pad, keyed amounts, void, door states
                continue
            log.info("event=input kind=%s active=%s", event.kind.value, event.active)
            self.mode.on_input(event)  # [modes] door contact and exit button

    # -- screen ----------------------------------------------------------------------------------

    def show(self, screen: Screen, hold_s: float = 0.0) -> None:
        """Draw ``screen``; with ``hold_s``, fall back to the idle screen afterwards."""
        if self.hw.display is None:
            return
        self.hw.display.show(render(screen, self.hw.display.size))
        if self._idle_task is not None:
            self._idle_task.cancel()
            self._idle_task = None
        if hold_s:
            self._idle_task = asyncio.get_running_loop().create_task(self._back_to_idle(hold_s))

    async def _back_to_idle(self, after: float) -> None:
        await asyncio.sleep(after)
        self._idle_task = None
        if not self._stopping.is_set():
            self.show(self._idle_screen())

    # -- [journal/uplink] storage trouble, remote commands (terminal.commands.CommandTarget) ------

    def _idle_screen(self) -> Screen:
        state = self.journal.state if self.journal else StorageState.OK
        screen = self.mode.idle_screen(screen_text(state, self.lang))  # [modes] sale waiting, meal count, door
        return Screen(screen.headline, screen.lines, alert=screen.alert or not state.accepts_value)

    def show_idle(self, force: bool = True) -> None:
        """[modes] Redraw the idle screen now; without ``force``, not over a result still being shown."""
        if force or self._idle_task is None:
            self.show(self._idle_screen())

    @property
    def keypad_present(self) -> bool:
        """[modes] Can the member type a PIN here (a configured or attached keypad)?"""
        return self.cfg.keypad.driver != "none" or bool(self._extra_inputs)

    def _unrecorded(self, tap: Tap, ruling: Ruling, lookup: Lookup | None, decided_at: float,
                    exc: StorageError) -> None:
        """The journal refused the record: deny (a denial keeps its reason), say why, tell listeners
        and the mode (a waiting cash register is answered)."""
        decision = ruling.decision
        state = self.journal.state if self.journal else StorageState.FAILED
        refused = Decision.deny(state.value) if decision.approved else decision
        log.error("event=tap_unrecorded reader=%r decision=%s reason=%s storage=%s error=%r",
                  tap.reader, refused.verdict.value, refused.reason, state.value, str(exc))
        signal(self.hw.outputs, DENY)
        if decision.approved:
            line = screen_text(state, self.lang) or text(self.lang, "storage_error")
            self.show(Screen(text(self.lang, "denied"), (line,), alert=True), hold_s=3.0)
        else:
            self.show(decision_screen(self.lang, decision, lookup.member if lookup else None), hold_s=3.0)
        self.mode.unrecorded(ruling, refused)  # [modes] answer a waiting cash register
        outcome = Outcome(tap, refused, lookup, None, decided_at, time.perf_counter())
        for listener in self.listeners:
            listener(outcome)

    def submit(self, tap: Tap) -> None:
        """Queue a read card for its decision (the card stage, :meth:`submit_identity`, tests)."""
        self._busy += 1
        self._taps.put_nowait(tap)

    def open_door_once(self) -> None:
        if not isinstance(self.mode, AccessMode):
            raise UniontermError(f"open_door: a {self.cfg.terminal.mode} terminal has no door")
        self.mode.release("command")  # [modes] the lock honours the door's failure mode
        signal(self.hw.outputs, APPROVE)

    def set_door_mode(self, mode: DoorMode) -> None:
        if not isinstance(self.mode, AccessMode) and mode is not DoorMode.NORMAL:
            raise UniontermError(f"{mode.value}: a {self.cfg.terminal.mode} terminal has no door")
        self.door_mode = mode
        if isinstance(self.mode, AccessMode):
            self.mode.door_mode_changed()  # [modes] relay level from lock_released/relay_energised
        if self.commands is not None:  # [journal/uplink] survives a restart, shown in presence
            self.commands.remember_door_mode(mode)

    def sync_now(self) -> None:
        self.sync_requested.set()

    def reload_config(self) -> Callable[[], None]:
        """Validate the file; once reported, stop so a fresh start loads it (cli/systemd)."""
        load_config(self.cfg.source)  # ConfigError refuses the command and keeps the running config

        def apply() -> None:
            self.reload_requested = True
            self.request_stop()
        return apply

    def show_message(self, message: str, seconds: float) -> None:
        self.show(Screen(message, (self.cfg.terminal.id,)), hold_s=seconds)

    # -- [field ops] watchdog health, extra inputs, technician service mode -------------------------

    def healthy(self) -> bool:
        """What the systemd watchdog vouches for: the card task runs and the journal can still write."""
        reader_alive = self._reader_task is not None and not self._reader_task.done()
        writable = self.journal is not None and self.journal.state not in (StorageState.READ_ONLY,
                                                                           StorageState.FAILED)
        return reader_alive and writable

    def attach_inputs(self, inputs: Inputs) -> None:
        """Deliver another device's events (the keypad) to the input loop, from now or from start."""
        self._extra_inputs.append(inputs)
        if self._inputs is not None:
            inputs.start(self._inputs.put_threadsafe)

    async def _service_mode(self, tap: Tap, lookup: Lookup, decided_at: float) -> None:
        """A technician's card: journal the entry, tell listeners, run the menu; later taps wait their turn."""
        assert lookup.member is not None
        session = ServiceSession(self, lookup.member, tap.identity, tap.reader)
        record = await session.enter()  # a StorageError refuses it like any tap that cannot be recorded
        outcome = Outcome(tap, SERVICE_DECISION, lookup, record, decided_at, time.perf_counter())
        for listener in self.listeners:
            listener(outcome)
        self.service_session = session
        try:
            await session.run(self._stopping)
        finally:
            self.service_session = None
            self.show(self._idle_screen())


class _Stopped(Exception):
    """Raised inside the task group to unwind it after a graceful stop."""
