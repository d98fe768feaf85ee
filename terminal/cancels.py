"""Stops that Python 3.11's ``asyncio.wait_for`` loses, found again.

On 3.11, a cancel that lands as the awaited call completes is swallowed by
``wait_for``: the task carries on as if never asked to stop, and whoever
stops it waits forever. aiomqtt bounds every call with ``wait_for`` (connect,
publish, subscribe), so every MQTT loop here (the terminal's uplink, the
simulated back office) checks around its calls. Our own waits use
``asyncio.timeout``, which does not lose a cancel.

aiomqtt also mishandles a stop that lands during its connect; every MQTT loop
here enters its client through :func:`connection` for that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import aiomqtt

T = TypeVar("T")

#: How long a stop during a connect waits for it to settle before abandoning it.
CONNECT_SETTLE_S = 1.0


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


@contextlib.asynccontextmanager
async def connection(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Client]:
    """``async with client``, except that a stop during the connect closes what it opened.

    aiomqtt cancelled in its CONNACK wait leaves the socket open with no
    owner: the broker keeps that session until the next connection with the
    same client id takes it over, and its end is then logged as "Future
    exception was never retrieved" (a terminal stopped just after it started).
    So the connect runs shielded, and a stop gives it a moment to settle: one
    that got through is disconnected cleanly. A connect still hanging after
    that moment (a broker that does not answer) is abandoned as before, so
    that a stop never waits for the connect timeouts.
    """
    entering = asyncio.ensure_future(client.__aenter__())
    try:
        await asyncio.shield(entering)
    except asyncio.CancelledError:
        await asyncio.wait({entering}, timeout=CONNECT_SETTLE_S)
        if not entering.done():
            entering.cancel()
        elif not entering.cancelled() and entering.exception() is None:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.__aexit__(None, None, None)
        raise
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_exit(client)
        yield client
