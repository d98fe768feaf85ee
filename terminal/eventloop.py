"""The event loop the terminal runs on, and the lock that lets a reader thread borrow its state.

The loop owns the terminal's state (the mode's counters and door, the
decision queue, the journal's loop side): callbacks run one at a time, so
none of it needs a lock. A union-card tap, though, is worth serving where
the card was read, on the PC/SC monitor thread: every hand-over between
threads is a wake-up of a sleeping thread, and the tap used to make three
(card to the loop, loop to the journal's thread, commit back), about a
third of a millisecond of it on the project's machine.

:class:`StateGuard` reconciles the two. The loop's thread holds it whenever
it runs anything and lets go only while it waits for I/O in its selector;
another thread that takes it therefore finds the loop idle between two
callbacks and keeps it there until it lets go. That is the same "one at a
time" the loop gives its own callbacks, so code that reads and changes
terminal state keeps being written for one thread.

This needs asyncio's own selector loop (the wait is a Python call that can be
wrapped); uvloop waits inside libuv, out of reach, and is not used.
"""

from __future__ import annotations

import asyncio
import selectors
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class StateGuard:
    """Held by the loop's thread except while it waits for I/O; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def acquire(self, timeout: float = -1) -> bool:
        """Take it (another thread: once the loop waits for I/O); False if ``timeout`` passed first."""
        if not self._lock.acquire(timeout=timeout):
            return False
        self._owner = threading.get_ident()
        return True

    def release(self) -> None:
        self._owner = None
        self._lock.release()

    def held_here(self) -> bool:
        """True on the thread that holds it (the loop's, between waits)."""
        return self._owner == threading.get_ident()


class _GuardedSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The loop's selector: the guard is let go for exactly the time of each wait."""

    def __init__(self, guard: StateGuard) -> None:
        super().__init__()
        self.guard = guard

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self.guard.held_here():
            self.guard.release()
        try:
            return super().select(timeout)
        finally:
            self.guard.acquire()

    def close(self) -> None:
        """The loop is closing: it will run nothing more, so nothing more is guarded."""
        if self.guard.held_here():
            self.guard.release()
        super().close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A fresh loop of the kind the terminal runs on: its guard is taken at its first wait."""
    return asyncio.SelectorEventLoop(_GuardedSelector(StateGuard()))


def guard_of(loop: asyncio.AbstractEventLoop) -> StateGuard | None:
    """The guard of a loop made by :func:`new_event_loop`; None for any other loop."""
    selector = getattr(loop, "_selector", None)
    return selector.guard if isinstance(selector, _GuardedSelector) else None


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the terminal's loop (Python 3.11's ``asyncio.run`` takes no factory)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
