"""Wall-clock readings with a quality flag.

A Raspberry Pi has no real-time clock: until NTP has synchronised it, the
wall time may be 1970 or whatever the last shutdown saved. Every journal row
carries whether the clock was trustworthy when it was written, using the
kernel's own view (``adjtimex`` reports ``TIME_ERROR`` while unsynchronised)
and a floor no genuine clock can be below.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

#: No transaction can genuinely happen before this build's era (2026-01-01 UTC).
CLOCK_FLOOR_S = 1_767_225_600

_TIME_ERROR = 5

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _adjtimex = _libc.adjtimex
except (OSError, AttributeError):  # not Linux: fall back to the floor alone
    _adjtimex = None


def kernel_synchronised() -> bool | None:
    """True/False from the kernel's NTP state, or None where it cannot be asked."""
    if _adjtimex is None:
        return None
    buf = ctypes.create_string_buffer(512)  # struct timex with modes = 0: read only
    state = _adjtimex(buf)
    if state < 0:
        return None
    return state != _TIME_ERROR


#: How long one answer of the kernel's NTP state is reused (every tap asks twice).
SYNC_STATE_TTL_S = 1.0
_sync_seen: tuple[float, bool | None] = (float("-inf"), None)


def _synchronised_recently() -> bool | None:
    """The kernel's NTP state, asked at most once a second: the flag turns over
    minutes after a sync starts or stops, while an ``adjtimex`` through ctypes
    costs a tap tens of microseconds."""
    global _sync_seen
    at, state = _sync_seen
    mono = time.monotonic()
    if mono - at >= SYNC_STATE_TTL_S:
        state = kernel_synchronised()
        _sync_seen = (mono, state)
    return state


def wall_clock() -> tuple[int, bool]:
    """Unix time in milliseconds and whether it can be trusted."""
    now = time.time()
    synced = _synchronised_recently()
    trusted = now >= CLOCK_FLOOR_S and synced is not False
    return int(now * 1000), trusted
