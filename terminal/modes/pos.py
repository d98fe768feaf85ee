"""Merchant counter and union venue: the cash-register link, keyed amounts, PIN, supervisor void.

A sale arrives from the cash register over ``[serial.ecr]`` (a SALE frame,
docs/ecr-link.md) or is keyed on the terminal (``1999#`` for ¥19.99). It is
shown until the next member card decides it (``terminal.rules.pos``), and
the cash register gets its REPLY only after the journal holds the record, so
a receipt never names a transaction the terminal could lose. A retransmitted
request (same SEQ and reference) is answered from the stored reply, never
decided twice. A VOID frame, or key ``C`` on the keypad, waits for a
supervisor's card and voids the last sale within ``void_window_s``.

A counter with ``[venue]`` instead of ``[pos]`` is a union venue: each card
checks the member in to the selected offering (the first one configured;
``<n>#`` on the keypad selects the n-th).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from ..counterstore import bumps_from_json, bumps_to_json
from ..ecr import Decoder, ErrorReply, Frame, FrameError, Sale, Status, StatusReply, Void, encode, reply_for
from ..exceptions import HardwareError
from ..hardware import SerialLink
from ..journal import Record
from ..model import Decision, Member
from ..rules.clock import Moment
from ..rules.pos import PosConfig, SaleRecord, SaleRequest, VoidRequest, decide_sale, decide_void
from ..rules.venue import VisitRequest, decide_visit
from ..screens import amount_entry, denied, sale_pending, sale_result, visit_result, void_pending
from ..ui import Screen
from .base import Entry, Lapsing, ModeBase, ModeHost, Ruling
from .keys import NumberEntry, Typed

log = logging.getLogger("unionterm.modes.pos")

#: The ``[serial.<name>]`` port of the cash register.
ECR_PORT = "ecr"
#: A sale nobody tapped for is dropped after this long (the cash register waits 60 s for a reply).
PENDING_S = 60.0
#: Replies kept for retransmitted requests.
REPLIES_KEPT = 16
#: Reason of a tap while no sale waits.
NO_SALE = "no_sale"
#: State key of the last approved sale (what a supervisor may void).
LAST_SALE = "pos/last_sale"
#: Key that asks for a void of the last sale.
VOID_KEY = "C"
AMOUNT_DIGITS = 9
OFFERING_DIGITS = 3


@dataclass(frozen=True)
class PendingSale:
    """A sale waiting for a card; ``seq`` is the cash register's SEQ (None: keyed here)."""

    amount_fen: int
    ecr_ref: str = ""
    seq: int | None = None


@dataclass(frozen=True)
class PendingVoid:
    """A void waiting for a supervisor's card."""

    ecr_ref: str = ""
    tx_id: str = ""
    seq: int | None = None


Pending = PendingSale | PendingVoid


def sale_state(record: SaleRecord) -> dict[str, Any]:
    """The last sale as the counter store keeps it; its transaction is the record that stores it."""
    return {"member_no": record.member_no, "at": record.at, "amount_fen": record.amount_fen,
            "subsidy_fen": record.subsidy_fen, "ecr_ref": record.ecr_ref,
            "bumps": bumps_to_json(record.bumps), "voided": record.voided, "tx_seq": None}


