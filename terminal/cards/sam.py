"""Where the master keys live: the secure access module (SAM) seam.

The terminal never needs a master key, only the per-card key diversified
from it (NXP AN10922). A :class:`Sam` hands out exactly that, so core objects
hold a card key for the length of one handshake and never a master key.
Two implementations: :class:`SoftwareSam` (key file on the terminal, for
small sites and tests) and :class:`PcscSam` (a SAM smart card in a second
reader slot, whose APDU set is specified in ``docs/card-profiles.md``).

Keys are never logged, never put in exception messages and never shown by
``repr``.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from terminal.cards import apdu
from terminal.cards.cmac import AesKey, an10922
from terminal.exceptions import CardError, ConfigError, HardwareError, SamError
from terminal.hardware import CardChannel

log = logging.getLogger("unionterm.cards.sam")

#: AN10922 system identifier appended to every diversification input.
SYSTEM_IDENTIFIER = b"UNIONTERM"

#: AID of the SAM applet that :class:`PcscSam` talks to.
SAM_APPLET_AID = bytes.fromhex("F0554E494F4E53414D")  # F0 "UNIONSAM"
SAM_CLA = 0x80
SAM_INS_DIVERSIFY = 0x10

KEY_LEN = 16


def diversification_input(uid: bytes, aid: bytes) -> bytes:
    """UID || AID || SystemIdentifier; an empty UID makes an application-wide key."""
    if len(uid) not in (0, 4, 7, 10) or len(aid) != 3:
        raise SamError("diversification input: bad UID or AID length")
    return uid + aid + SYSTEM_IDENTIFIER


@runtime_checkable
class Sam(Protocol):
    """Supplies card keys diversified from master keys it keeps to itself."""

    async def diversified_key(self, key_slot: int, uid: bytes, aid: bytes) -> bytes:
        """AN10922 AES-128 key for (UID, AID) from the master key in ``key_slot``.

        Raises :class:`SamError` when the slot is unknown or the SAM fails.
        """
        ...


class SoftwareSam:
    """Master keys from a file only root can read, held in memory.

    File format: a JSON object ``{"<slot>": "<32 hex digits>", ...}``, or text
    lines ``<slot> <32 hex digits>`` with ``#`` comments.
    """

    def __init__(self, keys: Mapping[int, bytes]) -> None:
        for slot, key in keys.items():
            if not 0 <= slot <= 255 or len(key) != KEY_LEN:
                raise ValueError(f"key slot {slot}: AES-128 keys only, slots 0..255")
        self._keys = {slot: AesKey(key) for slot, key in keys.items()}
        self._lock = threading.Lock()  # a master key's contexts serve one diversification at a time

    def __repr__(self) -> str:
        return f"SoftwareSam(slots={sorted(self._keys)})"

    @property
    def slots(self) -> list[int]:
        return sorted(self._keys)

    @classmethod
    def load(cls, path: str) -> "SoftwareSam":
        """Read a key file, refusing one that anyone but its owner may read."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise ConfigError(path, None, f"cannot open key file: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(path, None, "key file is not a regular file")
            if info.st_mode & 0o077:
                raise ConfigError(
                    path,
                    None,
                    f"key file mode is {stat.S_IMODE(info.st_mode):04o}: group/others may read it; "
                    "run chmod 600 on it",
                )
            with os.fdopen(fd, "r", encoding="utf-8", closefd=False) as fh:
                text = fh.read(64 * 1024)
        finally:
            os.close(fd)
        sam = cls(_parse_key_file(path, text))
        log.info("event=sam_loaded kind=software slots=%d", len(sam.slots))
        return sam

    async def diversified_key(self, key_slot: int, uid: bytes, aid: bytes) -> bytes:
        master = self._keys.get(key_slot)
        if master is None:
            raise SamError(f"software SAM has no key in slot {key_slot}")
        div_input = diversification_input(uid, aid)
        with self._lock:
            return an10922(master, div_input)


def _parse_key_file(path: str, text: str) -> dict[int, bytes]:
    """Both accepted formats to slot -> key; errors name the entry, never the key."""
    if text.lstrip().startswith("{"):
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ConfigError(path, None, f"not valid JSON (line {getattr(exc, 'lineno', '?')})") from None
        if not isinstance(raw, dict):
            raise ConfigError(path, None, "expected an object of slot -> hex key")
        pairs = [(str(k), v) for k, v in raw.items()]
    else:
        pairs = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ConfigError(path, f"line {number}", "expected '<slot> <hex key>'")
            pairs.append((parts[0], parts[1]))
    keys: dict[int, bytes] = {}
    for slot_text, hex_key in pairs:
        try:
            slot = int(slot_text, 0)
            key = bytes.fromhex(hex_key) if isinstance(hex_key, str) else b""
        except ValueError:
            raise ConfigError(path, f"slot {slot_text}", "slot must be a number and key hex") from None
        if not 0 <= slot <= 255 or len(key) != KEY_LEN:
            raise ConfigError(path, f"slot {slot_text}", "slot must be 0..255 and key 16 bytes (32 hex digits)")
        if slot in keys:
            raise ConfigError(path, f"slot {slot_text}", "slot given twice")
        keys[slot] = key
    if not keys:
        raise ConfigError(path, None, "key file holds no key")
    return keys


def diversify_command(key_slot: int, uid: bytes, aid: bytes) -> bytes:
    """SAM DIVERSIFY: 80 10 <slot> 00 Lc [len(UID) || UID || AID] 10."""
    if not 0 <= key_slot <= 255:
        raise SamError("SAM key slot out of range")
    diversification_input(uid, aid)  # same validation as the software SAM
    return apdu.command(SAM_CLA, SAM_INS_DIVERSIFY, key_slot, 0x00, bytes([len(uid)]) + uid + aid, le=KEY_LEN)


def parse_diversify(raw: bytes) -> bytes:
    """The 16-byte key from a 9000 answer; anything else is a SAM fault."""
    try:
        resp = apdu.expect(raw, "SAM DIVERSIFY")
    except CardError as exc:
        raise SamError(str(exc)) from None
    if len(resp.data) != KEY_LEN:
        raise SamError("SAM DIVERSIFY: answer is not a 16-byte key")
    return resp.data


class PcscSam:
    """A SAM card behind its own :class:`CardChannel` (second reader or SAM slot).

    Selects its applet once, and again after any failure, so a SAM that was
    reset between taps recovers on the next one.
    """

    def __init__(self, channel: CardChannel) -> None:
        self._channel = channel
        self._selected = False

    def __repr__(self) -> str:
        return "PcscSam()"

    async def _transmit(self, command: bytes) -> bytes:
        try:
            return await self._channel.transmit(command)
        except (CardError, HardwareError) as exc:
            self._selected = False
            raise SamError(f"SAM did not answer: {type(exc).__name__}") from None

    async def _select(self) -> None:
        raw = await self._transmit(apdu.command(0x00, 0xA4, 0x04, 0x00, SAM_APPLET_AID, le=0))
        try:
            apdu.expect(raw, "SAM SELECT")
        except CardError as exc:
            raise SamError(str(exc)) from None
        self._selected = True

    async def diversified_key(self, key_slot: int, uid: bytes, aid: bytes) -> bytes:
        if not self._selected:
            await self._select()
        try:
            return parse_diversify(await self._transmit(diversify_command(key_slot, uid, aid)))
        except SamError:
            self._selected = False
            raise
