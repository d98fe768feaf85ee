"""Stops that Python 3.11's ``asyncio.wait_for`` loses, found again.

On 3.11, a cancel that lands as the awaited call completes is swallowed by
``wait_for``: the task carries on as if never asked to stop, and whoever
stops it waits forever. aiomqtt bounds every call with ``wait_for`` (connect,
publish, subscribe), so every MQTT loop here (the terminal's uplink, the
simulated back office) checks around its calls. Our own waits use
``asyncio.timeout``, which does not lose a cancel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def bounded(call: Awaitable[T]) -> T:
    """Await an aiomqtt call, re-raising a cancellation Python 3.11's ``wait_for`` swallowed.

    aiomqtt bounds connect, publish and subscribe with ``asyncio.wait_for``; on
    3.11, a cancel that lands as the call completes is lost, and the task
    carries on as if never asked to stop while its task group waits for it (a
    terminal that never stops: seen after a publish, after the subscribe at
    connect, and after the CONNACK wait itself).
    """
    cancels = cancels_requested()
    try:
        return await call
    finally:
        raise_lost_cancel(cancels)


def cancels_requested() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def raise_lost_cancel(before: int) -> None:
    """Raise if this task was asked to stop since ``before`` was counted.

    The task still counts a request ``wait_for`` swallowed. Only a rise counts:
    3.11's TaskGroup can leave a count behind after a child failed (a broker
    outage), which must not stop a later call.
    """
    if cancels_requested() > before:
        raise asyncio.CancelledError
