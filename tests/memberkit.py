"""Shared pieces of the member-list tests: signed lists made in memory, a terminal on a real broker.

The terminal is the production :class:`terminal.app.Terminal` with the
production hardware factory; its reader filter matches no reader, so these
tests need no pcscd and never touch another test's virtual cards (the
hot-list tap test uses the rig and its pcscd instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.factory import open_hardware
from simulator.backoffice.generate import generate_members
from simulator.backoffice.office import terminal_sync_section
from simulator.backoffice.publish import build_delta, build_hotlist, build_snapshot, diff_lists
from simulator.rig import sim_config_text
from terminal.app import Terminal
from terminal.config import load
from terminal.members import MemberStore
from terminal import signing
from terminal.signing import write_public_key
from terminal.sync.hotlist import HotlistEntry
from terminal.sync.records import list_digest, validate_member
from terminal.sync.strict import canonical_json
from terminal.sync.topics import chunk_topic, delta_topic, hotlist_topic, manifest_topic

DAY = 86_400
CARD_KEY = bytes(range(32))
KEY = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
#: A key the terminals do not trust.
STRANGER = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
SEED = 3


def members(count: int, seed: int = SEED) -> list[dict[str, Any]]:
    return [validate_member(r) for r in generate_members(count, seed, CARD_KEY)]


def window(age_s: int = 0, ttl_s: int = 7 * DAY) -> tuple[int, int]:
    """(issued, expires) of a message signed ``age_s`` ago."""
    issued = int(time.time()) - age_s
    return issued, issued + ttl_s


def snapshot(records: Iterable[Mapping[str, Any]], version: int, scope: str = "all",
             key: Ed25519PrivateKey = KEY, age_s: int = 0, ttl_s: int = 7 * DAY,
             chunk_size: int | None = 16 * 1024) -> tuple[bytes, list[bytes]]:
    issued, expires = window(age_s, ttl_s)
    manifest, chunks = build_snapshot(records, scope, version, key, issued, expires, chunk_size)
    return manifest, list(chunks)


def delta(old: list[dict[str, Any]], new: list[dict[str, Any]], base: int, scope: str = "all",
          key: Ed25519PrivateKey = KEY) -> bytes:
    issued, expires = window()
    return build_delta(scope, base, diff_lists(old, new), key, issued, expires)


def hotlist(version: int, refs: Mapping[str, str], full: bool = False) -> bytes:
    issued, expires = window()
    entries = [HotlistEntry("add", ref, reason) for ref, reason in refs.items()]
    return build_hotlist(version, entries, KEY, issued, expires, full)


def resign(blob: bytes, body: dict | None = None, key: Ed25519PrivateKey = KEY, **header: Any) -> bytes:
    """The same message re-signed (by the trusted key unless told) with other header or body values."""
    parsed, raw = signing.parse(blob)
    if body:
        raw = canonical_json({**json.loads(raw), **body})
    h = {**parsed.as_json(), **header}
    return signing.sign(key, h["kind"], h["scope"], h["version"], h["issued"], h["expires"], raw)


def digest_of(records: list[dict[str, Any]]) -> tuple[int, str]:
    return list_digest(sorted(records, key=lambda r: r["member_no"]))


async def publish_snapshot(client: aiomqtt.Client, manifest: bytes, chunks: list[bytes],
                           scope: str = "all") -> None:
    """As the protocol says: every chunk retained first, the retained manifest last."""
    for index, data in enumerate(chunks):
        await client.publish(chunk_topic(scope, index), data, qos=1, retain=True)
    await client.publish(manifest_topic(scope), manifest, qos=1, retain=True)


async def publish_delta(client: aiomqtt.Client, blob: bytes, scope: str = "all") -> None:
    await client.publish(delta_topic(scope), blob, qos=1)


async def publish_hotlist(client: aiomqtt.Client, blob: bytes) -> None:
    await client.publish(hotlist_topic(), blob, qos=1)


def write_terminal_config(workdir: Path, port: int, mode: str = "access", scopes: tuple[str, ...] = ("all",),
                          max_age_s: Mapping[str, int] | None = None, terminal_id: str = "SYNC-01",
                          reader: str = "No Such Reader") -> Path:
    """A simulated terminal's config with a [sync] section trusting :data:`KEY`."""
    state = workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    (workdir / "card.key").write_text(CARD_KEY.hex())
    write_public_key(workdir / "backoffice.pub", KEY.public_key())
    path = workdir / "terminal.toml"
    path.write_text(sim_config_text(state, mode, port, terminal_id=terminal_id, reader=reader)
                    + terminal_sync_section(["backoffice.pub"], scopes, max_age_s))
    return path


@contextlib.asynccontextmanager
async def running_terminal(config: Path) -> AsyncIterator[Terminal]:
    """The production terminal, in this event loop, until the block ends.

    Connected is not yet subscribed: publish non-retained messages (deltas,
    hot-list changes) only after a retained list has arrived, by then every
    list topic is subscribed.
    """
    cfg = load(config)
    async with open_hardware(cfg) as hardware:
        terminal = Terminal(cfg, hardware)
        task = asyncio.create_task(terminal.run())
        await asyncio.wait_for(terminal.started.wait(), 10)
        await asyncio.wait_for(terminal.uplink.connected.wait(), 10)
        try:
            yield terminal
        finally:
            terminal.request_stop()
            done, _ = await asyncio.wait({task}, timeout=20)
            if not done:  # name what keeps it from stopping instead of hanging the session
                stuck = [f"{t.get_name()}: {t.get_stack(limit=3)}" for t in asyncio.all_tasks()
                         if t is not asyncio.current_task() and not t.done()]
                task.cancel()
                raise AssertionError("the terminal did not stop within 20 s; pending: " + "; ".join(stuck))
            task.result()


async def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def store_content(store: MemberStore, scope: str = "all") -> tuple[int, int, str]:
    """(version, count, digest recomputed from the stored lines) of one list."""
    count, digest = store.digest(scope)
    return store.held[scope].version, count, digest
