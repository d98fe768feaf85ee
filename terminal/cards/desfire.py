"""Sans-I/O MIFARE DESFire EV2 secure messaging, the part the union card needs.

Commands are native DESFire commands wrapped in ISO 7816-4 APDUs (CLA 0x90,
P1 P2 = 00 00, Le = 00); the card answers data + 91 xx. The objects here only
build command bytes and judge response bytes: the async driver in
:mod:`terminal.cards.profiles` moves them. Layout and arithmetic follow NXP
AN12196 (EV2 secure messaging, identical on DESFire EV2 and NTAG 424 DNA) and
are restated in ``docs/card-profiles.md``.

Errors: a response of the wrong shape or status raises
:class:`MalformedResponse` / :class:`UnexpectedStatus`; a response whose
cryptography does not check out raises :class:`CardNotGenuine`.
"""

from __future__ import annotations

import functools
import hmac
import os
from dataclasses import dataclass, field

from terminal.cards import apdu
from terminal.cards.cmac import BLOCK, AesKey, iso9797_m2_unpad, truncate_mac
from terminal.exceptions import CardNotGenuine, MalformedResponse, UnexpectedStatus

CLA = 0x90

INS_SELECT_APPLICATION = 0x5A
INS_AUTHENTICATE_EV2_FIRST = 0x71
INS_ADDITIONAL_FRAME = 0xAF
INS_READ_DATA = 0xAD
INS_GET_CARD_UID = 0x51

SW_OK = 0x9100
SW_ADDITIONAL_FRAME = 0x91AF
SW_AUTHENTICATION_ERROR = 0x91AE
SW_APPLICATION_NOT_FOUND = 0x91A0

MAC_LEN = 8
#: UID sizes a DESFire can report (single, double, triple size).
UID_SIZES = (4, 7, 10)
#: Largest ReadData we issue in one frame: the answer (data + MACt) must fit
#: in one short R-APDU without 0xAF chaining.
MAX_READ = 240


def native(ins: int, data: bytes = b"") -> bytes:
    """Wrap a native DESFire command in an ISO 7816-4 APDU."""
    return apdu.command(CLA, ins, 0x00, 0x00, data, le=0)


@functools.lru_cache(maxsize=8)
def select_application(aid: bytes) -> bytes:
    """SelectApplication; ``aid`` is the 3 bytes exactly as sent on the wire.

    Built once per AID: every union-card tap starts with it, and the card layer
    asks for it twice (to send it, and to recognise it when judging a refusal).
    """
    if len(aid) != 3:
        raise ValueError("a DESFire AID is 3 bytes")
    return native(INS_SELECT_APPLICATION, aid)


def check_select_application(raw: bytes) -> None:
    """Accept only 91 00 with no data."""
    resp = apdu.expect(raw, "SelectApplication", SW_OK)
    if resp.data:
        raise MalformedResponse("SelectApplication: unexpected data in answer")


def rotate_left(data: bytes) -> bytes:
    """RndX' of the EV2 handshake: the value rotated left by one byte."""
    return data[1:] + data[:1]


def session_vectors(rnd_a: bytes, rnd_b: bytes) -> tuple[bytes, bytes]:
    """SV1 and SV2 of AN12196 §4.4 / datasheet §9.1.7.

    SV = label(2) || 00 01 00 80 || RndA[0..1] || (RndA[2..7] XOR RndB[0..5])
         || RndB[6..15] || RndA[8..15]   (byte 0 = most significant).
    """
    xored = int.from_bytes(rnd_a[2:8], "big") ^ int.from_bytes(rnd_b[0:6], "big")
    mixed = rnd_a[0:2] + xored.to_bytes(6, "big") + rnd_b[6:16] + rnd_a[8:16]
    tail = b"\x00\x01\x00\x80" + mixed
    return b"\xA5\x5A" + tail, b"\x5A\xA5" + tail


