"""The one place where threads hand things to the asyncio loop.

pyscard's status-change wait and gpiozero's edge callbacks run in their own
threads; touching loop objects from there is a race. Their events cross here,
through ``call_soon_threadsafe``, into an :class:`asyncio.Queue` that the
loop side drains (:class:`LoopBridge`). Blocking work that must stay on one
thread (an SQLite connection) runs on a :class:`SerialWorker`, whose answers
come back the same way.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("unionterm.bridge")


class LoopBridge(Generic[T]):
    """A queue whose ``put_threadsafe`` may be called from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[T] = asyncio.Queue()

    def put_threadsafe(self, item: T) -> None:
        """Hand ``item`` to the loop; silently dropped only if the loop is closed."""
        if self._loop.is_closed():
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # loop closed between the check and the call
            pass

    def put_nowait(self, item: T) -> None:
        """Same, from the loop's own thread."""
        self._queue.put_nowait(item)

    async def get(self) -> T:
        return await self._queue.get()

    def __aiter__(self) -> "LoopBridge[T]":
        return self

    async def __anext__(self) -> T:
        return await self._queue.get()


_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.AbstractEventLoop | None", "asyncio.Future[Any] | None"]


class SerialWorker:
    """One thread running blocking calls in the order given; the loop awaits each answer.

    What ``ThreadPoolExecutor(max_workers=1)`` with ``run_in_executor`` does,
    minus a layer: the answer is set on the loop's future straight from the
    thread, one wake-up instead of a concurrent future relayed through a
    callback (a tenth of a millisecond less on every journal commit of a
    tap). A call whose awaiting task was cancelled before it started is
    skipped, as the executor would.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Held while a job runs, on the worker or in :meth:`call_here`: one at a time, in either place.
        self._running = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the worker thread; its result or exception, here."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()
        self._put((fn, args, loop, answer))
        return await answer

    def call_here(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the calling thread, between two of the worker's jobs.

        For a thread that must not wait for a hand-over (a card reader
        committing its own tap): the job's resources (an SQLite connection
        made without ``check_same_thread``) see one caller at a time as
        before, only not always the same thread.
        """
        with self._running:
            return fn(*args)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` with no one waiting (from any thread); a failure is logged."""
        self._put((fn, args, None, None))

    def shutdown(self) -> None:
        """Finish what is queued, then end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    def _put(self, job: _Job) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, loop, answer = job
            if answer is not None and answer.cancelled():
                continue
            try:
                with self._running:
                    result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits it
                if loop is None:
                    log.exception("event=worker_job_failed worker=%s", self.name)
                else:
                    self._answer(loop, answer, None, exc)
                continue
            if loop is not None:
                self._answer(loop, answer, result, None)

    @staticmethod
    def _answer(loop: asyncio.AbstractEventLoop, answer: "asyncio.Future[Any] | None", result: Any,
                exc: BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(_settle, answer, result, exc)
        except RuntimeError:  # the loop closed while the job ran: no one is left to tell
            pass


def _settle(answer: "asyncio.Future[Any]", result: Any, exc: BaseException | None) -> None:
    if answer.done():  # its awaiting task was cancelled meanwhile
        return
    if exc is not None:
        answer.set_exception(exc)
    else:
        answer.set_result(result)
