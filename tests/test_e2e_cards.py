"""Card authentication end to end: simulated cards on real pcscd + vpcd, a pty QR scanner, mosquitto.

The production terminal reads every profile through the real PC/SC stack,
refuses what cannot prove itself with ``card_not_genuine`` and journals the
attempt, and survives cards pulled away mid-exchange. Journal assertions
read the committed rows from the journal's database file itself.

Budget: every card tap costs ~0.5-0.8 s (pcscd polls vpcd every 0.4 s, for
arrival and for removal), so each test taps only what it asserts on.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.pcsc import PcscReader
from simulator.cards.sam import SamCard
from simulator.cards.uid import UidCard
from simulator.observer import Observer
from simulator.rig import Rig
from simulator.services import Mosquitto, Pcscd
from simulator.vcard import CardBehaviour, VirtualCard
from terminal.bridge import LoopBridge
from terminal.cardref import card_ref
from terminal.hardware import CardGone, CardPresent, ReaderEvent

pytestmark = pytest.mark.stack

ALL = ("union-app", "bank-pan", "qr-ecard", "uid-legacy")


def journal_row(rig: Rig, seq: int) -> dict[str, Any]:
    """The committed journal record ``seq``, read from the database file by a second connection."""
    path = rig.config.state_path(rig.config.journal.db)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        (body,) = conn.execute("SELECT body FROM tx WHERE seq = ?", (seq,)).fetchone()
    return json.loads(body)


def journal_rows(rig: Rig) -> int:
    path = rig.config.state_path(rig.config.journal.db)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM tx").fetchone()[0]


def relay_moves(rig: Rig) -> list[bool]:
    return rig.pin_history("relay")


async def rig_with(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto, **options: Any) -> Rig:
    if not pcscd.running:  # a test that stopped it must not break the next one
        pcscd.start()
    return Rig(tmp_path / "rig", pcscd=pcscd, broker=broker, pulse_ms=300, capture=False, **options)


@pytest.fixture
async def full(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> AsyncIterator[Rig]:
    async with await rig_with(tmp_path, pcscd, broker, profiles=ALL) as rig:
        yield rig


@pytest.fixture
async def union_only(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> AsyncIterator[Rig]:
    async with await rig_with(tmp_path, pcscd, broker, profiles=("union-app",)) as rig:
        yield rig


async def test_every_profile_identified_and_replayed_qr_refused(full: Rig) -> None:
    rig, person = full, full.people[0]
    key = rig.card_key
    token = rig.issuer.token(person.member_no)
    async with Observer(rig.broker.port).running() as seen:
        qr = await rig.scan(token)
        union = await rig.tap(rig.union_card(person))
        bank = await rig.tap(person.bank_card())
        legacy = await rig.tap(UidCard(person.uid))
        other = await rig.scan(rig.issuer.token(rig.people[1].member_no))
        replay = await rig.scan(token)  # later, after another member: a screenshot shown again
        txs = [m.json() for m in await seen.wait_for("/tx", 6)]

    expected = [("ecard", "strong", card_ref(key, "ecard", person.member_no)),
                ("union", "strong", card_ref(key, "union", person.union_uid)),
                ("pan", "weak", card_ref(key, "pan", person.pan)),
                ("uid", "weak", card_ref(key, "uid", person.uid))]
    for outcome, (profile, strength, ref) in zip((qr, union, bank, legacy), expected):
        assert outcome.decision.approved, (profile, outcome.decision)
        row = journal_row(rig, outcome.record.seq)
        assert (row["profile"], row["strength"], row["card_ref"]) == (profile, strength, ref.hex())
        assert row["member_no"] == person.member_no and row["decision"] == "approve"
    assert qr.tap.reader == "qr:qr" and union.lookup.member.member_no == person.member_no
    assert other.decision.approved and other.lookup.member.member_no == rig.people[1].member_no

    assert replay.decision.reason == "card_not_genuine"
    row = journal_row(rig, replay.record.seq)
    assert (row["decision"], row["reason"], row["profile"], row["strength"]) == \
        ("deny", "card_not_genuine", "ecard", "strong")
    assert row["card_ref"] == card_ref(key, "ecard", person.member_no).hex()  # whose token was replayed

    by_seq = {tx["seq"]: tx for tx in txs}
    assert by_seq[legacy.record.seq]["strength"] == "weak"  # the uplink flags the UID-only read
    assert by_seq[union.record.seq]["strength"] == "strong"
    assert person.union_uid.hex() not in json.dumps(txs).lower() and person.pan not in json.dumps(txs)


async def test_clone_wrong_key_and_stranger_on_a_union_only_terminal(union_only: Rig) -> None:
    rig, person = union_only, union_only.people[2]
    union_ref = card_ref(rig.card_key, "union", person.union_uid).hex()
    before = journal_rows(rig)

    clone = await rig.tap(UidCard(person.union_uid))  # the member's UID copied onto a blank card
    wrong_key = await rig.tap(person.union_card(os.urandom(16), os.urandom(16)))
    stranger = await rig.tap(UidCard(bytes.fromhex("04C0FFEE123456")))
    assert relay_moves(rig) == [False]

    assert (clone.decision.reason, wrong_key.decision.reason) == ("card_not_genuine", "card_not_genuine")
    row = journal_row(rig, clone.record.seq)
    assert (row["decision"], row["reason"], row["profile"], row["strength"], row["card_ref"]) == \
        ("deny", "card_not_genuine", "uid", "weak", union_ref)
    row = journal_row(rig, wrong_key.record.seq)
    assert (row["decision"], row["reason"], row["profile"], row["strength"], row["card_ref"]) == \
        ("deny", "card_not_genuine", "union", "strong", union_ref)
    assert row["member_no"] == ""  # a refused card is nobody's transaction
    assert journal_row(rig, stranger.record.seq)["reason"] == "card_unreadable"  # not a clone of anything

    genuine = await rig.tap(rig.union_card(person))
    assert genuine.decision.approved and journal_rows(rig) == before + 4


async def pulled_tap(rig: Rig, behaviour: CardBehaviour) -> VirtualCard:
    """Place a card that leaves mid-exchange; return it once the terminal saw it come and go."""
    card = rig.card(behaviour)
    await asyncio.to_thread(card.place)
    try:
        deadline = time.monotonic() + 5
        while not any(rig.terminal.cards_present.values()):
            assert time.monotonic() < deadline, "the card was never seen"
            await asyncio.sleep(0.01)
        await rig.wait_card_gone()  # the card closed its link when pulled: pcscd reports it gone
    finally:
        await asyncio.to_thread(card.remove)
    await asyncio.sleep(0.05)  # any decision would have been queued by now
    return card


async def test_card_pulled_at_every_step_leaves_no_transaction(full: Rig) -> None:
    """Every APDU of the union exchange, through the real stack (the bank card's steps, and the
    union ones again, are covered in memory by tests/test_identify.py)."""
    rig, person = full, full.people[3]
    # docs/card-profiles.md, "Exchange": SelectApplication, GET UID, auth pass 1 and 2, ReadData;
    # a random-UID card adds auth pass 1 and 2 with the UID key and GetCardUID before them.
    steps = [{"pull_at": n} for n in range(1, 6)] + [{"pull_at": n, "random_uid": True} for n in range(1, 9)]
    for options in steps:
        card = await pulled_tap(rig, rig.union_card(person, **options))
        assert len(card.apdus) == options["pull_at"], options  # the terminal got as far as that step
        assert not rig.outcomes and journal_rows(rig) == 0, options
        assert not rig._task.done()  # no crash
    outcome = await rig.tap(rig.union_card(person, random_uid=True))
    assert outcome.decision.approved and outcome.record.seq == 1


async def slot_event(events: LoopBridge[ReaderEvent], kind: type, timeout: float = 5.0) -> None:
    """Wait for the next ``kind`` event (CardPresent, CardGone) of a slot the terminal does not watch."""
    async def first() -> None:
        async for event in events:
            if isinstance(event, kind):
                return

    await asyncio.wait_for(first(), timeout)


async def test_sam_card_in_the_second_slot(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="unionterm")
    tap_reader, sam_reader = pcscd.reader_name(0, 0), pcscd.reader_name(0, 1)
    rig = await rig_with(tmp_path, pcscd, broker, profiles=("union-app",), sam="pcsc",
                         reader=tap_reader, sam_reader=sam_reader)
    async with rig:
        person = rig.people[4]
        sam = VirtualCard(SamCard(rig.sam_masters), pcscd.card_port(0, 1))
        async with PcscReader(sam_reader, 0.2) as watcher:  # the production driver, watching the SAM slot
            events = watcher.events()
            try:
                sam.place()
                await slot_event(events, CardPresent)
                assert (await rig.tap(rig.union_card(person))).decision.approved
                assert rig.terminal.readers_online == {tap_reader}  # the SAM slot is never a tap

                sam.remove()
                await slot_event(events, CardGone)
                refused = await rig.tap(rig.union_card(person))
                row = journal_row(rig, refused.record.seq)
                assert (row["reason"], row["profile"]) == ("sam_unavailable", "union")

                sam.place()  # put back: the next tap opens the link again and selects the applet
                await slot_event(events, CardPresent)
                again = await rig.tap(rig.union_card(person, random_uid=True))
                assert again.decision.approved and again.tap.identity.member_no == person.member_no
            finally:
                sam.remove()
    masters = [key.hex() for key in rig.sam_masters.values()]
    assert not any(m in caplog.text.lower() for m in masters)  # keys never reach the logs


def exclusive_connect(reader: str) -> bool:
    """Whether another PC/SC client could take the card for itself right now."""
    from smartcard.scard import scard

    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hr == scard.SCARD_S_SUCCESS
    try:
        hr, handle, _ = scard.SCardConnect(ctx, reader, scard.SCARD_SHARE_EXCLUSIVE,
                                           scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
        if hr != scard.SCARD_S_SUCCESS:
            assert hr == scard.SCARD_E_SHARING_VIOLATION, scard.SCardGetErrorMessage(hr)
            return False
        scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
        return True
    finally:
        scard.SCardReleaseContext(ctx)


async def test_a_card_read_on_arrival_is_kept_until_the_app_is_served(pcscd: Pcscd) -> None:
    """The monitor thread lets the card go once told (the tap decided), or after SERVED_WAIT_S."""
    from drivers.pcsc import SERVED_WAIT_S
    from terminal.cards.profiles import GET_UID

    if not pcscd.running:
        pcscd.start()
    reader = pcscd.reader_name(0, 0)

    async def read_uid(channel: Any, atr: bytes) -> bytes:
        return await channel.transmit(GET_UID)

    async with PcscReader(reader, 0.2) as driver:
        driver.read_on_arrival(read_uid)
        events = driver.events()
        for served in (True, False):
            card = VirtualCard(UidCard(bytes.fromhex("04A1B2C3D4E5F6")), pcscd.card_port(0, 0))
            card.place()
            try:
                async def present() -> CardPresent:
                    async for event in events:
                        if isinstance(event, CardPresent):
                            return event
                    raise AssertionError("events ended")

                event = await asyncio.wait_for(present(), 5)
                assert event.read is not None and event.read.result() == bytes.fromhex("04A1B2C3D4E5F6") + b"\x90\x00"
                assert not await asyncio.to_thread(exclusive_connect, reader)  # still held by the driver
                started = time.monotonic()
                if served:
                    event.read.served()
                while not await asyncio.to_thread(exclusive_connect, reader):
                    assert time.monotonic() - started < 2, "the card was never released"
                    await asyncio.sleep(0.005)
                held = time.monotonic() - started
                assert held < SERVED_WAIT_S / 2 if served else held >= SERVED_WAIT_S * 0.8, (served, held)
            finally:
                card.remove()
            await slot_event(events, CardGone)