def session_keys(key: AesKey, rnd_a: bytes, rnd_b: bytes) -> tuple[bytes, bytes]:
    """Return (SesAuthENCKey, SesAuthMACKey) = CMAC(key, SV1), CMAC(key, SV2)."""
    sv1, sv2 = session_vectors(rnd_a, rnd_b)
    return key.cmac(sv1), key.cmac(sv2)


@dataclass
class Session:
    """An authenticated EV2 session: TI, the two session keys and CmdCtr.

    Mutable on purpose: CmdCtr advances by one per verified exchange, and a
    replayed or reordered answer then fails its MAC.
    """

    ti: bytes
    enc_key: bytes = field(repr=False)  # keys never in logs
    mac_key: bytes = field(repr=False)
    cmd_ctr: int = 0

    def __post_init__(self) -> None:
        # Plain attributes, not cached properties: a tap reads them a few times, cold.
        # AesKey builds its cipher contexts on first use, so a MAC-mode read never makes an ENC one.
        self._enc_aes = AesKey(self.enc_key)
        self._mac_aes = AesKey(self.mac_key)

    def _ctr(self, offset: int = 0) -> bytes:
        return ((self.cmd_ctr + offset) & 0xFFFF).to_bytes(2, "little")

    def command_iv(self) -> bytes:
        """IVc = E(SesAuthENCKey, A5 5A || TI || CmdCtr || 00*8)."""
        return self._enc_aes.encrypt_block(b"\xA5\x5A" + self.ti + self._ctr() + bytes(8))

    def response_iv(self) -> bytes:
        """IVr = E(SesAuthENCKey, 5A A5 || TI || CmdCtr+1 || 00*8)."""
        return self._enc_aes.encrypt_block(b"\x5A\xA5" + self.ti + self._ctr(1) + bytes(8))

    def command_mac(self, ins: int, header: bytes, data: bytes = b"") -> bytes:
        """MACt over Cmd || CmdCtr || TI || CmdHeader || CmdData."""
        return truncate_mac(self._mac_aes.cmac(bytes([ins]) + self._ctr() + self.ti + header + data))

    def mac_command(self, ins: int, header: bytes = b"") -> bytes:
        """A CommMode.MAC command (header only, no data): header || MACt."""
        return native(ins, header + self.command_mac(ins, header))

    def verify_response(self, raw: bytes, what: str) -> bytes:
        """Check 91 00 and the response MACt, advance CmdCtr, return the data.

        MACt = odd bytes of CMAC(SesAuthMACKey, 00 || CmdCtr+1 || TI || data).
        """
        resp = apdu.expect(raw, what, SW_OK)
        if len(resp.data) < MAC_LEN:
            raise MalformedResponse(f"{what}: answer too short for a MAC")
        data, mac = resp.data[:-MAC_LEN], resp.data[-MAC_LEN:]
        expected = truncate_mac(self._mac_aes.cmac(b"\x00" + self._ctr(1) + self.ti + data))
        if not hmac.compare_digest(mac, expected):
            raise CardNotGenuine(f"{what}: response MAC does not verify")
        self.cmd_ctr += 1
        return data

    # -- ReadData (CommMode.MAC) ------------------------------------------------

    def read_data(self, file_no: int, offset: int, length: int) -> bytes:
        """ReadData of a standard file whose communication mode is MAC."""
        if not 0 < length <= MAX_READ:
            raise ValueError(f"read length must be 1..{MAX_READ}")
        header = bytes([file_no]) + offset.to_bytes(3, "little") + length.to_bytes(3, "little")
        return self.mac_command(INS_READ_DATA, header)

    def parse_read_data(self, raw: bytes, length: int) -> bytes:
        """Return exactly ``length`` verified bytes, or raise."""
        resp = apdu.split(raw, "ReadData")
        if resp.sw == SW_OK and len(resp.data) != length + MAC_LEN:
            raise MalformedResponse(f"ReadData: {len(resp.data)} bytes, expected {length + MAC_LEN}")
        return self.verify_response(raw, "ReadData")

    # -- GetCardUID (CommMode.Full answer) -------------------------------------

    def get_card_uid(self) -> bytes:
        """GetCardUID: no data, so the command carries only its MACt."""
        return self.mac_command(INS_GET_CARD_UID)

    def parse_get_card_uid(self, raw: bytes) -> bytes:
        """Verify the MAC over the ciphertext, decrypt with IVr, unpad, return the UID."""
        resp = apdu.split(raw, "GetCardUID")
        if resp.sw == SW_OK and len(resp.data) != BLOCK + MAC_LEN:
            raise MalformedResponse(f"GetCardUID: {len(resp.data)} bytes, expected {BLOCK + MAC_LEN}")
        iv = self.response_iv()  # before verify_response advances CmdCtr
        encrypted = self.verify_response(raw, "GetCardUID")
        uid = iso9797_m2_unpad(self._enc_aes.cbc_decrypt(iv, encrypted))
        if uid is None or len(uid) not in UID_SIZES:
            raise MalformedResponse("GetCardUID: decrypted UID is not well formed")
        return uid


