"""The terminal's loop and its StateGuard: another thread gets the guard only while the loop waits."""

from __future__ import annotations

import asyncio
import threading
import time

from terminal import eventloop
from terminal.eventloop import StateGuard


async def _guard() -> StateGuard | None:
    return eventloop.guard_of(asyncio.get_running_loop())


def test_run_runs_on_a_guarded_loop_and_returns_the_result() -> None:
    assert isinstance(eventloop.run(_guard()), StateGuard)


async def test_async_tests_run_on_the_terminals_loop() -> None:
    guard = eventloop.guard_of(asyncio.get_running_loop())
    assert guard is not None and guard.held_here()


def test_a_loop_made_elsewhere_has_no_guard() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert eventloop.guard_of(loop) is None
    finally:
        loop.close()


async def test_another_thread_waits_while_the_loop_runs_and_gets_the_guard_once_it_waits() -> None:
    guard = eventloop.guard_of(asyncio.get_running_loop())
    assert guard is not None
    taken = threading.Event()

    def borrow() -> None:
        guard.acquire()
        taken.set()
        guard.release()

    thread = threading.Thread(target=borrow)
    thread.start()
    time.sleep(0.05)  # the loop is running this coroutine: the thread must still be waiting
    assert not taken.is_set()
    await asyncio.to_thread(taken.wait, 2.0)  # the loop waits for I/O now
    assert taken.is_set()
    thread.join()
    assert guard.held_here()  # back with the loop after its wait


async def test_no_loop_callback_runs_while_another_thread_holds_the_guard() -> None:
    guard = eventloop.guard_of(asyncio.get_running_loop())
    assert guard is not None
    ran: list[float] = []
    held: list[tuple[float, float]] = []
    holding = threading.Event()

    def hold() -> None:
        guard.acquire()
        start = time.perf_counter()
        holding.set()
        time.sleep(0.1)
        held.append((start, time.perf_counter()))
        guard.release()

    async def tick() -> None:
        for _ in range(40):
            ran.append(time.perf_counter())
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(tick())
    thread = threading.Thread(target=hold)
    thread.start()
    await ticker
    thread.join()
    assert holding.is_set()
    (start, end), = held
    assert not [t for t in ran if start < t < end]  # the loop stood still meanwhile
    assert [t for t in ran if t > end]  # and went on after


def test_a_closed_loop_leaves_the_guard_free() -> None:
    guard = eventloop.run(_guard())
    assert guard is not None and guard.acquire(timeout=1.0)
    guard.release()
