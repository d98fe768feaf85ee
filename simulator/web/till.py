"""The cash register's side of the ECR link as the page works it: requests out, answer frames back.

The frames cross a real pty through :class:`simulator.ecr.PtyCashRegister`
and the terminal's production pyserial driver, byte for byte as at a
merchant's counter. A SALE is answered only once a card decided it, so the
page's request returns as soon as the frame is on the line, and the answer
is pushed when it comes; meanwhile the person taps a card.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from terminal.ecr import Frame, Reply, Sale, Status, StatusReply
from terminal.exceptions import ActionRefused

from ..ecr import PtyCashRegister
from .wire import frame_view

log = logging.getLogger("unionterm.sim.web.till")

#: How long the page's SALE waits for its REPLY: the terminal drops a sale nobody tapped for after 60 s.
SALE_WAIT_S = 65.0
STATUS_WAIT_S = 2.0
LOG_KEPT = 12


class Till:
    """The page's cash register: one request waiting at a time, the frames both ways, the last REPLY."""

    def __init__(self, register: PtyCashRegister, ref_prefix: str = "WB") -> None:
        self.register = register
        self.ref_prefix = ref_prefix
        self.log: list[dict[str, Any]] = []
        self.reply: dict[str, Any] | None = None
        self.waiting: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._count = 0

    def _note(self, frame: Frame, direction: str) -> dict[str, Any]:
        row = frame_view(frame, direction)
        self.log.append(row)
        del self.log[:-LOG_KEPT]
        return row

    def _busy(self) -> None:
        if self._task is not None and not self._task.done():
            raise ActionRefused("the cash register is still waiting for the answer to its last request")

    def sale(self, amount_fen: int) -> dict[str, Any]:
        """Put a SALE on the line; the REPLY comes once a card decided it (see :attr:`reply`)."""
        self._busy()
        self._count += 1
        request = Sale(self.register.next_seq(), amount_fen, f"{self.ref_prefix}-{self._count:06d}")
        self.waiting = self._note(request, "out")
        self._task = asyncio.get_running_loop().create_task(self._ask(request, SALE_WAIT_S), name="till-sale")
        log.info("event=web_ecr_sale seq=%02d ref=%s amount_fen=%d", request.seq, request.ecr_ref, amount_fen)
        return {"sent": self.waiting}

    async def status(self) -> dict[str, Any]:
        """Ask the terminal whether it is ready (answered at once, also while a sale waits)."""
        request = Status(self.register.next_seq())
        self._note(request, "out")
        try:
            answer = await self.register.request(request, STATUS_WAIT_S)
        except TimeoutError:
            raise ActionRefused("the terminal did not answer STATUS (is its cash-register link up?)") from None
        if not isinstance(answer, StatusReply):
            raise ActionRefused(f"STATUS was answered with {answer!r}")
        return {"answer": self._note(answer, "in")}

    async def _ask(self, request: Frame, timeout: float) -> None:
        try:
            answer = await self.register.request(request, timeout)
        except TimeoutError:
            self.log.append({"dir": "in", "type": "-", "seq": request.seq, "fields": {},
                             "wire": f"no answer within {timeout:.0f} s"})
        else:
            row = self._note(answer, "in")  # type: ignore[arg-type]
            if isinstance(answer, Reply):
                self.reply = row
        finally:
            self.waiting = None

    async def cancel(self) -> None:
        """Stop waiting (the terminal that was asked is gone: a mode switch, the end of the page)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.waiting = None

    def view(self, linked: bool) -> dict[str, Any]:
        return {"linked": linked, "port": self.register.port, "waiting": self.waiting, "reply": self.reply,
                "log": list(reversed(self.log))}
