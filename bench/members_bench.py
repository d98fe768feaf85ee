"""Member list at full size: a 1.1M-member snapshot and a 10k delta, end to end through mosquitto.

The terminal is the real program (``python -m terminal.cli run``) in its own
process, so its peak RSS is its own (``VmHWM``, the kernel's high-water mark
of resident memory); its reader filter matches no reader, so it never reacts
to cards. The back office side (generating, signing, chunking) is set up
first and not timed. Timed figures run from the first byte published to the
terminal's report that names the new version, which it sends only after the
list is verified, built and swapped in:

``snapshot_1m1_apply_s``
    1.1M generated members published (chunks, then manifest), verified and applied
``snapshot_apply_peak_rss_mb``
    the terminal's peak RSS, startup and that apply included
``lookup_p99_ms``
    99th percentile of :meth:`MemberStore.lookup` at 1.1M (known and unknown cards mixed)
``delta_10k_apply_s``
    a delta of 10,000 changes (7,000 changed, 1,000 new, 2,000 removed members)
``member_db_mb``
    the member store on disk after that (list file and home database)

Run ``python -m bench.members_bench`` (or ``run()``); it takes a few minutes.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from simulator.backoffice.generate import generate_members, member_no
from simulator.backoffice.office import terminal_sync_section
from simulator.backoffice.publish import ListDiff, build_delta, build_snapshot
from simulator.rig import sim_config_text
from simulator.services import Mosquitto
from terminal import eventloop
from terminal.members import MemberStore
from terminal.signing import write_public_key
from terminal.sync.records import ListDigest
from terminal.sync.topics import chunk_topic, delta_topic, manifest_topic, report_topic

from .stats import percentiles_ms

TERMINAL = "BENCH-MEMBERS"
SEED = 11
DAY = 86_400
ROOT = Path(__file__).resolve().parent.parent


def changed_members(count: int, card_key: bytes, changed: set[int], removed: set[int],
                    added: int) -> Iterator[dict[str, Any]]:
    """The generated list after a day's work: some members changed, some gone, some new."""
    for index, record in enumerate(generate_members(count, SEED, card_key)):
        if index in removed:
            continue
        if index in changed:
            record["tier"] = (record["tier"] + 1) % 10
        yield record
    extra = generate_members(count + added, SEED + 1, card_key)
    for index, record in enumerate(extra):
        if index >= count:
            yield record


class TerminalProcess:
    """``python -m terminal.cli run`` with its output in a log file (also the kill -9 test's)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "terminal.cli", "run", "--config",
                                          str(self.config)], stdout=out, stderr=subprocess.STDOUT,
                                         cwd=ROOT)

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc status")

    def kill(self) -> None:
        """``kill -9``: no handler runs, nothing is flushed or closed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


async def wait_report(client: aiomqtt.Client, version: int, timeout: float) -> dict[str, Any]:
    """The terminal's first report holding ``version`` of scope ``all``."""
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            report = json.loads(message.payload)
            if report["lists"]["all"]["version"] >= version:
                return report
    raise TimeoutError


