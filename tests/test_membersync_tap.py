"""A blocked card is refused at the door within a second, also while a big snapshot is applied.

Through the real tap path: pcscd + vpcd with a UID card whose UID comes from
the generator's ``card_identifiers``, the production terminal with its sync
service, mosquitto, and the back office's signed hot list.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from simulator.backoffice.generate import card_identifiers, generate_members
from simulator.backoffice.office import terminal_sync_section
from simulator.cards.uid import UidCard
from simulator.rig import Rig
from simulator.services import Mosquitto, Pcscd
from terminal.cardref import card_ref
from terminal.signing import write_public_key
from tests.memberkit import KEY, hotlist, publish_hotlist, publish_snapshot, snapshot, wait_until

pytestmark = pytest.mark.stack

SEED = 7
BIG = 120_000


def door_member(small: list[dict], big: list[dict]) -> str:
    """An ordinary active member in both lists who holds a legacy UID badge (one in twenty do).

    Ordinary: a technician's card opens the service menu instead of the door.
    """
    def plain(r: dict) -> bool:
        return r["role"] == "member" and r["status"] == "active" and r["valid_until"] == 0

    in_big = {r["member_no"] for r in big[:len(small)] if plain(r)}
    return next(r["member_no"] for r in small if plain(r) and r["member_no"] in in_big
                and "uid" in card_identifiers(SEED, r["member_no"]))


def trusted_clock() -> tuple[int, bool]:
    """The host's time, taken as trusted (generated members became valid in 2023-2025)."""
    return int(time.time() * 1000), True


@pytest.fixture
async def sync_rig(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> AsyncIterator[Rig]:
    if not pcscd.running:
        pcscd.start()
    workdir = tmp_path / "rig"
    workdir.mkdir()
    write_public_key(workdir / "backoffice.pub", KEY.public_key())
    async with Rig(workdir, pcscd=pcscd, broker=broker, pulse_ms=400, people=[],
                   sections=terminal_sync_section(["backoffice.pub"]),
                   terminal_options={"clock": trusted_clock}) as running:
        yield running


async def test_hot_listed_card_is_denied_within_a_second_even_during_a_big_apply(sync_rig: Rig) -> None:
    rig = sync_rig
    terminal = rig.terminal
    small = list(generate_members(2000, SEED, rig.card_key))
    big = list(generate_members(BIG, SEED, rig.card_key))
    wanted = door_member(small, big)
    card = UidCard(card_identifiers(SEED, wanted)["uid"])
    ref = card_ref(rig.card_key, "uid", card.uid)
    big_snapshot = snapshot(big, 2, chunk_size=None)

    async with aiomqtt.Client("127.0.0.1", rig.broker.port) as client:
        await publish_snapshot(client, *snapshot(small, 1))
        await wait_until(lambda: terminal.members.held["all"].version == 1, 20, "v1")
        outcome = await rig.tap(card)
        assert outcome.decision.approved and outcome.lookup.member.member_no == wanted

        await publish_snapshot(client, *big_snapshot)
        await wait_until(lambda: terminal.sync.scopes["all"].download is not None, 20, "download")
        await wait_until(lambda: terminal.sync.scopes["all"].download.build is not None, 20, "build")
        published = time.monotonic()
        await publish_hotlist(client, hotlist(1, {ref.hex(): "stolen"}))
        await wait_until(lambda: terminal.members.lookup(ref).hot, 1.0, "the block")
        blocked_after = time.monotonic() - published
        assert terminal.members.held["all"].version == 1, "the big snapshot was already in"
        outcome = await rig.tap(card)
        assert not outcome.decision.approved and outcome.decision.reason == "card_blocked"
        assert blocked_after < 1.0

        await wait_until(lambda: terminal.members.held["all"].version == 2, 120, "v2")
        assert terminal.members.held["all"].count == BIG
        outcome = await rig.tap(card)  # the hot list survives the swap
        assert outcome.decision.reason == "card_blocked"
        assert outcome.lookup.member.member_no == wanted and outcome.lookup.scope == "all"
