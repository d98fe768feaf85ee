"""``unionterm-backoffice``: keys, members, CSV import, publishing through mosquitto, hot list, diff.

The command runs as a process (``python -m simulator.backoffice``), as an
operator would run it; what it publishes is checked with the terminal's own
verifier and decoders.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest

from simulator.services import Mosquitto
from terminal import signing
from terminal.cardref import card_ref
from terminal.sync.delta import decode_delta
from terminal.sync.hotlist import decode_hotlist
from terminal.sync.records import ListDigest
from terminal.sync.report import ListState, Report, encode_report
from terminal.sync.snapshot import decode_manifest, iter_snapshot
from terminal.sync.topics import chunk_filter, delta_topic, hotlist_topic, manifest_topic, report_topic, resync_topic

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
HEADER = ("member_no,name,org,status,tier,canteen_group,access_groups,valid_from,valid_until,batch,role,"
          "card_kind,card_id")
GOOD_ROWS = [
    "A0001,王小明,杭州西溪物流有限公司,active,1,cg-1008,gym;site-1008,2024-01-01,,2,member,union,04A1B2C3D4E5F6",
    "A0001,王小明,杭州西溪物流有限公司,active,1,cg-1008,gym;site-1008,2024-01-01,,2,member,pan,6222021234567890128",
    "A0002,张三,杭州市第三人民医院,suspended,0,,,2023-01-01,2024-12-31,1,visitor,ecard,A0002",
]


def backoffice(home: Path, *args: str, port: int | None = None, check: bool = True) -> subprocess.CompletedProcess:
    broker = ["--port", str(port)] if port else []
    done = subprocess.run([sys.executable, "-m", "simulator.backoffice", "--home", str(home), *broker, *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def members_table(home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(home / "backoffice.db") as conn:
        return conn.execute("SELECT member_no, line FROM members ORDER BY member_no").fetchall()


async def collect(port: int, *filters: str, until: Callable[[dict[str, bytes]], bool],
                  seconds: float = 20) -> dict[str, bytes]:
    """What a terminal subscribing now gets (retained) or sees arrive, until ``until`` holds."""
    seen: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for f in filters:
            await client.subscribe(f, qos=1)
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                seen[str(message.topic)] = message.payload
                if until(seen):
                    break
    return seen


def whole_snapshot(scope: str) -> Callable[[dict[str, bytes]], bool]:
    """True once the manifest and every chunk it lists are in."""
    def done(seen: dict[str, bytes]) -> bool:
        if manifest_topic(scope) not in seen:
            return False
        chunks = len(json.loads(signing.parse(seen[manifest_topic(scope)])[1])["chunks"])
        return all(f"unionterm/v1/members/{scope}/chunk/{i}" in seen for i in range(chunks))
    return done


def snapshot_of(port: int, scope: str = "all") -> dict[str, bytes]:
    return asyncio.run(collect(port, manifest_topic(scope), chunk_filter(scope), until=whole_snapshot(scope)))


@contextlib.contextmanager
def serving(home: Path, port: int, seconds: float) -> Iterator[None]:
    """``serve`` for ``seconds``, yielding once it is subscribed (it logs event=serving)."""
    proc = subprocess.Popen([sys.executable, "-m", "simulator.backoffice", "--home", str(home), "--port",
                             str(port), "--verbose", "serve", "--duration", str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "event=serving" in line:
                break
        yield
        proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def trusted(home: Path) -> dict:
    return signing.load_trusted([next((home / "keys").glob("*.pub"))])


def received_list(seen: dict[str, bytes], home: Path, scope: str = "all") -> tuple[object, list[dict]]:
    manifest = decode_manifest(signing.verify(seen[manifest_topic(scope)], trusted(home), signing.KIND_MANIFEST,
                                              scope, time.time()))
    chunks = [seen[f"unionterm/v1/members/{scope}/chunk/{i}"] for i in range(len(manifest.chunks))]
    return manifest, list(iter_snapshot(manifest, chunks))


def test_keys_are_made_private_and_the_first_one_signs(tmp_path: Path) -> None:
    home = tmp_path / "bo"
    first = backoffice(home, "keys", "generate").stdout
    kid = first.split()[0].removeprefix("key_id=")
    assert "current=yes" in first
    assert stat.S_IMODE(os.stat(home / "keys" / f"{kid}.key").st_mode) == 0o600
    assert signing.key_id(signing.load_public_key(home / "keys" / f"{kid}.pub")) == kid
    second = backoffice(home, "keys", "generate").stdout  # the next key: terminals must trust it first
    assert "current=no" in second
    listed = backoffice(home, "keys", "list").stdout.splitlines()
    assert f"{kid} current" in listed and len(listed) == 2


def test_csv_with_bad_rows_names_each_and_imports_nothing(tmp_path: Path) -> None:
    home = tmp_path / "bo"
    backoffice(home, "members", "generate", "--count", "50")
    before = members_table(home)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([HEADER, *GOOD_ROWS,
                              "A0003,李四,杭州市第三人民医院,active,x,,,2024-01-01,,1,member,union,04A1B2C3D4E5F7",
                              "A0004,赵五,杭州市第三人民医院,dead,1,,,2024-01-01,,1,member,uid,0102",
                              "A0005,钱六,杭州市第三人民医院,active,1,,,2024-13-01,,1,member,pan,6222021234567890127",
                              ]) + "\n", encoding="utf-8")
    done = backoffice(home, "members", "import", str(bad), check=False)
    assert done.returncode == 65
    errors = [line for line in done.stderr.splitlines() if ": line " in line]
    assert [e.split(": ", 1)[1].split(":")[0] for e in errors] == [
        "line 5, column tier", "line 6, column card_id", "line 6, column status",
        "line 7, column card_id", "line 7, column valid_from"]
    assert "nothing imported" in done.stderr
    assert members_table(home) == before  # not one row of that file

    good = tmp_path / "good.csv"
    good.write_text("\n".join([HEADER, *GOOD_ROWS]) + "\n", encoding="utf-8")
    assert "imported=2 members=52" in backoffice(home, "members", "import", str(good)).stdout
    rows = dict(members_table(home))
    assert '"name":"王*明"' in rows["A0001"]
    assert "04A1B2C3D4E5F6".lower() not in rows["A0001"].lower() and "6222021234567890128" not in rows["A0001"]
    card_key = bytes.fromhex((home / "card.key").read_text().strip())
    assert card_ref(card_key, "union", bytes.fromhex("04A1B2C3D4E5F6")).hex() in rows["A0001"]


def test_publish_snapshot_delta_and_block_through_the_broker(tmp_path: Path, broker: Mosquitto) -> None:
    home, port = tmp_path / "bo", broker.port
    backoffice(home, "keys", "generate")
    backoffice(home, "members", "generate", "--count", "3000", "--seed", "5")
    out = backoffice(home, "publish", "snapshot", "--scope", "all", "--chunk-kb", "64", port=port).stdout
    assert "version=1 count=3000" in out
    manifest, records = received_list(snapshot_of(port), home)
    assert (manifest.version, manifest.count, len(records)) == (1, 3000, 3000)
    assert [r["member_no"] for r in records] == sorted(r["member_no"] for r in records)

    backoffice(home, "publish", "snapshot", "--scope", "org-1001", port=port)
    _, org = received_list(snapshot_of(port, "org-1001"), home, "org-1001")
    assert org and {r["org"] for r in org} == {"杭州市公共交通集团有限公司"}

    changes = tmp_path / "changes.csv"
    changes.write_text("\n".join([HEADER, *GOOD_ROWS]) + "\n", encoding="utf-8")
    backoffice(home, "members", "import", str(changes))

    async def delta_and_block() -> dict[str, bytes]:
        listener = asyncio.create_task(collect(port, delta_topic("all"), hotlist_topic(),
                                               until=lambda seen: len(seen) == 2))
        await asyncio.sleep(0.5)  # subscribed (deltas and hot-list changes are not retained)
        await asyncio.to_thread(backoffice, home, "publish", "delta", "--scope", "all", port=port)
        await asyncio.to_thread(backoffice, home, "block", "04A1B2C3D4E5F6", "--kind", "union",
                                "--reason", "stolen", port=port)
        return await listener

    seen = asyncio.run(delta_and_block())
    delta = decode_delta(signing.verify(seen[delta_topic("all")], trusted(home), signing.KIND_DELTA, "all",
                                        time.time()))
    assert (delta.base, delta.version, delta.removals) == (1, 2, ())
    assert sorted(r["member_no"] for r in delta.upserts) == ["A0001", "A0002"]
    digest = ListDigest()
    for record in sorted([*records, *delta.upserts], key=lambda r: r["member_no"]):
        digest.add(record)
    assert (delta.count, delta.digest) == (3002, digest.hexdigest())
    hot = decode_hotlist(signing.verify(seen[hotlist_topic()], trusted(home), ("hotlist", "hotlist.full"), "all",
                                        time.time()))
    card_key = bytes.fromhex((home / "card.key").read_text().strip())
    assert hot.version == 1 and [(e.op, e.ref, e.reason) for e in hot.entries] == [
        ("add", card_ref(card_key, "union", bytes.fromhex("04A1B2C3D4E5F6")).hex(), "stolen")]
    assert "unchanged" in backoffice(home, "publish", "delta", "--scope", "all", port=port).stdout


def test_serve_answers_resync_and_diff_names_the_differing_terminals(tmp_path: Path, broker: Mosquitto) -> None:
    home, port = tmp_path / "bo", broker.port
    backoffice(home, "keys", "generate")
    backoffice(home, "members", "generate", "--count", "400")
    backoffice(home, "publish", "snapshot", "--scope", "all", port=port)
    manifest, _ = received_list(snapshot_of(port), home)
    now = int(time.time())

    def report(version: int, digest: str, count: int = manifest.count) -> bytes:
        return encode_report(Report(now, (ListState("all", version, count, digest, now + 3600),), 0))

    async def publish(*messages: tuple[str, bytes]) -> None:
        async with aiomqtt.Client("127.0.0.1", port) as client:
            for topic, payload in messages:
                await client.publish(topic, payload, qos=1)

    with serving(home, port, 2.0):
        asyncio.run(publish((report_topic("T-OK"), report(1, manifest.digest)),
                            (report_topic("T-DRIFT"), report(1, "ee" * 32)),
                            (report_topic("T-OLD"), report(0, manifest.digest, 0)),
                            (resync_topic("T-OLD"), b'{"have":0,"list":"all","reason":"missing"}')))
    again, records = received_list(snapshot_of(port), home)
    assert (again.version, again.digest, len(records)) == (2, manifest.digest, 400)  # same list, new version

    def diff() -> tuple[dict[tuple[str, str], str], str]:
        done = backoffice(home, "members", "diff", "--listen", "0", check=False)
        assert done.returncode == (1 if "differing=0" not in done.stdout else 0)
        lines = done.stdout.splitlines()
        return {tuple(line.split()[:2]): line.split()[-1] for line in lines[:-1]}, lines[-1]

    status, _ = diff()
    assert status[("T-OK", "all")] == "behind"  # v1 was republished as v2 meanwhile
    assert status[("T-DRIFT", "all")] == "behind" and status[("T-OLD", "all")] == "behind"
    assert status[("T-OK", "hotlist")] == "ok"

    with serving(home, port, 1.0):
        asyncio.run(publish((report_topic("T-OK"), report(2, manifest.digest)),
                            (report_topic("T-DRIFT"), report(2, "ee" * 32))))
    status, summary = diff()
    assert status[("T-OK", "all")] == "ok" and status[("T-DRIFT", "all")] == "differs"
    assert summary == "terminals=3 lists=6 differing=2"


def test_tx_is_handed_to_the_transaction_intake(tmp_path: Path) -> None:
    done = backoffice(tmp_path / "bo", "tx", "verify", "--db", str(tmp_path / "none.db"), check=False)
    assert done.returncode == 2 and "no such database" in done.stderr
