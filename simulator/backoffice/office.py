"""The reference back office's MQTT side: publish lists and hot-list changes, answer terminals.

Everything published is built by :mod:`.publish` (the terminal's own codec)
and signed with the home folder's current key; what was published is then
recorded in the home database (:mod:`.home`), so the next delta is computed
against exactly what the terminals hold. ``serve`` keeps the newest report
of every terminal and answers resync requests: a scope's list is republished
as a new version with the same content (terminals that hold that content
take the new version without downloading; one whose digest differs, or that
missed a delta, rebuilds), the hot list as one ``hotlist.full``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import aiomqtt

from terminal.exceptions import PayloadError
from terminal.signing import parse as parse_envelope
from terminal.sync.hotlist import HotlistEntry
from terminal.sync.report import HOTLIST, Report, decode_resync
from terminal.sync.strict import loads_object
from terminal.sync.topics import DEFAULT_PREFIX, chunk_topic, delta_topic, hotlist_topic, manifest_topic
from terminal.uplink import payload_bytes

from .home import BackOfficeHome, Published
from .publish import build_delta, build_hotlist, build_snapshot, diff_lists

log = logging.getLogger("unionterm.backoffice.members")

DAY = 86_400
#: Two resync requests for the same list within this many seconds get one answer.
RESYNC_DEBOUNCE_S = 2.0


@dataclass(frozen=True)
class BrokerSettings:
    """Where the back office publishes (the broker's ACL lets only it write list topics)."""

    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = DEFAULT_PREFIX
    username: str = ""
    password: str = ""
    client_id: str = "unionterm-backoffice-members"

    def client(self) -> aiomqtt.Client:
        return aiomqtt.Client(self.host, self.port, identifier=self.client_id,
                              username=self.username or None, password=self.password or None)


@dataclass(frozen=True)
class DiffRow:
    """One list of one terminal compared with what was published (``status`` ok means equal)."""

    terminal: str
    list: str
    held: str
    published: str
    status: str


def diff_reports(published: Mapping[str, Published], hotlist_seq: int,
                 reports: Mapping[str, Report]) -> list[DiffRow]:
    """Which terminals hold something other than what was published, and how.

    Status words: ``ok``; ``behind`` / ``ahead`` (version); ``differs``
    (same version, other count or digest: the terminal's list drifted);
    ``stale`` (same list, but its validity ran out at the terminal);
    ``not_published`` (the terminal serves a scope this back office never
    published).
    """
    rows = []
    for terminal, report in sorted(reports.items()):
        for held in report.lists:
            pub = published.get(held.scope)
            shown = f"v{held.version} {held.count} {held.digest[:12]}"
            if pub is None:
                rows.append(DiffRow(terminal, held.scope, shown, "-", "not_published"))
                continue
            status = "ok"
            if held.version < pub.version:
                status = "behind"
            elif held.version > pub.version:
                status = "ahead"
            elif (held.count, held.digest) != (pub.count, pub.digest):
                status = "differs"
            elif held.stale(report.at):
                status = "stale"
            rows.append(DiffRow(terminal, held.scope, shown,
                                f"v{pub.version} {pub.count} {pub.digest[:12]}", status))
        hot = "ok" if report.hotlist == hotlist_seq else \
            "behind" if report.hotlist < hotlist_seq else "ahead"
        rows.append(DiffRow(terminal, HOTLIST, f"#{report.hotlist}", f"#{hotlist_seq}", hot))
    return rows


def terminal_sync_section(key_files: Sequence[str], scopes: Sequence[str] = ("all",),
                          max_age_s: Mapping[str, int] | None = None) -> str:
    """The ``[sync]`` section of a terminal that trusts these public key files (provisioning)."""
    keys = ", ".join(f'"{k}"' for k in key_files)
    listed = ", ".join(f'"{s}"' for s in scopes)
    text = f"\n[sync]\nscopes = [{listed}]\ntrusted_keys = [{keys}]\n"
    if max_age_s:
        text += "\n[sync.max_age_s]\n" + "".join(f"{mode} = {age}\n" for mode, age in max_age_s.items())
    return text


class BackOffice:
    """Publishing and answering, on one connected aiomqtt client."""

    def __init__(self, home: BackOfficeHome, client: aiomqtt.Client, prefix: str = DEFAULT_PREFIX,
                 ttl_s: int = 7 * DAY, hotlist_ttl_s: int = 30 * DAY, chunk_size: int | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.home = home
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.hotlist_ttl_s = hotlist_ttl_s
        self.chunk_size = chunk_size
        self.now = now
        self._answered: dict[str, float] = {}

    def _window(self, ttl_s: int) -> tuple[int, int]:
        issued = int(self.now())
        return issued, issued + ttl_s

    # -- snapshots and deltas -----------------------------------------------------------------

    async def publish_snapshot(self, scope: str, republish: bool = False) -> Published:
        """Publish the scope's members (or, ``republish``, the list last sent) as a new version.

        Chunks go out retained first, surplus chunks of the previous snapshot
        are cleared, and the retained manifest comes last.
        """
        before = self.home.published(scope)
        if republish and before is None:
            raise ValueError(f"scope {scope} was never published")
        source = self.home.published_records if republish else self.home.scope_records
        version = (before.version if before else 0) + 1
        issued, expires = self._window(self.ttl_s)

        def build() -> tuple[bytes, list[bytes]]:
            manifest, chunks = build_snapshot(source(scope), scope, version, self.home.signer(),
                                              issued, expires, self.chunk_size)
            return manifest, list(chunks)

        manifest, chunks = await asyncio.to_thread(build)
        header, body = parse_envelope(manifest)
        info = loads_object(body, "manifest")
        for index, data in enumerate(chunks):
            await self.client.publish(chunk_topic(scope, index, self.prefix), data, qos=1, retain=True)
        for index in range(len(chunks), before.chunks if before else 0):
            await self.client.publish(chunk_topic(scope, index, self.prefix), b"", qos=1, retain=True)
        await self.client.publish(manifest_topic(scope, self.prefix), manifest, qos=1, retain=True)
        published = Published(scope, header.version, info["count"], info["digest"], issued, expires,
                               len(chunks))
        if not republish:  # a republished list is already recorded, member by member
            await asyncio.to_thread(self.home.record_published, published, self.home.scope_records(scope))
        else:
            await asyncio.to_thread(self.home.record_published, published, None)
        log.info("event=snapshot_published scope=%s version=%d count=%d chunks=%d", scope,
                 published.version, published.count, published.chunks)
        return published

    async def publish_delta(self, scope: str) -> Published | None:
        """Publish what changed since the scope's last publication; None when nothing did.

        Raises :class:`PayloadError` or :class:`ValueError` when the change is
        too big for one delta (publish a snapshot instead).
        """
        before = self.home.published(scope)
        if before is None:
            raise ValueError(f"scope {scope} was never published: publish a snapshot first")
        diff = await asyncio.to_thread(
            diff_lists, self.home.published_records(scope), self.home.scope_records(scope))
        if not diff.upserts and not diff.removals:
            return None
        issued, expires = self._window(self.ttl_s)
        blob = build_delta(scope, before.version, diff, self.home.signer(), issued, expires)
        await self.client.publish(delta_topic(scope, self.prefix), blob, qos=1)
        published = Published(scope, before.version + 1, diff.count, diff.digest, issued, expires,
                              before.chunks)
        await asyncio.to_thread(self.home.record_published, published, None, diff.upserts, diff.removals)
        log.info("event=delta_published scope=%s version=%d upserts=%d removals=%d", scope,
                 published.version, len(diff.upserts), len(diff.removals))
        return published

    # -- hot list ---------------------------------------------------------------------------------

    async def change_hotlist(self, add: Mapping[str, str] = {}, remove: Mapping[str, str] = {}) -> int:
        """Block (``add``: ref -> reason) and release (``remove``) cards as one change; its sequence."""
        seq = self.home.hotlist_seq() + 1
        entries = [HotlistEntry("add", ref, why) for ref, why in add.items()] + \
                  [HotlistEntry("remove", ref, why) for ref, why in remove.items()]
        issued, expires = self._window(self.hotlist_ttl_s)
        blob = build_hotlist(seq, entries, self.home.signer(), issued, expires)
        await self.client.publish(hotlist_topic(self.prefix), blob, qos=1)
        self.home.record_hotlist(seq, add, remove, issued)
        log.info("event=hotlist_published seq=%d add=%d remove=%d", seq, len(add), len(remove))
        return seq

    async def publish_full_hotlist(self) -> int:
        """The whole hot list as ``hotlist.full`` (sequence: the current one, 1 if none yet)."""
        seq = self.home.hotlist_seq() or 1
        entries = [HotlistEntry("add", ref, why) for ref, why in self.home.hotlist().items()]
        issued, expires = self._window(self.hotlist_ttl_s)
        blob = build_hotlist(seq, entries, self.home.signer(), issued, expires, full=True)
        await self.client.publish(hotlist_topic(self.prefix), blob, qos=1)
        self.home.record_hotlist(seq)
        return seq

    # -- terminals --------------------------------------------------------------------------------

    async def serve(self, duration: float | None = None, answer: bool = True) -> int:
        """Store reports and (``answer``) answer resync requests, for ``duration`` s or forever.

        Returns the number of messages handled.
        """
        await self.client.subscribe(f"{self.prefix}/t/+/members/report", qos=1)
        if answer:
            await self.client.subscribe(f"{self.prefix}/t/+/members/resync", qos=1)
        log.info("event=serving answer=%s duration_s=%s", answer, duration if duration is not None else "-")
        handled = 0
        deadline = None if duration is None else asyncio.get_running_loop().time() + duration
        messages = aiter(self.client.messages)
        while True:
            try:
                async with asyncio.timeout_at(deadline):  # only the wait: an answer is never cut short
                    message = await anext(messages)
            except TimeoutError:
                return handled
            await self.handle(str(message.topic), payload_bytes(message.payload))
            handled += 1

    async def handle(self, topic: str, payload: bytes) -> None:
        """One message from a terminal; a malformed one is logged and dropped."""
        parts = topic[len(self.prefix) + 1:].split("/") if topic.startswith(self.prefix + "/") else []
        if len(parts) != 4 or parts[0] != "t" or parts[2] != "members":
            return
        terminal, what = parts[1], parts[3]
        try:
            if what == "report":
                report = self.home.store_report(terminal, payload, int(self.now()))
                log.info("event=report terminal=%s lists=%s hotlist=%d", terminal,
                         ",".join(f"{s.scope}:v{s.version}" for s in report.lists), report.hotlist)
            elif what == "resync":
                await self.answer_resync(terminal, payload)
        except PayloadError as exc:
            log.warning("event=terminal_message_refused terminal=%s topic=%s where=%s reason=%r",
                        terminal, what, exc.where, exc.problem)

    async def answer_resync(self, terminal: str, payload: bytes) -> None:
        request = decode_resync(payload)
        log.info("event=resync_request terminal=%s list=%s have=%d reason=%s", terminal,
                 request.list, request.have, request.reason)
        last = self._answered.get(request.list)
        if last is not None and time.monotonic() - last < RESYNC_DEBOUNCE_S:
            return
        self._answered[request.list] = time.monotonic()
        if request.list == HOTLIST:
            await self.publish_full_hotlist()
        elif self.home.published(request.list) is not None:
            await self.publish_snapshot(request.list, republish=True)
        else:
            log.warning("event=resync_unanswered list=%s reason=never_published", request.list)

