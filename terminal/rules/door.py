"""Door access: time profiles, access groups, anti-passback, PIN and duress,
first-card unlock, lockdown and free passage; plus the door-contact monitor.

Two pure machines live here. :func:`decide_door` answers a tap. The
:class:`DoorMonitor` follows the lock and the door contact and raises the
held-open and forced-open alarms. :func:`lock_released` and
:func:`relay_energised` turn both into the one output that matters, whether
the lock relay is powered, honouring the fail-safe / fail-secure choice.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from terminal.configschema import bounded
from terminal.exceptions import ConfigError
from terminal.model import Decision, Member, Verdict
from terminal.rules.clock import Calendar, DayType, Moment, local, parse_hms, seconds_of_day, unix_at
from terminal.rules.counters import Bump, CounterKey, Outcome, Tally
from terminal.rules.pin import PinPolicy, PinResult, check_pin

OK = "ok"
NO_ACCESS = "no_access"
OUTSIDE_HOURS = "outside_hours"
PASSBACK = "passback"
LOCKDOWN = "lockdown"
FREE_PASSAGE = "free_passage"
DOOR_FREE = "door_free"
VISITOR_UNBOUNDED = "visitor_unbounded"

REASONS = frozenset({OK, NO_ACCESS, OUTSIDE_HOURS, PASSBACK, LOCKDOWN, FREE_PASSAGE, DOOR_FREE, VISITOR_UNBOUNDED})

#: Name of the built-in profile that is always active, holidays included.
ALWAYS = "always"

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOLIDAY = "holiday"


@dataclass(frozen=True)
class TimeProfile:
    """Weekly intervals by day key (``mon``..``sun``, ``holiday``).

    On a public holiday only the ``holiday`` intervals apply; a make-up
    workday (调休) uses the ``mon`` intervals. Intervals are ``(start, end)``
    texts within one day (``"24:00"`` ends at midnight); split a night across
    two days.
    """

    intervals: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, spans in self.intervals.items():
            if key not in (*WEEKDAYS, HOLIDAY):
                raise ConfigError("door", f"profiles.intervals.{key}", "day key must be mon..sun or holiday")
            if any(len(span) != 2 or parse_hms(span[0]) >= parse_hms(span[1]) for span in spans):
                raise ConfigError("door", f"profiles.intervals.{key}", "each interval is [start, end], end later")

    def active_until(self, calendar: Calendar, now: int) -> int | None:
        """Unix end of the interval containing ``now``; None when outside."""
        day = local(now).date()
        kind = calendar.day_type(day)
        if kind is DayType.HOLIDAY:
            key = HOLIDAY
        elif day.weekday() in calendar.rest_weekdays and kind is DayType.WORKDAY:
            key = "mon"
        else:
            key = WEEKDAYS[day.weekday()]
        t = seconds_of_day(now)
        for start, end in self.intervals.get(key, ()):
            if parse_hms(start) <= t < parse_hms(end):
                return unix_at(day, parse_hms(end))
        return None


class DoorMode(enum.Enum):
    NORMAL = "normal"
    LOCKDOWN = "lockdown"
    FREE_PASSAGE = "free_passage"


#: What the lock does without control: ``fail_safe`` opens (fire egress,
#: maglocks), ``fail_secure`` stays locked (strikes on store rooms).
FailureMode = Literal["fail_safe", "fail_secure"]

#: Anti-passback: ``hard`` denies a repeated side, ``soft`` opens and flags it.
Passback = Literal["off", "soft", "hard"]


@dataclass(frozen=True)
class DoorConfig:
    """One door reader. ``grants`` maps access group -> profile name.

    ``side`` is ``in`` or ``out`` for the reader of an anti-passback pair
    sharing ``apb_area``; ``apb_reset_s`` (0 = never) forgives a missed
    passage after that long. ``card_only_profile`` names when card alone
    suffices on a PIN door (e.g. office hours).
    """

    door_id: str
    grants: dict[str, str] = field(default_factory=dict)
    profiles: dict[str, TimeProfile] = field(default_factory=dict)
    calendar: Calendar = field(default_factory=Calendar)
    pin_required: bool = False
    card_only_profile: str = ""
    duress: bool = False
    passback: Passback = "off"
    apb_area: str = ""
    side: Literal["in", "out"] = "in"
    apb_reset_s: int = bounded(0, 0)
    first_card_groups: tuple[str, ...] = ()
    first_card_profile: str = ""
    lockdown_groups: tuple[str, ...] = ()
    failure_mode: FailureMode = "fail_secure"
    release_s: int = bounded(5, 1, 600)
    held_open_s: int = bounded(30, 1, 3600)
    pin: PinPolicy = field(default_factory=PinPolicy)

    def __post_init__(self) -> None:
        named = set(self.grants.values()) | {self.card_only_profile, self.first_card_profile}
        missing = sorted(n for n in named if n and n != ALWAYS and n not in self.profiles)
        if missing:
            raise ConfigError("door", "grants", f"unknown profile(s): {', '.join(missing)}")

    def active_until(self, profile: str, moment: Moment) -> int | None:
        """End of the active interval of ``profile``; untrusted time only
        believes the ``always`` profile, since any other needs a true clock."""
        if profile == ALWAYS:
            return moment.now + 86_400
        if not profile or not moment.allows_value:
            return None
        return self.profiles[profile].active_until(self.calendar, moment.now)


@dataclass(frozen=True)
class DoorState:
    """Door-wide state the core persists; ``free_until`` is the first-card unlock."""

    mode: DoorMode = DoorMode.NORMAL
    free_until: int = 0


@dataclass(frozen=True)
class Passage:
    """Last anti-passback passage of a member in an area."""

    side: str
    at: int


@dataclass(frozen=True)
class DoorRequest:
    pin: str | None = None


@dataclass(frozen=True)
class DoorOutcome(Outcome):
    """A door decision; ``passage`` and ``state`` are None when unchanged.

    ``detail["silent_alarm"] == "duress"`` marks an opening under duress.
    """

    passage: Passage | None = None
    state: DoorState | None = None


def _approve(
    reason: str, moment: Moment, config: DoorConfig, detail: dict[str, object] | None = None, **changes: object
) -> DoorOutcome:
    """An opening: grants access (value) and records the passage when the
    door keeps anti-passback."""
    passage = Passage(config.side, moment.now) if config.passback != "off" else None
    decision = Decision(Verdict.APPROVE, reason, grants_value=True, detail=detail or {})
    return DoorOutcome(decision, passage=passage, **changes)  # type: ignore[arg-type]


def _passback(config: DoorConfig, last: Passage | None, now: int) -> bool:
    """Would this passage repeat the member's last side within the reset time?"""
    if config.passback == "off" or last is None or last.side != config.side:
        return False
    return config.apb_reset_s == 0 or now - last.at < config.apb_reset_s


