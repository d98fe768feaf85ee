"""Every profile reader against simulated cards, through the in-memory channel.

Genuine cards must give the right identity; wrong keys, clones, garbage and
cards pulled away at any step must give the right denial reason and nothing
else. The simulated cards are an independent implementation of
docs/card-profiles.md, so a pass here means the document is followable.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Awaitable, Callable

import pytest
from test_cards_support import BehaviourChannel

from simulator.cards.desfire import Fault, UnionCard
from simulator.cards.emv import UNIONPAY_DEBIT, EmvCard, EmvFault
from simulator.cards.sam import SamCard
from simulator.cards.uid import UidCard
from terminal.cardref import card_ref
from terminal.cards.emv import TerminalData
from terminal.cards.profiles import identify, read_bank_pan, read_uid, read_union_app
from terminal.cards.sam import PcscSam, SoftwareSam
from terminal.exceptions import CardError, ReaderUnavailable
from terminal.model import CardIdentity, Strength

READ_MASTER = bytes.fromhex("A1A2A3A4A5A6A7A8A9AAABACADAEAFA0")
UID_MASTER = bytes.fromhex("B1B2B3B4B5B6B7B8B9BABBBCBDBEBFB0")
CARD_KEY = b"deployment-key-for-card-refs-32b"
UID = bytes.fromhex("04A1B2C3D4E5F6")
MEMBER = "M00012345"
PAN = "6212345678901232"
ALL = ("union", "pan", "uid")

TERMINAL = TerminalData(today=datetime.date(2025, 3, 4), unpredictable=bytes.fromhex("11223344"))


def union_card(**options: object) -> UnionCard:
    return UnionCard.personalise(READ_MASTER, UID_MASTER, UID, MEMBER, **options)


def software_sam() -> SoftwareSam:
    return SoftwareSam({1: READ_MASTER, 2: UID_MASTER})


UNION_IDENTITY = CardIdentity("union", card_ref(CARD_KEY, "union", UID), Strength.STRONG, MEMBER)
PAN_IDENTITY = CardIdentity("pan", card_ref(CARD_KEY, "pan", PAN), Strength.WEAK)
UID_IDENTITY = CardIdentity("uid", card_ref(CARD_KEY, "uid", UID), Strength.WEAK)


async def reason_of(coro: object) -> str:
    with pytest.raises(CardError) as info:
        await coro  # type: ignore[misc]
    return info.value.reason


# --- union ------------------------------------------------------------------------


@pytest.mark.parametrize("random_uid", [False, True])
async def test_genuine_union_card(random_uid: bool) -> None:
    channel = BehaviourChannel(union_card(random_uid=random_uid))
    assert await read_union_app(channel, software_sam(), CARD_KEY) == UNION_IDENTITY
    assert (bytes.fromhex("9051") in {c[:2] for c in channel.sent}) is random_uid


async def test_union_card_through_a_sam_card() -> None:
    sam_channel = BehaviourChannel(SamCard({1: READ_MASTER, 2: UID_MASTER}))
    sam = PcscSam(sam_channel)
    for random_uid in (True, False):
        card = BehaviourChannel(union_card(random_uid=random_uid))
        assert await read_union_app(card, sam, CARD_KEY) == UNION_IDENTITY
    assert sum(c[:2] == bytes.fromhex("00A4") for c in sam_channel.sent) == 1  # selected once


async def test_two_cards_of_one_member_differ_by_uid() -> None:
    other = UnionCard.personalise(READ_MASTER, UID_MASTER, bytes.fromhex("04010203040506"), MEMBER)
    identity = await read_union_app(BehaviourChannel(other), software_sam(), CARD_KEY)
    assert identity.member_no == MEMBER
    assert identity.card_ref != UNION_IDENTITY.card_ref


@pytest.mark.parametrize(
    "card",
    [
        pytest.param(UnionCard.personalise(os.urandom(16), UID_MASTER, UID, MEMBER), id="wrong-read-key"),
        pytest.param(UnionCard.personalise(READ_MASTER, os.urandom(16), UID, MEMBER, random_uid=True), id="wrong-uid-key"),
        pytest.param(union_card(fault=Fault.FORGED_AUTH), id="clone-without-key"),
        pytest.param(union_card(fault=Fault.BAD_RECORD_MAC), id="bad-record-mac"),
    ],
)
async def test_union_card_without_the_key_is_not_genuine(card: UnionCard) -> None:
    assert await reason_of(read_union_app(BehaviourChannel(card), software_sam(), CARD_KEY)) == "card_not_genuine"


async def test_card_keyed_for_another_uid_is_not_genuine() -> None:
    """Copying a genuine card's keys and record onto a card with another UID fails."""
    copy = UnionCard(uid=bytes.fromhex("04999999999999"), keys=union_card().keys, record=union_card().record)
    assert await reason_of(read_union_app(BehaviourChannel(copy), software_sam(), CARD_KEY)) == "card_not_genuine"


