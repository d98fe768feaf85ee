"""``kill -9`` of the terminal process at random points of a snapshot apply, 20 times over.

Each trial publishes the other of two 50,000-member lists as the next
version and kills the real terminal process (``python -m terminal.cli run``)
after a random delay within the time a whole apply takes. The store on disk
must then hold exactly the old list or exactly the new one (digest
recomputed from the stored lines), and after a restart the next sync must
complete from the retained snapshot.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aiomqtt
import pytest

from bench.members_bench import TerminalProcess, wait_report
from simulator.services import Mosquitto
from terminal.members import MemberStore
from terminal.sync.topics import chunk_topic, report_topic
from tests.memberkit import (digest_of, members, publish_snapshot, resign, snapshot, store_content,
                             write_terminal_config)

pytestmark = pytest.mark.stack

TRIALS = 20
COUNT = 50_000
TERMINAL = "SYNC-01"


async def next_report(client: aiomqtt.Client, version: int, timeout: float = 60) -> dict:
    """Scope ``all`` in the terminal's first report holding ``version``."""
    return (await wait_report(client, version, timeout))["lists"]["all"]


def on_disk(state: Path) -> tuple[int, int, str]:
    store = MemberStore(state / "members.db", ["all"])
    try:
        return store_content(store)
    finally:
        store.close()


async def test_kill_9_during_snapshot_apply_leaves_old_or_new_never_a_mix(tmp_path: Path,
                                                                           broker: Mosquitto) -> None:
    lists = [members(COUNT, seed=31), members(COUNT, seed=32)]
    digests = [digest_of(records) for records in lists]
    built = [snapshot(records, 1, chunk_size=None) for records in lists]
    config = write_terminal_config(tmp_path, broker.port, terminal_id=TERMINAL)
    state = tmp_path / "state"
    terminal = TerminalProcess(config, tmp_path / "terminal.log")
    rng = random.Random(20260)
    outcomes = {"old": 0, "new": 0}
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe(report_topic(TERMINAL), qos=1)
        terminal.start()
        try:
            await next_report(client, 0)
            chunks_out = 0

            async def publish(version: int) -> None:
                nonlocal chunks_out
                manifest, chunks = built[version % 2]
                await publish_snapshot(client, resign(manifest, version=version), chunks)
                for index in range(len(chunks), chunks_out):  # clear the surplus of the last one
                    await client.publish(chunk_topic("all", index), b"", qos=1, retain=True)
                chunks_out = len(chunks)

            started = time.monotonic()
            await publish(1)
            assert (await next_report(client, 1))["digest"] == digests[1][1]
            apply_s = time.monotonic() - started  # how long one whole apply takes here

            for version in range(2, TRIALS + 2):
                await publish(version)
                await asyncio.sleep(rng.uniform(0.0, apply_s * 1.1))
                terminal.kill()
                held = on_disk(state)
                old = (version - 1, *digests[(version - 1) % 2])
                new = (version, *digests[version % 2])
                assert held in (old, new), f"trial {version - 1}: {held[:2]} is neither list"
                outcomes["old" if held == old else "new"] += 1
                terminal.start()
                report = await next_report(client, version)
                assert (report["version"], report["count"], report["digest"]) == new
        finally:
            terminal.stop()
    assert on_disk(state) == (TRIALS + 1, *digests[(TRIALS + 1) % 2])
    leftovers = sorted(p.name for p in (state / "members.lists").iterdir() if p.suffix == ".db")
    assert len(leftovers) == 1, leftovers
    assert outcomes["old"] >= TRIALS // 3, outcomes  # most kills landed before the switch
