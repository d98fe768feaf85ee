"""Tap to decision through pcscd + vpcd, against the floor of bare pyscard.

Both figures start at the same instant: the moment PC/SC reports the card
present (``SCardGetStatusChange`` returns). The terminal's figure ends when
its decision is made (card read over PC/SC, member looked up, rule applied);
the floor's when bare pyscard has connected, sent the same APDU
(``FF CA 00 00 00``) to the same virtual card and disconnected. Blocks of
terminal taps and floor taps alternate so a noisy machine weighs on both.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from smartcard import scard

from simulator.cards.uid import UidCard
from simulator.rig import Rig
from simulator.services import Pcscd
from simulator.vcard import VirtualCard
from terminal import eventloop

from .stats import percentiles_ms

GET_UID = [0xFF, 0xCA, 0x00, 0x00, 0x00]


def floor_taps(pcscd: Pcscd, reader: str, card: UidCard, n: int) -> list[float]:
    """Bare pyscard: wait for presence, then connect, transmit, disconnect; ms each."""
    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hr == scard.SCARD_S_SUCCESS
    out: list[float] = []
    try:
        state = scard.SCARD_STATE_UNAWARE
        for _ in range(n):
            vcard = VirtualCard(card, pcscd.card_port())
            vcard.place()
            while True:
                hr, result = scard.SCardGetStatusChange(ctx, 2000, [(reader, state)])
                if hr != scard.SCARD_S_SUCCESS:
                    continue
                state = result[0][1] & ~scard.SCARD_STATE_CHANGED
                if state & scard.SCARD_STATE_PRESENT:
                    break
            t0 = time.perf_counter()
            hr, handle, proto = scard.SCardConnect(ctx, reader, scard.SCARD_SHARE_SHARED,
                                                   scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
            assert hr == scard.SCARD_S_SUCCESS, hr
            hr, response = scard.SCardTransmit(handle, proto, GET_UID)
            assert hr == scard.SCARD_S_SUCCESS and response[-2:] == [0x90, 0x00], (hr, response)
            scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
            out.append((time.perf_counter() - t0) * 1000)
            vcard.remove()
            while state & scard.SCARD_STATE_PRESENT:
                hr, result = scard.SCardGetStatusChange(ctx, 2000, [(reader, state)])
                if hr == scard.SCARD_S_SUCCESS:
                    state = result[0][1] & ~scard.SCARD_STATE_CHANGED
    finally:
        scard.SCardReleaseContext(ctx)
    return out


async def run_async(taps: int = 1000, block: int = 100) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="unionterm-bench-tap-"))
    terminal_ms: list[float] = []
    commit_ms: list[float] = []
    floor_ms: list[float] = []
    with Pcscd(workdir=work / "pcscd") as pcscd:
        async with Rig(work / "rig", pcscd=pcscd, capture=False, pulse_ms=100) as rig:
            person = rig.people[0]
            card = UidCard(person.uid)
            reader = rig.reader_name
            while len(terminal_ms) < taps:
                n = min(block, taps - len(terminal_ms))
                for _ in range(n):
                    outcome = await rig.tap(card)
                    assert outcome.decision.approved, outcome.decision
                    terminal_ms.append(outcome.timings_ms["decide"])
                    commit_ms.append(outcome.timings_ms["commit"])
                await rig.stop_terminal()  # the floor needs the reader to itself
                floor_ms += await asyncio.to_thread(floor_taps, pcscd, reader, card, n)
                await rig.start_terminal()
                print(f"  tap latency: {len(terminal_ms)}/{taps} taps", flush=True)
    return {
        **percentiles_ms("tap_to_decision", terminal_ms, (50, 99)),
        **percentiles_ms("tap_to_journaled", commit_ms, (99,)),
        **percentiles_ms("tap_floor", floor_ms, (50, 99)),
        "tap_samples": float(len(terminal_ms)),
    }


def run(taps: int = 1000) -> dict[str, float]:
    return eventloop.run(run_async(taps))
