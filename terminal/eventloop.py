"""The event loop the terminal runs on: uvloop (libuv), in service, in the benches and in the tests.

Why not asyncio's own loop: a tap crosses threads twice (the PC/SC monitor
thread hands the card to the loop, the journal's thread hands the commit
back), and every crossing is a ``call_soon_threadsafe`` wake-up followed by a
turn of the loop. Measured on the union-card bench (100 taps, p50), the
card's trip to the loop took 0.12 ms on uvloop against 0.17 ms on asyncio's
loop, and the commit's trip back 0.09 ms against 0.12 ms. Everything the
terminal uses (``add_reader`` for MQTT, threads, signals, subprocesses in the
simulator) behaves the same on both, and the whole test suite runs on this
loop so that nothing ships untested on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A fresh loop of the kind the terminal runs on."""
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the terminal's loop (Python 3.11's ``asyncio.run`` takes no factory)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
