"""Card reader over PC/SC with pyscard's low-level ``scard`` API.

pyscard's high-level ``CardMonitor`` gives up when pcscd restarts; a terminal
must not. This driver owns one monitor thread that waits in
``SCardGetStatusChange`` (including the ``\\\\?PnP?\\Notification`` pseudo
reader for hot-plug), re-establishes its context whenever the service goes
away, and hands events to the loop through :class:`terminal.bridge.LoopBridge`.

When the app gives it arrival work (:meth:`PcscReader.read_on_arrival`), the
monitor thread itself reads each card the moment it sees it, as bare pyscard
would, on its own context (its wait has just returned, so nothing waits
behind it), and the loop hears of the card with its outcome.

Card I/O from the loop uses a second context: pcsc-lite serialises calls per
context, so a transmit on the monitor's context would wait for the
status-change timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from smartcard import scard

from terminal.bridge import LoopBridge
from terminal.exceptions import CardError, CardRemoved, ReaderUnavailable
from terminal.hardware import CardChannel, CardGone, CardPresent, CardRead, ReaderEvent, ReaderState

log = logging.getLogger("unionterm.drivers.pcsc")

#: What the app runs on each arriving card (see :meth:`PcscReader.read_on_arrival`).
ArrivalWork = Callable[[CardChannel, bytes], Awaitable[object]]

PNP = "\\\\?PnP?\\Notification"

#: Results meaning "the service or the reader went away": re-establish the context.
_SERVICE_GONE = {
    scard.SCARD_E_NO_SERVICE,
    scard.SCARD_E_SERVICE_STOPPED,
    scard.SCARD_E_INVALID_HANDLE,
    scard.SCARD_E_NO_READERS_AVAILABLE,
    scard.SCARD_E_READER_UNAVAILABLE,
    scard.SCARD_E_UNKNOWN_READER,
    scard.SCARD_F_COMM_ERROR,
}

#: Results meaning "the card left" during a connect or transmit.
_CARD_GONE = {
    scard.SCARD_W_REMOVED_CARD,
    scard.SCARD_E_NO_SMARTCARD,
    scard.SCARD_W_RESET_CARD,
    scard.SCARD_W_UNPOWERED_CARD,
    scard.SCARD_W_UNRESPONSIVE_CARD,
    scard.SCARD_E_NOT_TRANSACTED,
    scard.SCARD_E_READER_UNAVAILABLE,
    scard.SCARD_E_NO_SERVICE,
    scard.SCARD_E_SERVICE_STOPPED,
    scard.SCARD_E_INVALID_HANDLE,
}

_POLL_MS = 500

#: How long the monitor thread keeps a read card for the app's ``served()``:
#: a tap is decided in milliseconds; one waiting on a PIN lets the card go.
SERVED_WAIT_S = 0.1


def _err(hr: int) -> str:
    try:
        return f"{scard.SCardGetErrorMessage(hr)} (0x{hr & 0xFFFFFFFF:08X})"
    except Exception:  # pragma: no cover - message lookup is cosmetic
        return f"0x{hr & 0xFFFFFFFF:08X}"


class PcscChannel:
    """An open card handle; ``transmit`` runs the blocking call on its reader's own I/O thread."""

    def __init__(self, handle: Any, protocol: int, reader: str, executor: Executor | None = None) -> None:
        self._handle = handle
        self._protocol = protocol
        self.reader = reader
        self._executor = executor

    def transmit_blocking(self, apdu: bytes) -> bytes:
        hr, response = scard.SCardTransmit(self._handle, self._protocol, list(apdu))
        if hr != scard.SCARD_S_SUCCESS:
            if hr in _CARD_GONE:
                raise CardRemoved(f"transmit on {self.reader}: {_err(hr)}")
            raise CardError(f"transmit on {self.reader}: {_err(hr)}")
        if not response:  # success with no bytes: the card fell silent mid-command (left the field)
            raise CardRemoved(f"transmit on {self.reader}: no answer from the card")
        if len(response) < 2:
            raise CardError(f"transmit on {self.reader}: response shorter than a status word")
        return bytes(response)

    async def transmit(self, apdu: bytes) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.transmit_blocking, apdu)


