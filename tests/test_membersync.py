"""Member-list sync through a real mosquitto into the production terminal: apply, refuse, resync."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from simulator.observer import Observer
from simulator.services import Mosquitto
from terminal.app import Terminal
from terminal.model import CardIdentity, Strength
from terminal.rules.clock import Moment
from terminal.taps import Tap
from tests.logkit import Lines
from tests.memberkit import (DAY, STRANGER, delta, digest_of, hotlist, members, publish_delta,
                             publish_hotlist, publish_snapshot, resign, running_terminal, snapshot,
                             store_content, wait_until, window, write_terminal_config)

pytestmark = pytest.mark.stack


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("unionterm.membersync")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def union_ref(record: dict) -> bytes:
    return bytes.fromhex(next(c["ref"] for c in record["cards"] if c["kind"] == "union"))


def tap_of(record: dict) -> Tap:
    return Tap("test", 0.0, CardIdentity("union-uid", union_ref(record), Strength.WEAK))


async def synced(terminal: Terminal, client: aiomqtt.Client, records: list[dict], version: int = 1,
                 **kw) -> None:
    await publish_snapshot(client, *snapshot(records, version, **kw))
    await wait_until(lambda: terminal.members.held["all"].version == version, 20, f"v{version}")


V1 = members(200)
#: Seed of members that join in a later version.
SEED_EXTRA = 41


async def test_snapshot_is_applied_and_reported(tmp_path: Path, broker: Mosquitto) -> None:
    async with Observer(broker.port, "unionterm/v1/t/#").running() as seen, \
            running_terminal(write_terminal_config(tmp_path, broker.port)) as terminal, \
            aiomqtt.Client("127.0.0.1", broker.port) as client:
        await seen.wait_for("/members/report")  # the report at connect: nothing held yet
        assert seen.on("/members/report")[0].json()["lists"]["all"]["version"] == 0
        await synced(terminal, client, V1)
        report = (await seen.wait_for("/members/report", 2))[-1].json()
        count, digest = digest_of(V1)
        assert store_content(terminal.members) == (1, count, digest)
    assert report["lists"]["all"]["version"] == 1
    assert (report["lists"]["all"]["count"], report["lists"]["all"]["digest"]) == (count, digest)
    assert report["hotlist"] == 0


def _bad_manifests(v2: list[dict]) -> dict[str, tuple[bytes, list[bytes]]]:
    manifest, chunks = snapshot(v2, 2)
    flipped = manifest[:-1] + bytes([manifest[-1] ^ 1])
    expired = window(age_s=8 * DAY)
    return {
        "bad_signature": (flipped, chunks),
        "unknown_key": snapshot(v2, 2, key=STRANGER),
        "wrong_digest": (resign(manifest, {"digest": "ab" * 32}), chunks),
        "old_version": (resign(manifest, version=1), chunks),
        "expired": (resign(manifest, issued=expired[0], expires=expired[1]), chunks),
        "wrong_scope": (resign(manifest, scope="org-1001"), chunks),
    }


@pytest.mark.parametrize("reason", ["bad_signature", "unknown_key", "wrong_digest", "old_version",
                                    "expired", "wrong_scope"])
async def test_bad_snapshot_is_refused_and_the_list_unchanged(tmp_path: Path, broker: Mosquitto,
                                                              lines: Lines, reason: str) -> None:
    v2 = members(150, seed=21)
    manifest, chunks = _bad_manifests(v2)[reason]
    async with running_terminal(write_terminal_config(tmp_path, broker.port)) as terminal, \
            aiomqtt.Client("127.0.0.1", broker.port) as client:
        await synced(terminal, client, V1)
        before = store_content(terminal.members)
        await publish_snapshot(client, manifest, chunks)
        await wait_until(lambda: lines.having("event=list_refused", f"reason={reason}"), 20, reason)
        line = lines.having("event=list_refused")[0]
        assert "list=all" in line and "kind=members.manifest" in line
        assert store_content(terminal.members) == before
        assert terminal.members.lookup(union_ref(V1[9])).member.member_no == V1[9]["member_no"]
        assert terminal.members.lookup(union_ref(v2[9])).member is None
        assert terminal.sync.refused == {reason: 1}


def _bad_deltas(changed: list[dict]) -> dict[str, bytes]:
    good = delta(V1, changed, base=1)
    return {
        "bad_signature": good[:-1] + bytes([good[-1] ^ 0x80]),
        "unknown_key": delta(V1, changed, base=1, key=STRANGER),
        "wrong_digest": resign(good, {"digest": "cd" * 32}),
    }


@pytest.mark.parametrize("reason", ["bad_signature", "unknown_key", "wrong_digest", "old_version"])
async def test_bad_delta_is_refused_and_the_list_unchanged(tmp_path: Path, broker: Mosquitto,
                                                           lines: Lines, reason: str) -> None:
    changed = [dict(r) for r in V1]
    changed[4] = {**V1[4], "tier": (V1[4]["tier"] + 1) % 10}
    async with running_terminal(write_terminal_config(tmp_path, broker.port)) as terminal, \
            aiomqtt.Client("127.0.0.1", broker.port) as client:
        await synced(terminal, client, V1)
        if reason == "old_version":  # apply it once, then replay it
            await publish_delta(client, delta(V1, changed, base=1))
            await wait_until(lambda: terminal.members.held["all"].version == 2, 10, "v2")
            blob = delta(V1, changed, base=1)
        else:
            blob = _bad_deltas(changed)[reason]
        before = store_content(terminal.members)
        tier_before = terminal.members.lookup(union_ref(V1[4])).member.tier
        await publish_delta(client, blob)
        await wait_until(lambda: lines.having("event=list_refused", f"reason={reason}"), 10, reason)
        assert "kind=members.delta" in lines.having("event=list_refused")[0]
        assert store_content(terminal.members) == before
        assert terminal.members.lookup(union_ref(V1[4])).member.tier == tier_before
        if reason == "wrong_digest":  # the list may have drifted: ask for a full copy
            await wait_until(lambda: terminal.sync.resyncs_sent, 5, "resync")
            assert [r.reason for r in terminal.sync.resyncs_sent] == ["digest"]


async def test_delta_gap_asks_once_then_converges(tmp_path: Path, broker: Mosquitto, lines: Lines) -> None:
    v2 = [dict(r) for r in V1]
    v2[0] = {**V1[0], "status": "suspended"}
    v3 = v2[:150] + members(220, seed=SEED_EXTRA)[200:]
    v4 = [dict(r) for r in v3]
    v4[1] = {**v3[1], "tier": (v3[1]["tier"] + 2) % 10}
    async with Observer(broker.port, "unionterm/v1/t/+/members/resync").running() as seen, \
            running_terminal(write_terminal_config(tmp_path, broker.port)) as terminal, \
            aiomqtt.Client("127.0.0.1", broker.port) as client:
        await synced(terminal, client, V1)
        await publish_delta(client, delta(v2, v3, base=2))  # v2 never arrived
        request = (await seen.wait_for("/members/resync"))[0]
        assert request.topic == "unionterm/v1/t/SYNC-01/members/resync"
        assert request.json() == {"have": 1, "list": "all", "reason": "gap"}
        await publish_delta(client, delta(v3, v4, base=3))  # still a gap: no second request
        await wait_until(lambda: len(lines.having("event=delta_gap")) == 2, 10, "second gap")
        await asyncio.sleep(0.5)
        assert len(seen.on("/members/resync")) == 1
        assert terminal.members.held["all"].version == 1
        await publish_snapshot(client, *snapshot(v3, 3))  # the back office's answer
        await wait_until(lambda: terminal.members.held["all"].version == 4, 20, "v4")
        assert store_content(terminal.members) == (4, *digest_of(v4))
        assert terminal.members.lookup(union_ref(v4[1])).member.tier == v4[1]["tier"]


async def test_hot_list_changes_gaps_and_full_lists(tmp_path: Path, broker: Mosquitto) -> None:
    refs = [r["cards"][0]["ref"] for r in V1[:3]]
    async with Observer(broker.port, "unionterm/v1/t/+/members/resync").running() as seen, \
            running_terminal(write_terminal_config(tmp_path, broker.port)) as terminal, \
            aiomqtt.Client("127.0.0.1", broker.port) as client:
        store = terminal.members
        await synced(terminal, client, V1)
        await publish_hotlist(client, hotlist(1, {refs[0]: "stolen"}))
        await wait_until(lambda: store.lookup(bytes.fromhex(refs[0])).hot, 5, "blocked")
        await publish_hotlist(client, hotlist(3, {refs[1]: "lost"}))  # 2 was missed
        assert (await seen.wait_for("/members/resync"))[0].json() == \
            {"have": 1, "list": "hotlist", "reason": "gap"}
        assert not store.lookup(bytes.fromhex(refs[1])).hot
        await publish_hotlist(client, hotlist(3, {refs[1]: "lost", refs[2]: "fraud"}, full=True))
        await wait_until(lambda: store.hotlist_state().version == 3, 5, "full list")
        assert [store.lookup(bytes.fromhex(r)).hot for r in refs] == [False, True, True]
        assert store.lookup(bytes.fromhex(refs[2])).hot_reason == "fraud"


@pytest.mark.parametrize("max_age_s,stale_refused", [
    ({"access": 3600}, True),  # a door configured to stop on a list older than an hour
    ({}, False),  # the default: doors keep opening on an old list (sync.max_age_s.access = 0)
])
async def test_staleness_stops_value_but_never_the_hot_list(tmp_path: Path, broker: Mosquitto,
                                                            max_age_s: dict, stale_refused: bool) -> None:
    config = write_terminal_config(tmp_path, broker.port, mode="access", max_age_s=max_age_s)
    member, blocked = V1[0], V1[1]
    async with running_terminal(config) as terminal, aiomqtt.Client("127.0.0.1", broker.port) as client:
        await synced(terminal, client, V1, age_s=2 * DAY)  # issued two days ago, still valid
        await publish_hotlist(client, hotlist(1, {union_ref(blocked).hex(): "lost"}))
        await wait_until(lambda: terminal.members.hotlist_state().version == 1, 5, "hot list")
        moment = Moment(int(time.time()))  # trusted time: this test is about the list's age
        assert terminal.sync.list_ages(moment.now)["all"] == pytest.approx(2 * DAY, abs=5)
        stale = terminal.decide(tap_of(member), moment)[0].decision
        assert stale.reason == "list_stale" if stale_refused else stale.approved
        assert terminal.decide(tap_of(blocked), moment)[0].decision.reason == "card_blocked"
        await synced(terminal, client, V1, version=2)  # re-signed today: same list, adopted
        moment = Moment(int(time.time()))
        assert terminal.decide(tap_of(member), moment)[0].decision.approved
        assert terminal.decide(tap_of(blocked), moment)[0].decision.reason == "card_blocked"
        assert terminal.list_versions()["all"].version == 2