class PosMode(ModeBase):
    name = "pos"

    def __init__(self, host: ModeHost) -> None:
        super().__init__(host)
        cfg = host.cfg
        self.venue = cfg.venue
        if cfg.pos is None and cfg.venue is None:
            log.warning("event=mode_unconfigured mode=pos section=pos effect=no_discount")
        self.config = cfg.pos or PosConfig(merchant_id=cfg.terminal.id, category="")
        self.offering = next(iter(self.venue.offerings), "") if self.venue else ""
        self._pending: Lapsing[Pending] = Lapsing(PENDING_S, self._expired)
        self._number = NumberEntry(AMOUNT_DIGITS if self.venue is None else OFFERING_DIGITS)
        self._link: SerialLink | None = None
        self._replies: collections.OrderedDict[tuple[int, str], bytes] = collections.OrderedDict()
        self._last_sent = b""
        self._tasks: set[asyncio.Task[None]] = set()
        self.services.append(self._ecr_service)

    # -- deciding ------------------------------------------------------------------------------------

    def tx_id(self, seq: int) -> str:
        """The transaction id a receipt prints: terminal and journal sequence (at most 32 characters)."""
        return f"{self.cfg.terminal.id}-{seq:06d}"[-32:]

    @property
    def online(self) -> bool:
        uplink = self.host.uplink
        return uplink is not None and uplink.connected.is_set()

    def last_sale(self) -> SaleRecord | None:
        stored = self.store.get(LAST_SALE) if self.store is not None else None
        if stored is None:
            return None
        v = stored.value
        return SaleRecord(self.tx_id(v.get("tx_seq") or stored.seq), v["member_no"], v["at"], v["amount_fen"],
                          v["subsidy_fen"], v["ecr_ref"], bumps_from_json(v["bumps"]), v["voided"])

    def decide(self, member: Member, moment: Moment, entry: Entry) -> Ruling:
        if self.venue is not None:
            outcome = decide_visit(self.venue, member, VisitRequest(self.offering), moment, self.tallies)
            return Ruling.of(outcome, kind="visit", context={"venue_id": self.venue.venue_id})
        pending = self.pending
        if isinstance(pending, PendingVoid):
            return self._decide_void(member, moment, pending)
        if pending is None:
            return Ruling(Decision.deny(NO_SALE))
        request = SaleRequest(pending.amount_fen, pending.ecr_ref, entry.pin, self.online)
        outcome = decide_sale(self.config, member, request, moment, self.tallies)
        state = {}
        if outcome.decision.approved:
            state[LAST_SALE] = sale_state(SaleRecord.of("", member.member_no, request, outcome, moment.now))
        context = {"merchant_id": self.config.merchant_id, "ecr_ref": pending.ecr_ref,
                   "source": "keypad" if pending.seq is None else "ecr", "online": request.online}
        return Ruling.of(outcome, state=state, context=context, request=pending)

    def _decide_void(self, operator: Member, moment: Moment, pending: PendingVoid) -> Ruling:
        last = self.last_sale()
        outcome = decide_void(self.config, operator, last, VoidRequest(pending.tx_id, pending.ecr_ref), moment)
        state = {}
        if outcome.decision.approved and last is not None and self.store is not None:
            stored = self.store.get(LAST_SALE)
            assert stored is not None
            state[LAST_SALE] = {**stored.value, "voided": True, "tx_seq": stored.value.get("tx_seq") or stored.seq}
        return Ruling.of(outcome, kind="void", state=state, request=pending,
                         context={"merchant_id": self.config.merchant_id})

    def refuse(self, decision: Decision) -> Ruling:
        """A refused card still answers the waiting sale (the cashier charges the full price)."""
        return Ruling(decision, request=None if self.venue else self.pending)

    def amount_of(self, ruling: Ruling) -> int:
        return ruling.request.amount_fen if isinstance(ruling.request, PendingSale) else 0

    # -- after the journal ---------------------------------------------------------------------------

    async def act(self, ruling: Ruling, record: Record) -> None:
        await self._answer(ruling.request, ruling.decision, self.tx_id(record.seq))

    def unrecorded(self, ruling: Ruling, refused: Decision) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(ruling.request, refused, ""))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: object, decision: Decision, tx_id: str) -> None:
        """Close the waiting request and give the cash register its REPLY (and keep it for a resend)."""
        if not isinstance(request, (PendingSale, PendingVoid)):
            return
        if request is self.pending:
            self._set_pending(None, redraw=False)
        if request.seq is None:
            return
        amount = request.amount_fen if isinstance(request, PendingSale) else 0
        frame = encode(reply_for(request.seq, amount, decision, tx_id))
        self._replies[self._request_key(request)] = frame
        while len(self._replies) > REPLIES_KEPT:
            self._replies.popitem(last=False)
        await self._write(frame)
        log.info("event=ecr_reply seq=%02d ref=%s decision=%s reason=%s tx_id=%s", request.seq,
                 request.ecr_ref or "-", decision.verdict.value, decision.reason, tx_id or "-")

    # -- screens -------------------------------------------------------------------------------------

    def screen(self, ruling: Ruling, member: Member | None) -> Screen:
        if self.venue is not None:
            return visit_result(self.lang, ruling.decision, member)
        if ruling.decision.reason == NO_SALE:
            return denied(self.lang, ruling.decision)
        return sale_result(self.lang, ruling.decision, self.amount_of(ruling))

    def idle_screen(self, status: str) -> Screen:
        if self._number.active and self.venue is None:
            return amount_entry(self.lang, self._number.value, status)
        pending = self.pending
        if isinstance(pending, PendingSale):
            return sale_pending(self.lang, pending.amount_fen, pending.ecr_ref)
        if isinstance(pending, PendingVoid):
            return void_pending(self.lang, pending.ecr_ref, pending.tx_id)
        screen = super().idle_screen(status)
        if self.venue is not None and self.offering:
            return Screen(screen.headline, (self.offering, *screen.lines)[:3], screen.alert)
        return screen

    # -- pending requests --------------------------------------------------------------------------

    def stop(self) -> None:
        self._pending.cancel()

    @property
    def pending(self) -> Pending | None:
        """The sale or void waiting for the next card."""
        return self._pending.value

    def _set_pending(self, pending: Pending | None, redraw: bool = True) -> None:
        self._pending.set(pending)
        if redraw:
            self.host.show_idle()

    def _expired(self, pending: Pending) -> None:
        log.info("event=sale_expired ref=%s", pending.ecr_ref or "-")
        self.host.show_idle()

    def on_key(self, key: str) -> None:
        if self.venue is not None:
            self._select_offering(key)
            return
        if key == VOID_KEY and not self._number.active:
            last = self.last_sale()
            self._set_pending(PendingVoid(tx_id=last.tx_id if last else ""))
            return
        was_typing = self._number.active
        typed, amount = self._number.press(key)
        if typed is Typed.IGNORED:
            return
        if typed is Typed.CANCELLED and not was_typing and self.pending is not None:
            self._set_pending(None)  # "*" on an idle keypad drops the waiting sale
        elif typed is Typed.DONE:
            log.info("event=amount_keyed amount_fen=%d", amount)
            self._set_pending(PendingSale(amount))
        else:
            self.host.show_idle()

    def _select_offering(self, key: str) -> None:
        assert self.venue is not None
        typed, number = self._number.press(key)
        codes = list(self.venue.offerings)
        if typed is Typed.DONE and 1 <= number <= len(codes):
            self.offering = codes[number - 1]
            log.info("event=offering_selected offering=%s", self.offering)
        self.host.show_idle()

    # -- the cash-register link ----------------------------------------------------------------------

    @staticmethod
    def _request_key(request: Sale | Void | PendingSale | PendingVoid) -> tuple[int, str]:
        assert request.seq is not None
        return request.seq, request.ecr_ref or getattr(request, "tx_id", "")

    async def _write(self, frame: bytes) -> None:
        if self._link is None:
            return
        self._last_sent = frame
        try:
            await self._link.write(frame)
        except HardwareError as exc:
            log.error("event=ecr_write_failed error=%r", str(exc))

    async def _ecr_service(self, terminal: object) -> None:
        """Read frames from the cash register for as long as the terminal runs."""
        link = self.host.hw.serial.get(ECR_PORT)
        if link is None:
            log.info("event=ecr_absent effect=keypad_amounts")
            return
        self._link = link
        chunks: asyncio.Queue[bytes] = asyncio.Queue()
        decoder = Decoder()

        async def pump() -> None:  # one reader, so no read is ever abandoned half-way (bytes lost)
            while True:
                try:
                    chunks.put_nowait(await link.read())
                except HardwareError as exc:
                    log.error("event=ecr_read_failed error=%r", str(exc))
                    await asyncio.sleep(1.0)

        reader = asyncio.get_running_loop().create_task(pump(), name="ecr-read")
        try:
            while True:
                try:  # asyncio.timeout, not wait_for: 3.11's wait_for can lose a stop
                    async with asyncio.timeout(decoder.timeout_s if decoder.pending else None):
                        data = await chunks.get()
                except TimeoutError:
                    data = b""
                for item in decoder.feed(data, self.time.mono()):
                    await self._on_frame(item)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _on_frame(self, item: Frame | FrameError) -> None:
        if isinstance(item, FrameError):
            log.warning("event=ecr_frame_refused kind=%s size=%d detail=%r", item.kind, item.size, item.detail)
            if item.answer:
                await self._write(encode(item.reply()))
            return
        if isinstance(item, Status):
            await self._write(encode(StatusReply(item.seq, self._status_word(), self.cfg.terminal.id[:32])))
            return
        if isinstance(item, ErrorReply):  # the cash register could not read our last frame
            if self._last_sent:
                await self._write(self._last_sent)
            return
        if not isinstance(item, (Sale, Void)):
            await self._write(encode(ErrorReply(item.seq, "format")))
            return
        key = self._request_key(item)
        if key in self._replies:  # a retransmission: the same answer, never a second decision
            log.info("event=ecr_retransmit seq=%02d ref=%s", item.seq, key[1])
            await self._write(self._replies[key])
            return
        pending = self.pending
        if pending is not None and pending.seq is not None and self._request_key(pending) == key:
            return  # still waiting for the card
        if isinstance(item, Sale):
            log.info("event=ecr_sale seq=%02d ref=%s amount_fen=%d", item.seq, item.ecr_ref, item.amount_fen)
            self._set_pending(PendingSale(item.amount_fen, item.ecr_ref, item.seq))
        else:
            log.info("event=ecr_void seq=%02d ref=%s tx_id=%s", item.seq, item.ecr_ref or "-", item.tx_id or "-")
            self._set_pending(PendingVoid(item.ecr_ref, item.tx_id, item.seq))

    def _status_word(self) -> str:
        """``closed`` when value cannot be given, ``busy`` with a sale waiting, ``offline`` without uplink."""
        journal = self.host.journal
        moment = self.time.now()
        if journal is None or not journal.state.accepts_value or not moment.allows_value:
            return "closed"
        if self.pending is not None:
            return "busy"
        return "ready" if self.online else "offline"
