"""QR e-card tokens: short-lived, Ed25519-signed member passes shown on a phone.

Format (see ``docs/card-profiles.md``)::

    UT1.<base64url(payload)>.<base64url(signature)>      (no '=' padding)

    payload = key_id(4) || issued_at(4, BE) || expires_at(4, BE) || nonce(8)
              || member_no (ASCII, 1..16 of 0-9 A-Z -)
    signature = Ed25519(private key, b"UT1." + base64url(payload))

A screenshot is worth at most 60 s and one use: the lifetime is capped and a
:class:`ReplayCache` remembers nonces until their token would expire anyway.
Verification is pure (clock and trusted keys are arguments) so it can be
table-tested; the issuer lives here too so the back office and the simulator
produce exactly what terminals accept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from terminal.exceptions import PayloadError, ReplayError, SignatureError

PREFIX = "UT1."
MAX_LIFETIME = 60
#: Seconds a terminal clock may lag the issuer's before a token looks "from the future".
DEFAULT_SKEW = 5
#: Longest string we even try to decode: a scanner fed a novel is not a token.
MAX_TOKEN_CHARS = 256

_HEADER = 20  # key_id(4) iat(4) exp(4) nonce(8)
_MEMBER_NO = re.compile(rb"[0-9A-Z-]{1,16}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_WHERE = "qr"


@dataclass(frozen=True)
class EcardToken:
    """A verified token. ``nonce`` identifies it for replay detection."""

    member_no: str
    issued_at: int
    expires_at: int
    nonce: bytes
    key_id: bytes


def key_id(public_key: Ed25519PublicKey) -> bytes:
    """First 4 bytes of SHA-256 of the raw public key: names the key in tokens."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:4]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise PayloadError(_WHERE, "token part is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise PayloadError(_WHERE, "token part is not base64url") from None


def issue_token(
    private_key: Ed25519PrivateKey,
    member_no: str,
    now: int,
    lifetime: int = MAX_LIFETIME,
    nonce: bytes | None = None,
) -> str:
    """Make a token for ``member_no`` valid from ``now`` for ``lifetime`` seconds."""
    if not 0 < lifetime <= MAX_LIFETIME:
        raise ValueError(f"lifetime must be 1..{MAX_LIFETIME} s")
    raw_no = member_no.encode("ascii")
    if not _MEMBER_NO.fullmatch(raw_no):
        raise ValueError("member number must be 1..16 of 0-9 A-Z -")
    nonce = os.urandom(8) if nonce is None else nonce
    if len(nonce) != 8:
        raise ValueError("nonce is 8 bytes")
    payload = (
        key_id(private_key.public_key())
        + now.to_bytes(4, "big")
        + (now + lifetime).to_bytes(4, "big")
        + nonce
        + raw_no
    )
    signed = PREFIX + _b64encode(payload)
    return signed + "." + _b64encode(private_key.sign(signed.encode("ascii")))


def verify_token(
    token: str,
    trusted_keys: Sequence[Ed25519PublicKey],
    now: float,
    replay_cache: "ReplayCache | None" = None,
    skew: int = DEFAULT_SKEW,
) -> EcardToken:
    """Check a scanned token; return it, or raise.

    Raises :class:`PayloadError` (malformed, lifetime over 60 s),
    :class:`SignatureError` (unknown key, bad signature) or
    :class:`ReplayError` (expired, not yet valid, nonce already seen).
    The replay cache is consulted last, so a forged token cannot fill it.
    """
    token = token.strip()
    if len(token) > MAX_TOKEN_CHARS or not token.startswith(PREFIX):
        raise PayloadError(_WHERE, "not a UT1 token")
    parts = token[len(PREFIX) :].split(".")
    if len(parts) != 2:
        raise PayloadError(_WHERE, "token must have payload and signature")
    payload, signature = _b64decode(parts[0]), _b64decode(parts[1])
    if len(payload) <= _HEADER or len(signature) != 64:
        raise PayloadError(_WHERE, "token parts have wrong sizes")
    kid = payload[0:4]
    key = next((k for k in trusted_keys if key_id(k) == kid), None)
    if key is None:
        raise SignatureError(_WHERE, f"token signed by unknown key {kid.hex()}")
    try:
        key.verify(signature, (PREFIX + parts[0]).encode("ascii"))
    except InvalidSignature:
        raise SignatureError(_WHERE, "token signature does not verify") from None
    issued_at = int.from_bytes(payload[4:8], "big")
    expires_at = int.from_bytes(payload[8:12], "big")
    raw_no = payload[_HEADER:]
    if not _MEMBER_NO.fullmatch(raw_no):
        raise PayloadError(_WHERE, "member number is not well formed")
    if not 0 < expires_at - issued_at <= MAX_LIFETIME:
        raise PayloadError(_WHERE, f"token lifetime {expires_at - issued_at} s is not 1..{MAX_LIFETIME} s")
    if issued_at > now + skew:
        raise ReplayError(_WHERE, "token issued in the future")
    if now >= expires_at:
        raise ReplayError(_WHERE, "token expired")
    result = EcardToken(raw_no.decode("ascii"), issued_at, expires_at, payload[12:20], kid)
    if replay_cache is not None:
        replay_cache.check_and_add(result.nonce, expires_at, now)
    return result


class ReplayCache:
    """Nonces of accepted tokens, each kept until its token has expired.

    Bounded: when full of still-live nonces it refuses new tokens (fail
    closed) rather than forgetting a nonce that could then be replayed.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            expires_at, nonce = heapq.heappop(self._heap)
            if self._expiry.get(nonce) == expires_at:
                del self._expiry[nonce]

    def check_and_add(self, nonce: bytes, expires_at: float, now: float) -> None:
        """Remember ``nonce`` until ``expires_at``; ReplayError if already seen."""
        self._purge(now)
        if nonce in self._expiry:
            raise ReplayError(_WHERE, "token already used")
        if len(self._expiry) >= self.max_entries:
            raise ReplayError(_WHERE, "replay cache full, token refused")
        self._expiry[nonce] = expires_at
        heapq.heappush(self._heap, (expires_at, nonce))
