"""A simulated SAM card with the union applet (docs/card-profiles.md, "SAM applet").

Holds master keys by slot and answers DIVERSIFY with the AN10922 key for a
UID and AID; the masters themselves are never sent. Independent of
``terminal`` like the other simulated cards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.cards.desfire import SYSTEM_ID, an10922
from simulator.vcard import CardPulled

#: ATR of a contact SAM (T=1), shaped like common SAM AV2/AV3 ATRs.
ATR_SAM = bytes.fromhex("3BDF18FF81F1FE43003F03834D494641524520506C75732053414D3B")
APPLET_AID = bytes.fromhex("F0554E494F4E53414D")

SW_OK = b"\x90\x00"
SW_WRONG_LENGTH = b"\x67\x00"
SW_BAD_DATA = b"\x6A\x80"
SW_NOT_FOUND = b"\x6A\x82"
SW_NO_SLOT = b"\x6A\x88"
SW_CONDITIONS = b"\x69\x85"
SW_INS = b"\x6D\x00"
SW_CLA = b"\x6E\x00"


@dataclass
class SamCard:
    """Behaviour of the SAM: ``masters`` maps slot number to a 16-byte master key."""

    masters: dict[int, bytes]
    pull_at: int | None = None
    atr: bytes = ATR_SAM
    _selected: bool = field(default=False, init=False, repr=False)
    _count: int = field(default=0, init=False, repr=False)

    def reset(self) -> None:
        self._selected = False
        self._count = 0

    def respond(self, capdu: bytes) -> bytes:
        self._count += 1
        if self.pull_at is not None and self._count >= self.pull_at:
            raise CardPulled()
        if len(capdu) < 4:
            return SW_WRONG_LENGTH
        cla, ins, p1 = capdu[0], capdu[1], capdu[2]
        body = capdu[5 : 5 + capdu[4]] if len(capdu) > 5 else b""
        if cla == 0x00 and ins == 0xA4:
            self._selected = body == APPLET_AID
            return SW_OK if self._selected else SW_NOT_FOUND
        if cla != 0x80:
            return SW_CLA
        if ins != 0x10:
            return SW_INS
        if not self._selected:
            return SW_CONDITIONS
        return self._diversify(p1, body)

    def _diversify(self, slot: int, body: bytes) -> bytes:
        if not body or len(body) != 1 + body[0] + 3:
            return SW_WRONG_LENGTH
        if body[0] not in (0, 4, 7, 10):
            return SW_BAD_DATA
        master = self.masters.get(slot)
        if master is None:
            return SW_NO_SLOT
        uid, aid = body[1 : 1 + body[0]], body[1 + body[0] :]
        return an10922(master, uid + aid + SYSTEM_ID) + SW_OK
