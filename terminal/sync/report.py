"""What a terminal tells the back office about its lists, and how it asks for a copy.

Both payloads are plain JSON, unsigned (the broker's per-terminal credentials
vouch for the sender), and decoded as strictly as anything inbound: the back
office reads them from a thousand terminals and must not trust any one.
"""

from __future__ import annotations

from dataclasses import dataclass

from terminal.exceptions import PayloadError
from terminal.signing import MAX_INT

from .strict import canonical_json, check_keys, get_choice, get_hex64, get_int, label, loads_object
from .topics import check_scope

#: The resync request's ``list`` field names a scope or the hot list.
HOTLIST = "hotlist"
RESYNC_REASONS = frozenset({"gap", "digest", "missing", "corrupt"})
MAX_REPORT_BYTES = 64 * 1024
MAX_SCOPES = 16
_REPORT_KEYS = frozenset({"at", "hotlist", "lists"})
_LIST_KEYS = frozenset({"count", "digest", "expires", "version"})
_RESYNC_KEYS = frozenset({"have", "list", "reason"})


@dataclass(frozen=True)
class ListState:
    """One scope's list as the terminal holds it; version 0 means none yet."""

    scope: str
    version: int
    count: int
    digest: str
    expires: int

    def stale(self, now: float) -> bool:
        return now >= self.expires


@dataclass(frozen=True)
class Report:
    """Payload of ``t/{id}/members/report``."""

    at: int
    lists: tuple[ListState, ...]
    hotlist: int


@dataclass(frozen=True)
class ResyncRequest:
    """Payload of ``t/{id}/members/resync``: send me a full copy of ``list``."""

    list: str
    have: int
    reason: str


def encode_report(report: Report) -> bytes:
    """Terminal side: one report, sent on connect and after every list change."""
    return canonical_json({
        "at": report.at,
        "hotlist": report.hotlist,
        "lists": {s.scope: {"version": s.version, "count": s.count, "digest": s.digest,
                            "expires": s.expires} for s in report.lists},
    })


def decode_report(payload: bytes) -> Report:
    """Back-office side: a terminal's report, every field checked."""
    obj = check_keys(_load(payload, "report"), "report", _REPORT_KEYS)
    lists = obj["lists"]
    if not isinstance(lists, dict):
        raise PayloadError("report.lists", "expected an object keyed by scope")
    if len(lists) > MAX_SCOPES:
        raise PayloadError("report.lists", f"more than {MAX_SCOPES} scopes")
    return Report(
        at=get_int(obj, "at", "report", 0, MAX_INT),
        lists=tuple(_list_state(scope, item) for scope, item in sorted(lists.items())),
        hotlist=get_int(obj, "hotlist", "report", 0, MAX_INT),
    )


def _list_state(scope: str, item: object) -> ListState:
    where = f"report.lists.{label(scope)}"  # the key is the sender's until check_scope passes it
    check_scope(scope, where)
    item = check_keys(item, where, _LIST_KEYS)
    return ListState(scope=scope, version=get_int(item, "version", where, 0, MAX_INT),
                     count=get_int(item, "count", where, 0, MAX_INT),
                     digest=get_hex64(item, "digest", where),
                     expires=get_int(item, "expires", where, 0, MAX_INT))


def encode_resync(request: ResyncRequest) -> bytes:
    obj = {"list": request.list, "have": request.have, "reason": request.reason}
    _resync_from(obj)  # a terminal must not send what the back office refuses
    return canonical_json(obj)


def decode_resync(payload: bytes) -> ResyncRequest:
    """Back-office side: which list the terminal wants re-sent, and why."""
    return _resync_from(_load(payload, "resync"))


def _resync_from(raw: object) -> ResyncRequest:
    where = "resync"
    obj = check_keys(raw, where, _RESYNC_KEYS)
    name = obj["list"]
    if name != HOTLIST:
        check_scope(name, f"{where}.list")
    return ResyncRequest(list=name, have=get_int(obj, "have", where, 0, MAX_INT),
                         reason=get_choice(obj, "reason", where, RESYNC_REASONS))


def _load(payload: bytes, where: str) -> dict[str, object]:
    if len(payload) > MAX_REPORT_BYTES:
        raise PayloadError(where, f"{len(payload)} bytes is over the {MAX_REPORT_BYTES}-byte limit")
    return loads_object(payload, where)
