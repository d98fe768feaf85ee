"""AES primitives the card profiles share: CMAC, AN10922 diversification, CBC.

Kept apart from the protocol modules so the arithmetic can be pinned to
published vectors (RFC 4493, NXP AN10922, NXP AN12196) on its own: if a
vector test fails here, no protocol test is worth reading.

Only :mod:`cryptography` primitives are used (AES block, CMAC); the two
places where NXP departs from plain CMAC (forced two-block padding in
AN10922, odd-byte truncation in EV2 secure messaging) are written out here.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import cmac as _cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16

#: AN10922 §2.2: divConstant1 for an AES-128 key.
AN10922_DIV_AES128 = 0x01

#: The CMAC constant R_b for a 128-bit block (NIST SP 800-38B).
_RB = 0x87


def _check_key(key: bytes) -> None:
    """Refuse anything but AES-128: every key on our cards is AES-128, and a
    wrong length would otherwise surface as a confusing library error."""
    if len(key) != BLOCK:
        raise ValueError(f"AES-128 key must be 16 bytes, got {len(key)}")


def aes_ecb_encrypt_block(key: bytes, block: bytes) -> bytes:
    """Encrypt one block; the building block of IV derivation and CBC-MAC."""
    _check_key(key)
    if len(block) != BLOCK:
        raise ValueError("one AES block is 16 bytes")
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def aes_cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """CBC without padding: callers pad explicitly (ISO 9797-1 M2) because
    the card protocols say exactly where padding goes."""
    _check_key(key)
    if len(data) % BLOCK:
        raise ValueError("CBC input must be a whole number of blocks")
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def aes_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """Inverse of :func:`aes_cbc_encrypt`; no padding is removed here."""
    _check_key(key)
    if len(data) % BLOCK:
        raise ValueError("CBC input must be a whole number of blocks")
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return dec.update(data) + dec.finalize()


def aes_cmac(key: bytes, data: bytes) -> bytes:
    """Full 16-byte AES-CMAC (RFC 4493)."""
    _check_key(key)
    mac = _cmac.CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def truncate_mac(mac: bytes) -> bytes:
    """EV2 secure messaging's MACt: the 8 odd-indexed bytes (1, 3, ... 15)."""
    return mac[1::2]


def _double(block: bytes) -> bytes:
    """Multiply by x in GF(2^128): the subkey step of RFC 4493 §2.3."""
    value = int.from_bytes(block, "big") << 1
    if value >> 128:
        value = (value & ((1 << 128) - 1)) ^ _RB
    return value.to_bytes(BLOCK, "big")


def cmac_subkeys(key: bytes) -> tuple[bytes, bytes]:
    """Return (K1, K2) of RFC 4493; AN10922 needs K2 where plain CMAC would not."""
    l_block = aes_ecb_encrypt_block(key, bytes(BLOCK))
    k1 = _double(l_block)
    return k1, _double(k1)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def iso9797_m2_pad(data: bytes, size: int | None = None) -> bytes:
    """Append 0x80 then zeros up to the next block (or up to ``size``)."""
    padded = data + b"\x80"
    target = size if size is not None else -(-len(padded) // BLOCK) * BLOCK
    if len(padded) > target:
        raise ValueError("data too long for the padding target")
    return padded + bytes(target - len(padded))


def iso9797_m2_unpad(data: bytes) -> bytes | None:
    """Strip M2 padding; ``None`` when the padding is not well formed.

    Returns ``None`` rather than raising so the protocol layer decides which
    error the caller sees (a bad pad after a good MAC is not a crypto fault).
    """
    stripped = data.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80 or len(data) - len(stripped) >= BLOCK:
        return None
    return stripped[:-1]


def an10922_aes128(master_key: bytes, div_input: bytes) -> bytes:
    """Diversify an AES-128 key as NXP AN10922 §2.2 specifies.

    M = 0x01 || div_input. Unlike plain CMAC, AN10922 always processes two
    blocks: a message shorter than 32 bytes is M2-padded to 32 bytes and the
    last block is masked with K2; a 32-byte message is masked with K1.
    """
    if not 1 <= len(div_input) <= 31:
        raise ValueError("AN10922 diversification input is 1..31 bytes")
    message = bytes([AN10922_DIV_AES128]) + div_input
    k1, k2 = cmac_subkeys(master_key)
    if len(message) == 2 * BLOCK:
        subkey = k1
    else:
        message = iso9797_m2_pad(message, 2 * BLOCK)
        subkey = k2
    last = _xor(message[BLOCK:], subkey)
    return aes_cbc_encrypt(master_key, bytes(BLOCK), message[:BLOCK] + last)[BLOCK:]
