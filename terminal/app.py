"""The terminal's main loop: card in, decision, journal, outputs, uplink, screen.

Reading a card and deciding about it are two stages. Each reader's card is
read the moment it arrives (the member will not hold it there for long);
the identity then joins one decision queue served in order, so a tap that
arrives while another is being decided waits its turn and is never lost.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bridge import LoopBridge
from .cardref import card_ref
from .config import Config
from .exceptions import CardError, CardRemoved, MalformedResponse, StorageError, UniontermError
from .hardware import (CardChannel, CardGone, CardPresent, Hardware, InputEvent,
                       ReaderState)
from .journal import Journal, Record, TxEntry
from .members import Lookup, MemberStore
from .model import CardIdentity, Decision, Strength
from .rules.access import decide_access
from .timesource import wall_clock
from .ui import APPROVE, DENY, Screen, decision_screen, idle_screen, render, signal, text
from .uplink import Uplink

log = logging.getLogger("unionterm.app")

GET_UID = bytes.fromhex("FFCA000000")

Identify = Callable[[CardChannel, bytes], Awaitable[CardIdentity]]


@dataclass
class Tap:
    """A card that was read (or failed to read) and waits for its decision."""

    reader: str
    detected_at: float
    identity: CardIdentity | None = None
    error: CardError | None = None
    read_at: float = 0.0


@dataclass
class Outcome:
    """Everything known about one served tap, for listeners (demo, tests, bench)."""

    tap: Tap
    decision: Decision
    lookup: Lookup | None
    record: Record | None
    decided_at: float
    committed_at: float
    timings_ms: dict[str, float] = field(default_factory=dict)


def load_card_key(path: Path) -> bytes:
    """The deployment key for card hashes: hex in a file readable by the service only."""
    try:
        raw = path.read_text().strip()
        key = bytes.fromhex(raw)
    except FileNotFoundError:
        raise UniontermError(f"{path}: card key file not found") from None
    except ValueError:
        raise UniontermError(f"{path}: card key must be hex") from None
    if len(key) < 16:
        raise UniontermError(f"{path}: card key must be at least 16 bytes")
    return key


def uid_identifier(card_key: bytes) -> Identify:
    """The walking-skeleton profile: the PC/SC UID alone (weak: a UID can be copied)."""

    async def identify(channel: CardChannel, atr: bytes) -> CardIdentity:
        response = await channel.transmit(GET_UID)
        sw = int.from_bytes(response[-2:], "big")
        uid = response[:-2]
        if sw != 0x9000 or not 4 <= len(uid) <= 10:
            raise MalformedResponse(f"GET UID: status {sw:04X}, {len(uid)} bytes")
        return CardIdentity("uid-legacy", card_ref(card_key, "uid", uid), Strength.WEAK)

    return identify


class Terminal:
    """One terminal: owns the journal, the member store and the uplink, drives the hardware."""

    def __init__(self, cfg: Config, hardware: Hardware, *, identify: Identify | None = None,
                 clock: Callable[[], tuple[int, bool]] = wall_clock) -> None:
        self.cfg = cfg
        self.hw = hardware
        self.clock = clock
        self.card_key = load_card_key(cfg.config_path(cfg.members.card_key_file))
        self.identify = identify or uid_identifier(self.card_key)
        self.lang = cfg.terminal.language
        self.members: MemberStore | None = None
        self.journal: Journal | None = None
        self.uplink: Uplink | None = None
        self.listeners: list[Callable[[Outcome], None]] = []
        #: Long-running activities that plug in (member sync, telemetry, ECR link ...):
        #: each is called once the journal, store and uplink exist, and runs in the task group.
        self.services: list[Callable[["Terminal"], Awaitable[None]]] = []
        self.readers_online: set[str] = set()
        self.cards_present: dict[str, bool] = {}
        self.started = asyncio.Event()
        self._taps: asyncio.Queue[Tap] = asyncio.Queue()
        self._inputs: LoopBridge[InputEvent] | None = None
        self._stopping = asyncio.Event()
        self._busy = 0
        self._idle_task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking new taps; the one in flight finishes, then :meth:`run` returns."""
        self._stopping.set()

    async def run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            self.members = MemberStore(self.cfg.state_path(self.cfg.members.db))
            stack.callback(self.members.close)
            self.journal = await stack.enter_async_context(
                Journal(self.cfg.state_path(self.cfg.journal.db), self.cfg.terminal.id, self.clock))
            self.uplink = Uplink(self.cfg, self.journal, self._status)
            self._inputs = LoopBridge()
            if self.hw.inputs is not None:
                self.hw.inputs.start(self._inputs.put_threadsafe)
            self.show(idle_screen(self.lang, self.cfg.terminal.id))
            log.info("event=terminal_started id=%s mode=%s members=%d",
                     self.cfg.terminal.id, self.cfg.terminal.mode, self.members.count())
            self.started.set()
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._read_loop(tg), name="cards")
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
        return {"readers": sorted(self.readers_online)}

    # -- stage 1: read cards as they arrive ----------------------------------------------------

    async def _read_loop(self, tg: asyncio.TaskGroup) -> None:
        async for event in self.hw.reader.events():
            if isinstance(event, CardPresent):
                self.cards_present[event.reader] = True
                if self._stopping.is_set():
                    log.info("event=tap_ignored reason=stopping reader=%r", event.reader)
                    continue
                self._busy += 1
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
        tap = Tap(event.reader, event.detected_at)
        try:
            async with self.hw.reader.connect(event.reader) as channel:
                tap.identity = await self.identify(channel, event.atr)
        except CardRemoved as exc:
            log.info("event=card_removed_early reader=%r detail=%r", event.reader, str(exc))
            self._busy -= 1
            return
        except CardError as exc:
            tap.error = exc
        tap.read_at = time.perf_counter()
        self._taps.put_nowait(tap)  # _busy is released by the decision stage

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

    def decide(self, tap: Tap, now_s: int) -> tuple[Decision, Lookup | None]:
        """Pure part of a tap: eligibility and the mode's rule."""
        if tap.error is not None:
            return Decision.deny(tap.error.reason), None
        assert tap.identity is not None
        lookup = self.members.lookup(tap.identity.card_ref) if self.members else Lookup(None, False)
        decision = decide_access(lookup.member, lookup.hot, now_s, self.cfg.access.pulse_ms)
        return decision, lookup

    async def _serve(self, tap: Tap) -> None:
        assert self.journal is not None
        wall_ms, _ok = self.clock()
        decision, lookup = self.decide(tap, wall_ms // 1000)
        decided_at = time.perf_counter()
        member = lookup.member if lookup else None
        identity = tap.identity
        entry = TxEntry(
            mode=self.cfg.terminal.mode,
            kind="tap",
            decision=decision.verdict.value,
            reason=decision.reason,
            card_ref=identity.card_ref.hex() if identity else "",
            profile=identity.profile if identity else "",
            strength=identity.strength.value if identity else "",
            member_no=member.member_no if member else "",
            amount_fen=decision.amount_fen,
            subsidy_fen=decision.subsidy_fen,
            to_pay_fen=decision.to_pay_fen,
        )
        record = await self.journal.append(entry)  # committed before anything is granted or shown
        committed_at = time.perf_counter()
        if decision.approved:
            self.hw.outputs.pulse_relay(self.cfg.access.pulse_ms / 1000)
            signal(self.hw.outputs, APPROVE)
        else:
            signal(self.hw.outputs, DENY)
        self.show(decision_screen(self.lang, decision, member), hold_s=3.0)
        outcome = Outcome(tap, decision, lookup, record, decided_at, committed_at, {
            "read": (tap.read_at - tap.detected_at) * 1000,
            "decide": (decided_at - tap.detected_at) * 1000,
            "commit": (committed_at - tap.detected_at) * 1000,
        })
        log.info("event=tap seq=%d reader=%r card=%s member=%s decision=%s reason=%s ms=%.2f",
                 record.seq, tap.reader, entry.card_ref[:12], entry.member_no or "-",
                 entry.decision, entry.reason, outcome.timings_ms["decide"])
        for listener in self.listeners:
            listener(outcome)

    # -- inputs ----------------------------------------------------------------------------------

    async def _input_loop(self) -> None:
        assert self._inputs is not None
        async for event in self._inputs:
            log.info("event=input kind=%s active=%s key=%s", event.kind.value, event.active, event.key or "-")

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
            self.show(idle_screen(self.lang, self.cfg.terminal.id))


class _Stopped(Exception):
    """Raised inside the task group to unwind it after a graceful stop."""
