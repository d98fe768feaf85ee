"""Pure builders of what the back office publishes: snapshots, deltas, hot lists.

Each returns bytes ready to hand to an MQTT client (see
``docs/protocol-members.md`` for topics and retain flags) and is built with
the terminal's own codec, so every output has already passed the checks a
terminal will apply to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from terminal.signing import KIND_DELTA, KIND_HOTLIST, KIND_HOTLIST_FULL, KIND_MANIFEST, sign
from terminal.sync.delta import encode_delta_body
from terminal.sync.hotlist import HotlistEntry, encode_hotlist_body
from terminal.sync.limits import DEFAULT_LIMITS, Limits
from terminal.sync.records import ListDigest, validate_member
from terminal.sync.snapshot import encode_manifest_body, encode_snapshot
from terminal.sync.topics import HOTLIST_SCOPE, check_scope


def _signed(signer: Ed25519PrivateKey, kind: str, scope: str, version: int, issued: int,
            expires: int, body: bytes, limits: Limits) -> bytes:
    blob = sign(signer, kind, scope, version, issued, expires, body)
    if len(blob) > limits.max_envelope:
        raise ValueError(f"{kind} envelope of {len(blob)} bytes is over the terminals' "
                         f"{limits.max_envelope}-byte limit")
    return blob


def build_snapshot(records: Iterable[Mapping[str, Any]], scope: str, version: int,
                   signer: Ed25519PrivateKey, issued: int, expires: int,
                   chunk_size: int | None = None,
                   limits: Limits = DEFAULT_LIMITS) -> tuple[bytes, Iterator[bytes]]:
    """Signed manifest and the chunks it lists, for records in member_no order.

    The manifest names every chunk's hash, so all chunks are built (and held,
    ~120 MB for 1.1M members) before the manifest can be signed. Publish the
    chunks first, then the manifest, so a terminal never sees a manifest
    whose chunks are not there yet.
    """
    check_scope(scope)
    encoded = encode_snapshot(records, chunk_size, limits)
    body = encode_manifest_body(encoded.count, encoded.digest, (info for info, _ in encoded.chunks))
    manifest = _signed(signer, KIND_MANIFEST, scope, version, issued, expires, body, limits)
    return manifest, (data for _, data in encoded.chunks)


@dataclass(frozen=True)
class ListDiff:
    """What turns one list into the next, and what the next one's digest is."""

    upserts: list[dict[str, Any]]
    removals: list[str]
    count: int
    digest: str


def diff_lists(old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]) -> ListDiff:
    """Merge-join two lists given in member_no order (either may be any valid records)."""
    upserts: list[dict[str, Any]] = []
    removals: list[str] = []
    digest = ListDigest()
    old_it = (validate_member(r, "old") for r in old)
    before = next(old_it, None)
    for record in (validate_member(r, "new") for r in new):
        digest.add(record)
        while before is not None and before["member_no"] < record["member_no"]:
            removals.append(before["member_no"])
            before = next(old_it, None)
        if before is not None and before["member_no"] == record["member_no"]:
            if before != record:
                upserts.append(record)
            before = next(old_it, None)
        else:
            upserts.append(record)
    while before is not None:
        removals.append(before["member_no"])
        before = next(old_it, None)
    return ListDiff(upserts, removals, digest.count, digest.hexdigest())


def build_delta(scope: str, base: int, diff: ListDiff, signer: Ed25519PrivateKey, issued: int,
                expires: int, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Signed delta from version ``base`` to ``base + 1`` (publish on ``members/{scope}/delta``).

    Raises :class:`~terminal.exceptions.PayloadError` or :class:`ValueError`
    when the change is too big for one delta: publish a new snapshot instead.
    """
    check_scope(scope)
    body = encode_delta_body(base, diff.upserts, diff.removals, diff.count, diff.digest, limits)
    return _signed(signer, KIND_DELTA, scope, base + 1, issued, expires, body, limits)


def build_hotlist(version: int, entries: Iterable[HotlistEntry], signer: Ed25519PrivateKey,
                  issued: int, expires: int, full: bool = False,
                  limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Signed hot-list change (sequence ``version``) or, with ``full``, the whole hot list."""
    body = encode_hotlist_body(entries, full, limits)
    kind = KIND_HOTLIST_FULL if full else KIND_HOTLIST
    return _signed(signer, kind, HOTLIST_SCOPE, version, issued, expires, body, limits)


def records_for_scope(records: Iterable[Mapping[str, Any]], scope: str,
                      org_names: Mapping[str, str]) -> Iterator[Mapping[str, Any]]:
    """The members a scope's terminals need: ``all``; ``org-<id>`` (work unit by id
    in ``org_names``); ``group-<g>`` (members with access group or canteen group ``g``)."""
    check_scope(scope)
    if scope == "all":
        yield from records
        return
    prefix, _, ident = scope.partition("-")
    if prefix == "org":
        if ident not in org_names:
            raise ValueError(f"scope {scope!r}: no work unit with id {ident!r}")
        name = org_names[ident]
        yield from (r for r in records if r["org"] == name)
    else:
        yield from (r for r in records if ident in r["access_groups"] or r["canteen_group"] == ident)
