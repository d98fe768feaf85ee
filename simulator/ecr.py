"""A simulated cash register (ECR) on a pseudo-terminal, speaking docs/ecr-link.md.

The terminal opens the pty's slave side as ``[serial.ecr] port`` through the
production pyserial driver, exactly as it opens ``/dev/ttyUSB0`` at a
merchant's counter; this class sits on the master side and frames its
requests with the same codec (:mod:`terminal.ecr`), so a sale in the
simulator crosses a real tty, byte by byte, both ways.
"""

from __future__ import annotations

import asyncio
import os
import time
import tty
from collections.abc import Callable

from terminal.ecr import Decoded, Decoder, Frame, Reply, Sale, Status, StatusReply, Void, encode


class PtyCashRegister:
    """One cash register; ``port`` is the device path for the terminal's config.

    Use as ``async with PtyCashRegister() as ecr``: the master side is read
    by the event loop while inside. Every frame or decoding error received
    is kept in :attr:`received`, in order; several requests may wait at once
    (a STATUS while a SALE waits for its card), each for the answer with its SEQ.
    """

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        # Raw from the start: the default line discipline would echo our frames back to us
        # and turn CR bytes in a CRC into LF before the terminal opens the port.
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self.decoder = Decoder()
        self.received: list[Decoded] = []
        self._seq = 0
        self._cursor = 0
        self._arrived: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> "PtyCashRegister":
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Condition()
        self._loop.add_reader(self._master, self._readable)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._master)
            self._loop = None
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except OSError:  # the slave side went away
            data = b""
        items = self.decoder.feed(data, time.monotonic())
        if items:
            self.received += items
            assert self._loop is not None
            self._loop.create_task(self._wake())

    async def _wake(self) -> None:
        assert self._arrived is not None
        async with self._arrived:
            self._arrived.notify_all()

    async def _first(self, start: int, wanted: Callable[[Decoded], bool], timeout: float) -> int:
        """Index of the first received item at or after ``start`` that is ``wanted``."""
        assert self._arrived is not None, "use the cash register inside 'async with'"

        def found() -> int | None:
            return next((i for i in range(start, len(self.received)) if wanted(self.received[i])), None)

        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: found() is not None), timeout)
        index = found()
        assert index is not None
        return index

    # -- sending ------------------------------------------------------------------------------------

    def next_seq(self) -> int:
        """SEQ of a new request: previous + 1, modulo 100 (a retransmission keeps its SEQ)."""
        self._seq = (self._seq + 1) % 100
        return self._seq

    def send_raw(self, data: bytes) -> None:
        """Put bytes on the line as they are (corrupt frames, noise)."""
        os.write(self._master, data)

    def send(self, message: Frame) -> None:
        self.send_raw(encode(message))

    async def next_frame(self, timeout: float = 5.0) -> Decoded:
        """The next frame (or decoding error) the terminal sent that this method has not returned yet."""
        index = await self._first(self._cursor, lambda item: True, timeout)
        self._cursor = index + 1
        return self.received[index]

    async def request(self, message: Frame, timeout: float = 60.0) -> Decoded:
        """Send ``message`` and wait for the terminal's answer with the same SEQ."""
        start = len(self.received)
        self.send(message)
        index = await self._first(start, lambda item: getattr(item, "seq", None) == message.seq, timeout)
        self._cursor = max(self._cursor, index + 1)
        return self.received[index]

    async def sale(self, amount_fen: int, ecr_ref: str, timeout: float = 60.0) -> Reply:
        """Ask for the member discount on a sale; returns the REPLY once a card decided it."""
        answer = await self.request(Sale(self.next_seq(), amount_fen, ecr_ref), timeout)
        if not isinstance(answer, Reply):
            raise AssertionError(f"SALE answered with {answer!r}")
        return answer

    async def void(self, ecr_ref: str = "", tx_id: str = "", timeout: float = 60.0) -> Reply:
        answer = await self.request(Void(self.next_seq(), ecr_ref, tx_id), timeout)
        if not isinstance(answer, Reply):
            raise AssertionError(f"VOID answered with {answer!r}")
        return answer

    async def status(self, timeout: float = 2.0) -> StatusReply:
        answer = await self.request(Status(self.next_seq()), timeout)
        if not isinstance(answer, StatusReply):
            raise AssertionError(f"STATUS answered with {answer!r}")
        return answer
