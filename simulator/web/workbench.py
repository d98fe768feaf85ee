"""The workbench: one running simulated terminal, what a person may do to it, and what it shows.

The server stays thin: it turns clicks into the actions here and pushes the
state that :meth:`Workbench.poll` reads off the running objects (mock pins,
the luma dummy's image, the journal's watermarks, the broker process, the
feed, the cash register's frames, the back office's publications). Reading
state by polling at 20 Hz, rather than hooking callbacks into the terminal,
keeps the production code untouched and sees exactly what a logic analyser
on the pins would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from terminal.taps import Outcome
from terminal.exceptions import ActionRefused
from terminal.rules.clock import local

from ..backoffice.txconsume import TxConsumer
from ..vcard import VirtualCard
from . import adapters
from .benchrig import MODES, WorkbenchRig
from .desk import SCOPE, until
from .feed import Feed
from .till import Till
from .wire import frame_payload, parse_yuan

OUTPUT_PINS = ("relay", "green", "red", "buzzer")
#: How long a tap waits for the terminal's decision before calling it a card that left unread.
DECISION_TIMEOUT_S = 8.0
#: After a card is seen gone with no decision, how long a decision may still arrive.
GONE_GRACE_S = 0.4
EXIT_PRESS_S = 0.3
RACK_REFRESH_S = 2.0
OFFICE_REFRESH_S = 0.5
#: What the keys do in each mode (terminal/modes), under the page's keypad.
KEY_HINTS = {
    "access": "A lockdown · B free passage · D normal, then a supervisor's card confirms",
    "pos": "type the amount in fen (1999 = ¥19.99), # confirms, * erases · C voids the last sale",
    "canteen": "keyed canteens: the amount in fen, # confirms (this one sells fixed meals)",
}


def outcome_view(outcome: Outcome) -> dict[str, Any]:
    """The last decision as the page shows it."""
    member = outcome.lookup.member if outcome.lookup else None
    identity = outcome.tap.identity
    decision = outcome.decision
    return {
        "seq": outcome.record.seq if outcome.record else None,
        "verdict": decision.verdict.value,
        "reason": decision.reason,
        "member_no": member.member_no if member else "",
        "name": member.name if member else "",
        "profile": identity.profile if identity else "",
        "reader": outcome.tap.reader,
        "ms": round(outcome.timings_ms.get("decide", 0.0), 2),
        "amount_fen": decision.amount_fen, "subsidy_fen": decision.subsidy_fen, "to_pay_fen": decision.to_pay_fen,
    }


class Workbench:
    """Actions and state of one rig; use :meth:`running` to start its feed and back office."""

    def __init__(self, rig: WorkbenchRig, feed: Feed, intake: TxConsumer) -> None:
        self.rig = rig
        self.feed = feed
        self.intake = intake
        self.till = Till(rig.ecr)
        self.outcomes: list[Outcome] = []
        self.held: tuple[str, VirtualCard] | None = None
        self.restarting = False
        self.network_busy = ""
        self._reader = asyncio.Lock()
        self._network = asyncio.Lock()
        self._keys = asyncio.Lock()
        self._marks: dict[str, tuple[Any, int]] = {}
        self._rack_view: list[dict[str, Any]] = []
        self._rack_at = 0.0
        self._office_view: dict[str, Any] = {}
        self._office_at = 0.0
        self.state: dict[str, Any] = {}
        self._frame: dict[str, Any] = {}
        self._frame_key: tuple[int, int] | None = None
        self._attach()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, rig: WorkbenchRig) -> AsyncIterator["Workbench"]:
        """A workbench on ``rig`` with its transaction feed and intake running."""
        feed = Feed(rig.broker.port)
        feed_task = asyncio.create_task(feed.run(), name="workbench-feed")
        try:
            async with adapters.backoffice_intake(rig.broker.port, rig.workdir / "backoffice.db") as intake:
                bench = cls(rig, feed, intake)
                try:
                    yield bench
                finally:
                    await bench.till.cancel()
                    await bench.lift()
        finally:
            feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed_task

    def _attach(self) -> None:
        """Listen to the (new) terminal, rebuild the rack, and leave the door at rest: closed."""
        self.rig.terminal.listeners.append(self.outcomes.append)
        self.cards = {card.id: card for card in adapters.rack(self.rig)}
        self.capabilities = adapters.capabilities(self.rig)
        self._rack_at = self._office_at = 0.0
        self.modes = self._modes()
        self.rig.pin("door").drive_low()

    # -- looking -----------------------------------------------------------------------------

    async def poll(self) -> dict[str, Any]:
        """Read everything the page shows; the server pushes what changed since the last call."""
        if self.restarting:
            self.state = {**self.state, "terminal": {**self.state.get("terminal", {}), "state": "restarting"}}
            return self.state
        rig = self.rig
        cfg = rig.config
        state: dict[str, Any] = {
            "terminal": {"id": cfg.terminal.id, "mode": cfg.terminal.mode, "site": cfg.terminal.site,
                         "readers": sorted(rig.terminal.readers_online), "state": "running",
                         "language": cfg.terminal.language,
                         "clock": local(rig.clock.now()).strftime("%Y-%m-%d %H:%M:%S")},
            "outputs": self._outputs(),
            "inputs": {"door_open": bool(rig.pin("door").state), "exit_pressed": not rig.pin("exit").state},
            "network": await self._network_view(),
            "reader": {"held": self.held[0] if self.held else "",
                       "present": any(rig.terminal.cards_present.values())},
            "rack": self._rack(),
            "last": outcome_view(self.outcomes[-1]) if self.outcomes else None,
            "taps": len(self.outcomes),
            "feed": self.feed.view(),
            "capabilities": self.capabilities,
            "modes": self.modes,
            "keypad": self._keypad_view(),
            "ecr": self.till.view(rig.ecr_linked),
            "office": self._office(),
        }
        display = rig.hardware.display
        image = getattr(getattr(display, "device", None), "image", None)
        if image is not None:  # encode a frame once, when the display has shown a new one
            key = (id(display), display.frames)
            if key != self._frame_key:
                self._frame, self._frame_key = frame_payload(image, display.frames), key
            state["oled"] = self._frame
        self.state = state
        return state

    def _outputs(self) -> dict[str, bool]:
        """Each output on, or switched on at any moment since the last poll (a 80 ms beep counts)."""
        seen = {}
        for name in OUTPUT_PINS:
            pin = self.rig.pin(name)
            states = pin.states
            owner, mark = self._marks.get(name, (None, 0))
            since = states[mark:] if owner is pin else states
            self._marks[name] = (pin, len(states))
            seen[name] = bool(pin.state) or any(bool(s.state) for s in since)
        return seen

    async def _network_view(self) -> dict[str, Any]:
        terminal = self.rig.terminal
        journal, uplink = terminal.journal, terminal.uplink
        view: dict[str, Any] = {"broker": self.rig.broker.running, "busy": self.network_busy,
                                "port": self.rig.broker.port,
                                "uplink": bool(uplink and uplink.connected.is_set())}
        if journal is not None:
            view.update(unsent=await journal.backlog(), unacked=journal.last_seq - journal.acked_seq,
                        last_seq=journal.last_seq, published_seq=journal.published_seq,
                        acked_seq=journal.acked_seq)
        return view

    def _rack(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if now - self._rack_at < RACK_REFRESH_S and self._rack_view:
            return self._rack_view
        accepted = adapters.accepted_kinds(self.rig)
        key = self.rig.card_key
        people = {p.member_no: (p, adapters.member_status(self.rig, p)) for p in self.rig.people}
        view = []
        for card in self.cards.values():
            ref = card.ref(key)
            owner, status = people.get(card.owner, (None, ""))
            view.append({
                "id": card.id, "kind": card.kind, "label": card.label, "variant": card.variant,
                "owner": card.owner, "name": owner.name if owner else "", "status": status,
                "action": "scan" if card.code else "tap", "why": adapters.unavailable_reason(card, accepted),
                "blockable": ref is not None and card.variant == "genuine",
                "blocked": ref is not None and adapters.is_blocked(self.rig, ref),
            })
        self._rack_view, self._rack_at = view, now
        return view

    def _modes(self) -> dict[str, Any]:
        """The running config and every mode's example (read once per terminal start)."""
        config = self.rig.workdir / "terminal.toml"
        return {"current": self.rig.mode,
                "config": config.read_text(encoding="utf-8") if config.exists() else "",
                "choices": [{"name": mode, "example": adapters.example_config(mode)} for mode in MODES]}

    def _keypad_view(self) -> dict[str, Any]:
        """The legends as wired (row by row), the keys held down now, and what they do in this mode."""
        cfg = self.rig.config.keypad
        matrix = self.rig.keypad
        return {"keys": cfg.keys, "columns": len(cfg.column_pins), "hint": KEY_HINTS.get(self.rig.mode, ""),
                "pressed": sorted(matrix.pressed) if matrix is not None else []}

    def _office(self) -> dict[str, Any]:
        """The back office's publications beside what the terminal holds (read at most every 0.5 s)."""
        now = time.monotonic()
        if now - self._office_at >= OFFICE_REFRESH_S or not self._office_view:
            self._office_view, self._office_at = self.rig.desk.view(self.rig.terminal.members), now
        return self._office_view

    # -- cards ---------------------------------------------------------------------------------

    def _card(self, card_id: str) -> adapters.RackCard:
        card = self.cards.get(card_id)
        if card is None:
            raise ActionRefused(f"no card {card_id!r} in the rack")
        why = adapters.unavailable_reason(card, adapters.accepted_kinds(self.rig))
        if why:
            raise ActionRefused(why)
        return card

    async def tap(self, card_id: str) -> dict[str, Any]:
        """Hold the card to the reader until the terminal decides (or the card is seen leaving)."""
        card = self._reader_card(card_id, "tapped")
        async with self._reader:
            await self._lift()
            before = len(self.outcomes)
            await self._put(card)
            try:
                decided = await self._decision_after(before, card_on_reader=True)
            finally:
                await self._lift()
        return {"decision": decided}

    async def place(self, card_id: str) -> dict[str, Any]:
        """Put the card on the reader and leave it there (until :meth:`lift`)."""
        card = self._reader_card(card_id, "placed")
        async with self._reader:
            await self._put(card)
        return {"held": card.id}

    def _reader_card(self, card_id: str, verb: str) -> adapters.RackCard:
        card = self._card(card_id)
        if card.make is None:
            raise ActionRefused(f"{card.label} is shown to the scanner, not {verb}")
        return card

    async def _put(self, card: adapters.RackCard) -> None:
        """Lift whatever is on the reader, then bring ``card`` into the field (reader lock held)."""
        await self._lift()
        virtual = self.rig.card(card.make())  # type: ignore[misc]
        await asyncio.to_thread(virtual.place)
        self.held = (card.id, virtual)

    async def lift(self) -> dict[str, Any]:
        """Take the held card off the reader (the page's "lift card")."""
        async with self._reader:
            await self._lift()
        return {"held": ""}

    async def _lift(self) -> None:
        held, self.held = self.held, None
        if held is None:
            return
        await asyncio.to_thread(held[1].remove)
        with contextlib.suppress(TimeoutError):  # pcscd must see the reader empty before the next card
            await self.rig.wait_card_gone()

    async def scan(self, card_id: str) -> dict[str, Any]:
        """Show an e-card's QR code to the terminal's scanner and wait for the decision."""
        card = self._card(card_id)
        peer = self.rig.scanner
        if card.code is None or peer is None:
            raise ActionRefused(f"{card.label} is not a QR code, or there is no scanner")
        before = len(self.outcomes)
        peer.scan(card.code())
        return {"decision": await self._decision_after(before, card_on_reader=False)}

    async def _decision_after(self, before: int, card_on_reader: bool) -> dict[str, Any] | None:
        """The first outcome after ``before``; None if the card left (or never came) without one."""
        deadline = time.monotonic() + DECISION_TIMEOUT_S
        seen = False
        gone_at: float | None = None
        while time.monotonic() < deadline:
            if len(self.outcomes) > before:
                return outcome_view(self.outcomes[before])
            present = any(self.rig.terminal.cards_present.values())
            seen = seen or present
            if card_on_reader and seen and not present:
                gone_at = gone_at or time.monotonic()
                if time.monotonic() - gone_at > GONE_GRACE_S:
                    return None
            await asyncio.sleep(0.02)
        return None

    # -- pins ----------------------------------------------------------------------------------

    def set_door(self, door_open: bool) -> dict[str, Any]:
        """The door contact (normally closed to ground): released means the door stands open."""
        pin = self.rig.pin("door")
        pin.drive_high() if door_open else pin.drive_low()
        return {"door_open": door_open}

    async def press_exit(self) -> dict[str, Any]:
        """A person presses the exit button and lets go."""
        pin = self.rig.pin("exit")
        pin.drive_low()
        await asyncio.sleep(EXIT_PRESS_S)
        pin.drive_high()
        return {"pressed": True}

    # -- network and back office ---------------------------------------------------------------

    async def set_broker(self, up: bool) -> dict[str, Any]:
        """Stop or start the real mosquitto process (in a thread: it takes a moment)."""
        async with self._network:
            self.network_busy = "starting" if up else "stopping"
            try:
                await asyncio.to_thread(self.rig.broker.start if up else self.rig.broker.stop)
            finally:
                self.network_busy = ""
        return {"broker": self.rig.broker.running}

    async def block(self, card_id: str, blocked: bool) -> dict[str, Any]:
        """Block (or release) a member's card: a signed hot-list change, published, applied by the terminal."""
        card = self.cards.get(card_id)
        ref = card.ref(self.rig.card_key) if card else None
        if card is None or ref is None or card.variant != "genuine":
            raise ActionRefused(f"{card_id!r} is not a member's card")
        seq = await self.rig.desk.block(ref, blocked)
        applied = await until(lambda: adapters.is_blocked(self.rig, ref) == blocked)
        self._rack_at = self._office_at = 0.0
        return {"blocked": adapters.is_blocked(self.rig, ref), "hotlist": seq, "applied": applied}

    async def publish_delta(self, member_no: str, status: str) -> dict[str, Any]:
        """Change a member's status in the back office and publish it as a signed delta to the terminal."""
        published = await self.rig.desk.set_status(member_no, status)
        members = self.rig.terminal.members
        applied = await until(lambda: members is not None and members.held[SCOPE].version >= published.version)
        self._rack_at = self._office_at = 0.0
        person = next((p for p in self.rig.people if p.member_no == member_no), None)
        return {"version": published.version, "applied": applied,
                "status": adapters.member_status(self.rig, person) if person else status}

    # -- keypad and cash register ----------------------------------------------------------------

    async def key(self, key: str) -> dict[str, Any]:
        """A finger on one key of the front-panel matrix, pressed and released (one key at a time)."""
        async with self._keys:
            matrix = self.rig.keypad
            if matrix is None:
                raise ActionRefused("the keypad is not wired up yet (the terminal is starting)")
            if key not in matrix.where:
                raise ActionRefused(f"no key {key!r} on this keypad")
            await matrix.tap(key)
        return {"key": key}

    def _linked_till(self) -> Till:
        if not self.rig.ecr_linked:
            raise ActionRefused(f"no cash register in {self.rig.mode} mode: switch to pos")
        return self.till

    def ecr_sale(self, amount: str) -> dict[str, Any]:
        """The cash register asks for the member discount on a sale of ``amount`` yuan (as typed)."""
        return self._linked_till().sale(parse_yuan(amount))

    async def ecr_status(self) -> dict[str, Any]:
        """The cash register asks whether the terminal is ready (ready, busy, offline, closed)."""
        return await self._linked_till().status()

    # -- modes ---------------------------------------------------------------------------------

    async def switch_mode(self, mode: str) -> dict[str, Any]:
        """Restart the terminal in ``mode`` with its scene config, peers and clock (same state folder)."""
        if mode not in MODES:
            raise ActionRefused(f"no mode {mode!r}: the terminal runs {', '.join(MODES)}")
        async with self._reader, self._keys:
            await self._lift()
            await self.till.cancel()
            self.restarting = True
            try:
                await self.rig.switch(mode)
                self.outcomes.clear()
                self._marks.clear()
                self._attach()
            finally:
                self.restarting = False
        return {"mode": self.rig.mode}
