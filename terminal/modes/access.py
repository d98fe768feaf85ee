"""Doors and gates: the door rules, the lock relay, the contact monitor, the exit button, alarms.

``[door]`` is :class:`terminal.rules.door.DoorConfig`. Without it an access
terminal keeps the walking skeleton's door: every eligible member opens it
for ``[access] pulse_ms``. With it, grants, time profiles, anti-passback,
PIN and duress, first-card unlock and visitors apply, and the lock is
released for ``release_s``.

The relay is never pulsed blindly: its level is always
``relay_energised(lock_released(...), failure_mode)``, recomputed whenever
something changes, so a fail-safe maglock (held shut by power) and a
fail-secure strike (opened by power) both do the right thing, at start, on
every grant, in lockdown and free passage, and when the terminal stops (no
control: the failure mode decides). Door-contact alarms (held open, forced
open, cleared) and a duress opening are journaled as ``alarm`` records and so
reach the back office like transactions; the exit button always releases
the door first (egress never waits for storage) and is journaled after.

The lock and the contact monitor run on the monotonic clock: trusted time
stands still while the clock is untrusted, and a door must still relock.

Keys ``A`` (lockdown), ``B`` (free passage) and ``D`` (normal), then a
supervisor's card, change the door's state as the back office's signed
commands do (it lasts until the next change or restart; commands persist).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..hardware import InputEvent, InputKind
from ..journal import Record
from ..model import Decision, Member, Verdict
from ..rules.access import decide_access
from ..rules.clock import Moment
from ..rules.door import (LOCKDOWN, DoorConfig, DoorEvent, DoorMode, DoorMonitor, DoorRequest, DoorState, Passage,
                          decide_door, lock_released, relay_energised, step)
from ..rules.pos import NOT_SUPERVISOR
from ..screens import alarm, door_idle, door_result, mode_change_pending
from ..ui import ALARM, Screen, signal
from .base import Entry, Lapsing, ModeBase, ModeHost, Ruling

log = logging.getLogger("unionterm.modes.access")

#: State key of the first-card unlock (unix end of the free interval).
FREE_UNTIL = "door/free_until"
#: How often an open door is checked for being held open, and the lock recomputed.
TICK_S = 0.2
#: A keyed door-state change waits this long for the supervisor's card.
ARM_S = 30.0
MODE_KEYS = {"A": DoorMode.LOCKDOWN, "B": DoorMode.FREE_PASSAGE, "D": DoorMode.NORMAL}
SUPERVISOR = "supervisor"
ALARM_CLEARED = "alarm_cleared"


def passage_key(area: str, member_no: str) -> str:
    return f"apb/{area}/{member_no}"


class AccessMode(ModeBase):
    name = "access"

    def __init__(self, host: ModeHost) -> None:
        super().__init__(host)
        cfg = host.cfg
        self.legacy = cfg.door is None
        self.door: DoorConfig = cfg.door or DoorConfig(door_id=cfg.terminal.id)
        self.release_s = cfg.access.pulse_ms / 1000 if self.legacy else float(self.door.release_s)
        self.monitor = DoorMonitor()
        self._armed: Lapsing[DoorMode] = Lapsing(ARM_S, lambda _target: self.host.show_idle())
        self._relay: bool | None = None
        self._relock: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.services.append(self._watch_door)

    # -- deciding ------------------------------------------------------------------------------------

    @property
    def area(self) -> str:
        return self.door.apb_area or self.door.door_id

    def door_state(self, moment: Moment) -> DoorState:
        """Door-wide state: the commanded mode, and a first-card unlock only while time is trusted
        (an untrusted clock stands still, so the unlock would never end)."""
        stored = self.store.get(FREE_UNTIL) if self.store is not None else None
        free_until = int(stored.value) if stored is not None and moment.trusted else 0
        return DoorState(self.host.door_mode, free_until)

    def decide(self, member: Member, moment: Moment, entry: Entry) -> Ruling:
        context = {"door_id": self.door.door_id}
        if self.armed is not None:
            return self._decide_mode_change(member, self.armed)
        if self.legacy:
            if self.host.door_mode is DoorMode.LOCKDOWN:
                return Ruling(Decision.deny(LOCKDOWN), context=context)
            return Ruling(decide_access(member, False, moment.now, self.cfg.access.pulse_ms), context=context)
        key = passage_key(self.area, member.member_no)
        stored = self.store.get(key) if self.store is not None else None
        passages = {member.member_no: Passage(**stored.value)} if stored is not None else {}
        outcome = decide_door(self.door, self.door_state(moment), member, DoorRequest(entry.pin), moment,
                              self.tallies, passages)
        state: dict[str, Any] = {}
        if outcome.passage is not None:
            state[key] = {"side": outcome.passage.side, "at": outcome.passage.at}
        if outcome.state is not None:
            state[FREE_UNTIL] = outcome.state.free_until
        return Ruling.of(outcome, state=state, context=context)

    def _decide_mode_change(self, member: Member, target: DoorMode) -> Ruling:
        context = {"door_id": self.door.door_id, "door_mode": target.value}
        if member.role != SUPERVISOR:
            return Ruling(Decision.deny(NOT_SUPERVISOR), kind="door_mode", context=context, request=target)
        decision = Decision(Verdict.APPROVE, target.value, grants_value=target is DoorMode.FREE_PASSAGE)
        return Ruling(decision, kind="door_mode", context=context, request=target)

    # -- after the journal ---------------------------------------------------------------------------

    async def act(self, ruling: Ruling, record: Record) -> None:
        decision = ruling.decision
        if ruling.kind == "door_mode":
            self._arm(None)
            if decision.approved and isinstance(ruling.request, DoorMode):
                log.warning("event=door_mode_by_card mode=%s seq=%d", ruling.request.value, record.seq)
                self.host.set_door_mode(ruling.request)
            return
        if decision.approved and decision.grants_value:
            self.release("card")
        if decision.detail.get("silent_alarm"):  # duress: open, and tell the back office without a sound
            self._spawn(self.record_event("alarm", str(decision.detail["silent_alarm"]),
                                          {"door_id": self.door.door_id, "tx_seq": record.seq}))

    def release(self, source: str) -> None:
        """Unlock for the release time (a grant, the exit button, a remote "open door")."""
        now = self.time.mono()
        self.monitor, _ = step(self.monitor, DoorEvent.RELEASE, now, self.door.held_open_s,
                               until=now + self.release_s)
        log.info("event=door_released source=%s seconds=%.1f", source, self.release_s)
        self.update_lock()
        if self._relock is not None:
            self._relock.cancel()
        self._relock = asyncio.get_running_loop().call_later(self.release_s + 0.005, self.update_lock)

    def update_lock(self) -> None:
        """Drive the relay to what the door's state asks for now."""
        moment, now = self.time.now(), self.time.mono()
        state = self.door_state(moment)
        free_left = state.free_until - moment.now
        in_mono = DoorState(state.mode, int(now + free_left) + 1 if free_left > 0 else 0)
        released = lock_released(self.door, in_mono, self.monitor, now)
        self._set_relay(relay_energised(released, self.door.failure_mode))

    def _set_relay(self, energised: bool) -> None:
        if energised is not self._relay:
            self.host.hw.outputs.set_relay(energised)
            self._relay = energised

    def door_mode_changed(self) -> None:
        """Lockdown, free passage or normal was set (command or supervisor card)."""
        self.update_lock()
        self.host.show_idle()

    def start(self) -> None:
        self.update_lock()
        log.info("event=door_ready door=%s failure_mode=%s relay=%s rules=%s", self.door.door_id,
                 self.door.failure_mode, self._relay, "skeleton" if self.legacy else "door")

    def stop(self) -> None:
        """No more control: leave the lock as the failure mode says (fail-safe opens, fail-secure holds)."""
        if self._relock is not None:
            self._relock.cancel()
        self._armed.cancel()
        released = lock_released(self.door, DoorState(), self.monitor, self.time.mono(), fault=True)
        self._relay = None
        self._set_relay(relay_energised(released, self.door.failure_mode))
        log.warning("event=door_uncontrolled failure_mode=%s lock=%s", self.door.failure_mode,
                    "open" if released else "locked")

    # -- the door contact, the exit button -----------------------------------------------------------

    def free_now(self) -> bool:
        """Is the door unlocked anyway (then an opening is neither forced nor held)?"""
        moment = self.time.now()
        state = self.door_state(moment)
        return state.mode is DoorMode.FREE_PASSAGE or (state.mode is DoorMode.NORMAL and state.free_until > moment.now)

    def on_event(self, event: InputEvent) -> None:
        if event.kind is InputKind.DOOR_CONTACT:
            self._door(DoorEvent.OPENED if event.active else DoorEvent.CLOSED)
        elif event.kind is InputKind.EXIT_BUTTON and event.active:
            self.release("exit_button")
            self._spawn(self.record_event("door", "exit_button", {"door_id": self.door.door_id}))

    def _door(self, event: DoorEvent) -> None:
        was_open = self.monitor.is_open
        self.monitor, notices = step(self.monitor, event, self.time.mono(), self.door.held_open_s, self.free_now())
        if event is DoorEvent.CLOSED:
            self.update_lock()  # a closed door relocks at once: one grant, one passage
        for notice in notices:
            self._alarm(notice)
        if was_open is not self.monitor.is_open and not notices:
            self.host.show_idle()

    def _alarm(self, notice: str) -> None:
        log.warning("event=door_alarm notice=%s door=%s", notice, self.door.door_id)
        if notice == ALARM_CLEARED:
            self.host.show(alarm(self.lang, notice, self.door.door_id), hold_s=2.0)
        else:
            signal(self.host.hw.outputs, ALARM)
            self.host.show(alarm(self.lang, notice, self.door.door_id))
        self._spawn(self.record_event("alarm", notice, {"door_id": self.door.door_id}))

    async def _watch_door(self, _terminal: object) -> None:
        """Time passing: a door open too long raises held-open; a first-card unlock ends."""
        while True:
            await asyncio.sleep(TICK_S)
            if self.monitor.is_open and not self.monitor.alarms:
                self.monitor, notices = step(self.monitor, DoorEvent.TICK, self.time.mono(),
                                             self.door.held_open_s, self.free_now())
                for notice in notices:
                    self._alarm(notice)
            self.update_lock()

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- supervisor door states ------------------------------------------------------------------------

    def on_key(self, key: str) -> None:
        if key in MODE_KEYS:
            self._arm(MODE_KEYS[key])
        elif key == "*" and self.armed is not None:
            self._arm(None)

    @property
    def armed(self) -> DoorMode | None:
        """A door state keyed in, waiting for a supervisor's card."""
        return self._armed.value

    def _arm(self, target: DoorMode | None) -> None:
        self._armed.set(target)
        self.host.show_idle()

    # -- screens -------------------------------------------------------------------------------------

    def screen(self, ruling: Ruling, member: Member | None) -> Screen:
        return door_result(self.lang, ruling.decision, member)

    def idle_screen(self, status: str) -> Screen:
        if self.monitor.alarms:
            return alarm(self.lang, sorted(self.monitor.alarms)[0], self.door.door_id)
        if self.armed is not None:
            return mode_change_pending(self.lang, self.armed.value)
        return door_idle(self.lang, self.cfg.terminal.id, self.host.door_mode.value, self.monitor.is_open,
                         status or self.clock_status())
