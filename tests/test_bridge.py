"""The thread seams: a serial worker's order, answers, failures and cancellations."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from terminal.bridge import SerialWorker


async def test_calls_run_in_order_on_one_thread_and_answer_the_caller() -> None:
    worker = SerialWorker("test-worker")
    seen: list[tuple[int, str]] = []

    def job(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * n

    try:
        answers = await asyncio.gather(*(worker.run(job, n) for n in range(20)))
    finally:
        worker.shutdown()
    assert answers == [n * n for n in range(20)]
    assert [n for n, _ in seen] == list(range(20)) and {name for _, name in seen} == {"test-worker"}


async def test_an_exception_reaches_the_caller_and_the_worker_keeps_serving() -> None:
    worker = SerialWorker("test-worker")

    def fail() -> None:
        raise OSError("disk went away")

    try:
        with pytest.raises(OSError, match="disk went away"):
            await worker.run(fail)
        assert await worker.run(lambda: "still here") == "still here"
    finally:
        worker.shutdown()


async def test_a_call_cancelled_before_it_started_is_skipped() -> None:
    """As ThreadPoolExecutor skips a cancelled work item: a journal append whose tap was
    abandoned before it ran must not be written."""
    worker = SerialWorker("test-worker")
    gate = threading.Event()
    ran: list[str] = []
    try:
        blocker = asyncio.ensure_future(worker.run(gate.wait, 5))
        queued = asyncio.ensure_future(worker.run(ran.append, "queued"))
        await asyncio.sleep(0.01)
        queued.cancel()
        gate.set()
        assert await blocker is True
        assert await worker.run(ran.append, "after") is None
        with pytest.raises(asyncio.CancelledError):
            await queued
    finally:
        worker.shutdown()
    assert ran == ["after"]


async def test_submitted_jobs_run_in_turn_and_their_failures_are_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    worker = SerialWorker("test-worker")
    done: list[str] = []

    def broken() -> None:
        raise ValueError("head file")

    try:
        worker.submit(done.append, "first")
        worker.submit(broken)
        assert await worker.run(done.append, "second") is None
    finally:
        worker.shutdown()
    assert done == ["first", "second"]
    assert any("event=worker_job_failed worker=test-worker" in r.getMessage() and r.levelno == logging.ERROR
               for r in caplog.records)


def test_shutdown_finishes_what_is_queued_and_a_new_call_starts_again() -> None:
    async def scenario() -> list[int]:
        worker = SerialWorker("test-worker")
        out: list[int] = []
        for n in range(5):
            worker.submit(out.append, n)
        worker.shutdown()
        assert out == list(range(5))
        assert await worker.run(lambda: 7) == 7  # a fresh thread
        worker.shutdown()
        return out

    assert asyncio.run(scenario()) == list(range(5))


async def test_a_call_here_runs_in_the_callers_thread_between_the_workers_jobs() -> None:
    """A reader thread commits its tap itself: never at the same time as a job on the worker."""
    worker = SerialWorker("test-worker")
    inside = threading.Event()
    release = threading.Event()
    log: list[str] = []

    def long_job() -> None:
        inside.set()
        release.wait(2.0)
        log.append("job done")

    def here() -> str:
        log.append("here")
        return threading.current_thread().name

    try:
        running = asyncio.ensure_future(worker.run(long_job))
        await asyncio.to_thread(inside.wait, 2.0)
        caller = threading.Thread(target=lambda: log.append(f"ran on {worker.call_here(here)}"), name="reader")
        caller.start()
        await asyncio.sleep(0.05)
        assert log == []  # the worker's job holds it
        release.set()
        await running
        await asyncio.to_thread(caller.join, 2.0)
    finally:
        worker.shutdown()
    assert log == ["job done", "here", "ran on reader"]
