"""The back office's view of one broker: transactions as they arrive, and their acknowledgements.

Unlike :class:`simulator.observer.Observer` this one outlives the broker: the
workbench takes the broker down on purpose, so the feed reconnects, with a
persistent session (the broker keeps its QoS 1 messages while it is away,
as it would for a real back office) and shows each record once, however
often the terminal resends it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiomqtt

from terminal.cancels import bounded, connection
from terminal.exceptions import PayloadError
from terminal.uplink import payload_bytes

from .wire import FeedAck, parse_feed

log = logging.getLogger("unionterm.sim.web.feed")

RETRY_S = 0.2


class Feed:
    """Subscribes to every terminal's ``tx`` and ``ack``; keeps the newest ``keep`` records."""

    def __init__(self, port: int, host: str = "127.0.0.1", prefix: str = "unionterm/v1", keep: int = 50,
                 client_id: str = "unionterm-workbench-feed") -> None:
        self.port = port
        self.host = host
        self.prefix = prefix
        self.keep = keep
        self.client_id = client_id
        self.rows: dict[tuple[str, int], dict[str, Any]] = {}
        self.acked: dict[str, int] = {}
        self.repeats = 0
        self.connected = False

    async def run(self) -> None:
        """Forever: connect, take messages; when the broker goes, try again every RETRY_S."""
        while True:
            client = aiomqtt.Client(self.host, self.port, identifier=self.client_id, clean_session=False)
            try:
                async with connection(client):
                    for what in ("tx", "ack"):
                        await bounded(client.subscribe(f"{self.prefix}/t/+/{what}", qos=1))
                    self.connected = True
                    async for message in client.messages:
                        self.take(str(message.topic), payload_bytes(message.payload))
            except aiomqtt.MqttError as exc:
                log.debug("event=feed_disconnected error=%r", str(exc))
            finally:
                self.connected = False
            await asyncio.sleep(RETRY_S)

    def take(self, topic: str, payload: bytes) -> None:
        """File one message: a new record, a repeat of one, or an acknowledgement."""
        try:
            item = parse_feed(topic, payload, self.prefix)
        except PayloadError as exc:
            log.warning("event=feed_refused topic=%s reason=%r", topic, str(exc))
            return
        if isinstance(item, FeedAck):
            self.acked[item.terminal] = max(self.acked.get(item.terminal, 0), item.seq)
            return
        key = (item.terminal, item.seq)
        if key in self.rows:
            self.repeats += 1
            return
        self.rows[key] = {"terminal": item.terminal, **item.fields}
        while len(self.rows) > self.keep:
            del self.rows[next(iter(self.rows))]

    def view(self) -> dict[str, Any]:
        """Newest first, each row marked acknowledged when the back office said so."""
        rows = [{**row, "acked": row["seq"] <= self.acked.get(terminal, 0)}
                for (terminal, _), row in reversed(self.rows.items())]
        return {"connected": self.connected, "rows": rows, "repeats": self.repeats}
