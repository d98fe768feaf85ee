"""A broker-side listener: what the back office would see, for the demo and tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiomqtt


@dataclass(frozen=True)
class Seen:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Observer:
    """Subscribes to a topic filter and keeps every message, in arrival order."""

    def __init__(self, port: int, topic_filter: str = "unionterm/v1/#", host: str = "127.0.0.1",
                 persistent_id: str = "") -> None:
        self.port = port
        self.persistent_id = persistent_id
        self.host = host
        self.topic_filter = topic_filter
        self.messages: list[Seen] = []
        self._arrived = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["Observer"]:
        # A persistent session (like a real back office's) keeps QoS 1 messages queued while away.
        client = aiomqtt.Client(self.host, self.port, identifier=self.persistent_id or "unionterm-observer",
                                clean_session=not self.persistent_id)
        async with client:
            await client.subscribe(self.topic_filter, qos=1)
            task = asyncio.create_task(self._collect(client))
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _collect(self, client: aiomqtt.Client) -> None:
        async for m in client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            async with self._arrived:
                self.messages.append(Seen(str(m.topic), payload, bool(m.retain)))
                self._arrived.notify_all()

    def on(self, suffix: str, distinct: bool = False) -> list[Seen]:
        """Messages whose topic ends with ``suffix``; with ``distinct``, a repeat of one already
        seen (same topic, same bytes) is left out.

        QoS 1 is at least once: a persistent session gets a message again when the broker
        restarts before it has recorded the acknowledgement, so a count of what the terminal
        sent counts distinct messages, as a back office de-duplicates them.
        """
        seen = [m for m in self.messages if m.topic.endswith(suffix)]
        if not distinct:
            return seen
        first: dict[tuple[str, bytes], Seen] = {}
        for m in seen:
            first.setdefault((m.topic, m.payload), m)
        return list(first.values())

    async def wait_for(self, suffix: str, count: int = 1, timeout: float = 10.0,
                       distinct: bool = False) -> list[Seen]:
        """Wait until ``count`` messages whose topic ends with ``suffix`` have arrived."""
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.on(suffix, distinct)) >= count), timeout)
        return self.on(suffix, distinct)
