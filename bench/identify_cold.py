"""The terminal's own work in a union-card read, warm and cold: why the auth ratio sits where it does.

``auth_bench`` shows the terminal's card read taking about 0.6 ms more than
bare pyscard's exchange at p50. This bench takes the card and PC/SC out: the
production :class:`terminal.identify.CardIdentifier` (software SAM) reads a
genuine simulated union card answering in memory, driven to its end in the
calling thread as the PC/SC monitor thread drives it, and only the time
outside the card's own answers is counted. Run back to back, that is the
code's cost on a warm CPU; run :data:`auth_bench.PLACE_AFTER_S` after the
read before, as every bench tap and every real tap is, it is the cost on a
cold one. The two differ several times over on this machine, for the same
bytecode and the same OpenSSL calls.
"""

from __future__ import annotations

import os
import time

from drivers.pcsc import _drive  # how the monitor thread runs the arrival work: no loop
from simulator.cards.desfire import UnionCard
from simulator.people import Person, cast
from terminal.cards.sam import SoftwareSam
from terminal.cards.unionapp import READ_KEY_SLOT, UID_KEY_SLOT
from terminal.identify import CardIdentifier

from .auth_bench import PLACE_AFTER_S
from .stats import percentiles_ms


class TimedCard:
    """A CardChannel over a simulated card that adds up the time the card itself took."""

    reader = "in-memory"

    def __init__(self, card: UnionCard) -> None:
        self.card = card
        self.card_s = 0.0

    async def transmit(self, apdu: bytes) -> bytes:
        started = time.perf_counter()
        answer = self.card.respond(apdu)
        self.card_s += time.perf_counter() - started
        return answer


def own_ms(person: Person, card: UnionCard, identify: CardIdentifier, reads: int, idle_s: float
           ) -> list[float]:
    """Milliseconds of terminal work per union-card read, card excluded, ``idle_s`` apart."""
    samples = []
    for _ in range(reads):
        if idle_s:
            time.sleep(idle_s)
        card.reset()
        channel = TimedCard(card)
        started = time.perf_counter()
        identity = _drive(identify(channel, card.atr))
        total = time.perf_counter() - started
        assert identity.member_no == person.member_no, identity
        samples.append((total - channel.card_s) * 1000)
    return samples


def run(reads: int = 100) -> dict[str, float]:
    """Entry point for ``python -m bench``: ``reads`` cold reads, three times as many warm ones.

    One card and one identifier throughout, as a terminal keeps its SAM's
    key contexts from tap to tap; the first reads, not counted, make them.
    """
    read_master, uid_master = os.urandom(16), os.urandom(16)
    person = cast(1)[0]
    card = person.union_card(read_master, uid_master)
    sam = SoftwareSam({READ_KEY_SLOT: read_master, UID_KEY_SLOT: uid_master})
    identify = CardIdentifier(("union",), os.urandom(32), sam)
    own_ms(person, card, identify, 20, 0)
    figures: dict[str, float] = {}
    for name, idle_s, count in (("warm", 0.0, 3 * reads), ("cold", PLACE_AFTER_S, reads)):
        samples = own_ms(person, card, identify, count, idle_s)
        figures.update(percentiles_ms(f"identify_own_{name}", samples, (50, 90)))
    return figures
