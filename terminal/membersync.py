"""Keep the member lists and the hot list current from the back office, over MQTT.

The service subscribes, for each configured scope, to the retained manifest,
its chunks and the delta topic, and to the hot list (topics and payloads in
``docs/protocol-members.md``). Everything inbound is verified with the
trusted keys before it is looked at, checked against the version held, and
then applied; a refusal writes one ``event=list_refused`` line naming the
reason and changes nothing.

Inbound handlers return at once, because the uplink hands messages over one
at a time and a hot-list entry must not wait behind a 1.1M-member snapshot:
chunks are spooled to disk as they arrive (a snapshot never sits in memory),
snapshot builds and deltas run in worker threads, serialised per scope by a
lock, while hot-list changes are applied within milliseconds of arrival.

After every change, and at every (re)connect, the service reports what it
holds on ``t/{id}/members/report``; a delta that does not follow the held
version, or a list that fails its digest, gets one resync request on
``t/{id}/members/resync`` (repeated only after ``sync.resync_retry_s``).

Staleness: a list's age is the time since the back office issued the newest
manifest or delta applied to it. :meth:`MemberSync.gate` turns a
value-granting approval into a ``list_stale`` denial when the oldest served
list is older than the mode's ``sync.max_age_s`` (0 = never); hot-list
denials are decided before it and are never affected.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config
from .exceptions import PayloadError, ReplayError, SignatureError, UnsignedError
from .memberfiles import BuildCancelled, HeldList, SnapshotBuild, remove_list_file
from .members import MemberStore
from .model import Decision
from .signing import KIND_DELTA, KIND_MANIFEST, VersionCheck, check_version, load_trusted, verify
from .sync.delta import Delta, decode_delta
from .sync.hotlist import HOTLIST_KINDS, Hotlist, decode_hotlist
from .sync.limits import DEFAULT_LIMITS, Limits
from .sync.report import HOTLIST, Report, ResyncRequest, encode_report, encode_resync
from .sync.snapshot import Manifest, decode_manifest, iter_snapshot_lines
from .sync.topics import (HOTLIST_SCOPE, chunk_filter, chunk_index, delta_topic, hotlist_topic,
                          manifest_topic, report_topic, resync_topic)
from .telemetry import ListInfo

if TYPE_CHECKING:
    from .uplink import Uplink

log = logging.getLogger("unionterm.membersync")

LIST_STALE = "list_stale"
#: Deltas held while waiting for the snapshot they build on (by base version).
MAX_PENDING_DELTAS = 32
#: After a connect, how long a scope with no list waits for a retained manifest before asking.
MISSING_GRACE_S = 5.0
_CONNECT_POLL_S = 0.2
#: A hot-list message up to this size is checked on the event loop (a few entries: microseconds).
INLINE_DECODE_BYTES = 64 * 1024


def refusal_reason(exc: PayloadError) -> str:
    """One stable word for why a list message was refused (for logs and counters)."""
    where = exc.where
    if isinstance(exc, ReplayError):
        return "expired" if where.endswith(".expires") else "old_version"
    if isinstance(exc, SignatureError):
        if where.endswith(".kid"):
            return "unknown_key"
        if where.endswith(".kind"):
            return "wrong_kind"
        if where.endswith(".scope"):
            return "wrong_scope"
        return "unsigned" if isinstance(exc, UnsignedError) else "bad_signature"
    if where.endswith(".digest"):
        return "wrong_digest"
    return "malformed"


def gate_stale(decision: Decision, age_s: float | None, max_age_s: float) -> Decision:
    """Deny a value-granting approval made on a list older than ``max_age_s`` (0 = no limit).

    ``age_s`` None means no list at all. Denials pass unchanged, so a
    hot-listed card keeps its own reason; so do approvals that grant nothing.
    """
    if not max_age_s or not decision.approved or not decision.grants_value:
        return decision
    if age_s is not None and age_s <= max_age_s:
        return decision
    return Decision.deny(LIST_STALE, list_age_s=-1 if age_s is None else int(age_s),
                         max_age_s=int(max_age_s))


@dataclass
class _Download:
    """A snapshot being fetched and built: which chunks are on disk, and the build."""

    manifest: Manifest
    spool: Path
    build: SnapshotBuild | None = None
    ready: set[int] = field(default_factory=set)
    cond: threading.Condition = field(default_factory=threading.Condition)
    started: float = field(default_factory=time.monotonic)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def chunk_path(self, index: int) -> Path:
        return self.spool / f"{index}-{self.manifest.chunks[index].sha256}.chunk"

    def wants(self, index: int, sha256: str) -> bool:
        chunks = self.manifest.chunks
        return index < len(chunks) and chunks[index].sha256 == sha256

    def arrived(self, index: int) -> None:
        with self.cond:
            self.ready.add(index)
            self.cond.notify_all()

    def cancel(self) -> None:
        """Superseded or shutting down: the build thread stops at its next chunk or batch."""
        self._cancelled.set()
        if self.build is not None:
            self.build.cancel()
        with self.cond:
            self.cond.notify_all()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def chunks(self) -> Iterator[bytes]:
        """The chunks in order, each as soon as it is spooled (runs in the build thread)."""
        for index in range(len(self.manifest.chunks)):
            with self.cond:
                while index not in self.ready and not self.cancelled:
                    self.cond.wait(timeout=1.0)
            if self.cancelled:
                raise BuildCancelled(self.manifest.scope)
            yield self.chunk_path(index).read_bytes()

    def discard_chunks(self) -> None:
        for index in range(len(self.manifest.chunks)):
            self.chunk_path(index).unlink(missing_ok=True)


@dataclass
class _Scope:
    """What the service tracks for one scope besides the store's own record."""

    name: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    download: _Download | None = None
    pending: dict[int, Delta] = field(default_factory=dict)
    #: chunk index -> sha256 of every chunk file spooled for this scope
    spooled: dict[int, set[str]] = field(default_factory=dict)