def _auth_answer(raw: bytes, status: int, length: int) -> bytes:
    """Judge one handshake answer: 91 AE means the card does not share our key."""
    resp = apdu.split(raw, "AuthenticateEV2First")
    if resp.sw == SW_AUTHENTICATION_ERROR:
        raise CardNotGenuine("AuthenticateEV2First: card refused the key")
    if resp.sw != status:
        raise UnexpectedStatus("AuthenticateEV2First", resp.sw)
    if len(resp.data) != length:
        raise MalformedResponse(f"AuthenticateEV2First: {len(resp.data)} bytes, expected {length}")
    return resp.data


class AuthenticateEv2First:
    """The two-pass AuthenticateEV2First handshake as a small state machine.

    ``command()`` -> card -> ``answer_challenge(raw)`` -> card -> ``finish(raw)``.
    The static key is dropped as soon as the session keys exist, so a
    finished handshake object holds nothing worth stealing.
    """

    def __init__(self, key: bytes, key_no: int, rnd_a: bytes | None = None) -> None:
        if len(key) != BLOCK:
            raise ValueError("AuthenticateEV2First needs an AES-128 key")
        self._key: AesKey | None = AesKey(key)
        self.key_no = key_no
        self._rnd_a = rnd_a if rnd_a is not None else os.urandom(BLOCK)
        if len(self._rnd_a) != BLOCK:
            raise ValueError("RndA is 16 bytes")
        self._rnd_b: bytes | None = None

    def command(self) -> bytes:
        """First pass: KeyNo and LenCap = 0 (no PCDcap2 sent)."""
        return native(INS_AUTHENTICATE_EV2_FIRST, bytes([self.key_no, 0x00]))

    def answer_challenge(self, raw: bytes) -> bytes:
        """Take E(K, RndB), return the second-pass command E(K, RndA || RndB')."""
        if self._key is None or self._rnd_b is not None:
            raise RuntimeError("handshake step out of order")
        challenge = _auth_answer(raw, SW_ADDITIONAL_FRAME, BLOCK)
        self._rnd_b = self._key.cbc_decrypt(bytes(BLOCK), challenge)
        token = self._key.cbc_encrypt(bytes(BLOCK), self._rnd_a + rotate_left(self._rnd_b))
        return native(INS_ADDITIONAL_FRAME, token)

    def finish(self, raw: bytes) -> Session:
        """Check E(K, TI || RndA' || PDcap2 || PCDcap2) and derive the session."""
        if self._key is None or self._rnd_b is None:
            raise RuntimeError("handshake step out of order")
        plain = self._key.cbc_decrypt(bytes(BLOCK), _auth_answer(raw, SW_OK, 2 * BLOCK))
        if not hmac.compare_digest(plain[4:20], rotate_left(self._rnd_a)):
            raise CardNotGenuine("AuthenticateEV2First: card did not prove the key (RndA')")
        enc_key, mac_key = session_keys(self._key, self._rnd_a, self._rnd_b)
        self._key = None
        return Session(ti=plain[0:4], enc_key=enc_key, mac_key=mac_key)
