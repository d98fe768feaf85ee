"""The canteen mode in the running terminal: quota across restarts and clock steps, the 1970
boot, keyed amounts on the keypad, the running count, the end-of-window summary."""

from __future__ import annotations

from pathlib import Path

from modekit import bench, journal_bodies, wait_until
from rulekit import at

from simulator.demo import SimClock

MONDAY_LUNCH = at("2026-12-07 11:58:00")

CANTEEN = """
[canteen]
canteen_id = "CANTEEN-1"
mode = "{mode}"

[[canteen.windows]]
name = "lunch"
start = "11:00:00"
end = "13:30:00"
prices.staff = {{ price_fen = 1500, allowance_fen = 1000 }}
prices."*" = {{ price_fen = 1800, allowance_fen = 0 }}

[[canteen.windows]]
name = "night"
start = "22:00:00"
end = "02:00:00"
prices.staff = {{ price_fen = 1200, allowance_fen = 1200 }}

[clock]
on_untrusted = "{policy}"
"""


def canteen(mode: str = "fixed", policy: str = "deny_value") -> str:
    return CANTEEN.format(mode=mode, policy=policy)


async def test_lunch_then_second_tap_already_served_with_time_of_first(tmp_path: Path) -> None:
    clock = SimClock(MONDAY_LUNCH)
    async with bench(tmp_path, "canteen", canteen(), clock=clock) as b:
        first = await b.tap(b.people[0])
        d = first.decision
        assert (d.reason, d.amount_fen, d.subsidy_fen, d.to_pay_fen) == ("ok", 1500, 1000, 500)
        assert b.screen.headline == "午餐 请用餐"
        assert b.screen.lines == (f"{b.people[0].name} 已售 1份", "补贴 ¥10.00", "实付 ¥5.00")
        clock.step(95)
        again = await b.tap(b.people[0])
        assert again.decision.reason == "already_served"
        assert again.decision.detail["first_at"] == "11:58:00"
        assert b.screen.alert and b.screen.lines[:2] == ("已就餐", "首次 11:58:00")
        other = await b.tap(b.people[1])
        assert other.decision.approved and other.decision.detail["served_in_window"] == 2
        b.terminal.show_idle()
        assert b.screen.lines[:2] == ("午餐 11:00-13:30", "已售 2份")  # the running count
        bodies = journal_bodies(b)
        assert [(r["reason"], r["to_pay_fen"]) for r in bodies] == [("ok", 500), ("already_served", 0), ("ok", 500)]
        assert bodies[0]["detail"]["bumps"][0]["key"] == ["canteen", "meal", b.people[0].member_no, "lunch",
                                                          "d2026-12-07"]
        assert "bumps" not in bodies[1]["detail"]  # a refusal counts nothing


async def test_quota_survives_restart_with_clock_stepped_back_an_hour(tmp_path: Path) -> None:
    clock = SimClock(at("2026-12-07 12:40:00"))
    async with bench(tmp_path, "canteen", canteen(), clock=clock) as b:
        assert (await b.tap(b.people[0])).decision.approved
        clock.step(-3600)  # while running: the business day and the mark hold
        assert b.terminal.mode.time.now().now >= at("2026-12-07 12:40:00")
        assert (await b.tap(b.people[0])).decision.reason == "already_served"
    async with bench(tmp_path, "canteen", canteen(), clock=clock, restart_of=b) as again:
        # a new process with the wall clock still an hour behind: the mark from disk holds time
        moment = again.terminal.mode.time.now()
        assert moment.trusted and moment.now >= at("2026-12-07 12:40:00")
        repeat = await again.tap(again.people[0])
        assert repeat.decision.reason == "already_served" and repeat.decision.detail["first_at"] == "12:40:00"
        assert (await again.tap(again.people[1])).decision.detail["served_in_window"] == 2


