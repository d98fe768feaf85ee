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
    """``async with client``, except that a connect that does not end in a session closes what it opened.

    aiomqtt cancelled in its CONNACK wait leaves the socket open with no
    owner: the broker keeps that session until the next connection with the
    same client id takes it over, and its end is then logged as "Future
    exception was never retrieved" (a terminal stopped just after it started).
    So the connect runs shielded, and a stop gives it a moment to settle: one
    that got through is disconnected cleanly. A connect still hanging after
    that moment (a broker that does not answer) is abandoned, so that a stop
    never waits for the connect timeouts. A connect that times out by itself
    is closed here too (below).
    """
    entering = asyncio.ensure_future(client.__aenter__())
    try:
        await asyncio.shield(entering)
    except asyncio.CancelledError:
        await asyncio.wait({entering}, timeout=CONNECT_SETTLE_S)
        if not entering.done():
            entering.cancel()
        elif entering.cancelled():
            pass
        elif entering.exception() is None:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.__aexit__(None, None, None)
        else:
            _close_unanswered(client)
        raise
    except aiomqtt.MqttError:
        _close_unanswered(client)
        raise
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_exit(client)
        yield client


def _close_unanswered(client: aiomqtt.Client) -> None:
    """Close the socket of a connect that failed, which aiomqtt leaves open.

    After a CONNACK that did not come in time, the socket stays open until
    paho's keepalive closes it, half a minute or more later: against a broker
    that accepts connections and says nothing, every try adds one, and a late
    CONNACK on one of them could hand it this client id's session, taking it
    from the connection that replaced it. paho's ``disconnect()`` sends DISCONNECT
    and closes the socket; aiomqtt has no call for it. Without a socket
    (the TCP connect itself failed) it does nothing.
    """
    client._client.disconnect()  # noqa: SLF001
