"""Card references: HMAC-SHA256 of ``kind:identifier`` under the deployment key, exactly."""

from __future__ import annotations

import hmac
import os

import pytest

from terminal.cardref import KINDS, card_ref


@pytest.mark.parametrize("key_len", [0, 1, 16, 32, 63, 64, 65, 200])
def test_card_ref_is_rfc2104_hmac_sha256_for_any_key_length(key_len: int) -> None:
    # Keys longer than SHA-256's block are hashed first, shorter ones padded: both as RFC 2104 says.
    key = os.urandom(key_len)
    for kind, identifier, message in (("union", bytes.fromhex("04a1b2c3d4e5f6"), b"union:04A1B2C3D4E5F6"),
                                      ("pan", "6222021234567890128", b"pan:6222021234567890128"),
                                      ("uid", b"", b"uid:")):
        assert card_ref(key, kind, identifier) == hmac.new(key, message, "sha256").digest()


def test_card_refs_differ_by_key_and_kind_and_repeat_exactly() -> None:
    key, other = b"k" * 32, b"K" * 32
    uid = bytes.fromhex("04112233445566")
    refs = {card_ref(k, kind, uid) for k in (key, other) for kind in ("union", "uid")}
    assert len(refs) == 4
    assert card_ref(key, "union", uid) == card_ref(key, "union", uid)


def test_unknown_kind_is_refused() -> None:
    assert "bank" not in KINDS
    with pytest.raises(ValueError, match="unknown card kind 'bank'"):
        card_ref(b"k" * 32, "bank", b"\x01")
