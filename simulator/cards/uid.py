"""A plain contactless card that only tells its UID (legacy MIFARE badge).

Answers PC/SC GET DATA ``FF CA 00 00 Le`` (PC/SC part 3, 3.2.2.1.3) as a
reader does for the card's UID, and "instruction not supported" to anything
else, which is what a memory card behind a PC/SC reader looks like.
"""

from __future__ import annotations

from dataclasses import dataclass

# PC/SC part 3 ATR for a contactless storage card (MIFARE Classic 1K).
ATR_MIFARE_1K = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")

SW_OK = b"\x90\x00"
SW_INS_NOT_SUPPORTED = b"\x6D\x00"
SW_WRONG_P1P2 = b"\x6A\x86"


@dataclass
class UidCard:
    """Behaviour of a UID-only card; ``uid`` is 4, 7 or 10 bytes."""

    uid: bytes
    atr: bytes = ATR_MIFARE_1K

    def reset(self) -> None:
        return None

    def respond(self, capdu: bytes) -> bytes:
        if len(capdu) >= 4 and capdu[0] == 0xFF and capdu[1] == 0xCA:
            if capdu[2] != 0x00:
                return SW_WRONG_P1P2
            le = capdu[4] if len(capdu) >= 5 else 0
            data = self.uid if le == 0 else self.uid[:le]
            return data + SW_OK
        return SW_INS_NOT_SUPPORTED
