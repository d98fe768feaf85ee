"""Random bytes for card challenges, drawn from the OS in batches.

Every union-card tap needs a fresh 16-byte RndA for AuthenticateEV2First.
Asking the kernel for it at that moment is a ``getrandom`` call on a CPU
that has been idle waiting for the card, which cost a tap about 20 µs on the
project's machine; one call here serves sixteen handshakes. The bytes are
the same OS randomness, only fetched ahead, and each byte is handed out
once: a repeated RndA would let a recorded card answer be replayed.
"""

from __future__ import annotations

import os
import threading


class RandomPool:
    """OS random bytes fetched ``size`` at a time; :meth:`take` never returns a byte twice.

    Thread-safe: the PC/SC monitor thread and the loop may both run card
    exchanges.
    """

    def __init__(self, size: int = 256) -> None:
        if size < 1:
            raise ValueError("a random pool holds at least one byte")
        self._size = size
        self._buf = b""
        self._at = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bytes:
        """``n`` fresh random bytes (more than the pool holds come straight from the OS)."""
        if n > self._size:
            return os.urandom(n)
        with self._lock:
            at = self._at
            if len(self._buf) - at < n:
                self._buf, at = os.urandom(self._size), 0
            self._at = at + n
            return self._buf[at:at + n]


#: The pool card challenges are drawn from.
challenges = RandomPool()
