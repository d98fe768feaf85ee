"""Keyed hashes of card identifiers.

A terminal never stores or sends a raw UID or bank card number: the member
list and the journal hold ``HMAC-SHA256(deployment_key, kind ":" identifier)``.
The kind is part of the message so a UID can never collide with a PAN that
happens to have the same bytes.
"""

from __future__ import annotations

import hmac

#: Card kinds as they appear in member records and journal rows.
KINDS = ("union", "pan", "uid", "ecard")


def card_ref(key: bytes, kind: str, identifier: bytes | str) -> bytes:
    """Return the 32-byte keyed hash that stands for one card everywhere."""
    if kind not in KINDS:
        raise ValueError(f"unknown card kind {kind!r}")
    raw = identifier.encode() if isinstance(identifier, str) else identifier.hex().upper().encode()
    return hmac.digest(key, kind.encode() + b":" + raw, "sha256")  # the one-shot C path
