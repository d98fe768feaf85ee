"""Factory canteen: meal windows, quotas, the running count, the end-of-window summary.

``[canteen]`` is :class:`terminal.rules.canteen.CanteenConfig`. In
``keyed`` mode the cashier types the amount in fen on the keypad (``1250#``
for ¥12.50) and the next card pays it; ``fixed`` and ``count`` need no
keys. The idle screen names the window being served and how many meals it
has given so far; when a window closes, its totals are journaled as a
``window_summary`` record (and so reach the back office like a transaction),
once, even across a restart: the last window summarised is state in the
counter store, set by the summary record itself.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from ..journal import Record
from ..model import Decision, Member
from ..rules.canteen import (CanteenConfig, MealRequest, current_window, decide_meal, running_key,
                             window_summary, windows_closed)
from ..rules.clock import Moment
from ..rules.counters import day_tag, tally
from ..screens import amount_entry, canteen_idle, denied, meal_result
from ..ui import Screen
from .base import Entry, ModeBase, ModeHost, Ruling
from .keys import NumberEntry, Typed

log = logging.getLogger("unionterm.modes.canteen")

#: Reason of a tap in keyed mode before the cashier keyed an amount.
NO_SALE = "no_sale"
#: State key: close time (unix) of the last window occurrence summarised.
SUMMARISED = "canteen/summarised_until"
#: How often window closes are looked for.
SUMMARY_POLL_S = 1.0
#: Longest keyed amount, in digits of fen (¥99,999.99).
AMOUNT_DIGITS = 7


@dataclass(frozen=True)
class Keyed:
    """An amount the cashier keyed, waiting for the member's card."""

    amount_fen: int


class CanteenMode(ModeBase):
    name = "canteen"

    def __init__(self, host: ModeHost) -> None:
        super().__init__(host)
        if host.cfg.canteen is None:
            log.warning("event=mode_unconfigured mode=canteen section=canteen effect=no_meal_windows")
        self.config = host.cfg.canteen or CanteenConfig(canteen_id=host.cfg.terminal.id)
        self.keyed: Keyed | None = None
        self._amount = NumberEntry(AMOUNT_DIGITS)
        self._summarised: int | None = None
        self._serving: tuple[str, str] | None = None
        self.services.append(self._watch_windows)

    def decide(self, member: Member, moment: Moment, entry: Entry) -> Ruling:
        keyed = self.keyed if self.config.mode == "keyed" else None
        if self.config.mode == "keyed" and keyed is None and not moment.count_only_fallback:
            return Ruling(Decision.deny(NO_SALE))
        request = MealRequest(keyed.amount_fen if keyed else 0, entry.pin)
        outcome = decide_meal(self.config, member, request, moment, self.tallies)
        return Ruling.of(outcome, context={"canteen_id": self.config.canteen_id}, request=keyed)

    def amount_of(self, ruling: Ruling) -> int:
        return self.keyed.amount_fen if self.keyed else 0

    async def act(self, ruling: Ruling, record: Record) -> None:
        if ruling.request is not None and ruling.request is self.keyed:
            self.keyed = None  # decided either way: the cashier keys the next amount

    def screen(self, ruling: Ruling, member: Member | None) -> Screen:
        if ruling.decision.reason == NO_SALE:
            return denied(self.lang, ruling.decision)
        return meal_result(self.lang, ruling.decision, member)

    def idle_screen(self, status: str) -> Screen:
        if self._amount.active:
            return amount_entry(self.lang, self._amount.value, status)
        moment = self.time.now()
        status = status or self.clock_status()
        found = current_window(self.config, moment.now) if moment.trusted else None
        if found is None:
            return canteen_idle(self.lang, None, None, 0, status)
        window, day = found
        served = tally(self.tallies, running_key(window.name, day_tag(day))).count
        return canteen_idle(self.lang, window.name, (window.start, window.end), served, status,
                            self.keyed.amount_fen if self.keyed else 0)

    # -- keyed amounts ---------------------------------------------------------------------------

    def on_key(self, key: str) -> None:
        if self.config.mode != "keyed":
            return
        typed, amount = self._amount.press(key)
        if typed is Typed.IGNORED:
            return
        if typed is Typed.DONE:
            self.keyed = Keyed(amount)
            log.info("event=amount_keyed amount_fen=%d", amount)
        self.host.show_idle()

    # -- windows -------------------------------------------------------------------------------------

    async def _watch_windows(self, _terminal: object) -> None:
        """Journal each window's summary once it closes; redraw the idle screen when the window changes."""
        while True:
            moment = self.time.now()
            if moment.trusted:
                await self._summarise(moment)
                found = current_window(self.config, moment.now)
                serving = (found[0].name, day_tag(found[1])) if found else None
                if serving != self._serving:
                    self._serving = serving
                    self.host.show_idle(force=False)
            await asyncio.sleep(SUMMARY_POLL_S)

    async def _summarise(self, moment: Moment) -> None:
        if self._summarised is None:
            stored = self.store.get(SUMMARISED) if self.store is not None else None
            self._summarised = int(stored.value) if stored is not None else moment.now
        for window, day in windows_closed(self.config, self._summarised, moment.now):
            summary = window_summary(self.config, window, day, self.tallies)
            closed = int(summary["closed_at"])  # type: ignore[call-overload]
            effects = Ruling(Decision.deny("summary"), state={SUMMARISED: closed})
            record = await self.record_event("window_summary", window.name, summary, effects)
            if record is None:
                return  # storage refused it: try again on the next round
            log.info("event=window_summary window=%s date=%s meals=%s seq=%d", window.name, summary["date"],
                     summary["meals"], record.seq)
            self._summarised = closed
