"""Union-card tap to journaled decision, against the floor of the unavoidable work.

``auth_tap_to_decision_p99_ms``: a genuine union card (DESFire EV2 simulation,
AuthenticateEV2First + MACed ReadData with a software SAM) tapped on the
production terminal through pcscd + vpcd, 1.1 million members in its list,
from the moment PC/SC reports the card present to the journal commit of the
decision (WAL, ``synchronous=FULL``).

``auth_floor_p99_ms``: from the same moment, bare pyscard connects, sends the
very bytes the terminal sent in its tap just before to the same simulated card,
and commits one row of the same size to a SQLite file with the journal's
settings; it lets the card go after the commit, as the terminal does. The
card draws the same random numbers it drew in that tap (RndB, TI), so it
answers the replay byte for byte as it answered the terminal (checked on
every floor tap) and does the same work; the floor computes no cryptography,
looks up no member and decides nothing, so the difference is everything the
terminal adds.

Terminal taps and floor taps alternate one by one, so a noisy spell of the
machine weighs on both alike: the terminal watches slot 0 of the virtual
reader, the floor has slot 1 of the same reader (same pcscd, same vpcd
driver) to itself, and the terminal keeps running, as in service, while the
floor taps. Each side places its card :data:`PLACE_AFTER_S` after the card
before it was seen gone, so that both sides' cards have lain on the reader
about as long when PC/SC reports them (``auth_detect_age_*`` and
``auth_floor_detect_age_*`` show it). The taps start once the terminal is
connected to the broker and its start-up traffic is over, as a member's tap
never lands in a terminal's boot. The 1.1M-member list takes minutes to
generate; it is built once into a cache file (keyed by count, seed and card
key) and copied for each run.

Each ratio comes with its 95% bootstrap interval (``auth_ratio_p*_ci95_*``,
:func:`~bench.stats.ratio_interval`): the p99 of 300 taps is set by their
slowest three, which a stalled fsync or a descheduled vCPU on either side
moves by tens of milliseconds, so one run's p99 ratio says whether the goal
is met only when the whole interval lies on one side of 1.5.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from smartcard import scard

from simulator.backoffice.generate import generate_members
from simulator.cards.desfire import UnionCard
from simulator.rig import Rig
from simulator.services import Pcscd
from simulator.vcard import VirtualCard
from terminal import eventloop, journal
from terminal.bridge import SerialWorker
from terminal.members import MemberStore

from .stats import percentiles_ms, ratio_interval

MEMBERS = 1_100_000
SEED = 20_251_130
#: Fixed, so that the cached member list (whose card refs depend on it) stays valid.
CARD_KEY = hashlib.sha256(b"unionterm auth bench card key").digest()
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unionterm"
#: pcscd asks each vpcd slot whether a card is there every 0.4 s, both slots within a few
#: milliseconds. Placed at once, the terminal's card (placed as the floor's was seen gone, at a
#: slot-1 poll) was reported at the slot-0 poll a few milliseconds later, while its fresh
#: connection was still settling, and the floor's card (placed as the terminal's was seen gone)
#: about 0.39 s after it was placed. Measured over 100 taps a side (p50 / p90): reported 6 / 15 ms
#: against 387 / 394 ms after placing, and the first command took 0.66 / 1.28 ms to reach the
#: terminal's card against 0.11 / 0.20 ms for the floor's; with the terminal's card placed 20 ms
#: later, 0.16 / 0.23 ms against 0.12 / 0.19 ms. Half a poll after the last card was seen gone,
#: both sides' cards lie about 0.2 s before they are reported.
PLACE_AFTER_S = 0.2


class Recording:
    """A card behaviour that keeps one tap's exchange: commands, answers, random numbers drawn.

    After :meth:`replay`, the card draws the recorded numbers again at every
    placement, so the recorded commands get the recorded answers.
    """

    def __init__(self, inner: UnionCard) -> None:
        self.inner = inner
        self.atr = inner.atr
        self.apdus: list[bytes] = []
        self.answers: list[bytes] = []
        self.drawn: list[bytes] = []
        self._replay: tuple[bytes, ...] | None = None
        self._next = 0
        inner.entropy = self._entropy

    def clear(self) -> None:
        self.apdus, self.answers, self.drawn = [], [], []

    def replay(self, drawn: list[bytes]) -> None:
        self._replay = tuple(drawn)

    def _entropy(self, n: int) -> bytes:
        if self._replay is None:
            self.drawn.append(os.urandom(n))
            return self.drawn[-1]
        value = self._replay[self._next]
        self._next += 1
        return value

    def reset(self) -> None:
        self._next = 0
        self.inner.reset()

    def respond(self, capdu: bytes) -> bytes:
        self.apdus.append(capdu)
        self.answers.append(self.inner.respond(capdu))
        return self.answers[-1]


def member_list(count: int = MEMBERS, seed: int = SEED) -> Path:
    """A member database holding ``count`` generated members; built on first use, then cached."""
    path = CACHE / f"members-{count}-{seed}-{CARD_KEY.hex()[:8]}.db"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    for stale in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        stale.unlink(missing_ok=True)
    started = time.monotonic()
    print(f"  generating {count:,} members (once, cached in {path}) ...", flush=True)
    store = MemberStore(partial)
    try:
        store.upsert(generate_members(count, seed, CARD_KEY))
    finally:
        store.close()
    os.replace(partial, path)
    print(f"  generated in {time.monotonic() - started:.0f} s", flush=True)
    return path


class Floor:
    """Bare pyscard on one reader slot, and one SQLite file at the journal's settings.

    Made and used on one thread (SQLite connections are bound to theirs).
    """

    def __init__(self, pcscd: Pcscd, slot: int, db: Path) -> None:
        self.pcscd = pcscd
        self.slot = slot
        self.reader = pcscd.reader_name(0, slot)
        hr, self.ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        assert hr == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hr)
        self.state = scard.SCARD_STATE_UNAWARE
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        for pragma in journal.PRAGMAS:
            self.conn.execute(f"PRAGMA {pragma}")
        self.conn.executescript(journal.SCHEMA)

    def close(self) -> None:
        self.conn.close()
        scard.SCardReleaseContext(self.ctx)

    def _wait(self, present: bool) -> None:
        while bool(self.state & scard.SCARD_STATE_PRESENT) != present:
            hr, result = scard.SCardGetStatusChange(self.ctx, 2000, [(self.reader, self.state)])
            if hr == scard.SCARD_S_SUCCESS:
                self.state = result[0][1] & ~scard.SCARD_STATE_CHANGED

    def tap(self, card: Recording, tap: Recording, row_bytes: int) -> tuple[float, float, float]:
        """Replay ``tap`` to ``card``: ms from PC/SC reporting the card to its last answer,
        and to the row being durable; and how long the card had been placed when it was reported."""
        card.replay(tap.drawn)
        vcard = VirtualCard(card, self.pcscd.card_port(0, self.slot))
        vcard.place()
        try:
            self._wait(True)
            t0 = time.perf_counter()
            hr, handle, proto = scard.SCardConnect(self.ctx, self.reader, scard.SCARD_SHARE_SHARED,
                                                   scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
            assert hr == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hr)
            for command, answer in zip(tap.apdus, tap.answers):
                hr, response = scard.SCardTransmit(handle, proto, list(command))
                assert hr == scard.SCARD_S_SUCCESS and bytes(response) == answer, (hr, response, answer)
            card_done = time.perf_counter()
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("INSERT INTO tx (body, hash, at_ms) VALUES (?, ?, ?)",
                              ("x" * row_bytes, "0" * 64, int(time.time() * 1000)))
            self.conn.execute("COMMIT")
            done = time.perf_counter()
            scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)  # after, as the terminal lets go
        finally:
            vcard.remove()
        self._wait(False)
        return (card_done - t0) * 1000, (done - t0) * 1000, (t0 - (vcard.placed_at or t0)) * 1000


async def settled(rig: Rig, after_s: float = 1.0) -> None:
    """Until the started terminal is connected and its start-up traffic is over."""
    await asyncio.wait_for(rig.terminal.uplink.connected.wait(), 15)
    await asyncio.sleep(after_s)


async def run_async(taps: int = 300, members: int = MEMBERS) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="unionterm-bench-auth-"))
    cached = member_list(members)
    state = work / "rig" / "state"
    state.mkdir(parents=True)
    shutil.copyfile(cached, state / "members.db")
    (work / "rig" / "card.key").write_text(CARD_KEY.hex())
    terminal_ms: list[float] = []
    read_ms: list[float] = []
    journal_ms: list[float] = []
    age_ms: list[float] = []
    floor: list[tuple[float, float, float]] = []
    floor_thread = SerialWorker("floor")  # one thread: the floor's SQLite connection is bound to it
    try:
        with Pcscd(workdir=work / "pcscd") as pcscd:
            async with Rig(work / "rig", pcscd=pcscd, capture=False, pulse_ms=100,
                           profiles=("union-app",), reader=pcscd.reader_name(0, 0)) as rig:
                await settled(rig)
                listed = rig.terminal.members.count()
                person = rig.people[0]
                card = Recording(rig.union_card(person))
                floor_card = Recording(rig.union_card(person))  # the same card, personalised again
                bare = await floor_thread.run(Floor, pcscd, 1, work / "floor.db")
                try:
                    while len(terminal_ms) < taps:
                        card.clear()
                        await asyncio.sleep(PLACE_AFTER_S)
                        outcome = await rig.tap(card)
                        assert outcome.decision.approved and outcome.record is not None, outcome.decision
                        timings = outcome.timings_ms
                        terminal_ms.append(timings["commit"])
                        read_ms.append(timings["read"])
                        journal_ms.append(timings["commit"] - timings["decide"])
                        age_ms.append((outcome.tap.detected_at - rig.placed_at) * 1000)
                        row_bytes = len(outcome.record.body.encode())
                        await asyncio.sleep(PLACE_AFTER_S)
                        floor.append(await floor_thread.run(bare.tap, floor_card, card, row_bytes))
                        if len(terminal_ms) % 50 == 0:
                            print(f"  auth: {len(terminal_ms)}/{taps} taps each", flush=True)
                finally:
                    await floor_thread.run(bare.close)
    finally:
        floor_thread.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    floor_ms, floor_card_ms = [total for _, total, _ in floor], [card_part for card_part, _, _ in floor]
    figures = {"auth_apdus_per_tap": float(len(card.apdus)), "auth_members_listed": float(listed),
               "auth_samples": float(len(terminal_ms))}
    # Where the time goes: the card exchange (PC/SC report to the last answer; the terminal's
    # until the identity is on the loop) and the journal commit.
    for name, values in (("auth_tap_to_decision", terminal_ms), ("auth_floor", floor_ms),
                         ("auth_card_read", read_ms), ("auth_floor_card", floor_card_ms),
                         ("auth_journal_commit", journal_ms)):
        figures.update(percentiles_ms(name, values))
    for name, values in (("auth_detect_age", age_ms), ("auth_floor_detect_age", [age for *_, age in floor])):
        figures[f"{name}_min_ms"] = round(min(values), 3)
        figures.update(percentiles_ms(name, values, (50,)))
    pairs = list(zip(terminal_ms, floor_ms))
    for p in (50, 90, 99):
        figures[f"auth_ratio_p{p}"] = round(figures[f"auth_tap_to_decision_p{p}_ms"] / figures[f"auth_floor_p{p}_ms"], 3)
        low, high = ratio_interval(pairs, p)
        figures[f"auth_ratio_p{p}_ci95_low"], figures[f"auth_ratio_p{p}_ci95_high"] = round(low, 3), round(high, 3)
    return figures


def run(taps: int = 300) -> dict[str, float]:
    """Entry point for ``python -m bench``: the figures above, as one flat dict."""
    return eventloop.run(run_async(taps))
