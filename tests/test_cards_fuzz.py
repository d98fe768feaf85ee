"""Whatever a card says, the card layer ends in an identity or a denial reason.

Random answers, and genuine exchanges with one answer mutated, are fed to
the profile readers. Only :class:`CardError` may escape, its reason must be
one of the documented words, and a mutated union exchange may never yield
an identity other than the genuine one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cards_profiles import ALL, CARD_KEY, PAN, TERMINAL, UID, UNION_IDENTITY, software_sam, union_card
from test_cards_support import BehaviourChannel

from simulator.cards.desfire import ATR_DESFIRE
from simulator.cards.emv import EmvCard
from simulator.cards.uid import ATR_MIFARE_1K, UidCard
from terminal.cards import tlv
from terminal.cards.profiles import identify
from terminal.cards.qr import issue_token, verify_token
from terminal.exceptions import CardError, MalformedResponse, PayloadError
from terminal.model import CardIdentity, Strength

REASONS = {"card_not_genuine", "card_unreadable", "card_removed"}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STATUS = st.sampled_from([b"\x90\x00", b"\x91\x00", b"\x91\xAF", b"\x91\xAE", b"\x6A\x82", b"\x61\x10", b""])
ANSWER = st.builds(lambda data, sw: data + sw, st.binary(max_size=80), STATUS)


class ScriptedChannel:
    """Answers from a list, then 6F 00 forever: a card that talks nonsense."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = list(answers)

    async def transmit(self, apdu: bytes) -> bytes:
        return self.answers.pop(0) if self.answers else b"\x6F\x00"


def outcome(channel: object, atr: bytes) -> CardIdentity | CardError:
    """Run identify with every profile allowed; return the identity or the CardError."""

    async def run() -> CardIdentity:
        return await identify(channel, atr, ALL, card_key=CARD_KEY, sam=software_sam(), terminal=TERMINAL)  # type: ignore[arg-type]

    try:
        return asyncio.run(run())
    except CardError as exc:
        assert exc.reason in REASONS, exc.reason
        return exc


@pytest.mark.parametrize("parse", [tlv.parse, tlv.parse_dol])
@FUZZ
@given(data=st.binary(max_size=400))
def test_tlv_parsers_raise_only_malformed_response(parse: Callable[[bytes], object], data: bytes) -> None:
    try:
        parse(data)
    except MalformedResponse:
        pass


@FUZZ
@given(st.lists(ANSWER, max_size=12), st.sampled_from([ATR_DESFIRE, ATR_MIFARE_1K, b"", b"\x3B"]))
def test_random_answers_end_in_a_card_error(answers: list[bytes], atr: bytes) -> None:
    result = outcome(ScriptedChannel(answers), atr)
    if isinstance(result, CardIdentity):
        # only a bare UID can be made up without cryptography
        assert result.profile in ("uid", "pan")


def mutate(kind: str, answer: bytes, pos: int, extra: bytes) -> bytes:
    """One way a radio, a broken card or an attacker could change an answer."""
    if kind == "flip" and answer:
        i = pos % len(answer)
        return answer[:i] + bytes([answer[i] ^ (1 << (pos % 8))]) + answer[i + 1 :]
    if kind == "truncate":
        return answer[: pos % (len(answer) + 1)]
    if kind == "append":
        return answer + extra
    return extra


MUTATION = st.tuples(
    st.integers(min_value=1, max_value=9),
    st.sampled_from(["flip", "truncate", "append", "replace"]),
    st.integers(min_value=0, max_value=10_000),
    st.binary(max_size=40),
)


@FUZZ
@given(st.booleans(), MUTATION)
def test_mutated_union_exchange_never_forges_an_identity(random_uid: bool, mutation: tuple) -> None:
    step, kind, pos, extra = mutation
    channel = BehaviourChannel(
        union_card(random_uid=random_uid),
        rewrite=lambda n, answer: mutate(kind, answer, pos, extra) if n == step else answer,
    )
    result = outcome(channel, ATR_DESFIRE)
    if isinstance(result, CardIdentity):
        if result.profile == "union":
            assert result == UNION_IDENTITY
        else:  # a refused SELECT can downgrade to a bare UID: weak, and not the union ref
            assert result.strength is Strength.WEAK and result.card_ref != UNION_IDENTITY.card_ref


@FUZZ
@given(st.sampled_from(["records", "track2", "gpo"]), MUTATION)
def test_mutated_bank_card_exchange_ends_cleanly(pan_in: str, mutation: tuple) -> None:
    step, kind, pos, extra = mutation
    card = EmvCard(pan=PAN, pan_in=pan_in)
    channel = BehaviourChannel(card, rewrite=lambda n, a: mutate(kind, a, pos, extra) if n == step else a)
    result = outcome(channel, card.atr)
    if isinstance(result, CardIdentity):
        assert result.profile in ("pan", "uid")


@FUZZ
@given(MUTATION)
def test_mutated_uid_exchange_ends_cleanly(mutation: tuple) -> None:
    _, kind, pos, extra = mutation
    channel = BehaviourChannel(UidCard(UID), rewrite=lambda n, a: mutate(kind, a, pos, extra))
    result = outcome(channel, ATR_MIFARE_1K)
    if isinstance(result, CardIdentity):
        assert result.profile == "uid"


ISSUER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
TOKEN = issue_token(ISSUER, "M00012345", 1_750_000_000, nonce=b"abcdefgh")


@FUZZ
@given(st.text(max_size=300))
def test_random_qr_text_raises_only_payload_errors(text: str) -> None:
    try:
        verify_token(text, [ISSUER.public_key()], 1_750_000_000)
    except PayloadError:
        pass


@FUZZ
@given(st.integers(min_value=0, max_value=len(TOKEN) - 1), st.characters(codec="ascii"))
def test_mutated_qr_token_is_refused_or_unchanged(pos: int, char: str) -> None:
    mutated = TOKEN[:pos] + char + TOKEN[pos + 1 :]
    try:
        token = verify_token(mutated, [ISSUER.public_key()], 1_750_000_000)
    except PayloadError:
        return
    assert token.member_no == "M00012345" and token.nonce == b"abcdefgh"
