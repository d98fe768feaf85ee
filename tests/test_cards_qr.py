"""QR e-card tokens: what a terminal accepts and every way it refuses."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from terminal.cards.qr import MAX_TOKEN_CHARS, ReplayCache, issue_token, key_id, verify_token
from terminal.exceptions import PayloadError, ReplayError, SignatureError

NOW = 1_750_000_000
ISSUER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
NEXT_ISSUER = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
TRUSTED = [ISSUER.public_key()]


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(payload: bytes, signer: Ed25519PrivateKey = ISSUER) -> str:
    """A token assembled from the documented format, bypassing the issuer's checks."""
    body = "UT1." + b64u(payload)
    return body + "." + b64u(signer.sign(body.encode()))


def payload(issued: int, expires: int, member: bytes = b"M00012345", nonce: bytes = b"N" * 8) -> bytes:
    return key_id(ISSUER.public_key()) + issued.to_bytes(4, "big") + expires.to_bytes(4, "big") + nonce + member


def test_valid_token_round_trip() -> None:
    token = issue_token(ISSUER, "M00012345", NOW, nonce=b"12345678")
    assert token.startswith("UT1.") and len(token) < 160
    got = verify_token(token, TRUSTED, NOW + 30)
    assert (got.member_no, got.issued_at, got.expires_at, got.nonce) == ("M00012345", NOW, NOW + 60, b"12345678")
    assert got.key_id == key_id(ISSUER.public_key())


def test_hand_made_token_per_document_verifies() -> None:
    assert verify_token(hand_made(payload(NOW, NOW + 60)), TRUSTED, NOW).member_no == "M00012345"


def test_expired_token() -> None:
    token = issue_token(ISSUER, "M1", NOW, lifetime=20)
    assert verify_token(token, TRUSTED, NOW + 19).member_no == "M1"
    with pytest.raises(ReplayError, match="expired"):
        verify_token(token, TRUSTED, NOW + 20)


def test_future_token_beyond_skew() -> None:
    token = issue_token(ISSUER, "M1", NOW + 10)
    with pytest.raises(ReplayError, match="future"):
        verify_token(token, TRUSTED, NOW)
    assert verify_token(token, TRUSTED, NOW + 5).member_no == "M1"


def test_lifetime_over_60_seconds_is_refused_by_issuer_and_verifier() -> None:
    with pytest.raises(ValueError):
        issue_token(ISSUER, "M1", NOW, lifetime=61)
    with pytest.raises(PayloadError, match="lifetime") as info:
        verify_token(hand_made(payload(NOW, NOW + 120)), TRUSTED, NOW + 1)
    assert not isinstance(info.value, (SignatureError, ReplayError))
    with pytest.raises(PayloadError, match="lifetime"):
        verify_token(hand_made(payload(NOW, NOW)), TRUSTED, NOW)


def test_bad_signature() -> None:
    token = issue_token(ISSUER, "M1", NOW)
    body, sig = token.rsplit(".", 1)
    flipped = body + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(SignatureError, match="does not verify"):
        verify_token(flipped, TRUSTED, NOW)


def test_payload_changed_after_signing() -> None:
    token = issue_token(ISSUER, "M1", NOW)
    sig = token.rsplit(".", 1)[1]
    forged = "UT1." + b64u(payload(NOW, NOW + 60, member=b"M2")) + "." + sig
    with pytest.raises(SignatureError):
        verify_token(forged, TRUSTED, NOW)


def test_unknown_key() -> None:
    token = issue_token(Ed25519PrivateKey.generate(), "M1", NOW)
    with pytest.raises(SignatureError, match="unknown key"):
        verify_token(token, TRUSTED, NOW)


def test_key_rotation_accepts_any_trusted_key() -> None:
    both = [ISSUER.public_key(), NEXT_ISSUER.public_key()]
    for signer in (ISSUER, NEXT_ISSUER):
        assert verify_token(issue_token(signer, "M1", NOW), both, NOW).member_no == "M1"
    with pytest.raises(SignatureError):
        verify_token(issue_token(NEXT_ISSUER, "M1", NOW), TRUSTED, NOW)


def test_replay_is_refused() -> None:
    cache = ReplayCache()
    token = issue_token(ISSUER, "M1", NOW)
    verify_token(token, TRUSTED, NOW, cache)
    with pytest.raises(ReplayError, match="already used"):
        verify_token(token, TRUSTED, NOW + 1, cache)
    verify_token(issue_token(ISSUER, "M1", NOW), TRUSTED, NOW + 1, cache)  # a fresh nonce is fine


def test_forged_token_does_not_enter_the_replay_cache() -> None:
    cache = ReplayCache()
    with pytest.raises(SignatureError):
        verify_token(issue_token(Ed25519PrivateKey.generate(), "M1", NOW, nonce=b"x" * 8), TRUSTED, NOW, cache)
    assert len(cache) == 0


def test_replay_cache_forgets_after_expiry_and_is_bounded() -> None:
    cache = ReplayCache(max_entries=2)
    cache.check_and_add(b"a" * 8, NOW + 10, NOW)
    cache.check_and_add(b"b" * 8, NOW + 20, NOW)
    with pytest.raises(ReplayError, match="full"):
        cache.check_and_add(b"c" * 8, NOW + 30, NOW)
    cache.check_and_add(b"c" * 8, NOW + 30, NOW + 10)  # "a" expired, room again
    assert len(cache) == 2
    with pytest.raises(ReplayError):
        cache.check_and_add(b"b" * 8, NOW + 20, NOW + 19)
    cache.check_and_add(b"b" * 8, NOW + 40, NOW + 20)  # "b" forgotten at its expiry


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "UT1.",
        "UT1.abc",
        "UT1.a.b.c",
        "UT1.!!!!.AAAA",
        "UT1.A.AAAA",
        "UT2." + b64u(payload(NOW, NOW + 60)) + "." + b64u(bytes(64)),
        "UT1." + b64u(b"short") + "." + b64u(bytes(64)),
        "UT1." + b64u(payload(NOW, NOW + 60)) + "." + b64u(bytes(63)),
        "UT1." + "A" * MAX_TOKEN_CHARS,
    ],
)
def test_malformed_tokens(text: str) -> None:
    with pytest.raises(PayloadError):
        verify_token(text, TRUSTED, NOW)


def test_bad_member_number_in_signed_payload() -> None:
    with pytest.raises(PayloadError, match="member"):
        verify_token(hand_made(payload(NOW, NOW + 60, member=b"m 1")), TRUSTED, NOW)


def test_scanner_line_ending_is_tolerated() -> None:
    assert verify_token(issue_token(ISSUER, "M1", NOW) + "\r\n", TRUSTED, NOW).member_no == "M1"