class MemberSync:
    """The terminal's member-list sync service (``terminal.services`` entry: :meth:`run`)."""

    def __init__(self, cfg: Config, limits: Limits = DEFAULT_LIMITS,
                 now: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.limits = limits
        self.now = now
        self.prefix = cfg.mqtt.topic_prefix
        self.trusted = load_trusted(cfg.config_path(p) for p in cfg.sync.trusted_keys)
        self.scopes = {s: _Scope(s) for s in cfg.sync.scopes}
        self.store: MemberStore | None = None
        self.uplink: Uplink | None = None
        self.refused: Counter[str] = Counter()
        self.resyncs_sent: list[ResyncRequest] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._hot_lock = asyncio.Lock()
        self._report_wanted = asyncio.Event()
        self._resync_at: dict[str, float] = {}
        self._resync_unsent: dict[str, ResyncRequest] = {}

    # -- service entry ------------------------------------------------------------------------

    async def run(self, terminal: Any) -> None:
        """Serve ``terminal`` (its ``members`` store and ``uplink``) until cancelled."""
        self.attach(terminal.members, terminal.uplink)
        terminal.list_versions = self.list_infos
        requested = getattr(terminal, "sync_requested", None)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch_connection(), name="membersync-connect")
                tg.create_task(self._reporter(), name="membersync-report")
                if requested is not None:
                    tg.create_task(self._watch_sync_now(requested), name="membersync-now")
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop downloads and pending work (a build thread stops at its next batch)."""
        for state in self.scopes.values():
            if state.download is not None:
                state.download.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def attach(self, store: MemberStore, uplink: Uplink) -> None:
        """Clear leftovers and register the inbound topics (before the uplink's next subscribe).

        Synchronous on purpose: called first thing in :meth:`run`, before the
        uplink's connection (started in the same task group) subscribes.
        """
        self.store = store
        self.uplink = uplink
        removed = store.sweep()
        if removed:
            log.info("event=members_swept files=%d", len(removed))
        envelope = self.limits.max_envelope
        for name in self.scopes:
            uplink.subscribe(manifest_topic(name, self.prefix),
                             functools.partial(self._on_manifest, name), envelope)
            uplink.subscribe(chunk_filter(name, self.prefix),
                             functools.partial(self._on_chunk, name), self.limits.max_chunk)
            uplink.subscribe(delta_topic(name, self.prefix),
                             functools.partial(self._on_delta, name), envelope)
        uplink.subscribe(hotlist_topic(self.prefix), self._on_hotlist, envelope)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event=membersync_task_failed task=%s error=%r", task.get_name(),
                      str(task.exception()), exc_info=task.exception())

    # -- what the app and telemetry read ----------------------------------------------------------

    def held(self) -> dict[str, HeldList]:
        assert self.store is not None
        return {name: self.store.held.get(name, HeldList(name)) for name in self.scopes}

    def list_infos(self) -> dict[str, ListInfo]:
        """Version and time of the last change per scope (the telemetry's view)."""
        if self.store is None:
            return {}
        return {name: ListInfo(h.version, h.applied_at) for name, h in self.held().items()}

    def list_ages(self, now: float) -> dict[str, float | None]:
        """Seconds since the back office issued each list as held; None = no list yet."""
        if self.store is None:
            return {name: None for name in self.scopes}
        return {name: max(now - h.issued, 0.0) if h.version else None
                for name, h in self.held().items()}

    def oldest_age(self, now: float) -> float | None:
        """The age that counts for decisions: the oldest list served (None if one is missing)."""
        ages = list(self.list_ages(now).values())
        return None if None in ages else max(ages, default=0.0)

    def gate(self, decision: Decision, now: float) -> Decision:
        """Apply this mode's staleness policy to a decision (see :func:`gate_stale`)."""
        max_age = getattr(self.cfg.sync.max_age_s, self.cfg.terminal.mode, 0)
        gated = gate_stale(decision, self.oldest_age(now), max_age)
        if gated is not decision:
            log.warning("event=value_refused reason=%s list_age_s=%s max_age_s=%d", LIST_STALE,
                        gated.detail["list_age_s"], max_age)
        return gated

    # -- inbound: snapshots -----------------------------------------------------------------------

    async def _on_chunk(self, scope: str, topic: str, payload: bytes) -> None:
        """Spool a chunk to disk; the build thread picks it up (hash checked again there)."""
        if not payload:
            return  # a retained chunk being cleared
        index = chunk_index(topic, scope, self.prefix)
        if index >= self.limits.max_chunks:
            raise PayloadError(topic, f"chunk index {index} is over {self.limits.max_chunks}")
        sha = hashlib.sha256(payload).hexdigest()
        state = self.scopes[scope]
        download = state.download
        spooled = state.spooled.setdefault(index, set())
        assert self.store is not None
        spool = self.store.spool_dir(scope)
        if sha not in spooled:
            spool.mkdir(parents=True, exist_ok=True)
            (spool / f"{index}-{sha}.chunk").write_bytes(payload)
            spooled.add(sha)
            # At most the chunk the current download needs plus the newest one per index.
            for other in list(spooled - {sha}):
                if download is None or not download.wants(index, other):
                    (spool / f"{index}-{other}.chunk").unlink(missing_ok=True)
                    spooled.discard(other)
        if download is not None and download.wants(index, sha):
            download.arrived(index)

    async def _on_manifest(self, scope: str, topic: str, payload: bytes) -> None:
        assert self.store is not None
        held = self.store.held[scope]
        try:
            manifest = decode_manifest(self._verify(payload, KIND_MANIFEST, scope), self.limits)
            if (manifest.version, manifest.digest) == (held.version, held.digest):
                log.debug("event=manifest_held scope=%s version=%d", scope, held.version)
                return  # the retained manifest again, at a reconnect: nothing to do, nothing wrong
            check_version(held.version, manifest.version, KIND_MANIFEST)
        except PayloadError as exc:
            self._refuse(scope, KIND_MANIFEST, exc)
            return
        state = self.scopes[scope]
        current = state.download
        if current is not None:
            if current.manifest.version == manifest.version:
                return  # the same manifest again (retained, after a reconnect)
            if current.manifest.version > manifest.version:
                self._refuse(scope, KIND_MANIFEST, ReplayError(
                    "manifest", f"v{manifest.version} is older than v{current.manifest.version} "
                    "being downloaded"))
                return
            current.cancel()
            log.info("event=snapshot_superseded scope=%s version=%d by=%d", scope,
                     current.manifest.version, manifest.version)
        download = _Download(manifest, self.store.spool_dir(scope))
        for index, info in enumerate(manifest.chunks):
            if info.sha256 in state.spooled.get(index, ()):
                download.ready.add(index)
        state.download = download
        self._spawn(self._install_snapshot(state, download), f"snapshot-{scope}")

    async def _install_snapshot(self, state: _Scope, download: _Download) -> None:
        assert self.store is not None
        manifest = download.manifest
        async with state.lock:
            applied = False
            try:
                held = self.store.held[state.name]
                if download.cancelled or manifest.version <= held.version:
                    return
                if held.version and (held.count, held.digest) == (manifest.count, manifest.digest):
                    new = await asyncio.to_thread(self.store.adopt, manifest)
                    log.info("event=snapshot_adopted scope=%s version=%d count=%d", state.name,
                             new.version, new.count)
                    applied = True
                else:
                    applied = await self._build(state, download)
            finally:
                if state.download is download:
                    state.download = None
            if applied:
                self._changed(state.name)
            await self._apply_pending(state)

    async def _build(self, state: _Scope, download: _Download) -> bool:
        """Build the new list beside the live one and swap it in; False if it did not happen."""
        assert self.store is not None
        manifest = download.manifest
        build = download.build = self.store.new_build(manifest)
        log.info("event=snapshot_start scope=%s version=%d count=%d chunks=%d have=%d", state.name,
                 manifest.version, manifest.count, len(manifest.chunks), len(download.ready))
        records = iter_snapshot_lines(manifest, download.chunks(), self.limits)
        try:
            held = await asyncio.to_thread(build.run, records)
        except BuildCancelled:
            log.info("event=snapshot_cancelled scope=%s version=%d added=%d", state.name,
                     manifest.version, build.added)
            return False
        except PayloadError as exc:
            self._refuse(state.name, KIND_MANIFEST, exc, manifest.version)
            await self._request_resync(state.name, self.store.held[state.name].version,
                                       "digest" if refusal_reason(exc) == "wrong_digest" else "corrupt")
            return False
        except (OSError, sqlite3.Error) as exc:
            log.error("event=snapshot_failed scope=%s version=%d error=%r", state.name,
                      manifest.version, str(exc))
            return False
        old = self.store.install(build, held)
        for index in range(len(manifest.chunks)):
            state.spooled.get(index, set()).discard(manifest.chunks[index].sha256)
        await asyncio.to_thread(download.discard_chunks)
        if old is not None:
            await asyncio.to_thread(remove_list_file, old)
        log.info("event=snapshot_applied scope=%s version=%d count=%d digest=%s s=%.1f", state.name,
                 held.version, held.count, held.digest[:16], time.monotonic() - download.started)
        return True

    # -- inbound: deltas --------------------------------------------------------------------------

    async def _on_delta(self, scope: str, topic: str, payload: bytes) -> None:
        self._spawn(self._take_delta(self.scopes[scope], payload), f"delta-{scope}")

    async def _take_delta(self, state: _Scope, payload: bytes) -> None:
        async with state.lock:  # behind any snapshot build or delta of this scope, in arrival order
            try:  # 10,000 records take a while to check: not on the event loop
                delta = await asyncio.to_thread(self._decode_delta, payload, state.name)
            except PayloadError as exc:
                self._refuse(state.name, KIND_DELTA, exc)
                return
            if state.download is not None and state.download.manifest.version >= delta.base:
                self._hold(state, delta)  # it builds on the snapshot being downloaded
                return
            await self._apply_delta(state, delta)
            await self._apply_pending(state)

    async def _apply_delta(self, state: _Scope, delta: Delta) -> None:
        assert self.store is not None
        have = self.store.held[state.name].version
        try:
            verdict = check_version(have, delta.version, KIND_DELTA)
        except ReplayError as exc:
            self._refuse(state.name, KIND_DELTA, exc, delta.version)
            return
        if have == 0 or verdict is VersionCheck.RESYNC:
            self._hold(state, delta)
            log.info("event=delta_gap scope=%s version=%d base=%d have=%d", state.name, delta.version,
                     delta.base, have)
            await self._request_resync(state.name, have, "missing" if have == 0 else "gap")
            return
        started = time.monotonic()
        try:
            new = await asyncio.to_thread(self.store.apply_delta, delta)
        except PayloadError as exc:
            self._refuse(state.name, KIND_DELTA, exc, delta.version)
            if refusal_reason(exc) == "wrong_digest":
                await self._request_resync(state.name, have, "digest")
            return
        self.store.refresh(state.name, new)
        log.info("event=delta_applied scope=%s version=%d upserts=%d removals=%d count=%d ms=%.0f",
                 state.name, new.version, len(delta.upserts), len(delta.removals), new.count,
                 (time.monotonic() - started) * 1000)
        self._changed(state.name)
        await asyncio.sleep(0)  # let the report go out first
        await asyncio.to_thread(self.store.checkpoint, state.name)

    def _decode_delta(self, payload: bytes, scope: str) -> Delta:
        return decode_delta(self._verify(payload, KIND_DELTA, scope), self.limits)

    def _hold(self, state: _Scope, delta: Delta) -> None:
        state.pending[delta.base] = delta
        while len(state.pending) > MAX_PENDING_DELTAS:
            del state.pending[min(state.pending)]

    async def _apply_pending(self, state: _Scope) -> None:
        """Apply held deltas that now follow the held version; forget ones that never will."""
        assert self.store is not None
        while True:
            have = self.store.held[state.name].version
            for base in [b for b in state.pending if b < have]:
                del state.pending[base]
            delta = state.pending.pop(have, None) if have else None
            if delta is None:
                return
            await self._apply_delta(state, delta)
            if self.store.held[state.name].version == have:
                return  # refused: the next resync or snapshot sorts it out

    # -- inbound: hot list ------------------------------------------------------------------------

    async def _on_hotlist(self, topic: str, payload: bytes) -> None:
        """Applied inline (milliseconds): a blocked card must be refused at the next tap."""
        assert self.store is not None
        try:
            if len(payload) > INLINE_DECODE_BYTES:  # a full hot list: checked off the event loop
                hotlist = await asyncio.to_thread(self._decode_hotlist, payload)
            else:
                hotlist = self._decode_hotlist(payload)
        except PayloadError as exc:
            self._refuse(HOTLIST, "hotlist", exc)
            return
        async with self._hot_lock:
            have = self.store.hotlist_state().version
            kind = "hotlist.full" if hotlist.full else "hotlist"
            try:
                verdict = check_version(have, hotlist.version, kind)
            except ReplayError as exc:
                self._refuse(HOTLIST, kind, exc, hotlist.version)
                return
            if verdict is VersionCheck.RESYNC:
                log.info("event=hotlist_gap version=%d have=%d", hotlist.version, have)
                await self._request_resync(HOTLIST, have, "gap")
                return
            await asyncio.to_thread(self.store.apply_hotlist, hotlist)
        log.info("event=hotlist_applied version=%d entries=%d full=%s", hotlist.version,
                 len(hotlist.entries), hotlist.full)
        self._changed(HOTLIST)

    def _decode_hotlist(self, payload: bytes) -> Hotlist:
        return decode_hotlist(self._verify(payload, HOTLIST_KINDS, HOTLIST_SCOPE), self.limits)

    # -- verification and refusals ----------------------------------------------------------------

    def _verify(self, payload: bytes, kind: str | tuple[str, ...], scope: str) -> Any:
        return verify(payload, self.trusted, kind, scope, self.now(), self.limits.max_envelope)

    def _refuse(self, name: str, kind: str, exc: PayloadError, version: int | None = None) -> None:
        reason = refusal_reason(exc)
        self.refused[reason] += 1
        level = logging.INFO if reason == "old_version" else logging.WARNING
        log.log(level, "event=list_refused list=%s kind=%s version=%s reason=%s where=%s detail=%r",
                name, kind, version if version is not None else "-", reason, exc.where, exc.problem)

    # -- outbound: reports and resync requests ------------------------------------------------------

    def report(self) -> Report:
        """What this terminal holds, as the back office sees it."""
        assert self.store is not None
        return Report(at=int(self.now()), lists=tuple(h.state() for h in self.held().values()),
                      hotlist=self.store.hotlist_state().version)

    def _changed(self, name: str) -> None:
        self._resync_at.pop(name, None)
        self._resync_unsent.pop(name, None)
        self._report_wanted.set()

    async def _reporter(self) -> None:
        assert self.uplink is not None
        topic = report_topic(self.cfg.terminal.id, self.prefix)
        while True:
            await self._report_wanted.wait()
            self._report_wanted.clear()
            report = self.report()
            if await self.uplink.publish(topic, encode_report(report)):
                log.info("event=members_report %s hotlist=%d", " ".join(
                    f"{s.scope}=v{s.version}/{s.count}" for s in report.lists), report.hotlist)

    async def _request_resync(self, name: str, have: int, reason: str) -> None:
        """Ask once for a full copy of ``name``; again only after ``sync.resync_retry_s``."""
        last = self._resync_at.get(name)
        if last is not None and time.monotonic() - last < self.cfg.sync.resync_retry_s:
            log.debug("event=resync_suppressed list=%s reason=%s", name, reason)
            return
        self._resync_at[name] = time.monotonic()
        request = ResyncRequest(name, have, reason)
        await self._send_resync(request)

    async def _send_resync(self, request: ResyncRequest) -> None:
        assert self.uplink is not None
        topic = resync_topic(self.cfg.terminal.id, self.prefix)
        if await self.uplink.publish(topic, encode_resync(request)):
            self._resync_unsent.pop(request.list, None)
            self.resyncs_sent.append(request)
            log.info("event=resync_requested list=%s have=%d reason=%s", request.list, request.have,
                     request.reason)
        else:
            self._resync_unsent[request.list] = request  # sent at the next connect

    async def _watch_connection(self) -> None:
        """At every new connection: report, send what could not be sent, ask for missing lists."""
        assert self.uplink is not None
        seen = 0
        while True:
            await self.uplink.connected.wait()
            if self.uplink.connects != seen:
                seen = self.uplink.connects
                self._report_wanted.set()
                for request in list(self._resync_unsent.values()):
                    await self._send_resync(request)
                self._spawn(self._ask_for_missing(seen), "membersync-missing")
            await asyncio.sleep(_CONNECT_POLL_S)

    async def _ask_for_missing(self, connection: int) -> None:
        """A scope with no list and no retained manifest after a grace period: ask for one."""
        await asyncio.sleep(MISSING_GRACE_S)
        assert self.uplink is not None and self.store is not None
        if self.uplink.connects != connection or not self.uplink.connected.is_set():
            return
        for name, state in self.scopes.items():
            if self.store.held[name].version == 0 and state.download is None:
                await self._request_resync(name, 0, "missing")

    async def _watch_sync_now(self, requested: asyncio.Event) -> None:
        """The ``sync_now`` command: report at once and ask again for lists not held."""
        while True:
            await requested.wait()
            requested.clear()
            self._report_wanted.set()
            assert self.store is not None
            for name in self.scopes:
                self._resync_at.pop(name, None)
                if self.store.held[name].version == 0:
                    await self._request_resync(name, 0, "missing")