class InlineChannel:
    """The same card handle, transmitting in the caller's thread (the monitor thread)."""

    def __init__(self, channel: PcscChannel) -> None:
        self._channel = channel
        self.reader = channel.reader

    async def transmit(self, apdu: bytes) -> bytes:
        return self._channel.transmit_blocking(apdu)


class _Suspended(CardError):
    """The arrival work tried to wait on the event loop; it cannot run inline."""


def _drive(coro: Any) -> Any:
    """Run a coroutine that never suspends to its end, in this thread, without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise _Suspended("the card's arrival work awaited something other than the card")


class PcscReader:
    """The PC/SC implementation of :class:`terminal.hardware.CardReader`."""

    def __init__(self, name_filter: str = "", reconnect_s: float = 1.0) -> None:
        self.name_filter = name_filter
        self.reconnect_s = reconnect_s
        self._bridge: LoopBridge[ReaderEvent] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitor_ctx: Any = None
        self._io_ctx: Any = None
        self._io_lock = threading.Lock()
        self._executors: dict[str, ThreadPoolExecutor] = {}
        #: Connections the monitor started the moment a card arrived, until the loop takes them.
        self._opening: dict[str, Future[PcscChannel]] = {}
        self._open_lock = threading.Lock()
        self._on_arrival: ArrivalWork | None = None
        self.readers: list[str] = []

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> "PcscReader":
        self._bridge = LoopBridge()
        self._thread = threading.Thread(target=self._monitor, name="pcsc-monitor", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        ctx = self._monitor_ctx
        if ctx is not None:
            scard.SCardCancel(ctx)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 3.0)
        with self._open_lock:
            unclaimed, self._opening = list(self._opening.values()), {}
            executors, self._executors = list(self._executors.values()), {}
        for future in unclaimed:
            self._release_when_open(future)
        for executor in executors:
            await asyncio.to_thread(executor.shutdown, True)
        with self._io_lock:
            if self._io_ctx is not None:
                scard.SCardReleaseContext(self._io_ctx)
                self._io_ctx = None

    def events(self) -> LoopBridge[ReaderEvent]:
        assert self._bridge is not None, "use 'async with PcscReader()' first"
        return self._bridge

    def read_on_arrival(self, work: ArrivalWork | None) -> None:
        """Run ``work(channel, atr)`` on each card as it arrives, before the loop hears of it.

        The monitor thread that sees the card connects at once, runs the
        whole exchange and posts one :class:`CardPresent` carrying the
        outcome: no thread hand-off and no loop round trip inside a tap,
        which is all bare pyscard would do. A union-card authentication
        through the loop cost about twice that floor. It releases the card
        when the app says the tap is served (``CardRead.served``), at most
        :data:`SERVED_WAIT_S` later: releasing and watching again at once
        took the interpreter and a CPU from the decision and the journal
        commit (a third of a millisecond of every tap). Meanwhile other
        readers' events wait (a terminal has one tap reader; an exchange
        takes milliseconds, and a card that falls silent fails at the
        reader's timeout). ``work`` must wait on nothing but its channel
        (the app's ``Identify.inline``); the app's work goes on to decide and
        journal the tap in this thread when the loop lets it (its
        ``StateGuard``). None turns this off.
        """
        self._on_arrival = work

    # -- card connections -----------------------------------------------------------------

    def _executor(self, reader: str) -> ThreadPoolExecutor:
        """One I/O thread per reader: its calls stay in order, and never wait behind another reader's."""
        with self._open_lock:
            executor = self._executors.get(reader)
            if executor is None:
                executor = self._executors[reader] = ThreadPoolExecutor(1, thread_name_prefix="pcsc-io")
            return executor

    def _open_early(self, reader: str) -> None:
        """Monitor thread, as a card arrives: start connecting on the reader's I/O thread now.

        The connect then overlaps the event's trip to the loop instead of
        following it, which takes a thread round trip off every tap.
        """
        future = self._executor(reader).submit(self.connect_blocking, reader)
        with self._open_lock:
            stale = self._opening.pop(reader, None)
            self._opening[reader] = future
        if stale is not None:
            self._release_when_open(stale)

    def _forget_early(self, reader: str) -> None:
        """The card left before the loop took its early connection: release it."""
        with self._open_lock:
            stale = self._opening.pop(reader, None)
        if stale is not None:
            self._release_when_open(stale)

    def _release_when_open(self, future: Future[PcscChannel]) -> None:
        def release(done: Future[PcscChannel]) -> None:
            if not done.cancelled() and done.exception() is None:
                self._release(done.result())

        future.add_done_callback(release)

    def _release(self, channel: PcscChannel) -> None:
        """Queue the disconnect on the reader's I/O thread; nothing waits for it."""
        try:
            self._executor(channel.reader).submit(self.disconnect_blocking, channel)
        except RuntimeError:  # shutting down: releasing the context frees the handle
            pass

    def _io_context(self) -> Any:
        with self._io_lock:
            if self._io_ctx is None:
                hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
                if hr != scard.SCARD_S_SUCCESS:
                    raise ReaderUnavailable(f"PC/SC service: {_err(hr)}")
                self._io_ctx = ctx
            return self._io_ctx

    def _drop_io_context(self) -> None:
        with self._io_lock:
            if self._io_ctx is not None:
                scard.SCardReleaseContext(self._io_ctx)
                self._io_ctx = None

    def connect_blocking(self, reader: str, ctx: Any = None) -> PcscChannel:
        """Open the card, on the I/O context unless given one (the monitor thread's own)."""
        for attempt in (1, 2):
            hr, handle, protocol = scard.SCardConnect(
                ctx or self._io_context(), reader, scard.SCARD_SHARE_SHARED,
                scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
            )
            if hr == scard.SCARD_S_SUCCESS:
                return PcscChannel(handle, protocol, reader, self._executor(reader))
            if hr in (scard.SCARD_E_INVALID_HANDLE, scard.SCARD_E_NO_SERVICE,
                      scard.SCARD_E_SERVICE_STOPPED) and attempt == 1 and ctx is None:
                self._drop_io_context()  # pcscd restarted since the I/O context was made
                continue
            if hr in _CARD_GONE:
                raise CardRemoved(f"connect to {reader}: {_err(hr)}")
            raise CardError(f"connect to {reader}: {_err(hr)}")
        raise ReaderUnavailable(f"connect to {reader}: no PC/SC service")

    @staticmethod
    def disconnect_blocking(channel: PcscChannel) -> None:
        scard.SCardDisconnect(channel._handle, scard.SCARD_LEAVE_CARD)

    @contextlib.asynccontextmanager
    async def connect(self, reader: str) -> AsyncIterator[PcscChannel]:
        """Open the card; the handle is always released, so the next card is detected.

        The connection the monitor started when the card arrived is used if
        there is one. The release is queued on the reader's I/O thread rather
        than awaited: it runs before anything else on that reader, and the
        tap's decision does not wait for it.
        """
        with self._open_lock:
            early = self._opening.pop(reader, None)
        if early is not None:
            channel = await asyncio.wrap_future(early)
        else:
            channel = await asyncio.get_running_loop().run_in_executor(
                self._executor(reader), self.connect_blocking, reader)
        try:
            yield channel
        finally:
            self._release(channel)

    # -- monitor thread ---------------------------------------------------------------------

    def _post(self, event: ReaderEvent) -> None:
        assert self._bridge is not None
        self._bridge.put_threadsafe(event)

    def _arrived(self, reader: str, atr: bytes, detected_at: float) -> None:
        """Monitor thread, as a card arrives: read it now, or have the loop told at once."""
        work = self._on_arrival
        if work is None:
            self._open_early(reader)
            self._post(CardPresent(reader, atr, detected_at))
            return
        try:
            # On the context whose wait just reported the card: pcscd answers on a warm thread.
            channel = self.connect_blocking(reader, self._monitor_ctx)
        except Exception as exc:  # noqa: BLE001 - delivered to the loop, which judges it
            self._post(CardPresent(reader, atr, detected_at, CardRead(error=exc)))
            return
        try:
            try:
                outcome = CardRead(value=_drive(work(InlineChannel(channel), atr)))
            except Exception as exc:  # noqa: BLE001 - as above
                outcome = CardRead(error=exc)
            self._post(CardPresent(reader, atr, detected_at, outcome))
            outcome.done.wait(SERVED_WAIT_S)  # release and watch again once the tap is decided
        finally:
            self.disconnect_blocking(channel)

    def _wanted(self, names: list[str]) -> list[str]:
        return [n for n in names if self.name_filter in n]

    def _monitor(self) -> None:
        online: set[str] = set()
        present: dict[str, bool] = {}  # survives re-listing, so a resting card is not a new tap
        while not self._stop.is_set():
            hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hr != scard.SCARD_S_SUCCESS:
                self._service_lost(online, _err(hr), present)
                continue
            self._monitor_ctx = ctx
            try:
                self._watch(ctx, online, present)
            finally:
                self._monitor_ctx = None
                scard.SCardReleaseContext(ctx)
        for name in sorted(online):
            self._post(ReaderState(name, False, "stopped"))

    def _service_lost(self, online: set[str], why: str, present: dict[str, bool] | None = None) -> None:
        if present is not None:
            present.clear()
        self._drop_io_context()  # a context from before a pcscd restart fails in odd ways
        for name in sorted(online):
            self._post(ReaderState(name, False, why))
        if online:
            log.warning("event=pcsc_service_lost detail=%r", why)
        online.clear()
        self._stop.wait(self.reconnect_s)

    def _watch(self, ctx: Any, online: set[str], present: dict[str, bool]) -> None:
        """Follow readers and cards on one context until the service goes away."""
        hr, names = scard.SCardListReaders(ctx, [])
        if hr not in (scard.SCARD_S_SUCCESS, scard.SCARD_E_NO_READERS_AVAILABLE):
            self._service_lost(online, _err(hr), present)
            return
        readers = self._wanted(names if hr == scard.SCARD_S_SUCCESS else [])
        for name in sorted(online - set(readers)):
            self._post(ReaderState(name, False, "removed"))
            online.discard(name)
            present.pop(name, None)
        for name in readers:
            if name not in online:
                online.add(name)
                log.info("event=reader_online reader=%r", name)
                self._post(ReaderState(name, True))
        self.readers = list(readers)
        states: list[tuple[str, int]] = [(n, scard.SCARD_STATE_UNAWARE) for n in readers]
        states.append((PNP, scard.SCARD_STATE_UNAWARE))
        while not self._stop.is_set():
            hr, result = scard.SCardGetStatusChange(ctx, _POLL_MS, states)
            if hr == scard.SCARD_E_TIMEOUT:
                continue
            if hr == scard.SCARD_E_CANCELLED:
                return
            if hr != scard.SCARD_S_SUCCESS:
                self._service_lost(online, _err(hr), present)
                return
            now = time.perf_counter()
            replug = False
            states = []
            for name, event_state, atr in result:
                if name == PNP:
                    replug = replug or bool(event_state & scard.SCARD_STATE_CHANGED)
                    states.append((name, event_state & ~scard.SCARD_STATE_CHANGED))
                    continue
                if event_state & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE):
                    replug = True
                is_present = bool(event_state & scard.SCARD_STATE_PRESENT) and not (
                    event_state & scard.SCARD_STATE_MUTE
                )
                if is_present and not present.get(name):
                    self._arrived(name, bytes(atr), now)
                elif not is_present and present.get(name):
                    self._forget_early(name)
                    self._post(CardGone(name))
                present[name] = is_present
                states.append((name, event_state & ~scard.SCARD_STATE_CHANGED))
            if replug:
                return  # re-list readers on a fresh pass
