"""Forward journaled transactions to the back office over MQTT, and take its answers.

The journal, not the MQTT client, is the queue. Records go out in sequence
order at QoS 1 through a sliding window of ``mqtt.inflight`` unconfirmed
PUBLISHes; the broker's PUBACK advances the *published* watermark. That only
proves the broker got it: a broker that dies before persisting, or a back
office whose session was lost, would drop it silently. So the back office
acknowledges end to end, on ``t/{id}/ack``, the highest sequence number up to
which it has stored every record, and only that advances the *acked*
watermark. Every new connection resends from the acked watermark, and so does
a session in which acks stop coming for ``uplink.ack_timeout_s`` (doubling
while they stay away). Delivery is therefore at least once, with duplicates;
the receiver de-duplicates by (terminal, seq) — see docs/protocol-tx.md.

An ack can only ever move the watermark forward and only onto a record this
terminal holds with exactly the hash the back office names, so duplicate,
stale, out-of-order or forged acks change nothing, and an ack above the
highest record ever sent is refused and logged.

A long backlog must not starve live taps, which share the journal thread and
the event loop: records are read in slices of ``uplink.batch`` and the loop
is yielded between slices, and no more than ``uplink.unacked_window`` records
run ahead of the back office's acks.

Each connection gets a fresh aiomqtt client inside an outer reconnect loop
with exponential backoff and jitter: paho's own retry queue is not wanted
here (the journal resends), and a fresh client carries none of it over.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt

from . import __version__
from .cancels import bounded, connection
from .config import Config
from .exceptions import PayloadError, UniontermError
from .journal import AckResult, Journal, Record
from .signing import MAX_INT
from .sync.strict import canonical_json, check_keys, get_hex64, get_int, loads_object
from .tls import tls_params

log = logging.getLogger("unionterm.uplink")

PUBLISH_TIMEOUT_S = 10.0
#: Default ceiling for an inbound payload; a topic may set a smaller one.
MAX_INBOUND_BYTES = 1 << 20
#: An ack is about 100 bytes.
MAX_ACK_BYTES = 512
#: The ack timeout doubles while acks stay away, up to this many times the configured one.
MAX_ACK_BACKOFF = 16
GOODBYE_TIMEOUT_S = 1.0
#: aiomqtt does not notice a connection closed before CONNACK and waits this long for it.
CONNECT_TIMEOUT_S = 5.0
#: paho leaves Nagle's algorithm on: small PUBLISHes then wait for the peer's
#: delayed ACK (~40 ms each round), capping a QoS 1 window at a few hundred/s.
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

InboundHandler = Callable[[str, bytes], Awaitable[None]]


class Topics:
    """The topic tree for one terminal (see docs/protocol-tx.md)."""

    def __init__(self, prefix: str, terminal_id: str) -> None:
        self.prefix = prefix.rstrip("/")
        self.base = f"{self.prefix}/t/{terminal_id}"
        self.tx = f"{self.base}/tx"
        self.ack = f"{self.base}/ack"
        self.status = f"{self.base}/status"
        self.telemetry = f"{self.base}/telemetry"
        self.cmd = f"{self.base}/cmd"
        self.cmd_result = f"{self.base}/cmd/result"


@dataclass(frozen=True)
class Ack:
    """Payload of ``t/{id}/ack``: every record up to ``seq`` is stored; ``hash`` is seq's chain hash."""

    seq: int
    hash: str


def encode_ack(ack: Ack) -> bytes:
    """Back-office side: one cumulative acknowledgement."""
    return canonical_json({"seq": ack.seq, "hash": ack.hash})


def decode_ack(payload: bytes) -> Ack:
    """Terminal side: an acknowledgement, strictly checked."""
    if len(payload) > MAX_ACK_BYTES:
        raise PayloadError("ack", f"{len(payload)} bytes is over the {MAX_ACK_BYTES}-byte limit")
    obj = check_keys(loads_object(payload, "ack"), "ack", frozenset({"seq", "hash"}))
    return Ack(get_int(obj, "seq", "ack", 1, MAX_INT), get_hex64(obj, "hash", "ack"))


