"""Topic names of the member-list sync, and the scope rule that keeps them one level.

Both sides build topics with these functions so that a scope with a '/' or a
wildcard in it can never be published or subscribed to by accident.
"""

from __future__ import annotations

import re

from terminal.exceptions import PayloadError

from .strict import label, quote_value

DEFAULT_PREFIX = "unionterm/v1"
#: ``all``, ``org-<id>`` or ``group-<id>``; always exactly one topic level.
SCOPE_RE = re.compile(r"all|(org|group)-[0-9A-Za-z][0-9A-Za-z_.\-]{0,57}")
#: The hot list is global; its envelopes are signed for this scope.
HOTLIST_SCOPE = "all"
_INDEX_RE = re.compile(r"0|[1-9][0-9]{0,4}")


def check_scope(scope: str, where: str = "scope") -> str:
    """Refuse anything that is not a member-list scope."""
    if not isinstance(scope, str) or not SCOPE_RE.fullmatch(scope):
        raise PayloadError(where, f"{quote_value(scope)} is not a scope (all, org-<id>, group-<id>)")
    return scope


def manifest_topic(scope: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Retained: the newest signed manifest of ``scope``."""
    return f"{prefix}/members/{check_scope(scope)}/manifest"


def chunk_topic(scope: str, index: int, prefix: str = DEFAULT_PREFIX) -> str:
    """Retained: chunk ``index`` (0-based) of the newest snapshot of ``scope``."""
    return f"{prefix}/members/{check_scope(scope)}/chunk/{int(index)}"


def chunk_filter(scope: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Subscription filter for every chunk of ``scope``."""
    return f"{prefix}/members/{check_scope(scope)}/chunk/+"


def delta_topic(scope: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Not retained: signed deltas of ``scope``, QoS 1."""
    return f"{prefix}/members/{check_scope(scope)}/delta"


def hotlist_topic(prefix: str = DEFAULT_PREFIX) -> str:
    """Signed hot-list changes and full hot lists, QoS 1."""
    return f"{prefix}/hotlist"


def report_topic(terminal_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Terminal to back office: the versions, counts and digests it holds."""
    return f"{prefix}/t/{terminal_id}/members/report"


def resync_topic(terminal_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Terminal to back office: please send a full copy of one list."""
    return f"{prefix}/t/{terminal_id}/members/resync"


def chunk_index(topic: str, scope: str, prefix: str = DEFAULT_PREFIX) -> int:
    """The chunk number in a received chunk topic, refusing any other topic."""
    head = f"{prefix}/members/{check_scope(scope)}/chunk/"
    tail = topic[len(head):] if topic.startswith(head) else ""
    if not _INDEX_RE.fullmatch(tail):
        # The level after chunk/ is the sender's: up to 64 KB of anything, so it is cut for the log.
        raise PayloadError(label(topic, len(head) + 24), f"not a chunk topic of scope {scope!r}")
    return int(tail)
