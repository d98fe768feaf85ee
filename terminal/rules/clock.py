"""Trusted time, business days and the holiday calendar the rules decide by.

Caps and meal quotas are keyed by business day, so a wall clock that steps
backwards (an NTP correction, a technician, a flat RTC battery) must never
re-open a day that is already spent. The rules therefore never see the wall
clock: they see a :class:`Moment` whose ``now`` is a high-water mark that only
moves forward, carried across clock steps by the monotonic clock while the
process lives, and persisted across restarts by the core.

Everything here is pure: wall and monotonic readings come in as parameters.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from terminal.configschema import bounded
from terminal.exceptions import ConfigError
from terminal.timesource import CLOCK_FLOOR_S


def _shanghai() -> tzinfo:
    """China has had no DST since 1991, so a fixed +08:00 is exact for any
    date this firmware will see; it only stands in when tzdata is missing
    (a stripped image), never changes a result."""
    try:
        return ZoneInfo("Asia/Shanghai")
    except ZoneInfoNotFoundError:
        return timezone(timedelta(hours=8), "CST")


#: The one time zone of the deployment.
TZ: tzinfo = _shanghai()

#: Seconds in a day; ``"24:00:00"`` parses to this, so an interval may end at midnight.
DAY_S = 86_400

#: Reason word of a value decision refused because the clock is not trusted.
CLOCK_UNTRUSTED = "clock_untrusted"


def parse_hms(text: str) -> int:
    """Turn ``"HH:MM"`` or ``"HH:MM:SS"`` into seconds of the day.

    Config files hold times as text so a canteen manager can read them;
    ``"24:00:00"`` is accepted as the end of the day.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(p.isascii() and p.isdigit() and len(p) == 2 for p in parts):
        raise ConfigError("time", text, "expected HH:MM or HH:MM:SS")
    h, m, s = (int(p) for p in (*parts, "00")[:3])
    seconds = h * 3600 + m * 60 + s
    if m > 59 or s > 59 or seconds > DAY_S:
        raise ConfigError("time", text, "out of range 00:00:00..24:00:00")
    return seconds


def local(now: int | float) -> datetime:
    """Local (Asia/Shanghai) datetime of a unix time."""
    return datetime.fromtimestamp(now, TZ)