async def test_boot_in_1970_says_so_and_applies_the_policy(tmp_path: Path) -> None:
    clock = SimClock(0.0, synced=False)  # a Pi without RTC, before NTP
    async with bench(tmp_path, "canteen", canteen(), clock=clock) as b:
        b.terminal.show_idle()
        assert "时钟未同步" in b.screen.lines
        refused = await b.tap(b.people[0])
        assert refused.decision.reason == "clock_untrusted" and not refused.decision.approved
    async with bench(tmp_path, "canteen", canteen(policy="count_only"), clock=clock, restart_of=b) as b2:
        counted = await b2.tap(b2.people[0])
        d = counted.decision
        assert d.approved and d.detail["count_only"] and (d.amount_fen, d.subsidy_fen) == (0, 0)
        assert (await b2.tap(b2.people[0])).decision.reason == "already_served"  # one meal per untrusted stretch
        clock.set(MONDAY_LUNCH)
        clock.synced = True  # NTP arrives: normal service, money again
        lunch = await b2.tap(b2.people[0])
        assert lunch.decision.approved and lunch.decision.amount_fen == 1500


async def test_keyed_amount_typed_on_the_keypad(tmp_path: Path) -> None:
    clock = SimClock(MONDAY_LUNCH)
    async with bench(tmp_path, "canteen", canteen(mode="keyed"), clock=clock, keypad=True) as b:
        assert b.keypad is not None
        early = await b.tap(b.people[0])
        assert early.decision.reason == "no_sale"  # nothing keyed yet
        await b.keypad.type("1250#")
        await wait_until(lambda: b.screen.lines[-1:] == ("原价 ¥12.50",))
        meal = await b.tap(b.people[1])
        assert (meal.decision.amount_fen, meal.decision.subsidy_fen, meal.decision.to_pay_fen) == (1250, 1000, 250)
        assert (await b.tap(b.people[2])).decision.reason == "no_sale"  # one keyed amount, one meal


async def test_end_of_window_summary_once(tmp_path: Path) -> None:
    clock = SimClock(at("2026-12-07 13:29:57"))
    async with bench(tmp_path, "canteen", canteen(), clock=clock) as b:
        for person in b.people[:2]:
            assert (await b.tap(person)).decision.approved

        def summaries() -> list[dict]:
            return [r for r in journal_bodies(b) if r["kind"] == "window_summary"]

        await wait_until(lambda: len(summaries()) == 1, 6)
        s = summaries()[0]
        assert (s["reason"], s["decision"], s["mode"]) == ("lunch", "none", "canteen")
        detail = s["detail"]
        assert (detail["window"], detail["date"], detail["meals"]) == ("lunch", "2026-12-07", 2)
        assert (detail["amount_fen"], detail["subsidy_fen"], detail["to_pay_fen"]) == (3000, 2000, 1000)
        assert detail["closed_at"] == at("2026-12-07 13:30:00")
    async with bench(tmp_path, "canteen", canteen(), clock=clock, restart_of=b) as again:
        await again.tap(again.people[3])  # outside hours now; the loop has had time to look
        assert [r["kind"] for r in journal_bodies(again)].count("window_summary") == 1


async def test_counts_go_on_under_a_journal_started_afresh(tmp_path: Path) -> None:
    clock = SimClock(MONDAY_LUNCH)
    async with bench(tmp_path, "canteen", canteen(), clock=clock) as b:
        for person in b.people[:3]:
            assert (await b.tap(person)).decision.approved
        state = b.terminal.cfg.state_path("")
    for old in state.glob("journal.db*"):  # the journal moved aside (provisioning's --reset-state)
        old.rename(old.with_name("old-" + old.name))
    async with bench(tmp_path, "canteen", canteen(), clock=clock, restart_of=b) as again:
        assert (await again.tap(again.people[0])).decision.reason == "already_served"
        fresh = await again.tap(again.people[3])
        assert fresh.record.seq == 2 and fresh.decision.detail["served_in_window"] == 4
        assert (await again.tap(again.people[4])).decision.detail["served_in_window"] == 5  # counted, not dropped


async def test_count_only_canteen_counts_meals_for_payroll(tmp_path: Path) -> None:
    async with bench(tmp_path, "canteen", canteen(mode="count"), clock=SimClock(MONDAY_LUNCH)) as b:
        counted = await b.tap(b.people[0])
        d = counted.decision
        assert d.approved and (d.amount_fen, d.subsidy_fen, d.to_pay_fen) == (0, 0, 0)
        assert b.screen.lines == (b.people[0].name, "已计数 第1份")
        assert (await b.tap(b.people[0])).decision.reason == "already_served"
        assert journal_bodies(b)[0]["detail"]["bumps"][2]["key"] == ["canteen", "window", "lunch", "d2026-12-07"]
