"""The one place where driver threads hand events to the asyncio loop.

pyscard's status-change wait and gpiozero's edge callbacks run in their own
threads; touching loop objects from there is a race. Everything crosses here,
through ``call_soon_threadsafe``, into an :class:`asyncio.Queue` that the
loop side drains.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


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
