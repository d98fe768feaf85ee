"""``[simulator] tap_fifo``: UID taps read from a named pipe, one hex UID a line.

A test-only tap source, for tests that kill the terminal with ``kill -9``
mid-stream (``tests/test_killnine.py``): a vpcd card must be placed and
removed for each tap and cannot be fed faster than pcscd polls, while a FIFO
can be written ahead and survives the process it feeds. Each line is served
as a UID card tapped on the reader named "fifo", through the same queue the
QR scanner uses (:meth:`terminal.app.Terminal.submit_identity`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .cardref import card_ref
from .cards.profiles import PROFILE_UID
from .model import CardIdentity, Strength

if TYPE_CHECKING:
    from .app import Terminal

log = logging.getLogger("unionterm.fifotaps")

#: The reader name FIFO taps carry in the journal.
READER = "fifo"


def fifo_taps(path: str) -> Callable[["Terminal"], Awaitable[None]]:
    """The service that serves the lines written to the FIFO at ``path`` as taps."""

    async def tap_fifo(terminal: "Terminal") -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # RDWR: writers may come and go without EOF
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(fd, "rb", buffering=0))
        try:
            while line := await reader.readline():
                try:
                    uid = bytes.fromhex(line.decode("ascii").strip())
                except (UnicodeDecodeError, ValueError):
                    log.warning("event=fifo_tap_refused line=%r", line[:40])
                    continue
                identity = CardIdentity(PROFILE_UID, card_ref(terminal.card_key, "uid", uid), Strength.WEAK)
                terminal.submit_identity(READER, identity, time.perf_counter())
        finally:
            transport.close()

    return tap_fifo