@pytest.mark.parametrize(
    ("fault", "random_uid"),
    [
        (Fault.SHORT_CHALLENGE, False),
        (Fault.UNKNOWN_STATUS, False),
        (Fault.TRUNCATED_RECORD, False),
        (Fault.BAD_RECORD_FORMAT, False),
        (Fault.GARBLED_UID, True),
    ],
)
async def test_union_garbage_is_unreadable(fault: Fault, random_uid: bool) -> None:
    card = union_card(fault=fault, random_uid=random_uid)
    assert await reason_of(read_union_app(BehaviourChannel(card), software_sam(), CARD_KEY)) == "card_unreadable"


async def _exchange_length(behaviour: object, run: Callable[[BehaviourChannel], Awaitable[object]]) -> int:
    """How many APDUs a successful read of ``behaviour`` takes."""
    channel = BehaviourChannel(behaviour)  # type: ignore[arg-type]
    await run(channel)
    return len(channel.sent)


async def _union_steps(random_uid: bool) -> int:
    return await _exchange_length(
        union_card(random_uid=random_uid), lambda ch: read_union_app(ch, software_sam(), CARD_KEY)
    )


async def test_union_exchange_lengths() -> None:
    # SELECT, GET UID, auth x2, ReadData; random UID adds auth x2 + GetCardUID.
    assert await _union_steps(False) == 5
    assert await _union_steps(True) == 8


@pytest.mark.parametrize("random_uid", [False, True])
async def test_union_card_pulled_at_every_step(random_uid: bool) -> None:
    for step in range(1, await _union_steps(random_uid) + 1):
        card = union_card(random_uid=random_uid, pull_at=step)
        reason = await reason_of(read_union_app(BehaviourChannel(card), software_sam(), CARD_KEY))
        assert reason == "card_removed", step


async def test_sam_problems_are_sam_unavailable() -> None:
    empty = SoftwareSam({7: READ_MASTER})
    assert await reason_of(read_union_app(BehaviourChannel(union_card()), empty, CARD_KEY)) == "sam_unavailable"
    gone = PcscSam(BehaviourChannel(SamCard({1: READ_MASTER, 2: UID_MASTER}, pull_at=1)))
    assert await reason_of(read_union_app(BehaviourChannel(union_card()), gone, CARD_KEY)) == "sam_unavailable"
    no_slot = PcscSam(BehaviourChannel(SamCard({2: UID_MASTER})))
    assert await reason_of(read_union_app(BehaviourChannel(union_card()), no_slot, CARD_KEY)) == "sam_unavailable"


async def test_non_union_cards_fail_the_union_profile() -> None:
    for card in (EmvCard(), UidCard(UID), union_card(aid=b"XYZ")):
        assert await reason_of(read_union_app(BehaviourChannel(card), software_sam(), CARD_KEY)) == "card_unreadable"


async def test_reader_failure_mid_exchange_is_card_removed() -> None:
    class Unplugged:
        async def transmit(self, apdu: bytes) -> bytes:
            raise ReaderUnavailable("pcscd restarted")

    assert await reason_of(read_union_app(Unplugged(), software_sam(), CARD_KEY)) == "card_removed"


async def test_logs_hold_no_keys_or_identifiers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await read_union_app(BehaviourChannel(union_card()), software_sam(), CARD_KEY)
    await reason_of(read_union_app(BehaviourChannel(union_card(fault=Fault.FORGED_AUTH)), software_sam(), CARD_KEY))
    await read_bank_pan(BehaviourChannel(EmvCard(pan=PAN)), CARD_KEY, TERMINAL)
    text = caplog.text.upper()
    for secret in (READ_MASTER.hex(), UID_MASTER.hex(), UID.hex(), PAN):
        assert secret.upper() not in text
    assert "REASON=CARD_NOT_GENUINE" in text


# --- pan -------------------------------------------------------------------------


@pytest.mark.parametrize("pan_in", ["records", "track2", "gpo"])
async def test_bank_card_pan(pan_in: str) -> None:
    channel = BehaviourChannel(EmvCard(pan=PAN, pan_in=pan_in))
    assert await read_bank_pan(channel, CARD_KEY, TERMINAL) == PAN_IDENTITY
    # the higher-priority debit application was chosen over electronic cash
    assert channel.sent[1] == bytes.fromhex("00A4040008") + UNIONPAY_DEBIT + b"\x00"


async def test_bank_card_default_terminal_data_is_accepted() -> None:
    assert await read_bank_pan(BehaviourChannel(EmvCard(pan=PAN)), CARD_KEY) == PAN_IDENTITY


