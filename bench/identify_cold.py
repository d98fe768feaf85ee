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

import time

from drivers.pcsc import _drive  # how the monitor thread runs the arrival work: no loop
from simulator.people import cast
from terminal.cards.sam import SoftwareSam
from terminal.identify import CardIdentifier

from .auth_bench import PLACE_AFTER_S
from .stats import percentile

READ_MASTER = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
UID_MASTER = bytes.fromhex("FFEEDDCCBBAA99887766554433221100")
CARD_KEY = bytes(range(32))


class TimedCard:
    """A CardChannel over a simulated card that adds up the time the card itself took."""

    reader = "in-memory"

    def __init__(self, card: object) -> None:
        self.card = card
        self.card_s = 0.0

    async def transmit(self, apdu: bytes) -> bytes:
        started = time.perf_counter()
        answer = self.card.respond(apdu)  # type: ignore[attr-defined]
        self.card_s += time.perf_counter() - started
        return answer


def own_ms(reads: int, idle_s: float) -> list[float]:
    """Milliseconds of terminal work per union-card read, card excluded, ``idle_s`` apart."""
    person = cast(1)[0]
    card = person.union_card(READ_MASTER, UID_MASTER)
    identify = CardIdentifier(("union",), CARD_KEY, SoftwareSam({1: READ_MASTER, 2: UID_MASTER}))
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
    """Entry point for ``python -m bench``: ``reads`` cold reads, three times as many warm ones."""
    own_ms(20, 0)  # imports, first contexts: a terminal has made them before its first tap
    figures: dict[str, float] = {}
    for name, samples in (("warm", own_ms(3 * reads, 0)), ("cold", own_ms(reads, PLACE_AFTER_S))):
        for p in (50, 90):
            figures[f"identify_own_{name}_p{p}_ms"] = round(percentile(samples, p), 3)
    return figures