def payload_bytes(payload: Any) -> bytes:
    """aiomqtt hands payloads over as bytes, str, numbers or None; make them bytes.

    Anything that has no byte form (text with lone surrogates, an integer
    past Python's 4300-digit limit, some other object) is refused by name:
    this runs on every inbound message, and an exception here would end the
    session instead of one message.
    """
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    if payload is None:
        return b""
    if isinstance(payload, str):
        try:
            return payload.encode()
        except UnicodeEncodeError as exc:
            raise PayloadError("payload", f"text is not encodable as UTF-8 (character {exc.start})") from None
    if isinstance(payload, (int, float)):
        try:
            return str(payload).encode()
        except ValueError:
            raise PayloadError("payload", "integer too large to write as text") from None
    raise PayloadError("payload", f"a {type(payload).__name__} is not a message payload")


class Uplink:
    """Keeps a broker connection, drains the journal through it, dispatches inbound messages."""

    def __init__(self, cfg: Config, journal: Journal,
                 status: Callable[[], dict[str, Any]] | None = None,
                 telemetry: Callable[[], Awaitable[bytes]] | None = None) -> None:
        self.cfg = cfg
        self.journal = journal
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.terminal.id)
        self._status = status or (lambda: {})
        self._telemetry = telemetry
        self._handlers: dict[str, tuple[InboundHandler, int]] = {}
        self._client: aiomqtt.Client | None = None
        self._kick = asyncio.Event()
        self._puback = asyncio.Event()
        self._pub_hi = 0
        self._inflight = 0
        self.connected = asyncio.Event()
        self.connects = 0
        self.published_total = 0
        self.resends = 0
        self.highest_sent = journal.published_seq
        self.acks: collections.Counter[str] = collections.Counter()
        self.subscribe(self.topics.ack, self._on_ack, MAX_ACK_BYTES)

    # -- wiring ----------------------------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: InboundHandler, max_bytes: int = MAX_INBOUND_BYTES) -> None:
        """Register an inbound topic; subscribed again at every (re)connect.

        A payload over ``max_bytes`` is refused before the handler sees it; a
        handler refuses bad content by raising :class:`PayloadError`. Either
        way one log line is written and the terminal carries on.
        """
        self._handlers[topic_filter] = (handler, max_bytes)

    @property
    def topic_filters(self) -> list[str]:
        """Every inbound topic filter, as subscribed at each connect."""
        return list(self._handlers)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Publish now if connected; ``False`` if not (the caller decides whether that matters)."""
        client = self._client
        if client is None:
            return False
        try:
            await bounded(client.publish(topic, payload, qos=qos, retain=retain, timeout=PUBLISH_TIMEOUT_S))
        except aiomqtt.MqttError as exc:
            log.warning("event=publish_failed topic=%s error=%r", topic, str(exc))
            return False
        return True

    async def refresh_presence(self) -> bool:
        """Publish the retained online status again (mode or list versions changed)."""
        return await self.publish(self.topics.status, self._presence("online"), retain=True)

    def kick(self) -> None:
        """Resend everything the back office has not acknowledged, now ("sync now")."""
        self._kick.set()

    def _presence(self, state: str) -> bytes:
        body: dict[str, Any] = {"state": state, "terminal": self.cfg.terminal.id,
                                "time_ms": int(time.time() * 1000)}
        if state == "online":
            body.update({"version": __version__, "mode": self.cfg.terminal.mode, **self._status()})
        return json.dumps(body, ensure_ascii=False, sort_keys=True).encode()

    def _new_client(self) -> aiomqtt.Client:
        m = self.cfg.mqtt
        client = aiomqtt.Client(
            hostname=m.host,
            port=m.port,
            identifier=m.client_id or f"unionterm-{self.cfg.terminal.id}",
            username=m.username or None,
            password=m.password or None,
            keepalive=m.keepalive_s,
            max_inflight_messages=m.inflight,
            will=aiomqtt.Will(self.topics.status, self._presence("offline"), qos=1, retain=True),
            socket_options=NO_DELAY,
            timeout=CONNECT_TIMEOUT_S,
            tls_params=tls_params(self.cfg),  # client certificate per terminal (docs/install.md)
        )
        client.pending_calls_threshold = m.inflight + 10  # our window, not a leak
        return client

    # -- the connection ----------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: connect, announce, drain, receive; back off with jitter on failure."""
        attempt = 0
        m = self.cfg.mqtt
        while True:
            client = self._new_client()
            try:
                async with connection(client):
                    attempt = 0
                    self.connects += 1
                    self._client = client
                    log.info("event=broker_connected host=%s port=%d", m.host, m.port)
                    try:
                        await self._session(client)
                    except asyncio.CancelledError:
                        await self._goodbye(client)
                        raise
            except* (aiomqtt.MqttError, TimeoutError) as group:
                self._client = None
                self.connected.clear()
                attempt += 1
                delay = min(m.reconnect_max_s, m.reconnect_min_s * (2 ** min(attempt, 16)))
                delay *= random.uniform(0.5, 1.0)
                log.warning("event=broker_unreachable error=%r retry_s=%.2f",
                            str(group.exceptions[0]), delay)
                await asyncio.sleep(delay)
            finally:
                self._client = None
                self.connected.clear()

    async def _session(self, client: aiomqtt.Client) -> None:
        await bounded(client.publish(self.topics.status, self._presence("online"), qos=1, retain=True,
                                      timeout=PUBLISH_TIMEOUT_S))
        for topic_filter in self._handlers:
            await bounded(client.subscribe(topic_filter, qos=1, timeout=PUBLISH_TIMEOUT_S))
        self.connected.set()  # announced, subscribed: now it can be talked to
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._drain(client), name="uplink-drain")
            tg.create_task(self._receive(client), name="uplink-receive")
            if self._telemetry is not None:
                tg.create_task(self._telemetry_loop(client), name="uplink-telemetry")

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """A clean stop sends no LWT, so say "offline" ourselves (best effort)."""
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError, asyncio.CancelledError):
            await client.publish(self.topics.status, self._presence("offline"), qos=1, retain=True,
                                 timeout=GOODBYE_TIMEOUT_S)

    # -- outbound: the journal ---------------------------------------------------------------

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish from the acked watermark on, in order, within both windows."""
        u = self.cfg.uplink
        slots = asyncio.Semaphore(self.cfg.mqtt.inflight)
        done: set[int] = set()
        cursor = self.journal.acked_seq  # a new session resends what the back office has not confirmed
        self._pub_hi = cursor
        self.highest_sent = max(self.highest_sent, self.journal.published_seq)
        timeout = u.ack_timeout_s
        acked_seen = self.journal.acked_seq
        waiting_since: float | None = None
        async with asyncio.TaskGroup() as pubs:
            while True:
                self.journal.appended.clear()
                self.journal.acked.clear()
                self._puback.clear()
                await self._advance_published(done)
                acked = self.journal.acked_seq
                now = time.monotonic()
                if acked > acked_seen:
                    acked_seen, timeout = acked, u.ack_timeout_s
                    waiting_since = now if cursor > acked else None
                cursor = max(cursor, acked)
                if self._kick.is_set():
                    self._kick.clear()
                    cursor, waiting_since = self._rewind(cursor, "kick")
                if cursor > acked and waiting_since is None:
                    waiting_since = now
                if waiting_since is not None and now - waiting_since >= timeout:
                    cursor, waiting_since = self._rewind(cursor, "ack_timeout")
                    timeout = min(timeout * 2, u.ack_timeout_s * MAX_ACK_BACKOFF)
                room = u.unacked_window - (cursor - acked)
                if room <= 0 or cursor >= self.journal.last_seq:
                    wait = timeout - (now - waiting_since) if waiting_since is not None else None
                    await self._wait(wait)
                    continue
                try:
                    batch = await self.journal.records_after(cursor, min(u.batch, room))
                except UniontermError:
                    await asyncio.sleep(self.journal.settings.probe_s)  # storage trouble, logged there
                    continue
                for record in batch:
                    await slots.acquire()
                    self._inflight += 1
                    cursor = record.seq
                    self.highest_sent = max(self.highest_sent, cursor)  # before it can be acked
                    pubs.create_task(self._publish_one(client, record, slots, done))
                await asyncio.sleep(0)  # a backlog yields to the taps between slices

    def _rewind(self, cursor: int, why: str) -> tuple[int, float | None]:
        acked = self.journal.acked_seq
        if cursor > acked:
            self.resends += 1
            log.info("event=tx_resend reason=%s from_seq=%d to_seq=%d", why, acked + 1, cursor)
        return acked, None

    async def _wait(self, timeout: float | None) -> None:
        """Until a record is appended, an ack or PUBACK arrives, a kick, or ``timeout``."""
        events = (self.journal.appended, self.journal.acked, self._puback, self._kick)
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, timeout=max(timeout, 0.0) if timeout is not None else None,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _publish_one(self, client: aiomqtt.Client, record: Record, slots: asyncio.Semaphore,
                           done: set[int]) -> None:
        try:
            await bounded(client.publish(self.topics.tx, record.body.encode(), qos=1,
                                          timeout=PUBLISH_TIMEOUT_S))
        finally:
            slots.release()
            self._inflight -= 1
        self.published_total += 1
        if record.seq > self._pub_hi:
            done.add(record.seq)
        self._puback.set()

    async def _advance_published(self, done: set[int]) -> None:
        hi = self._pub_hi
        while hi + 1 in done:
            hi += 1
            done.discard(hi)
        self._pub_hi = hi
        # One small write per slice, or when all is confirmed: not one per PUBACK.
        if hi > self.journal.published_seq and (
                self._inflight == 0 or hi - self.journal.published_seq >= self.cfg.uplink.batch):
            with contextlib.suppress(UniontermError):  # a lost watermark only means a resend
                await self.journal.mark_published(hi)

    # -- inbound ---------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self.dispatch(message.topic, message.payload)

    async def dispatch(self, topic: aiomqtt.Topic | str, payload: Any) -> None:
        """Hand one inbound message to its handler; nothing a sender does can stop the terminal.

        ``payload`` is converted here, inside the refusal handling, so even a
        payload without a byte form costs one log line and not the session.
        """
        topic = topic if isinstance(topic, aiomqtt.Topic) else aiomqtt.Topic(topic)
        name = str(topic)
        match = next(((h, limit) for f, (h, limit) in self._handlers.items() if topic.matches(f)), None)
        if match is None:
            return
        handler, limit = match
        try:
            data = payload_bytes(payload)
            if len(data) > limit:
                raise PayloadError(name, f"payload of {len(data)} bytes exceeds {limit}")
            await handler(name, data)
        except PayloadError as exc:
            log.warning("event=inbound_refused topic=%s where=%s reason=%r", name, exc.where, exc.problem)
        except UniontermError as exc:
            log.warning("event=inbound_failed topic=%s error=%r", name, str(exc))
        except Exception:  # noqa: BLE001 - a bug in one handler must not end the session
            log.exception("event=inbound_handler_error topic=%s", name)

    async def _on_ack(self, topic: str, payload: bytes) -> None:
        ack = decode_ack(payload)
        if ack.seq > self.highest_sent:
            self.acks["above_sent"] += 1
            log.warning("event=ack_refused reason=above_sent seq=%d highest_sent=%d", ack.seq, self.highest_sent)
            return
        result = await self.journal.ack(ack.seq, ack.hash)
        self.acks[result.value] += 1
        if result is AckResult.ACCEPTED:
            log.debug("event=ack seq=%d", ack.seq)
        elif result in (AckResult.DUPLICATE, AckResult.STALE):
            log.debug("event=ack_ignored reason=%s seq=%d acked=%d", result.value, ack.seq,
                      self.journal.acked_seq)
        else:
            log.warning("event=ack_refused reason=%s seq=%d", result.value, ack.seq)

    # -- telemetry ---------------------------------------------------------------------------

    async def _telemetry_loop(self, client: aiomqtt.Client) -> None:
        assert self._telemetry is not None
        while True:
            try:
                payload = await self._telemetry()
            except Exception:  # noqa: BLE001 - a broken figure must not stop the uplink
                log.exception("event=telemetry_error")
            else:
                await bounded(client.publish(self.topics.telemetry, payload, qos=0, timeout=PUBLISH_TIMEOUT_S))
            await asyncio.sleep(self.cfg.telemetry.interval_s)