def decide_door(
    config: DoorConfig,
    state: DoorState,
    member: Member,
    request: DoorRequest,
    moment: Moment,
    tallies: Mapping[CounterKey, Tally],
    passages: Mapping[str, Passage],
) -> DoorOutcome:
    """Decide one tap at a door by an eligible member."""
    visitor = member.role == "visitor"
    if state.mode is DoorMode.LOCKDOWN:
        if not visitor and set(member.access_groups) & set(config.lockdown_groups):
            return _approve(OK, moment, config, {"lockdown_override": True})
        return DoorOutcome(Decision.deny(LOCKDOWN))
    if state.mode is DoorMode.FREE_PASSAGE:
        return _approve(FREE_PASSAGE, moment, config)
    if state.free_until > moment.now:
        return _approve(DOOR_FREE, moment, config)
    if visitor and member.valid_until == 0:
        return DoorOutcome(Decision.deny(VISITOR_UNBOUNDED))
    groups = [g for g in member.access_groups if g in config.grants]
    if not groups:
        return DoorOutcome(Decision.deny(NO_ACCESS, door=config.door_id))
    if not any(config.active_until(config.grants[g], moment) for g in groups):
        return DoorOutcome(Decision.deny(OUTSIDE_HOURS, door=config.door_id))
    soft = False
    if _passback(config, passages.get(member.member_no), moment.now):
        if config.passback == "hard":
            return DoorOutcome(Decision.deny(PASSBACK, side=config.side))
        soft = True
    detail: dict[str, object] = {"passback": True} if soft else {}
    bumps: tuple[Bump, ...] = ()
    if config.pin_required and not config.active_until(config.card_only_profile, moment):
        day = local(moment.now).date()
        pin = check_pin(member, request.pin, tallies, config.pin, day, moment.now, allow_duress=config.duress)
        if not pin.ok:
            return DoorOutcome(pin.decision, pin.bumps)  # type: ignore[arg-type]
        bumps = pin.bumps
        if pin.result is PinResult.DURESS:
            detail["silent_alarm"] = "duress"
    first_card_end = config.active_until(config.first_card_profile, moment)
    new_state = None
    if first_card_end and not visitor and set(member.access_groups) & set(config.first_card_groups):
        detail["first_card"] = True
        new_state = replace(state, free_until=first_card_end)
    return _approve(OK, moment, config, detail, bumps=bumps, state=new_state)