def unix_at(day: date, seconds_of_day: int) -> int:
    """Unix time of a local date plus seconds; 86400 means the next midnight."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=TZ)
    return int(midnight.timestamp()) + seconds_of_day


def seconds_of_day(now: int | float) -> int:
    """Local seconds since midnight, the unit meal windows and profiles use."""
    t = local(now)
    return t.hour * 3600 + t.minute * 60 + t.second


def business_date(now: int | float, day_start_s: int = 0) -> date:
    """The business day ``now`` belongs to; a day may start after midnight
    (e.g. 04:00) so a late shift still counts on the day it began."""
    return local(now - day_start_s).date()


#: What a terminal does while it has no trustworthy time: ``deny_value``
#: refuses anything that grants value (a discount, a meal, a visit),
#: ``count_only`` lets a canteen count one meal per member without money until
#: time is trusted again, ``allow`` decides by the last trusted time.
UntrustedPolicy = Literal["deny_value", "count_only", "allow"]


@dataclass(frozen=True)
class ClockPolicy:
    """Which wall readings are believable.

    ``floor_unix`` is the build era (:data:`terminal.timesource.CLOCK_FLOOR_S`):
    an RTC that reads earlier (1970 after a flat battery) is not time.
    ``ceiling_unix`` (0 = none) guards against a garbage RTC far in the
    future, which would otherwise push the high-water mark forward for good.
    """

    floor_unix: int = bounded(CLOCK_FLOOR_S, 0)
    ceiling_unix: int = bounded(0, 0)
    on_untrusted: UntrustedPolicy = "deny_value"

    def believable(self, wall: float) -> bool:
        """True when a wall reading lies between build date and ceiling."""
        return wall >= self.floor_unix and (self.ceiling_unix == 0 or wall <= self.ceiling_unix)


@dataclass(frozen=True)
class ClockState:
    """What the terminal knows about time; the core persists ``high_water``.

    ``anchor_*`` tie the last trusted time to a monotonic reading of this
    boot; they are meaningless after a restart, so :meth:`after_boot` drops
    them.
    """

    high_water: float = 0.0
    anchor_now: float | None = None
    anchor_mono: float | None = None

    def after_boot(self) -> "ClockState":
        """The state to start a new process with: the mark, no anchor."""
        return ClockState(high_water=self.high_water)


@dataclass(frozen=True)
class Moment:
    """The time a rule decides by.

    ``now`` never goes backwards. ``trusted`` is False when no believable
    wall reading nor a monotonic carry exists; ``now`` is then the last
    trusted time (a lower bound) and ``on_untrusted`` says what may be done.
    ``wall_lag_s`` is how far the wall clock is behind ``now`` (telemetry).
    """

    now: int
    trusted: bool = True
    on_untrusted: UntrustedPolicy = "deny_value"
    wall_lag_s: int = 0

    @property
    def allows_value(self) -> bool:
        """May a rule hand out money or a meal on this time?"""
        return self.trusted or self.on_untrusted == "allow"

    @property
    def count_only_fallback(self) -> bool:
        """Should value modes degrade to counting taps?"""
        return not self.trusted and self.on_untrusted == "count_only"

    @property
    def epoch_tag(self) -> str:
        """Counter period tag for the untrusted stretch: ``now`` stands still
        while untrusted, so one tag covers the whole stretch."""
        return f"u{self.now}"


def observe(
    state: ClockState, wall: float, mono: float, policy: ClockPolicy, synced: bool = True
) -> tuple[ClockState, Moment]:
    """Fold one (wall, monotonic) reading into the state and say what time it is.

    ``synced=False`` (the flag of :func:`terminal.timesource.wall_clock`)
    marks a wall reading the kernel itself does not vouch for; it is then
    not believed, only the mark and the monotonic carry are.

    ``now`` is the largest of: the high-water mark, a believable wall
    reading, and the last anchor carried forward by the monotonic clock.
    The anchor moves only when the wall clock leads, so a clock stepped back
    an hour is ignored while the process lives; after a restart the mark
    holds ``now`` still until the wall clock catches up.
    """
    believable = synced and policy.believable(wall)
    carried = None
    if state.anchor_now is not None and state.anchor_mono is not None:
        carried = state.anchor_now + max(0.0, mono - state.anchor_mono)
    candidates = [state.high_water]
    if believable:
        candidates.append(wall)
    if carried is not None:
        candidates.append(carried)
    now = max(candidates)
    trusted = believable or carried is not None
    if not trusted:
        return state, Moment(int(now), False, policy.on_untrusted, 0)
    if believable and (carried is None or wall >= carried):
        anchor_now, anchor_mono = wall, mono
    else:
        anchor_now, anchor_mono = state.anchor_now, state.anchor_mono
    lag = int(now - wall) if believable else 0
    return ClockState(now, anchor_now, anchor_mono), Moment(int(now), True, policy.on_untrusted, lag)


def rebase(wall: float, mono: float) -> ClockState:
    """Replace the mark with an authenticated time (a signed back-office
    command): the only way ``now`` may move backwards, e.g. after an RTC
    that read years ahead slipped past the ceiling."""
    return ClockState(wall, wall, mono)


class DayType(enum.Enum):
    WORKDAY = "workday"
    RESTDAY = "restday"
    HOLIDAY = "holiday"


@dataclass(frozen=True)
class Calendar:
    """Public holidays and make-up workdays (调休) as the back office publishes them.

    Dates are ISO strings so the TOML stays readable; a make-up workday
    overrides the weekly rest day it falls on.
    """

    holidays: tuple[str, ...] = ()
    extra_workdays: tuple[str, ...] = ()
    rest_weekdays: tuple[int, ...] = (5, 6)

    def __post_init__(self) -> None:
        for key in ("holidays", "extra_workdays"):
            for text in getattr(self, key):
                try:
                    date.fromisoformat(text)
                except ValueError:
                    raise ConfigError("calendar", key, f"{text!r} is not a YYYY-MM-DD date") from None
        if not set(self.rest_weekdays) <= set(range(7)):
            raise ConfigError("calendar", "rest_weekdays", "weekdays are 0 (Monday) .. 6 (Sunday)")

    def day_type(self, day: date) -> DayType:
        """Classify a date; holidays win over make-up workdays."""
        iso = day.isoformat()
        if iso in self.holidays:
            return DayType.HOLIDAY
        if iso in self.extra_workdays:
            return DayType.WORKDAY
        return DayType.RESTDAY if day.weekday() in self.rest_weekdays else DayType.WORKDAY
