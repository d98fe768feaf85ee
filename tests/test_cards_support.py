"""The lowest-layer fake for card tests: a CardChannel that calls a behaviour.

Simulated cards (``simulator/cards/``) are what the vpcd transport serves to
a real pcscd; here the same behaviours answer directly, so every profile can
be driven byte for byte in milliseconds. Imported by the other card tests.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from simulator.cards.uid import UidCard
from simulator.vcard import CardBehaviour, CardPulled
from terminal.exceptions import CardRemoved
from terminal.hardware import CardChannel


class BehaviourChannel:
    """CardChannel over a behaviour; ``rewrite`` may tamper with answer number N."""

    def __init__(self, behaviour: CardBehaviour, rewrite: Callable[[int, bytes], bytes] | None = None) -> None:
        self.behaviour = behaviour
        self.rewrite = rewrite
        self.sent: list[bytes] = []
        behaviour.reset()

    async def transmit(self, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        try:
            answer = self.behaviour.respond(apdu)
        except CardPulled:
            raise CardRemoved("card left the field") from None
        return self.rewrite(len(self.sent), answer) if self.rewrite else answer


def test_channel_satisfies_the_protocol() -> None:
    assert isinstance(BehaviourChannel(UidCard(b"\x04\x01\x02\x03")), CardChannel)


async def test_channel_relays_answers_and_records_commands() -> None:
    channel = BehaviourChannel(UidCard(bytes.fromhex("04A1B2C3D4E5F6")))
    assert await channel.transmit(bytes.fromhex("FFCA000000")) == bytes.fromhex("04A1B2C3D4E5F69000")
    assert channel.sent == [bytes.fromhex("FFCA000000")]


async def test_a_pulled_card_is_card_removed() -> None:
    class Gone:
        atr = b"\x3B\x00"

        def reset(self) -> None:
            return None

        def respond(self, capdu: bytes) -> bytes:
            raise CardPulled()

    with pytest.raises(CardRemoved):
        await BehaviourChannel(Gone()).transmit(b"\x00\xA4\x04\x00\x00")
