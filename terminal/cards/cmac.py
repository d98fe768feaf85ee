"""AES primitives the card profiles share: CMAC, AN10922 diversification, CBC.

Kept apart from the protocol modules so the arithmetic can be pinned to
published vectors (RFC 4493, NXP AN10922, NXP AN12196) on its own: if a
vector test fails here, no protocol test is worth reading.

Only :mod:`cryptography`'s AES block (ECB) is used; CBC and CMAC are
chained over it by :class:`AesKey`, and the two places where NXP departs
from plain CMAC (forced two-block padding in AN10922, odd-byte truncation in
EV2 secure messaging) are written out here.
"""

from __future__ import annotations

from typing import Any

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


class AesKey:
    """One AES-128 key, ready: its ECB contexts and CMAC subkeys are made once, then reused.

    Why not a fresh :class:`Cipher` per operation: on this hardware a cold
    CPU (a terminal between taps) takes about 23 µs to build one, and a
    union-card tap used to build nine, 0.2 ms; an open ECB context encrypts
    a block in about 4 µs. CBC and CMAC are chained here by
    hand over that one context, exactly as NIST SP 800-38A/B and RFC 4493
    define them; the RFC 4493, AN10922 and AN12196 vectors pin the result.

    Contexts are made on first use (a session key that only MACs never builds
    a decryptor). Not for concurrent use from threads that release the GIL
    mid-call; a shared master key is guarded by its owner.
    """

    __slots__ = ("_key", "_enc", "_dec", "_subkeys")

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        self._key = key
        self._enc: Any = None
        self._dec: Any = None
        self._subkeys: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return "AesKey(...)"  # never the key

    def encrypt_block(self, block: bytes) -> bytes:
        """E(K, block): the building block of IV derivation, CBC and CMAC."""
        if len(block) != BLOCK:
            raise ValueError("one AES block is 16 bytes")
        return self._encryptor().update(block)

    def cbc_encrypt(self, iv: bytes, data: bytes) -> bytes:
        """CBC without padding: callers pad explicitly (ISO 9797-1 M2) because
        the card protocols say exactly where padding goes."""
        _check_blocks(iv, data)
        return b"".join(self._chain(iv, data))

    def cbc_decrypt(self, iv: bytes, data: bytes) -> bytes:
        """Inverse of :meth:`cbc_encrypt`; no padding is removed here."""
        _check_blocks(iv, data)
        if not data:
            return b""
        if self._dec is None:
            self._dec = Cipher(algorithms.AES(self._key), modes.ECB()).decryptor()
        plain = self._dec.update(data)  # every block at once; the chaining is a XOR after
        size = len(data)
        mask = int.from_bytes(iv + data[:-BLOCK], "big")
        return (int.from_bytes(plain, "big") ^ mask).to_bytes(size, "big")

    def subkeys(self) -> tuple[bytes, bytes]:
        """Return (K1, K2) of RFC 4493 §2.3; AN10922 needs K2 where plain CMAC would not."""
        k1, k2 = self._subkey_ints()
        return k1.to_bytes(BLOCK, "big"), k2.to_bytes(BLOCK, "big")

    def cmac(self, data: bytes) -> bytes:
        """Full 16-byte AES-CMAC (RFC 4493)."""
        k1, k2 = self._subkey_ints()
        if data and not len(data) % BLOCK:
            head, last = data[:-BLOCK], int.from_bytes(data[-BLOCK:], "big") ^ k1
        else:
            cut = len(data) - len(data) % BLOCK
            head = data[:cut]
            last = int.from_bytes(iso9797_m2_pad(data[cut:], BLOCK), "big") ^ k2
        chain = self._chain(bytes(BLOCK), head)
        previous = int.from_bytes(chain[-1], "big") if chain else 0
        return self._encryptor().update((previous ^ last).to_bytes(BLOCK, "big"))

    def _chain(self, iv: bytes, data: bytes) -> list[bytes]:
        """The CBC ciphertext blocks of whole-block ``data``: each block XOR the one before, encrypted."""
        enc = self._encryptor().update
        previous = int.from_bytes(iv, "big")
        blocks = []
        for at in range(0, len(data), BLOCK):
            block = enc((previous ^ int.from_bytes(data[at:at + BLOCK], "big")).to_bytes(BLOCK, "big"))
            blocks.append(block)
            previous = int.from_bytes(block, "big")
        return blocks

    def _encryptor(self) -> Any:
        if self._enc is None:
            self._enc = Cipher(algorithms.AES(self._key), modes.ECB()).encryptor()
        return self._enc

    def _subkey_ints(self) -> tuple[int, int]:
        if self._subkeys is None:
            k1 = _double(int.from_bytes(self._encryptor().update(bytes(BLOCK)), "big"))
            self._subkeys = (k1, _double(k1))
        return self._subkeys


def _check_blocks(iv: bytes, data: bytes) -> None:
    if len(iv) != BLOCK:
        raise ValueError("the IV is one 16-byte block")
    if len(data) % BLOCK:
        raise ValueError("CBC input must be a whole number of blocks")


def _double(value: int) -> int:
    """Multiply by x in GF(2^128): the subkey step of RFC 4493 §2.3."""
    value <<= 1
    if value >> 128:
        value = (value & ((1 << 128) - 1)) ^ _RB
    return value


def aes_cmac(key: bytes, data: bytes) -> bytes:
    """Full 16-byte AES-CMAC (RFC 4493) with a key used once."""
    return AesKey(key).cmac(data)


def truncate_mac(mac: bytes) -> bytes:
    """EV2 secure messaging's MACt: the 8 odd-indexed bytes (1, 3, ... 15)."""
    return mac[1::2]


def cmac_subkeys(key: bytes) -> tuple[bytes, bytes]:
    """Return (K1, K2) of RFC 4493 for ``key``."""
    return AesKey(key).subkeys()


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


def an10922(master: AesKey, div_input: bytes) -> bytes:
    """Diversify an AES-128 key as NXP AN10922 §2.2 specifies.

    M = 0x01 || div_input. Unlike plain CMAC, AN10922 always processes two
    blocks: a message shorter than 32 bytes is M2-padded to 32 bytes and the
    last block is masked with K2; a 32-byte message is masked with K1.
    """
    if not 1 <= len(div_input) <= 31:
        raise ValueError("AN10922 diversification input is 1..31 bytes")
    message = bytes([AN10922_DIV_AES128]) + div_input
    k1, k2 = master._subkey_ints()
    if len(message) == 2 * BLOCK:
        subkey = k1
    else:
        message = iso9797_m2_pad(message, 2 * BLOCK)
        subkey = k2
    last = (int.from_bytes(message[BLOCK:], "big") ^ subkey).to_bytes(BLOCK, "big")
    return master.cbc_encrypt(bytes(BLOCK), message[:BLOCK] + last)[BLOCK:]


def an10922_aes128(master_key: bytes, div_input: bytes) -> bytes:
    """:func:`an10922` with a master key given as bytes."""
    return an10922(AesKey(master_key), div_input)
