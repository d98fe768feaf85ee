"""The terminal's periodic health report on ``t/{id}/telemetry``.

A thousand terminals cannot be visited to find out which one is quietly
failing. Telemetry carries the figures that predict trouble before members
see it: how many transactions wait and how old the oldest is (uplink or back
office stuck), how full the journal and the disk are, whether storage is
degraded, which member-list versions are held and how old they are, whether
a reader is attached. Published at QoS 0 and not retained: a missed report
is replaced by the next one, and the retained ``status`` topic says whether
the terminal is online at all.

:func:`build_telemetry` is pure (figures in, canonical JSON out);
:class:`Telemetry` gathers the figures from their owners through callables,
so the app decides where list versions or reader states come from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import __version__
from .journal import Journal, JournalStats
from .sync.strict import canonical_json


@dataclass(frozen=True)
class ListInfo:
    """A member list as held: its version and when it was last applied (unix s, 0 = never)."""

    version: int
    updated_at: int = 0


def _age_s(now_ms: int, at_ms: int) -> float:
    return round(max(now_ms - at_ms, 0) / 1000, 1) if at_ms else 0.0


def build_telemetry(terminal_id: str, now_ms: int, uptime_s: float, stats: JournalStats,
                    readers_online: Iterable[str], lists: Mapping[str, ListInfo],
                    extra: Mapping[str, Any] | None = None) -> bytes:
    """One telemetry payload (see docs/protocol-tx.md for every field)."""
    online = sorted(readers_online)
    body: dict[str, Any] = {
        "terminal": terminal_id,
        "at": now_ms,
        "version": __version__,
        "uptime_s": int(uptime_s),
        "queue": {
            "last_seq": stats.last_seq,
            "published_seq": stats.published_seq,
            "acked_seq": stats.acked_seq,
            "unsent": stats.unpublished,
            "unacked": stats.unacked,
            "oldest_unsent_age_s": _age_s(now_ms, stats.oldest_unpublished_ms),
            "oldest_unacked_age_s": _age_s(now_ms, stats.oldest_unacked_ms),
        },
        "journal": {"rows": stats.rows, "capacity": stats.capacity, "state": stats.state.value},
        "storage": {"state": stats.state.value, "disk_free_bytes": stats.disk_free},
        "readers": {"state": "online" if online else "offline", "online": online},
        "lists": {scope: {"version": info.version,
                          "age_s": int(now_ms // 1000 - info.updated_at) if info.updated_at else -1}
                  for scope, info in sorted(lists.items())},
    }
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    return canonical_json(body)


class Telemetry:
    """Collects the figures for one report from the parts that own them."""

    def __init__(self, terminal_id: str, journal: Journal,
                 readers_online: Callable[[], Iterable[str]],
                 lists: Callable[[], Mapping[str, ListInfo]] | None = None,
                 extra: Callable[[], Mapping[str, Any]] | None = None,
                 wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.terminal_id = terminal_id
        self.journal = journal
        self._readers = readers_online
        self._lists = lists or (lambda: {})
        self._extra = extra or (lambda: {})
        self._wall = wall
        self._monotonic = monotonic
        self._started = monotonic()

    async def payload(self) -> bytes:
        """The report as of now; the uplink publishes it every ``telemetry.interval_s``."""
        stats = await self.journal.stats()
        return build_telemetry(self.terminal_id, int(self._wall() * 1000), self._monotonic() - self._started,
                               stats, self._readers(), self._lists(), self._extra())
