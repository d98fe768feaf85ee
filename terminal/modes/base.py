"""What every mode shares: the ruling it returns, its counters, trusted time, the PIN pad.

A mode turns a tap by an eligible member into a :class:`Ruling` (the pure
rule's decision plus its counter and state effects), says what the member
sees, and acts once the journal holds the record: a door opens, a cash
register gets its reply. The order is the terminal's invariant: journal
first, then counters (:mod:`terminal.counterstore`), then outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from ..counterstore import COUNTERS_DB, CounterStore, bumps_to_json
from ..exceptions import StorageError
from ..hardware import Hardware, InputEvent, InputKind
from ..journal import Journal, Record, TxEntry
from ..model import Decision, Member
from ..rules.clock import Moment, business_date
from ..rules.counters import Bump, CounterKey, Outcome, Tally
from ..rules.door import DoorMode
from ..rules.pin import PIN_REQUIRED
from ..screens import label, pin_entry
from ..ui import Screen, idle_screen
from .keys import Typed, Typing
from .timekeeper import TimeKeeper

if TYPE_CHECKING:
    from ..config import Config
    from ..uplink import Uplink

log = logging.getLogger("unionterm.modes")

T = TypeVar("T")

#: Longest PIN the pad takes (the rules accept 4-6 digits; more is a finger slipping).
PIN_MAX = 8
#: How long the PIN pad waits for the member before the tap ends as ``pin_required``.
PIN_TIMEOUT_S = 30.0
#: How often the clock mark is saved between taps (a restart resumes from it).
CLOCK_SAVE_S = 30.0
#: How often counters of finished periods are dropped.
PRUNE_EVERY_S = 3600.0


class Lapsing(Generic[T]):
    """Something keyed or sent that waits for the next card (a sale, a door-state change) and
    lapses after ``ttl_s`` if no card comes, so a forgotten request never decides a later tap."""

    def __init__(self, ttl_s: float, on_lapse: Callable[[T], None]) -> None:
        self.ttl_s = ttl_s
        self.value: T | None = None
        self._on_lapse = on_lapse
        self._timer: asyncio.TimerHandle | None = None

    def set(self, value: T | None) -> None:
        """Wait for ``value`` (None: wait for nothing); a new value replaces the old one and its timer."""
        self.cancel()
        self.value = value
        if value is not None:
            self._timer = asyncio.get_running_loop().call_later(self.ttl_s, self._lapse, value)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _lapse(self, value: T) -> None:
        if self.value is value:
            self.value = None
            self._on_lapse(value)


class ModeHost(Protocol):
    """What a mode needs from the terminal (:class:`terminal.app.Terminal` provides it)."""

    cfg: "Config"
    hw: Hardware
    lang: str
    journal: Journal | None
    uplink: "Uplink | None"
    door_mode: DoorMode
    clock: Callable[[], tuple[int, bool]]
    mono: Callable[[], float]

    @property
    def keypad_present(self) -> bool: ...

    def show(self, screen: Screen, hold_s: float = 0.0) -> None: ...

    def show_idle(self, force: bool = True) -> None: ...

    def set_door_mode(self, mode: DoorMode) -> None: ...


Service = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class Entry:
    """What the member typed for this tap (the PIN), asked for by the rule."""

    pin: str | None = None


@dataclass(frozen=True)
class Ruling:
    """A mode's answer to one tap, ready for the journal.

    ``bumps`` and ``state`` are applied to the counter store only after the
    journal record is committed (and travel inside it, so a crash in between
    is repaired by replay). ``request`` is what the mode decided on (a
    pending sale or keyed amount), None when the mode was not asked (a card
    that could not be read keeps the sale waiting for the next card).
    """

    decision: Decision
    bumps: tuple[Bump, ...] = ()
    state: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "tap"
    context: Mapping[str, Any] = field(default_factory=dict)
    request: object | None = None

    @classmethod
    def of(cls, outcome: Outcome, **more: Any) -> "Ruling":
        return cls(outcome.decision, outcome.bumps, **more)

    def gated(self, decision: Decision) -> "Ruling":
        """The same tap with a decision overruled from outside (a stale member list): no effects."""
        if decision is self.decision:
            return self
        return replace(self, decision=decision, bumps=(), state={})

    def journal_detail(self) -> dict[str, Any]:
        """``detail`` of the journal record: the rule's detail, the mode's context, the effects."""
        detail: dict[str, Any] = {**self.decision.detail, **self.context}
        if self.bumps:
            detail["bumps"] = bumps_to_json(self.bumps)
        if self.state:
            detail["state"] = dict(self.state)
        return detail


class Mode(Protocol):
    """What the terminal calls, in tap order.

    1. ``time.now()`` gives the trusted :class:`~terminal.rules.clock.Moment`;
       the terminal checks eligibility, then ``decide`` (or ``refuse`` for an
       ineligible card) returns a :class:`Ruling`;
    2. ``ask`` opens the PIN pad when the rule wants a PIN; the tap is then
       decided again with what was typed;
    3. ``journal`` commits the record and applies the counters, ``act`` opens
       the door or answers the cash register, ``screen`` is what the member sees.
    """

    name: ClassVar[str]
    time: TimeKeeper
    services: list[Service]

    def running(self) -> AbstractAsyncContextManager[Any]: ...

    def decide(self, member: Member, moment: Moment, entry: Entry) -> Ruling: ...

    def refuse(self, decision: Decision) -> Ruling: ...

    def asks(self, ruling: Ruling) -> bool: ...

    async def ask(self, ruling: Ruling) -> Entry | None: ...

    async def journal(self, entry: TxEntry, ruling: Ruling) -> Record: ...

    def may_journal_here(self) -> bool: ...

    def journal_here(self, entry: TxEntry, ruling: Ruling) -> Record: ...

    async def act(self, ruling: Ruling, record: Record) -> None: ...

    def unrecorded(self, ruling: Ruling, refused: Decision) -> None: ...

    def screen(self, ruling: Ruling, member: Member | None) -> Screen: ...

    def idle_screen(self, status: str) -> Screen: ...

    def on_input(self, event: InputEvent) -> None: ...


class ModeBase:
    """Counters, trusted time and the PIN pad, for the three modes to build on (a :class:`Mode`)."""

    name: ClassVar[str] = ""

    def __init__(self, host: ModeHost) -> None:
        self.host = host
        self.cfg = host.cfg
        self.lang = host.lang
        self.store: CounterStore | None = None
        self.time = TimeKeeper(self.cfg.clock, host.clock, host.mono)
        #: Long-running tasks the terminal starts with its own (``Terminal.services``).
        self.services: list[Service] = [self._keep_time]
        self._commit = asyncio.Lock()
        self._pin: tuple[Typing, asyncio.Future[bool], int] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["ModeBase"]:
        """Open the counters, catch up with the journal, and run until the terminal stops."""
        store = CounterStore(self.cfg.state_path(COUNTERS_DB))
        try:
            store.replay(self.cfg.state_path(self.cfg.journal.db))
            self.store = store
            self.time = TimeKeeper(self.cfg.clock, self.host.clock, self.host.mono, store.high_water)
            self._prune(self.time.now())
            self.start()
            try:
                yield self
            finally:
                self.stop()
                store.save_clock(self.time.mark)
        finally:
            store.close()

    def start(self) -> None:
        """Bring the outputs to their resting state (a door locks)."""

    def stop(self) -> None:
        """Leave the outputs as the config says a stopped terminal must (a door's failure mode)."""

    async def _keep_time(self, _terminal: object) -> None:
        """Save the clock mark now and then, and drop counters of finished periods."""
        since_prune = 0.0
        while True:
            await asyncio.sleep(CLOCK_SAVE_S)
            if self.store is not None:
                self.store.save_clock(self.time.mark)
            since_prune += CLOCK_SAVE_S
            if since_prune >= PRUNE_EVERY_S:
                since_prune = 0.0
                self._prune(self.time.now())

    def _prune(self, moment: Moment) -> None:
        if self.store is not None and moment.trusted:
            self.store.prune(business_date(moment.now))

    @property
    def tallies(self) -> Mapping[CounterKey, Tally]:
        return self.store.tallies if self.store is not None else {}

    # -- deciding ------------------------------------------------------------------------------------

    def decide(self, member: Member, moment: Moment, entry: Entry) -> Ruling:
        """The mode's rule for an eligible member."""
        raise NotImplementedError

    def refuse(self, decision: Decision) -> Ruling:
        """A denial made before the mode's rule (not a member, card blocked ...)."""
        return Ruling(decision)

    def asks(self, ruling: Ruling) -> bool:
        """Whether :meth:`ask` would ask the member something for this ruling."""
        return ruling.decision.reason == PIN_REQUIRED and self.host.keypad_present

    async def ask(self, ruling: Ruling) -> Entry | None:
        """Ask the member for what the rule wants (the PIN); None when there is nothing to ask
        or no answer came. The tap is then decided again with the answer."""
        if not self.asks(ruling):
            return None
        typing = Typing(PIN_MAX)
        answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pin = (typing, answered, ruling.decision.amount_fen or self.amount_of(ruling))
        self._draw_pin()
        try:
            async with asyncio.timeout(PIN_TIMEOUT_S):  # not wait_for: 3.11's can lose a stop
                done = await answered
        except TimeoutError:
            done = False
        finally:
            self._pin = None
        return Entry(pin=typing.text) if done else None

    def amount_of(self, ruling: Ruling) -> int:
        """The amount the PIN pad shows while asking (a pending sale's amount)."""
        return 0

    def _draw_pin(self) -> None:
        if self._pin is not None:
            typing, _answered, amount = self._pin
            self.host.show(pin_entry(self.lang, len(typing.text), amount))

    # -- after the journal ---------------------------------------------------------------------------

    async def journal(self, entry: TxEntry, ruling: Ruling) -> Record:
        """Commit ``entry``, then apply ``ruling``'s effects under the record's sequence number.

        One lock keeps effect-bearing records applied in sequence order,
        which the store's ``applied_seq`` relies on. Raises
        :class:`StorageError` like the journal; nothing is applied then.
        """
        assert self.host.journal is not None
        async with self._commit:
            record = await self.host.journal.append(entry)
            self._apply(record, ruling)
        return record

    def may_journal_here(self) -> bool:
        """Whether a tap may be journaled outside the loop now: no record is between its commit
        and its effects, and no PIN is being typed (that tap decides first)."""
        return not self._commit.locked() and self._pin is None

    def journal_here(self, entry: TxEntry, ruling: Ruling) -> Record:
        """:meth:`journal` in the calling thread, which holds the loop's StateGuard and asked
        :meth:`may_journal_here` under it; the loop then calls the journal's ``after_append``."""
        assert self.host.journal is not None
        record = self.host.journal.append_here(entry)
        self._apply(record, ruling)
        return record

    def _apply(self, record: Record, ruling: Ruling) -> None:
        if self.store is not None and (ruling.bumps or ruling.state):
            if record.seq <= self.store.applied_seq:  # a new journal file numbers from below us
                self.store.rebase(record.seq - 1)
            self.store.apply(record.seq, ruling.bumps, ruling.state, self.time.mark)

    async def act(self, ruling: Ruling, record: Record) -> None:
        """Do what the committed decision means beyond lights and screen."""

    def unrecorded(self, ruling: Ruling, refused: Decision) -> None:
        """The journal refused the record: nothing was granted; tell whoever waits (a cash register)."""

    async def record_event(self, kind: str, reason: str, detail: Mapping[str, Any] | None = None,
                           ruling: Ruling | None = None, grants_value: bool = False) -> Record | None:
        """Journal something that happened without a tap (an alarm, a window summary), sent
        upstream like a transaction; None (logged) when storage refuses it."""
        effects = ruling or Ruling(Decision.deny(reason))
        full = {**(detail or {}), **(ruling.journal_detail() if ruling is not None else {})}
        entry = TxEntry(mode=self.cfg.terminal.mode, kind=kind, decision="none", reason=reason,
                        grants_value=grants_value, detail=full)
        try:
            return await self.journal(entry, effects)
        except StorageError as exc:
            log.error("event=mode_record_unsaved kind=%s reason=%s error=%r", kind, reason, str(exc))
            return None

    # -- screens ---------------------------------------------------------------------------------------

    def screen(self, ruling: Ruling, member: Member | None) -> Screen:
        raise NotImplementedError

    def idle_screen(self, status: str) -> Screen:
        """What the terminal shows between taps; ``status`` is the storage line, if any."""
        return idle_screen(self.lang, self.cfg.terminal.id, status or self.clock_status())

    def clock_status(self) -> str:
        """Says so when the terminal does not trust its clock (the issue's 1970 boot)."""
        return "" if self.time.now().trusted else label(self.lang, "untrusted")

    # -- keys and inputs -------------------------------------------------------------------------------

    def on_input(self, event: InputEvent) -> None:
        """An input from the loop: keys go to the PIN pad while it is open, else to the mode."""
        if event.kind is not InputKind.KEY:
            self.on_event(event)
            return
        if self._pin is None:
            self.on_key(event.key)
            return
        typing, answered, _amount = self._pin
        typed = typing.press(event.key)
        if typed in (Typed.DONE, Typed.CANCELLED) and not answered.done():
            answered.set_result(typed is Typed.DONE)
        elif typed is Typed.MORE:
            self._draw_pin()

    def on_key(self, key: str) -> None:
        """A key pressed while no PIN is asked for (amount entry, void, door states)."""

    def on_event(self, event: InputEvent) -> None:
        """Door contact and exit button."""
