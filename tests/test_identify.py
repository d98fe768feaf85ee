"""The terminal's card reading as ``[cards]`` configures it, against simulated cards in memory.

What the card layer proves is tested in test_cards_*; here: which profiles a
terminal takes, where its SAM comes from, that a registered union card's UID
on a card that is not one is refused as a clone, that every refusal carries
what the card was taken for (the journal records it), and that a card pulled
away at any step of any exchange is ``CardRemoved`` (no transaction).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_cards_support import BehaviourChannel

from simulator.cards.desfire import Fault
from simulator.cards.emv import EmvFault
from simulator.cards.sam import SamCard
from simulator.cards.uid import UidCard
from simulator.people import cast
from simulator.qr import EcardIssuer
from terminal.cardref import card_ref
from terminal.cards.sam import SoftwareSam
from terminal.config import Config, parse
from terminal.exceptions import CardError, CardRefused, CardRemoved, ConfigError
from terminal.identify import CardIdentifier, ReaderChannel, UnavailableSam, build
from terminal.model import CardIdentity, Strength

READ_MASTER = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
UID_MASTER = bytes.fromhex("FFEEDDCCBBAA99887766554433221100")
CARD_KEY = bytes.fromhex("5A" * 32)
PERSON = cast(1)[0]
UNION_REF = card_ref(CARD_KEY, "union", PERSON.union_uid)
STRANGER = UidCard(bytes.fromhex("04C0FFEE123456"))


def genuine(**options: object):
    return PERSON.union_card(READ_MASTER, UID_MASTER, **options)


def identifier(*allowed: str, known: set[bytes] | None = None, sam: object = None) -> CardIdentifier:
    registered = {UNION_REF} if known is None else known
    return CardIdentifier(allowed, CARD_KEY, sam or SoftwareSam({1: READ_MASTER, 2: UID_MASTER}),
                          known_ref=registered.__contains__)


async def read(ident: CardIdentifier, card: object) -> CardIdentity:
    return await ident(BehaviourChannel(card), card.atr)  # type: ignore[arg-type, attr-defined]


async def refusal(ident: CardIdentifier, card: object) -> CardError:
    with pytest.raises(CardError) as info:
        await read(ident, card)
    return info.value


# --- profiles -----------------------------------------------------------------------------


async def test_genuine_cards_of_each_card_profile() -> None:
    ident = identifier("union", "pan", "uid")
    union = await read(ident, genuine())
    assert union == CardIdentity("union", UNION_REF, Strength.STRONG, PERSON.member_no)
    assert await read(ident, genuine(random_uid=True)) == union
    assert await read(ident, PERSON.bank_card()) == CardIdentity(
        "pan", card_ref(CARD_KEY, "pan", PERSON.pan), Strength.WEAK)
    assert await read(ident, UidCard(PERSON.uid)) == CardIdentity(
        "uid", card_ref(CARD_KEY, "uid", PERSON.uid), Strength.WEAK)


async def test_cloned_union_uid_is_not_genuine_where_only_union_cards_are_taken() -> None:
    error = await refusal(identifier("union"), UidCard(PERSON.union_uid))
    assert isinstance(error, CardRefused) and error.reason == "card_not_genuine"
    assert error.attempt == CardIdentity("uid", UNION_REF, Strength.WEAK)


async def test_cloned_union_uid_is_not_genuine_even_where_uids_are_taken() -> None:
    error = await refusal(identifier("union", "uid"), UidCard(PERSON.union_uid))
    assert error.reason == "card_not_genuine" and error.attempt.card_ref == UNION_REF  # type: ignore[attr-defined]


async def test_a_uid_nobody_registered_is_no_clone() -> None:
    error = await refusal(identifier("union"), STRANGER)
    assert error.reason == "card_unreadable" and not isinstance(error, CardRefused)
    assert (await read(identifier("union", "uid"), STRANGER)).profile == "uid"


async def test_without_union_cards_a_union_uid_is_just_a_uid() -> None:
    """A terminal that does not take union cards cannot tell a genuine one from a clone."""
    identity = await read(identifier("pan", "uid"), UidCard(PERSON.union_uid))
    assert identity == CardIdentity("uid", card_ref(CARD_KEY, "uid", PERSON.union_uid), Strength.WEAK)


async def test_wrong_key_is_refused_with_the_union_attempt() -> None:
    other = PERSON.union_card(os.urandom(16), UID_MASTER)
    error = await refusal(identifier("union", "uid"), other)
    assert isinstance(error, CardRefused) and error.reason == "card_not_genuine"
    assert error.attempt == CardIdentity("union", UNION_REF, Strength.STRONG)


async def test_random_uid_card_with_wrong_key_has_no_card_ref() -> None:
    other = PERSON.union_card(READ_MASTER, os.urandom(16), random_uid=True)
    error = await refusal(identifier("union"), other)
    assert error.reason == "card_not_genuine"
    assert error.attempt == CardIdentity("union", b"", Strength.STRONG)  # type: ignore[attr-defined]


@pytest.mark.parametrize("fault, reason", [(Fault.BAD_RECORD_MAC, "card_not_genuine"),
                                           (Fault.FORGED_AUTH, "card_not_genuine"),
                                           (Fault.TRUNCATED_RECORD, "card_unreadable"),
                                           (Fault.UNKNOWN_STATUS, "card_unreadable")])
async def test_union_faults_keep_the_union_attempt(fault: Fault, reason: str) -> None:
    error = await refusal(identifier("union"), genuine(fault=fault))
    assert error.reason == reason and error.attempt.profile == "union"  # type: ignore[attr-defined]


async def test_bank_card_garbage_is_refused_as_a_bank_card() -> None:
    error = await refusal(identifier("union", "pan"), PERSON.bank_card(fault=EmvFault.BAD_AFL))
    assert error.reason == "card_unreadable"
    assert error.attempt == CardIdentity("pan", b"", Strength.WEAK)  # type: ignore[attr-defined]


async def _exchange_length(card: object, ident: CardIdentifier) -> int:
    channel = BehaviourChannel(card)  # type: ignore[arg-type]
    await ident(channel, card.atr)  # type: ignore[attr-defined]
    return len(channel.sent)


@pytest.mark.parametrize("make", [lambda **o: genuine(**o), lambda **o: genuine(random_uid=True, **o),
                                  lambda **o: PERSON.bank_card(**o)],
                         ids=["union", "union-random-uid", "bank"])
async def test_card_pulled_at_every_step_is_no_transaction(make) -> None:
    ident = identifier("union", "pan", "uid")
    steps = await _exchange_length(make(), ident)
    assert steps >= 5
    for step in range(1, steps + 1):
        with pytest.raises(CardRemoved):
            await read(ident, make(pull_at=step))
    assert (await read(ident, make())).strength in (Strength.STRONG, Strength.WEAK)  # the next tap works


async def test_clone_probe_pulled_is_card_removed() -> None:
    class PulledOnUid(UidCard):
        def respond(self, capdu: bytes) -> bytes:
            from simulator.vcard import CardPulled
            raise CardPulled()

    with pytest.raises(CardRemoved):
        await read(identifier("union"), PulledOnUid(PERSON.union_uid))


# --- the SAM --------------------------------------------------------------------------------


async def test_unavailable_sam_refuses_union_cards_and_nothing_else() -> None:
    ident = identifier("union", "pan", "uid", sam=UnavailableSam("no key file"))
    error = await refusal(ident, genuine())
    assert error.reason == "sam_unavailable" and error.attempt.profile == "union"  # type: ignore[attr-defined]
    assert (await read(ident, PERSON.bank_card())).profile == "pan"


class MemoryReader:
    """The CardReader seam over in-memory behaviours: what the SAM link sees of a reader."""

    def __init__(self, cards: dict[str, object]) -> None:
        self.cards = cards
        self.connects = 0

    def events(self):  # pragma: no cover - the SAM link never listens for taps
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def connect(self, reader: str) -> AsyncIterator[BehaviourChannel]:
        self.connects += 1
        card = self.cards.get(reader)
        if card is None:
            raise CardRemoved(f"no card on {reader}")
        yield BehaviourChannel(card)  # type: ignore[arg-type]


async def test_sam_card_link_reconnects_after_the_sam_was_pulled() -> None:
    sam_card = SamCard({1: READ_MASTER, 2: UID_MASTER})
    reader = MemoryReader({"SAM": sam_card})
    layer = build(config(sam="pcsc", sam_reader="SAM"), CARD_KEY, reader,  # type: ignore[arg-type]
                  known_ref={UNION_REF}.__contains__)
    assert (await read(layer.identify, genuine())).strength is Strength.STRONG  # type: ignore[arg-type]
    assert reader.connects == 1
    sam_card.pull_at = 1  # pulled: the next DIVERSIFY finds no SAM
    error = await refusal(layer.identify, genuine())  # type: ignore[arg-type]
    assert error.reason == "sam_unavailable"
    sam_card.pull_at = None
    assert (await read(layer.identify, genuine(random_uid=True))).member_no == PERSON.member_no  # type: ignore[arg-type]
    assert reader.connects == 2


async def test_closed_link_opens_again_on_demand() -> None:
    reader = MemoryReader({"SAM": SamCard({1: READ_MASTER})})
    channel = ReaderChannel(reader, "SAM")  # type: ignore[arg-type]
    assert (await channel.transmit(bytes.fromhex("00A4040009F0554E494F4E53414D00")))[-2:] == b"\x90\x00"
    await channel.close()
    await channel.close()  # twice is harmless
    assert (await channel.transmit(bytes.fromhex("00A4040009F0554E494F4E53414D00")))[-2:] == b"\x90\x00"
    assert reader.connects == 2


# --- from config ---------------------------------------------------------------------------


def config(tmp: Path | None = None, **cards: object) -> Config:
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in cards.items())
    source = str((tmp or Path("/nonexistent")) / "terminal.toml")
    return parse(f'[terminal]\nid = "T-1"\nmode = "access"\n\n[cards]\n{lines}', source)


def write_keys(tmp: Path, mode: int = 0o600) -> None:
    path = tmp / "sam.keys"
    path.write_text(json.dumps({"1": READ_MASTER.hex(), "2": UID_MASTER.hex()}))
    os.chmod(path, mode)


async def test_defaults_take_union_and_bank_cards_but_not_uids(tmp_path: Path) -> None:
    write_keys(tmp_path)
    layer = build(config(tmp_path), CARD_KEY, MemoryReader({}))  # type: ignore[arg-type]
    assert layer.profiles == ("union", "pan") and layer.services == []
    assert (await read(layer.identify, genuine())).profile == "union"  # type: ignore[arg-type]
    error = await refusal(layer.identify, UidCard(PERSON.uid))  # type: ignore[arg-type]
    assert error.reason == "card_unreadable"


async def test_readable_key_file_leaves_union_cards_sam_unavailable(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    write_keys(tmp_path, 0o644)
    layer = build(config(tmp_path, profiles=["union-app", "uid-legacy"]), CARD_KEY,
                  MemoryReader({}))  # type: ignore[arg-type]
    assert (await refusal(layer.identify, genuine())).reason == "sam_unavailable"  # type: ignore[arg-type]
    assert (await read(layer.identify, STRANGER)).profile == "uid"  # type: ignore[arg-type]
    assert "event=sam_unavailable" in caplog.text
    assert READ_MASTER.hex() not in caplog.text.lower()


def test_qr_profile_adds_the_scanner_service(tmp_path: Path) -> None:
    EcardIssuer().write_public_key(tmp_path / "issuer.pub")
    cfg = parse('[terminal]\nid = "T-1"\nmode = "access"\n[serial.qr]\nport = "/dev/null"\n'
                '[cards]\nprofiles = ["qr-ecard"]\nqr_scanner = "qr"\nqr_public_keys = ["issuer.pub"]\n',
                str(tmp_path / "terminal.toml"))
    layer = build(cfg, CARD_KEY, MemoryReader({}))  # type: ignore[arg-type]
    assert layer.profiles == () and [s.__name__ for s in layer.services] == ["qr_scanner"]


def test_missing_qr_key_file_is_a_config_error(tmp_path: Path) -> None:
    cfg = parse('[terminal]\nid = "T-1"\nmode = "access"\n[serial.qr]\nport = "/dev/null"\n'
                '[cards]\nprofiles = ["qr-ecard"]\nqr_scanner = "qr"\nqr_public_keys = ["gone.pub"]\n',
                str(tmp_path / "terminal.toml"))
    with pytest.raises(ConfigError, match="gone.pub"):
        build(cfg, CARD_KEY, MemoryReader({}))  # type: ignore[arg-type]


@pytest.mark.parametrize("cards, key, words", [
    ('profiles = []', "cards.profiles", "at least one"),
    ('profiles = ["union"]', "cards.profiles[0]", "must be one of"),
    ('union_aid = "554E"', "cards.union_aid", "3 bytes"),
    ('union_aid = "zzzzzz"', "cards.union_aid", "3 bytes"),
    ('sam = "pcsc"', "cards.sam_reader", "required"),
    ('sam = "hsm"', "cards.sam", "must be one of"),
    ('profiles = ["qr-ecard"]\nqr_public_keys = ["k.pub"]', "cards.qr_scanner", "[serial.<name>]"),
    ('profiles = ["qr-ecard"]\nqr_scanner = "qr"', "cards.qr_public_keys", "issuer key"),
])
def test_bad_cards_sections(cards: str, key: str, words: str) -> None:
    text = f'[terminal]\nid = "T-1"\nmode = "access"\n[serial.qr]\nport = "/dev/null"\n[cards]\n{cards}\n'
    with pytest.raises(ConfigError) as info:
        parse(text, "t.toml")
    assert info.value.key == key and words in info.value.problem
