"""Shared makings of the rule table tests: members, local times, PIN hashes.

Times are written as Asia/Shanghai wall-clock text so each table row reads
like the situation it tests ("2024-05-06 11:59:59").
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from terminal.model import Member, MemberStatus
from terminal.rules.clock import TZ, Moment
from terminal.rules.pin import hash_pin

#: Few iterations keep the tests fast; the format is the production one.
PIN = "2468"
PIN_HASH = hash_pin(PIN, bytes(range(16)), iterations=1000)

BASE = Member(
    member_no="M0001",
    name="王*明",
    org="org-7",
    status=MemberStatus.ACTIVE,
    tier=1,
    canteen_group="staff",
    access_groups=("office",),
    pin_hash=PIN_HASH,
)


def member(**changes: object) -> Member:
    """The base member with some fields changed."""
    return replace(BASE, **changes)  # type: ignore[arg-type]


def at(text: str) -> int:
    """Unix time of a local ``YYYY-MM-DD HH:MM:SS``."""
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=TZ).timestamp())


def moment(text: str, **kw: object) -> Moment:
    """A trusted moment at local ``text`` (override with ``trusted=False`` etc.)."""
    return Moment(at(text), **kw)  # type: ignore[arg-type]
