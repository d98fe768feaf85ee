"""The QR scanner service: scanned lines to identities and refusals.

Tokens come from the simulator's issuer; the scanner is a real pty opened by
the production pyserial driver, so framing and timing are the real ones.
"""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from drivers.serialport import PySerialLink
from simulator.qr import EcardIssuer, PtyScanner
from terminal.cardref import card_ref
from terminal.cards.qr import ReplayCache
from terminal.exceptions import CardError, CardRefused
from terminal.model import CardIdentity, Strength
from terminal.qrscan import MAX_LINE, LineSplitter, QrScanner, TokenVerifier

CARD_KEY = bytes.fromhex("33" * 32)
MEMBER = "M0000042"
NOW = 1_750_000_000


def verifier(issuer: EcardIssuer) -> TokenVerifier:
    return TokenVerifier([issuer.key.public_key()], CARD_KEY, ReplayCache())


def flipped(part: str) -> str:
    """A base64url token part with one bit of its first byte changed."""
    raw = bytearray(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    raw[0] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def refused(v: TokenVerifier, text: str, now: float = NOW + 1) -> CardError:
    with pytest.raises(CardError) as info:
        v.identify(text, now)
    return info.value


# --- tokens -----------------------------------------------------------------------------


def test_valid_token_is_a_strong_ecard_identity() -> None:
    issuer = EcardIssuer()
    identity = verifier(issuer).identify(issuer.token(MEMBER, NOW), NOW + 1)
    assert identity == CardIdentity("ecard", card_ref(CARD_KEY, "ecard", MEMBER), Strength.STRONG, MEMBER)


def test_replayed_token_is_not_genuine_and_names_the_member() -> None:
    issuer = EcardIssuer()
    v = verifier(issuer)
    token = issuer.token(MEMBER, NOW)
    first = v.identify(token, NOW + 1)
    error = refused(v, token, NOW + 2)
    assert isinstance(error, CardRefused) and error.reason == "card_not_genuine"
    assert error.attempt == first  # the back office learns whose token was replayed


@pytest.mark.parametrize("case", ["other_issuer", "expired", "future", "tampered"])
def test_unprovable_tokens_are_not_genuine(case: str) -> None:
    issuer = EcardIssuer()
    token = issuer.token(MEMBER, NOW, lifetime=30)
    now = NOW + 1
    if case == "other_issuer":
        token = EcardIssuer().token(MEMBER, NOW)
    elif case == "expired":
        now = NOW + 30
    elif case == "future":
        now = NOW - 60
    else:
        head, payload, signature = token.split(".")
        token = f"{head}.{flipped(payload)}.{signature}"
    error = refused(verifier(issuer), token, now)
    assert error.reason == "card_not_genuine"
    assert error.attempt == CardIdentity("ecard", b"", Strength.STRONG)  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", ["https://example.com/menu", "UT1.abc", "", "UT1." + "A" * 300])
def test_text_that_is_no_token_is_unreadable(text: str) -> None:
    error = refused(verifier(EcardIssuer()), text)
    assert error.reason == "card_unreadable" and not isinstance(error, CardRefused)


def test_a_refused_forgery_does_not_use_up_the_real_token() -> None:
    issuer = EcardIssuer()
    v = verifier(issuer)
    token = issuer.token(MEMBER, NOW)
    head, payload, signature = token.split(".")
    refused(v, f"{head}.{payload}.{flipped(signature)}")
    assert v.identify(token, NOW + 1).member_no == MEMBER


# --- framing ------------------------------------------------------------------------------


def test_lines_end_with_cr_lf_or_both_and_may_arrive_in_pieces() -> None:
    s = LineSplitter()
    assert s.feed(b"ab") == []
    assert s.feed(b"c\r\nde") == [b"abc"]
    assert s.feed(b"f\rg\n\n\r\nh") == [b"def", b"g"]
    assert s.feed(b"\n") == [b"h"]


def test_overlong_line_is_reported_once_then_framing_recovers() -> None:
    s = LineSplitter()
    assert s.feed(b"x" * (MAX_LINE + 50)) == []
    assert s.feed(b"yyy\r\nok\r\n") == [None, b"ok"]


# --- the service over a real pty ---------------------------------------------------------------


class Collector:
    """The terminal end of ``submit``: what reached the decision queue, in order."""

    def __init__(self) -> None:
        self.taps: list[tuple[str, CardIdentity | CardError, float]] = []
        self.arrived = asyncio.Event()

    def __call__(self, reader: str, result: CardIdentity | CardError, detected_at: float) -> bool:
        self.taps.append((reader, result, detected_at))
        self.arrived.set()
        return True

    async def next(self, timeout: float = 5.0) -> tuple[str, CardIdentity | CardError, float]:
        n = len(self.taps)
        while len(self.taps) <= n:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), timeout)
        return self.taps[n]


async def test_scanner_service_over_a_pty() -> None:
    issuer = EcardIssuer()
    collector = Collector()
    with PtyScanner() as pty:
        link = PySerialLink(pty.port, 9600)
        scanner = QrScanner(link, verifier(issuer), collector, "qr", clock=time.time, repeat_s=0.5)
        task = asyncio.create_task(scanner.run())
        try:
            token = issuer.token(MEMBER)
            before = time.perf_counter()
            pty.scan(token)
            reader, result, detected_at = await collector.next()
            assert reader == "qr:qr" and isinstance(result, CardIdentity) and result.member_no == MEMBER
            assert before <= detected_at <= time.perf_counter()

            pty.scan(token)  # continuous-mode echo of the code still under the scanner
            await asyncio.sleep(0.1)
            pty.scan(b"\xff\xfe binary")
            _, garbage, _ = await collector.next()
            assert isinstance(garbage, CardError) and garbage.reason == "card_unreadable"
            assert len(collector.taps) == 2  # the echo made no tap

            await asyncio.sleep(0.55)
            pty.scan(token)  # shown again later: a replay
            _, replay, _ = await collector.next()
            assert isinstance(replay, CardRefused) and replay.reason == "card_not_genuine"
            assert replay.attempt == result
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            link.close()