async def measure(work: Path, count: int, delta_ops: int) -> dict[str, float]:
    key = Ed25519PrivateKey.generate()
    card_key = secrets.token_bytes(32)
    now = int(time.time())
    print(f"  building a {count}-member snapshot (not timed) ...", flush=True)
    manifest, chunk_iter = build_snapshot(generate_members(count, SEED, card_key), "all", 1, key,
                                          now, now + 7 * DAY)
    chunks = list(chunk_iter)

    # 10k changes: 7k changed, 1k new, 2k removed members. Full records are ~450 bytes, so
    # 10k upserts would not fit the 4 MiB envelope a delta may have (protocol section 9).
    rng = random.Random(SEED)
    added = delta_ops // 10
    picked = rng.sample(range(count), delta_ops - added)
    removed = set(picked[:delta_ops // 5])
    changed = set(picked[delta_ops // 5:])
    print("  building the delta (not timed) ...", flush=True)
    digest = ListDigest()
    upserts = []
    for index, record in enumerate(changed_members(count, card_key, changed, removed, added)):
        digest.add(record)
        if record["member_no"] >= member_no(count) or int(record["member_no"][2:]) - 1 in changed:
            upserts.append(record)
    diff = ListDiff(upserts, [member_no(i) for i in sorted(removed)], digest.count, digest.hexdigest())
    delta = build_delta("all", 1, diff, key, now, now + 7 * DAY)

    state = work / "state"
    state.mkdir(parents=True)
    (work / "card.key").write_text(card_key.hex())
    write_public_key(work / "backoffice.pub", key.public_key())
    config = work / "terminal.toml"
    with Mosquitto(workdir=work / "mosquitto") as broker:
        config.write_text(sim_config_text(state, "pos", broker.port, terminal_id=TERMINAL,
                                          reader="No Such Reader")
                          + terminal_sync_section(["backoffice.pub"]))
        terminal = TerminalProcess(config, work / "terminal.log")
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-backoffice") as client:
            await client.subscribe(report_topic(TERMINAL), qos=1)
            terminal.start()
            try:
                await wait_report(client, 0, 60)  # connected and subscribed
                print(f"  publishing {len(chunks)} chunks ({sum(map(len, chunks)) >> 20} MiB) ...",
                      flush=True)
                started = time.perf_counter()
                for index, data in enumerate(chunks):
                    await client.publish(chunk_topic("all", index), data, qos=1, retain=True)
                await client.publish(manifest_topic("all"), manifest, qos=1, retain=True)
                report = await wait_report(client, 1, 900)
                snapshot_s = time.perf_counter() - started
                assert report["lists"]["all"]["count"] == count, report
                rss = terminal.peak_rss_mb()

                started = time.perf_counter()
                await client.publish(delta_topic("all"), delta, qos=1)
                report = await wait_report(client, 2, 300)
                delta_s = time.perf_counter() - started
                assert report["lists"]["all"]["digest"] == diff.digest, report
            finally:
                terminal.stop()
    lookup_ms = lookup_latencies(state, card_key, count)
    store_files = [*state.glob("members.db*"), *(state / "members.lists").rglob("*")]
    db_bytes = sum(p.stat().st_size for p in store_files if p.is_file())
    return {
        "snapshot_1m1_apply_s": round(snapshot_s, 1),
        "snapshot_apply_peak_rss_mb": round(rss, 1),
        **percentiles_ms("lookup", lookup_ms, (99,)),
        "delta_10k_apply_s": round(delta_s, 2),
        "member_db_mb": round(db_bytes / 1e6, 1),
    }


def lookup_latencies(state: Path, card_key: bytes, count: int, n: int = 20_000) -> list[float]:
    """Look-ups of random members' cards and of unknown cards, on the list the terminal built."""
    rng = random.Random(SEED + 2)
    wanted = sorted(rng.sample(range(count), n // 2))
    refs: list[bytes] = []
    pick = iter(wanted)
    target = next(pick, None)
    for index, record in enumerate(generate_members(count, SEED, card_key)):
        if index == target:
            refs.append(bytes.fromhex(record["cards"][0]["ref"]))
            target = next(pick, None)
    refs += [secrets.token_bytes(32) for _ in range(n - len(refs))]
    rng.shuffle(refs)
    store = MemberStore(state / "members.db", ["all"])
    try:
        for ref in refs[:1000]:  # a terminal runs for days: measure it warm, not just opened
            store.lookup(ref)
        out = []
        for ref in refs:
            t0 = time.perf_counter()
            store.lookup(ref)
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        store.close()
    return out


def run(count: int = 1_100_000, delta_ops: int = 10_000) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="unionterm-bench-members-"))
    try:
        return eventloop.run(measure(work, count, delta_ops))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_100_000
    print(json.dumps(run(count), indent=2))
