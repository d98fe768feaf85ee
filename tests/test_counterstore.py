"""The counter store: effects applied once, replayed from the journal after a crash, a failed
write mended, the clock mark persisted (stepped back, 1970), finished periods pruned."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from rulekit import at

from simulator.demo import SimClock
from terminal.counterstore import CounterStore, bumps_from_json, bumps_to_json
from terminal.journal import Journal, TxEntry
from terminal.model import Decision
from terminal.modes.base import Ruling
from terminal.modes.timekeeper import TimeKeeper
from terminal.rules.clock import ClockPolicy
from terminal.rules.counters import Bump, Tally, apply

MEAL = ("canteen", "meal", "M1", "lunch", "d2026-12-07")
DAY = ("pos", "member", "M1", "d2026-12-07")
T = at("2026-12-07 12:00:00")


def ruling(*bumps: Bump, **state: object) -> Ruling:
    return Ruling(Decision.deny("x"), bumps=bumps, state=state)


def entry(r: Ruling, kind: str = "tap") -> TxEntry:
    return TxEntry(mode="canteen", kind=kind, decision="approve", reason="ok", detail=r.journal_detail())


def test_bumps_round_trip_through_json() -> None:
    bumps = (Bump(MEAL, T, 1, 1500, 1000), Bump(DAY, T + 1, -1, -20, -5))
    assert bumps_from_json(bumps_to_json(bumps)) == bumps


def test_apply_once_and_reopen(tmp_path: Path) -> None:
    store = CounterStore(tmp_path / "c.db")
    assert store.apply(1, [Bump(MEAL, T, 1, 1500, 1000)], {"k": {"v": 1}}, high_water=T)
    assert not store.apply(1, [Bump(MEAL, T, 1, 1500, 1000)])  # the same record again: nothing
    assert store.apply(2, [Bump(MEAL, T + 5, 1, 1500, 1000)], {"k": None})
    store.close()
    again = CounterStore(tmp_path / "c.db")
    assert again.tallies[MEAL] == Tally(2, 3000, 2000, T, T + 5)
    assert (again.applied_seq, again.high_water, again.get("k")) == (2, T, None)
    again.close()


async def test_crash_between_journal_and_counters_is_replayed_exactly_once(tmp_path: Path) -> None:
    rulings = [ruling(Bump(MEAL, T, 1, 1500, 1000), **{"pos/last": {"n": 1}}),
               ruling(Bump(DAY, T + 1, 1, 2000, 100)),
               ruling(Bump(MEAL, T + 2, 1, 1500, 1000), Bump(DAY, T + 2, 1, 500, 25))]
    journal_path = tmp_path / "journal.db"
    store = CounterStore(tmp_path / "counters.db")
    async with Journal(journal_path, "T-1", SimClock(T).wall) as journal:
        first = await journal.append(entry(rulings[0]))
        store.apply(first.seq, rulings[0].bumps, rulings[0].state)
        await journal.append(TxEntry(mode="canteen", kind="command", decision="approve", reason="sync_now"))
        for r in rulings[1:]:
            await journal.append(entry(r))  # committed; the process dies before the counters see them
    store.close()

    after_crash = CounterStore(tmp_path / "counters.db")
    assert after_crash.tallies[MEAL].count == 1 and DAY not in after_crash.tallies
    assert after_crash.replay(journal_path) == 2
    expected = apply({}, [b for r in rulings for b in r.bumps])
    assert dict(after_crash.tallies) == expected
    assert after_crash.applied_seq == 4 and after_crash.get("pos/last").seq == 1
    assert after_crash.replay(journal_path) == 0  # a second start doubles nothing
    after_crash.close()
    reopened = CounterStore(tmp_path / "counters.db")
    assert dict(reopened.tallies) == expected and reopened.replay(journal_path) == 0
    reopened.close()


def test_a_failed_write_is_mended_by_the_next_one(tmp_path: Path) -> None:
    store = CounterStore(tmp_path / "c.db")
    store.apply(1, [Bump(MEAL, T, 1, 1500, 1000)])
    store._conn.execute("PRAGMA query_only = 1")  # the file refuses writes for a while
    store.apply(2, [Bump(DAY, T, 1, 2000, 100)], {"s": 2})
    assert store.tallies[DAY].count == 1  # this run still decides right
    store._conn.execute("PRAGMA query_only = 0")
    store.apply(3, [Bump(MEAL, T + 9, 1, 1500, 1000)])
    store.close()
    again = CounterStore(tmp_path / "c.db")
    assert again.tallies[DAY] == Tally(1, 2000, 100, T, T) and again.tallies[MEAL].count == 2
    assert again.applied_seq == 3 and again.get("s").value == 2
    again.close()


def test_prune_keeps_yesterday_and_open_periods(tmp_path: Path) -> None:
    store = CounterStore(tmp_path / "c.db")
    keys = [("pos", "member", "M1", "d2026-12-05"), ("pos", "member", "M1", "d2026-12-06"),
            ("pos", "member", "M1", "m2026-12"), ("canteen", "untrusted", "M1", "u5")]
    store.apply(1, [Bump(k, T) for k in keys])
    assert store.prune(date(2026, 12, 7)) == 2
    store.close()
    assert set(CounterStore(tmp_path / "c.db").tallies) == set(keys[1:3])


def test_clock_mark_survives_restart_stepped_back_and_1970(tmp_path: Path) -> None:
    policy = ClockPolicy()
    clock = SimClock(T)
    store = CounterStore(tmp_path / "c.db")
    keeper = TimeKeeper(policy, clock.wall, clock.mono, store.high_water)
    assert keeper.now().now == T
    clock.step(-3600)
    assert keeper.now().now >= T  # while running: carried by the monotonic clock
    store.save_clock(keeper.mark)
    store.close()

    store = CounterStore(tmp_path / "c.db")  # restart, the wall clock still an hour behind
    moment = TimeKeeper(policy, clock.wall, clock.mono, store.high_water).now()
    assert moment.trusted and moment.now >= T and moment.wall_lag_s >= 3599
    boot = SimClock(0.0, synced=False)  # restart in 1970, before NTP
    moment = TimeKeeper(policy, boot.wall, boot.mono, store.high_water).now()
    assert not moment.trusted and moment.now >= T and not moment.allows_value
    store.close()
