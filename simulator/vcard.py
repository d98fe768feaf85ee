"""Virtual cards placed on a vpcd reader slot of a real pcscd.

The wire protocol is vsmartcard's: the card is the TCP *client* of pcscd's
vpcd driver; every message is a 2-byte big-endian length and a payload. A
1-byte payload is a control (0 power off, 1 power on, 2 reset, 4 send ATR);
a longer one is a C-APDU, answered by the R-APDU. Closing the socket is the
card leaving the field.

Only this transport lives here; what a card *says* is a :class:`CardBehaviour`
(see ``simulator/cards/``), so the same behaviour can be unit-tested without
pcscd.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Protocol

log = logging.getLogger("unionterm.sim.vcard")

CTRL_POWER_OFF = 0
CTRL_POWER_ON = 1
CTRL_RESET = 2
CTRL_ATR = 4


class CardBehaviour(Protocol):
    """What a simulated card answers. Implementations are pure and synchronous."""

    atr: bytes

    def respond(self, capdu: bytes) -> bytes:
        """Answer one C-APDU with data + SW1 SW2."""
        ...

    def reset(self) -> None:
        """Power cycle: forget session state (selected application, auth)."""
        ...


class CardPulled(Exception):
    """Raised by a behaviour to make the card leave mid-exchange (no answer)."""


class VirtualCard:
    """One card held on one vpcd slot: ``place()`` is the tap, ``remove()`` the lift.

    Runs a small thread per placement. ``TCP_NODELAY`` once and ``TCP_QUICKACK``
    before every receive keep one APDU round trip near 0.2 ms instead of ~48 ms
    (Nagle + delayed ACK), which every latency figure depends on.
    """

    def __init__(self, behaviour: CardBehaviour, port: int, host: str = "127.0.0.1") -> None:
        self.behaviour = behaviour
        self.host = host
        self.port = port
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.apdus: list[bytes] = []
        self.placed_at: float | None = None
        self.error: BaseException | None = None

    # -- public -----------------------------------------------------------------

    def place(self, timeout: float = 5.0) -> None:
        """Bring the card into the field (connect to pcscd's vpcd port)."""
        if self._sock is not None:
            raise RuntimeError("card already placed")
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self.placed_at = time.perf_counter()
        self.behaviour.reset()
        self._thread = threading.Thread(target=self._serve, name=f"vcard:{self.port}", daemon=True)
        self._thread.start()

    def remove(self) -> None:
        """Lift the card: close the socket, so the reader sees it gone."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    @property
    def placed(self) -> bool:
        return self._sock is not None

    def __enter__(self) -> "VirtualCard":
        self.place()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- wire -------------------------------------------------------------------

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def _send(self, sock: socket.socket, payload: bytes) -> None:
        sock.sendall(struct.pack(">H", len(payload)) + payload)

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            while True:
                (length,) = struct.unpack(">H", self._recv_exact(sock, 2))
                payload = self._recv_exact(sock, length)
                if length == 1:
                    ctrl = payload[0]
                    if ctrl == CTRL_ATR:
                        self._send(sock, self.behaviour.atr)
                    elif ctrl in (CTRL_POWER_OFF, CTRL_RESET):
                        self.behaviour.reset()
                    continue
                self.apdus.append(payload)
                try:
                    answer = self.behaviour.respond(payload)
                except CardPulled:
                    log.debug("event=card_pulled port=%d", self.port)
                    sock.close()
                    return
                self._send(sock, answer)
        except (EOFError, OSError):
            return
        except BaseException as exc:  # a behaviour bug must be visible in tests
            self.error = exc
            log.exception("event=vcard_crash port=%d", self.port)
            try:
                sock.close()
            except OSError:
                pass