@pytest.mark.parametrize("fault", [f for f in EmvFault if f is not EmvFault.NONE])
async def test_bank_card_garbage_is_unreadable(fault: EmvFault) -> None:
    card = EmvCard(pan=PAN, fault=fault)
    assert await reason_of(read_bank_pan(BehaviourChannel(card), CARD_KEY, TERMINAL)) == "card_unreadable"


async def test_bank_card_pulled_at_every_step() -> None:
    steps = await _exchange_length(EmvCard(pan=PAN), lambda ch: read_bank_pan(ch, CARD_KEY, TERMINAL))
    assert steps == 5  # PPSE, SELECT, GPO, SFI 1 rec 1 (no PAN), SFI 2 rec 1 (PAN): stops there
    for step in range(1, steps + 1):
        card = EmvCard(pan=PAN, pull_at=step)
        assert await reason_of(read_bank_pan(BehaviourChannel(card), CARD_KEY, TERMINAL)) == "card_removed"


async def test_non_bank_cards_fail_the_pan_profile() -> None:
    for card in (union_card(), UidCard(UID)):
        assert await reason_of(read_bank_pan(BehaviourChannel(card), CARD_KEY, TERMINAL)) == "card_unreadable"


# --- uid ----------------------------------------------------------------------------


async def test_uid_card() -> None:
    assert await read_uid(BehaviourChannel(UidCard(UID)), CARD_KEY) == UID_IDENTITY


async def test_random_uid_identifies_nothing() -> None:
    card = union_card(random_uid=True)
    assert await reason_of(read_uid(BehaviourChannel(card), CARD_KEY)) == "card_unreadable"


async def test_uid_card_pulled() -> None:
    class Pulled(UidCard):
        def respond(self, capdu: bytes) -> bytes:
            from simulator.vcard import CardPulled

            raise CardPulled()

    assert await reason_of(read_uid(BehaviourChannel(Pulled(UID)), CARD_KEY)) == "card_removed"


# --- identify ---------------------------------------------------------------------------


async def _identify(card: object, allowed: tuple[str, ...] = ALL, sam: object = "software") -> CardIdentity:
    chosen_sam = software_sam() if sam == "software" else sam
    return await identify(
        BehaviourChannel(card),  # type: ignore[arg-type]
        card.atr,  # type: ignore[attr-defined]
        allowed,
        card_key=CARD_KEY,
        sam=chosen_sam,  # type: ignore[arg-type]
        terminal=TERMINAL,
    )


async def test_identify_picks_each_profile() -> None:
    assert await _identify(union_card()) == UNION_IDENTITY
    assert await _identify(union_card(random_uid=True)) == UNION_IDENTITY
    assert await _identify(EmvCard(pan=PAN)) == PAN_IDENTITY
    assert await _identify(UidCard(UID)) == UID_IDENTITY


async def test_cloned_uid_never_passes_as_the_union_card() -> None:
    clone = UidCard(UID)  # the member's UID on a plain card
    identity = await _identify(clone)
    assert identity.profile == "uid" and identity.strength is Strength.WEAK
    assert identity.card_ref != UNION_IDENTITY.card_ref
    assert await reason_of(_identify(UidCard(UID), ("union",))) == "card_unreadable"


async def test_union_card_failing_auth_does_not_fall_back_to_uid() -> None:
    wrong = UnionCard.personalise(os.urandom(16), UID_MASTER, UID, MEMBER)
    assert await reason_of(_identify(wrong)) == "card_not_genuine"


async def test_desfire_without_union_app_falls_back_when_allowed() -> None:
    foreign = union_card(aid=b"XYZ")
    assert await _identify(foreign) == UID_IDENTITY
    assert await reason_of(_identify(union_card(aid=b"XYZ"), ("union", "pan"))) == "card_unreadable"


async def test_identify_respects_allowed_profiles() -> None:
    assert await reason_of(_identify(EmvCard(pan=PAN), ("union",))) == "card_unreadable"
    # a union card where only bank cards and UIDs are taken reads as a UID
    assert await _identify(union_card(), ("pan", "uid")) == UID_IDENTITY
    # without a SAM the union profile cannot run
    assert await _identify(union_card(), ("union", "uid"), sam=None) == UID_IDENTITY


async def test_identify_pulled_and_garbage() -> None:
    assert await reason_of(_identify(union_card(pull_at=3))) == "card_removed"
    assert await reason_of(_identify(EmvCard(pan=PAN, pull_at=4))) == "card_removed"
    assert await reason_of(_identify(EmvCard(pan=PAN, fault=EmvFault.BAD_AFL))) == "card_unreadable"


async def test_identify_rejects_unknown_profile_names() -> None:
    with pytest.raises(ValueError):
        await _identify(UidCard(UID), ("union", "magic"))
