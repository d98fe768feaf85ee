"""The time the modes decide by: the wall clock folded into a never-decreasing mark.

:func:`terminal.rules.clock.observe` is the pure rule; this holds its state
for the running process and hands the mark to the counter store, so that a
restart resumes from the highest time ever trusted. The wall reading comes
from the terminal's injected clock (``(ms, synced)``, see
:func:`terminal.timesource.wall_clock`) and the carry from an injected
monotonic clock, so tests step either one at will.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..rules.clock import ClockPolicy, ClockState, Moment, observe

log = logging.getLogger("unionterm.modes.time")

WallClock = Callable[[], tuple[int, bool]]
MonoClock = Callable[[], float]

#: A wall clock this far behind the mark is logged (once per spell): someone set it back.
LAG_WARN_S = 60


class TimeKeeper:
    """One process's view of trusted time; ``mark`` is what must be persisted."""

    def __init__(self, policy: ClockPolicy, wall: WallClock, mono: MonoClock, high_water: float = 0.0) -> None:
        self.policy = policy
        self._wall = wall
        self._mono = mono
        self._state = ClockState(high_water=high_water).after_boot()
        self._trusted: bool | None = None
        self._lagging = False

    @property
    def mark(self) -> float:
        """The high-water mark (float seconds): never decreases."""
        return self._state.high_water

    def mono(self) -> float:
        """The monotonic clock the timers (door release, held-open) run on."""
        return self._mono()

    def now(self) -> Moment:
        """Observe the clocks once; logs when trust is gained or lost."""
        wall_ms, synced = self._wall()
        self._state, moment = observe(self._state, wall_ms / 1000, self._mono(), self.policy, synced)
        if moment.trusted is not self._trusted:
            level = logging.INFO if moment.trusted else logging.WARNING
            log.log(level, "event=clock_trust trusted=%s now=%d wall_ms=%d policy=%s",
                    moment.trusted, moment.now, wall_ms, self.policy.on_untrusted)
            self._trusted = moment.trusted
        lagging = moment.wall_lag_s > LAG_WARN_S
        if lagging and not self._lagging:
            log.warning("event=clock_behind_mark lag_s=%d", moment.wall_lag_s)
        self._lagging = lagging
        return moment