# --- door contact monitor ----------------------------------------------------


class DoorEvent(enum.Enum):
    """What happened at the door: the lock was released (grant or exit
    button, with ``until``), the contact opened or closed, or time passed."""

    RELEASE = "release"
    OPENED = "opened"
    CLOSED = "closed"
    TICK = "tick"


@dataclass(frozen=True)
class DoorMonitor:
    """State of one door contact; ``alarms`` currently raised."""

    is_open: bool = False
    released_until: float = 0.0
    opened_at: float = 0.0
    alarms: frozenset[str] = frozenset()


FORCED_OPEN = "forced_open"
HELD_OPEN = "held_open"


def step(
    mon: DoorMonitor, event: DoorEvent, now: float, held_open_s: int, free: bool = False, until: float = 0.0
) -> tuple[DoorMonitor, tuple[str, ...]]:
    """Advance the monitor; returns the new state and the notices to log/send.

    ``free`` is whether the door is unlocked anyway (free passage, first
    card): then an opening is never forced and never held. A closing
    relocks at once (the release ends), so a door cannot be opened twice on
    one grant. Notices: ``forced_open``, ``held_open``, ``alarm_cleared``.
    """
    if event is DoorEvent.RELEASE:
        return replace(mon, released_until=max(mon.released_until, until)), ()
    if event is DoorEvent.OPENED and not mon.is_open:
        authorised = free or now < mon.released_until
        opened = replace(mon, is_open=True, opened_at=now)
        if authorised:
            return opened, ()
        return replace(opened, alarms=mon.alarms | {FORCED_OPEN}), (FORCED_OPEN,)
    if event is DoorEvent.CLOSED and mon.is_open:
        closed = DoorMonitor(released_until=0.0)
        return closed, (("alarm_cleared",) if mon.alarms else ())
    if event is DoorEvent.TICK and mon.is_open and not free and not mon.alarms:
        if now - mon.opened_at >= held_open_s:
            return replace(mon, alarms=frozenset({HELD_OPEN})), (HELD_OPEN,)
    return mon, ()


def lock_released(config: DoorConfig, state: DoorState, mon: DoorMonitor, now: float, fault: bool = False) -> bool:
    """Should the lock be open now? A controller fault follows the door's
    failure mode; lockdown opens only for an explicit (override) release."""
    if fault:
        return config.failure_mode == "fail_safe"
    if state.mode is DoorMode.NORMAL and state.free_until > now:
        return True
    return state.mode is DoorMode.FREE_PASSAGE or now < mon.released_until


def relay_energised(released: bool, failure_mode: FailureMode) -> bool:
    """Relay output for the wanted lock position: a fail-safe lock is held
    shut by power, a fail-secure lock is opened by power."""
    return not released if failure_mode == "fail_safe" else released

