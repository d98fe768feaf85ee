"""Whatever arrives on a member-list topic ends in a value or a PayloadError, never a crash.

The back-office topics are writable by anyone with broker credentials, and
their payloads end up in the list that opens doors, so every entry point
that takes network bytes is fed three kinds of input: arbitrary bytes;
structurally valid JSON that is wrong (wrong types, missing and extra keys,
huge, negative and fractional numbers, wrong nesting), signed by the trusted
key so that it reaches the body decoders; and genuine signed payloads with
one byte flipped, inserted or deleted, or one field changed under the old
signature. Only :class:`PayloadError` (under :class:`UniontermError`) may
escape, its message must name where and what in one log line, and a mutated
signed payload is accepted only if it decodes to exactly the genuine content.
At the service level (:class:`MemberSync` with a real store, no broker) a
refused message must leave the store exactly as it was.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import sqlite3
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from simulator.backoffice.publish import build_delta, build_hotlist, build_snapshot, diff_lists
from terminal import signing
from terminal.config import load
from terminal.exceptions import PayloadError, SignatureError, UniontermError
from terminal.members import MemberStore
from terminal.membersync import MemberSync
from terminal.signing import KIND_DELTA, KIND_MANIFEST, MAGIC, SIGNATURE_LEN, Verified
from terminal.sync.delta import Delta, decode_delta, encode_delta_body
from terminal.sync.hotlist import HOTLIST_KINDS, Hotlist, HotlistEntry, decode_hotlist, encode_hotlist_body
from terminal.sync.records import canonical_line, list_digest, quick_line, validate_member
from terminal.sync.report import ListState, Report, decode_report, decode_resync, encode_report, encode_resync
from terminal.sync.snapshot import (
    ChunkInfo,
    Manifest,
    decode_manifest,
    encode_manifest_body,
    iter_chunk,
    iter_chunk_lines,
    iter_snapshot,
    iter_snapshot_lines,
    min_chunk_size,
)
from terminal.sync.strict import canonical_json, loads_object
from terminal.sync.topics import (check_scope, chunk_filter, chunk_index, chunk_topic, delta_topic,
                                  hotlist_topic, manifest_topic)
from tests.memberkit import KEY, STRANGER, members, store_content, write_terminal_config

pytestmark = pytest.mark.timeout(120)  # a hang is a bug too: fail well before the suite's limit

T = TypeVar("T")

#: Settings of every property here: many cheap examples, no per-example deadline on a busy
#: 2-core machine, and no example database written into the tree.
FUZZ = settings(max_examples=160, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
#: The service-level properties each run a real store and an event loop: fewer examples.
FUZZ_SERVICE = settings(FUZZ, max_examples=80)

NOW = 1_750_000_000
ISSUED, EXPIRES = NOW - 60, NOW + 7 * 86_400
TRUSTED = signing.trusted_keys([KEY.public_key()])
PREFIX = "unionterm/v1"
#: Longest refusal message allowed: one log line a technician can read, whatever was sent.
MAX_MESSAGE = 512

RECORDS = members(80)  # two snapshot chunks at the smallest chunk size
NEWCOMER = validate_member({**RECORDS[0], "member_no": "3399999999",
                            "cards": [{"kind": "uid", "ref": "ee" * 32}]})


def _next_list() -> list[dict[str, Any]]:
    """RECORDS after one change, one removal and one addition: what the genuine delta makes."""
    changed = [dict(r) for r in RECORDS]
    changed[3] = {**changed[3], "tier": (changed[3]["tier"] + 1) % 10}
    del changed[10]
    return [*changed, NEWCOMER]


V2 = _next_list()
DELTA = build_delta("all", 1, diff_lists(RECORDS, V2), KEY, ISSUED, EXPIRES)
BLOCKED_REF = RECORDS[0]["cards"][0]["ref"]
HOTLIST = build_hotlist(1, [HotlistEntry("add", BLOCKED_REF, "stolen"),
                            HotlistEntry("remove", "ab" * 32, "found")], KEY, ISSUED, EXPIRES)
SMALL_CHUNK = min_chunk_size()
MANIFEST, _chunks = build_snapshot(RECORDS, "all", 1, KEY, ISSUED, EXPIRES, chunk_size=SMALL_CHUNK)
CHUNKS = list(_chunks)
MANIFEST_V2, _chunks = build_snapshot(V2, "all", 2, KEY, ISSUED, EXPIRES, chunk_size=SMALL_CHUNK)
CHUNKS_V2 = list(_chunks)
REPORT = encode_report(Report(at=NOW, hotlist=58, lists=(
    ListState("all", 7, 1_100_000, "ab" * 32, EXPIRES), ListState("org-1001", 0, 0, "cd" * 32, 0))))
RESYNC = b'{"have":3,"list":"org-1001","reason":"gap"}'


def body_of(blob: bytes) -> Any:
    return json.loads(signing.parse(blob)[1])


DELTA_DOC, HOTLIST_DOC, MANIFEST_DOC = body_of(DELTA), body_of(HOTLIST), body_of(MANIFEST)
MEMBER_DOC = RECORDS[3]


def open_delta(blob: bytes) -> Delta:
    return decode_delta(signing.verify(blob, TRUSTED, KIND_DELTA, "all", NOW))


def open_hotlist(blob: bytes) -> Hotlist:
    return decode_hotlist(signing.verify(blob, TRUSTED, HOTLIST_KINDS, "all", NOW))


def open_manifest(blob: bytes) -> Manifest:
    return decode_manifest(signing.verify(blob, TRUSTED, KIND_MANIFEST, "all", NOW))


# -- what a refusal must look like -------------------------------------------------------------


def check_refusal(exc: PayloadError, roots: tuple[str, ...]) -> None:
    """One of ours, saying where (under the expected root) and what, fit for one log line."""
    assert isinstance(exc, UniontermError)
    assert exc.where.startswith(roots), f"where {exc.where[:80]!r} is not under {roots}"
    assert exc.problem.strip(), f"empty problem at {exc.where!r}"
    assert str(exc) == f"{exc.where}: {exc.problem}"
    assert len(str(exc)) <= MAX_MESSAGE, f"a {len(str(exc))}-character message: {str(exc)[:120]!r}..."
    str(exc).encode("utf-8")  # a message that cannot be written to the log is no message


def outcome(call: Callable[[], T], *roots: str) -> T | PayloadError:
    """The value ``call`` returns, or the PayloadError it raises (checked); anything else propagates."""
    try:
        return call()
    except PayloadError as exc:
        check_refusal(exc, roots)
        return exc


# -- strategies ---------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 9, 10, 2**53 - 1, 2**53, -(2**53), 2**63, 2**64 + 1, 10**100,
                     -(10**100), 4_102_416_000, 4_102_416_001, 1.0, -0.0, 0.5, 1e308, True, False]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities are written as NaN / Infinity, which the parser refuses
)
TEXTS = st.one_of(
    st.text(max_size=24),
    # lone surrogates, control characters, odd spaces: what a careless encoder lets through
    st.text(st.characters(categories=["Cs", "Cc", "Zs", "Zl", "Lo"]), min_size=1, max_size=6),
    st.sampled_from(["", " ", "all", "org-1", "a/b", "#", "+", "add", "lost", "found", "zlib", "union",
                     "AB" * 32, "ab" * 31, "ab" * 33, "g" * 65, "x" * 5000, "\u2028", "王" * 33,
                     "3300000001", "3300000002", "\ud800", "a\udfff"]),
)
KEYS = st.one_of(st.text(max_size=8),
                 st.sampled_from(["member_no", "ref", "count", "op", "x" * 3000, "\ud800"]))
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, TEXTS),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(KEYS, kids, max_size=3),
    max_leaves=8,
)
#: Values no JSON encoder writes, spliced in as raw text: deep nesting, endless digits, bad escapes.
RAW_VALUES = st.one_of(
    st.integers(min_value=1, max_value=5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=5000).map(lambda n: b'{"a":' * n + b"0" + b"}" * n),
    st.integers(min_value=300, max_value=6000).map(lambda n: b"9" * n),
    st.sampled_from([b"-0", b"1e999", b"-1e999", b"NaN", b"Infinity", b"1.0", b"0.5e1", b'"\\ud800"',
                     b'"a\\udfff"', b'"\\u0000"', b'{"a":1,"a":1}', b"[1,]", b"", b"\xff", b"00", b"tru",
                     b'"\xed\xa0\x80"', b'"' + b"\\" * 3 + b'"']),
)
_PLACEHOLDER = "\x00raw\x00"
_PLACEHOLDER_JSON = json.dumps(_PLACEHOLDER).encode()
_DELETE = object()
MUTATIONS = ["replace", "number", "string", "delete", "extra", "repeat", "wrap", "unwrap", "raw"]


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*path, i))


def _edit(node: Any, path: tuple[Any, ...], change: Callable[[Any], Any]) -> Any:
    if not path:
        return change(node)
    head, rest = path[0], path[1:]
    copied = dict(node) if isinstance(node, dict) else list(node)
    new = _edit(copied[head], rest, change)
    if new is _DELETE:
        del copied[head]
    else:
        copied[head] = new
    return copied


@st.composite
def mutated_body(draw: st.DrawFn, doc: Any, canonical: bool = False) -> bytes:
    """``doc`` with one node replaced, removed, added to, repeated or (un)wrapped, as JSON bytes.

    ``canonical`` writes it in canonical form (sorted keys, raw UTF-8), which
    is what the snapshot fast path looks at; otherwise it is written the way
    any JSON library might.
    """
    path = draw(st.sampled_from(list(_paths(doc))))
    op = draw(st.sampled_from(MUTATIONS))
    raw = draw(RAW_VALUES) if op == "raw" else b""
    value = draw({"replace": JSON_VALUES, "number": NUMBERS, "string": TEXTS, "extra": JSON_VALUES,
                  "wrap": st.sampled_from([[], {}])}.get(op, st.none()))
    key = draw(KEYS) if op == "extra" else ""

    def change(node: Any) -> Any:
        if op in ("replace", "number", "string"):
            return value
        if op == "delete":
            return _DELETE if path else {}
        if op == "extra":
            return {**node, key: value} if isinstance(node, dict) else \
                [*node, value] if isinstance(node, list) else value
        if op == "repeat":
            return [*node, node[0]] if isinstance(node, list) and node else node
        if op == "wrap":
            return [node] if value == [] else {"value": node}
        if op == "unwrap":
            return next(iter(node.values() if isinstance(node, dict) else node), None) \
                if isinstance(node, (dict, list)) else node
        return _PLACEHOLDER  # "raw": the placeholder's JSON is swapped for the raw bytes below

    mutated = _edit(copy.deepcopy(doc), path, change)
    if canonical:
        text = json.dumps(mutated, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    else:
        text = json.dumps(mutated, ensure_ascii=draw(st.booleans()))
    data = text.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8, on purpose
    return data.replace(_PLACEHOLDER_JSON, raw, 1) if raw else data


BYTE_CHANGES = ["flip", "insert", "delete", "truncate", "append"]
#: (how, where, with what): one way a link, a broken back office or an attacker changes a payload.
BYTE_MUTATIONS = st.tuples(st.sampled_from(BYTE_CHANGES), st.integers(min_value=0, max_value=1 << 20),
                           st.binary(min_size=1, max_size=8))
ENVELOPE_MUTATIONS = st.tuples(st.sampled_from([*BYTE_CHANGES, "header", "body", "stranger"]),
                               st.integers(min_value=0, max_value=1 << 20), st.binary(min_size=1, max_size=8))
HEADER_CHANGES = {
    "kind": ["members.delta", "members.manifest", "hotlist", "hotlist.full", "command", 7],
    "scope": ["org-1", "ALL", "all ", "", None],
    "version": [0, 1, 2, 3, 2**53, -1, "2", 1.0],
    "issued": [0, ISSUED + 1, EXPIRES, -5, None],
    "expires": [ISSUED, EXPIRES + 1, NOW, 2**60],
    "kid": ["0" * 16, "x", None],
    "len": [0, 1, 2**31, -1],
}


def _nudge(node: Any) -> Any:
    """The smallest change to one field: a number up by one, a string's last letter, a list emptied."""
    if type(node) is int:
        return node + 1
    if isinstance(node, str) and node:
        return node[:-1] + chr(ord(node[-1]) ^ 1)
    return [] if node else [0]


def mutate_envelope(blob: bytes, how: str, pos: int, extra: bytes) -> bytes:
    """Apply one mutation; header and body changes keep the original signature."""
    if how == "flip":
        i = pos % len(blob)
        return blob[:i] + bytes([blob[i] ^ (1 << (pos % 8))]) + blob[i + 1:]
    if how == "insert":
        i = pos % (len(blob) + 1)
        return blob[:i] + extra + blob[i:]
    if how == "delete":
        i = pos % len(blob)
        return blob[:i] + blob[i + 1 + pos % len(extra):]
    if how == "truncate":
        return blob[:pos % len(blob)]
    if how == "append":
        return blob + extra
    header, body = signing.parse(blob)
    fields = header.as_json()
    signature = blob[-SIGNATURE_LEN:]
    if how == "header":
        key = sorted(HEADER_CHANGES)[pos % len(HEADER_CHANGES)]
        choices = HEADER_CHANGES[key]
        fields[key] = choices[extra[0] % len(choices)]
    elif how == "body":
        doc = json.loads(body)
        paths = [p for p in _paths(doc) if p]
        body = canonical_json(_edit(doc, paths[pos % len(paths)], _nudge))
        fields["len"] = len(body)
    else:  # signed by a key the terminal does not trust
        return signing.sign(STRANGER, header.kind, header.scope, header.version, header.issued,
                            header.expires, body)
    return MAGIC + canonical_json(fields) + b"\n" + body + signature


def _valid_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


# -- envelopes and their bodies -------------------------------------------------------------------

KINDS: dict[str, tuple[bytes, Callable[[bytes], Any], tuple[str, ...]]] = {
    "delta": (DELTA, open_delta, ("envelope", "delta")),
    "hotlist": (HOTLIST, open_hotlist, ("envelope", "hotlist")),
    "manifest": (MANIFEST, open_manifest, ("envelope", "manifest")),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@FUZZ
@given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: MAGIC + b)))
def test_arbitrary_bytes_are_refused_as_envelopes(kind: str, data: bytes) -> None:
    _, opener, roots = KINDS[kind]
    assert isinstance(outcome(lambda: opener(data), *roots), PayloadError)


@pytest.mark.parametrize("kind", sorted(KINDS))
@FUZZ
@given(body=st.binary(max_size=400))
def test_arbitrary_signed_bodies_are_refused_by_name(kind: str, body: bytes) -> None:
    """Signed by the trusted key, so the bytes reach the body decoder."""
    genuine, opener, roots = KINDS[kind]
    header = signing.parse(genuine)[0]
    blob = signing.sign(KEY, header.kind, "all", header.version, ISSUED, EXPIRES, body)
    assert isinstance(outcome(lambda: opener(blob), *roots), PayloadError)


@pytest.mark.parametrize("kind", sorted(KINDS))
@FUZZ
@given(mutation=ENVELOPE_MUTATIONS)
def test_mutated_envelope_is_refused_or_the_genuine_message(kind: str,
                                                           mutation: tuple[str, int, bytes]) -> None:
    genuine, opener, roots = KINDS[kind]
    blob = mutate_envelope(genuine, *mutation)
    result = outcome(lambda: opener(blob), *roots)
    if not isinstance(result, PayloadError):
        assert result == opener(genuine), f"{mutation} forged a {kind}"
    if mutation[0] == "stranger":
        assert isinstance(result, SignatureError) and result.where == "envelope.header.kid"


@pytest.mark.parametrize("kind", sorted(KINDS))
@FUZZ
@given(data=st.data())
@example(data=None)  # None: the deeply nested header line below
def test_malformed_headers_are_refused_by_name(kind: str, data: st.DataObject | None) -> None:
    """Headers signed by the trusted key: anything accepted must be a well-typed, valid header."""
    genuine, opener, roots = KINDS[kind]
    header, body = signing.parse(genuine)
    if data is None:
        line = b"[" * 1015 + b"]" * 5  # fits the 1024-byte header line, nests past the recursion limit
    else:
        line = data.draw(mutated_body(header.as_json(), canonical=True), "header line")
    assume(b"\n" not in line)
    signed = MAGIC + line + b"\n" + body
    blob = signed + KEY.sign(signed)
    verified = outcome(lambda: signing.verify(blob, TRUSTED, header.kind, "all", NOW), "envelope")
    if isinstance(verified, Verified):
        got = verified.header
        assert (got.kind, got.scope, got.kid, got.length, verified.body) == \
            (header.kind, "all", header.kid, len(body), body)
        assert all(type(v) is int for v in (got.version, got.issued, got.expires))
        assert 1 <= got.version <= signing.MAX_INT and got.issued < got.expires and NOW < got.expires
        outcome(lambda: opener(blob), *roots)


def _check_delta(delta: Delta) -> None:
    """An accepted delta re-encodes, and decodes again to itself: its records are canonical."""
    body = encode_delta_body(delta.base, delta.upserts, delta.removals, delta.count, delta.digest)
    again = decode_delta(Verified(signing.parse(DELTA)[0], body))
    assert (again.upserts, again.removals, again.count, again.digest) == \
        (delta.upserts, delta.removals, delta.count, delta.digest)
    for record in delta.upserts:
        assert validate_member(record) == record
        canonical_line(record)


@FUZZ
@given(body=mutated_body(DELTA_DOC))
@example(body=json.dumps({**DELTA_DOC, "upserts": [{**DELTA_DOC["upserts"][0], "name": "\ud800"}]}).encode())
@example(body=json.dumps({**DELTA_DOC, "upserts": [{**DELTA_DOC["upserts"][0], "org": "a\udfffb"}]}).encode())
@example(body=json.dumps({**DELTA_DOC, "x" * 100_000: 1}).encode())
@example(body=json.dumps({**DELTA_DOC, "upserts": [{**DELTA_DOC["upserts"][0],
                                                     "status": list(range(20_000))}]}).encode())
@example(body=b'{"base":1,"upserts":' + b"[" * 3000 + b"]" * 3000 + b"}")
def test_malformed_delta_bodies_are_refused_by_name(body: bytes) -> None:
    blob = signing.sign(KEY, KIND_DELTA, "all", 2, ISSUED, EXPIRES, body)
    result = outcome(lambda: open_delta(blob), "delta")
    if isinstance(result, Delta):
        _check_delta(result)


@FUZZ
@given(body=mutated_body(HOTLIST_DOC))
@example(body=json.dumps({"entries": [{"op": list(range(20_000)), "reason": "lost",
                                        "ref": "ab" * 32}]}).encode())
@example(body=json.dumps({"entries": [], "\ud800" * 3: 0}).encode())
def test_malformed_hotlist_bodies_are_refused_by_name(body: bytes) -> None:
    for kind in HOTLIST_KINDS:
        blob = signing.sign(KEY, kind, "all", 1, ISSUED, EXPIRES, body)
        result = outcome(lambda: open_hotlist(blob), "hotlist")
        if isinstance(result, Hotlist):
            again = encode_hotlist_body(result.entries, result.full)
            assert decode_hotlist(Verified(signing.parse(blob)[0], again)) == result


@FUZZ
@given(body=mutated_body(MANIFEST_DOC))
@example(body=json.dumps({**MANIFEST_DOC, "compression": {"a": [[[0]]] * 5000}}).encode())
def test_malformed_manifest_bodies_are_refused_by_name(body: bytes) -> None:
    blob = signing.sign(KEY, KIND_MANIFEST, "all", 1, ISSUED, EXPIRES, body)
    result = outcome(lambda: open_manifest(blob), "manifest")
    if isinstance(result, Manifest):
        again = encode_manifest_body(result.count, result.digest, result.chunks)
        assert decode_manifest(Verified(signing.parse(blob)[0], again)) == result


# -- records, lines and chunks ---------------------------------------------------------------------


@FUZZ
@given(obj=st.one_of(JSON_VALUES,
                     mutated_body(MEMBER_DOC).map(lambda b: json.loads(b) if _valid_json(b) else b)))
@example(obj={**MEMBER_DOC, "name": "\ud800"})
@example(obj={**MEMBER_DOC, "org": "\udc00\ud800"})
@example(obj={**MEMBER_DOC, "role": [[[[[]]]]] * 10_000})
@example(obj={**MEMBER_DOC, "\n" * 300: 0})
def test_validate_member_returns_a_canonical_record_or_names_the_fault(obj: Any) -> None:
    record = outcome(lambda: validate_member(obj, "member"), "member")
    if isinstance(record, dict):
        line = canonical_line(record)
        assert validate_member(loads_object(line, "line"), "line") == record
        quick = quick_line(line[:-1])
        assert quick is None or quick == (record["member_no"], tuple(c["ref"] for c in record["cards"]))


def _line_variants() -> st.SearchStrategy[bytes]:
    genuine = canonical_line(validate_member(MEMBER_DOC))[:-1]
    flipped = st.tuples(st.integers(0, len(genuine) - 1), st.integers(0, 7)).map(
        lambda t: genuine[:t[0]] + bytes([genuine[t[0]] ^ (1 << t[1])]) + genuine[t[0] + 1:])
    return st.one_of(mutated_body(MEMBER_DOC, canonical=True), flipped, st.binary(max_size=200))


@FUZZ
@given(line=_line_variants())
@example(line=canonical_line({**validate_member(MEMBER_DOC), "access_groups": ["b", "a"]})[:-1])
@example(line=canonical_line({**validate_member(MEMBER_DOC), "access_groups": ["a", "a"]})[:-1])
def test_the_snapshot_fast_path_accepts_only_what_the_full_check_accepts(line: bytes) -> None:
    """quick_line is a filter, never a judge: whatever it passes is a valid canonical record."""
    quick = quick_line(line)
    if quick is None:
        return
    record = validate_member(loads_object(line, "line"), "line")  # must not raise
    assert canonical_line(record) == line + b"\n"
    assert quick == (record["member_no"], tuple(c["ref"] for c in record["cards"]))


GENUINE_CHUNK_RECORDS = [validate_member(r) for r in RECORDS[:6]]
GENUINE_RAW = b"".join(canonical_line(r) for r in GENUINE_CHUNK_RECORDS)
GENUINE_COUNT, GENUINE_DIGEST = list_digest(GENUINE_CHUNK_RECORDS)
_SIGNED_HEADER = signing.parse(MANIFEST)[0]


def manifest_for(payload: bytes, raw: int, count: int = GENUINE_COUNT,
                 first: str = RECORDS[0]["member_no"], last: str = RECORDS[5]["member_no"]) -> Manifest:
    """The manifest a back office would sign for ``payload`` claiming the genuine six records."""
    info = ChunkInfo(hashlib.sha256(payload).hexdigest(), len(payload), max(raw, 1), count, first, last)
    body = encode_manifest_body(count, GENUINE_DIGEST, [info])
    return decode_manifest(Verified(_SIGNED_HEADER, body))


def mutate_lines(raw: bytes, how: str, pos: int, extra: bytes) -> bytes:
    """A chunk's lines reordered, repeated, dropped or re-spaced, or its bytes changed."""
    lines = raw.splitlines(keepends=True)
    i = pos % len(lines)
    if how == "swap":
        j = (pos // 7) % len(lines)
        lines[i], lines[j] = lines[j], lines[i]
    elif how == "repeat":
        lines.insert(i, lines[i])
    elif how == "drop":
        del lines[i]
    elif how == "spaced":
        lines[i] = json.dumps(json.loads(lines[i]), ensure_ascii=False).encode() + b"\n"
    elif how == "no-newline":
        lines[-1] = lines[-1].rstrip(b"\n")
    elif how == "crlf":
        lines[i] = lines[i][:-1] + b"\r\n"
    else:
        return mutate_envelope(raw, how, pos, extra)
    return b"".join(lines)


CHUNK_CONTENT = st.one_of(
    st.tuples(st.sampled_from([*BYTE_CHANGES, "swap", "repeat", "drop", "spaced", "no-newline", "crlf"]),
              st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)).map(
        lambda m: mutate_lines(GENUINE_RAW, *m)),
    st.lists(mutated_body(MEMBER_DOC, canonical=True), min_size=1, max_size=3).map(
        lambda lines: b"".join(line + b"\n" for line in lines)),
    st.binary(max_size=300),
)


def _consume(call: Callable[[], Iterator[Any]]) -> Callable[[], list[Any]]:
    return lambda: list(call())


def _same_outcome(manifest: Manifest, payload: bytes) -> list[dict[str, Any]] | PayloadError:
    """Records and lines paths must agree: same records, or the same fault named the same way."""
    roots = ("chunk[0]", "snapshot", "manifest.digest")
    records = outcome(_consume(lambda: iter_snapshot(manifest, [payload])), *roots)
    listed = outcome(_consume(lambda: iter_snapshot_lines(manifest, [payload])), *roots)
    chunk = outcome(_consume(lambda: iter_chunk_lines(manifest, 0, payload)), "chunk[0]")
    if isinstance(records, PayloadError):
        assert isinstance(listed, PayloadError) and str(listed) == str(records)
        return records
    assert not isinstance(listed, PayloadError), listed
    assert [r.line for r in listed] == [canonical_line(r) for r in records]
    assert not isinstance(chunk, PayloadError) and chunk == listed
    return records


@FUZZ
@given(raw=CHUNK_CONTENT, level=st.integers(0, 9))
@example(raw=GENUINE_RAW.replace(b'"name":"', b'"name":"\\ud800', 1), level=6)
@example(raw=b"[" * 5000 + b"]" * 5000 + b"\n", level=6)
def test_mutated_chunk_content_is_refused_or_the_genuine_records(raw: bytes, level: int) -> None:
    """Even a chunk the (signed) manifest vouches for is checked line by line against the digest."""
    payload = zlib.compress(raw, level)
    manifest = manifest_for(payload, len(raw))
    result = _same_outcome(manifest, payload)
    if not isinstance(result, PayloadError):
        assert result == GENUINE_CHUNK_RECORDS


@FUZZ
@given(mutation=BYTE_MUTATIONS,
       stated_raw=st.one_of(st.just(len(GENUINE_RAW)), st.integers(1, 1 << 24)))
@example(mutation=("append", 0, b"\x00"), stated_raw=len(GENUINE_RAW))
@example(mutation=("flip", 0, b"\x00"), stated_raw=len(GENUINE_RAW))  # breaks the zlib header
def test_corrupt_zlib_streams_are_refused_by_name(mutation: tuple[str, int, bytes], stated_raw: int) -> None:
    payload = mutate_envelope(zlib.compress(GENUINE_RAW), *mutation)
    assume(payload)
    result = _same_outcome(manifest_for(payload, stated_raw), payload)
    if not isinstance(result, PayloadError):
        assert result == GENUINE_CHUNK_RECORDS


@FUZZ
@given(payload=st.one_of(st.binary(max_size=300), st.sampled_from(CHUNKS).map(lambda c: c[:-1] + b"\x00")),
       index=st.integers(-2, 3))
def test_a_chunk_the_manifest_does_not_vouch_for_is_refused_before_decompression(payload: bytes,
                                                                                 index: int) -> None:
    manifest = open_manifest(MANIFEST)
    result = outcome(lambda: iter_chunk(manifest, index, payload), "chunk[")
    if 0 <= index < len(CHUNKS) and payload != CHUNKS[index]:
        assert isinstance(result, SignatureError)
    else:
        assert isinstance(result, PayloadError)


# -- reports, resync requests, topics, the JSON layer -------------------------------------------------


@FUZZ
@given(payload=st.one_of(st.binary(max_size=300), mutated_body(json.loads(REPORT))))
@example(payload=b'{"at":1,"hotlist":0,"lists":' + b"[" * 3000 + b"]" * 3000 + b"}")
@example(payload=json.dumps({"at": 1, "hotlist": 0, "lists": {"x" * 60_000: {}}}).encode())
@example(payload=json.dumps({"at": 1, "hotlist": 0, "lists": {"\ud800\n": {}}}).encode())
def test_reports_decode_or_name_the_fault(payload: bytes) -> None:
    report = outcome(lambda: decode_report(payload), "report")
    if isinstance(report, Report):
        assert decode_report(encode_report(report)) == report


@FUZZ
@given(payload=st.one_of(st.binary(max_size=200), mutated_body(json.loads(RESYNC))))
@example(payload=b'{"have":0,"reason":"gap","list":' + json.dumps(list(range(10_000))).encode() + b"}")
@example(payload=b'{"have":0,"reason":"gap","list":' + b"[" * 1000 + b"]" * 1000 + b"}")
def test_resync_requests_decode_or_name_the_fault(payload: bytes) -> None:
    request = outcome(lambda: decode_resync(payload), "resync")
    if not isinstance(request, PayloadError):
        assert decode_resync(encode_resync(request)) == request


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), RAW_VALUES, mutated_body(DELTA_DOC)))
@example(data=b"[" * 100_000)
@example(data=b'{"a":' * 2000 + b"1" + b"}" * 2000)
def test_loads_object_returns_an_object_or_names_the_fault(data: bytes) -> None:
    value = outcome(lambda: loads_object(data, "payload"), "payload")
    assert isinstance(value, (dict, PayloadError))


@FUZZ
@given(level=st.one_of(st.text(max_size=12), st.integers(0, 99_999).map(str)),
       scope=st.sampled_from(["all", "org-1001", "group-x"]))
@example(level="x" * 70_000, scope="all")  # one topic level may be 64 KB long
@example(level="1\ud800\n", scope="all")
def test_chunk_topics_parse_to_their_index_or_are_refused(level: str, scope: str) -> None:
    topic = f"{PREFIX}/members/all/chunk/{level}"
    index = outcome(lambda: chunk_index(topic, scope, PREFIX), PREFIX)
    if isinstance(index, int):
        assert chunk_topic(scope, index, PREFIX) == topic


@FUZZ
@given(scope=JSON_VALUES)
@example(scope=list(range(20_000)))
@example(scope="org-" + "\ud800" * 1000)
def test_scopes_are_checked_or_refused_by_name(scope: Any) -> None:
    result = outcome(lambda: check_scope(scope), "scope")
    if not isinstance(result, PayloadError):
        assert result == scope and manifest_topic(result).count("/") == 4


# -- regressions: what the properties above found, named -----------------------------------------------

_DEEP = b"[" * 3000 + b"]" * 3000


def _delta_with(**upsert: Any) -> bytes:
    return json.dumps({**DELTA_DOC, "upserts": [{**DELTA_DOC["upserts"][0], **upsert}]}).encode()


def _records_of_line(line: bytes) -> list[dict[str, Any]]:
    """Decode a one-line chunk that the manifest vouches for: only the line itself can be at fault."""
    payload = zlib.compress(line + b"\n")
    manifest = manifest_for(payload, len(line) + 1, count=1, last=RECORDS[0]["member_no"])
    return list(iter_chunk(manifest, 0, payload))


@pytest.mark.parametrize("decode,where,problem", [
    # RecursionError escaped the JSON layer: a few KB of "[" are inside every size limit.
    (lambda: open_delta(signing.sign(KEY, KIND_DELTA, "all", 2, ISSUED, EXPIRES, b'{"base":' + _DEEP + b"}")),
     "delta", "JSON nested too deeply"),
    (lambda: decode_report(b'{"lists":' + _DEEP + b"}"), "report", "JSON nested too deeply"),
    (lambda: decode_resync(_DEEP), "resync", "JSON nested too deeply"),
    (lambda: _records_of_line(_DEEP), "chunk[0].line[1]", "JSON nested too deeply"),
    # A "\ud800" escape passed validation, then UnicodeEncodeError when the record was written
    # (in the delta worker thread, which failed without a refusal) or hashed as a chunk line.
    (lambda: open_delta(signing.sign(KEY, KIND_DELTA, "all", 2, ISSUED, EXPIRES,
                                     _delta_with(name="王\ud800"))),
     "delta.upserts[0].name", "contains a lone UTF-16 surrogate (not encodable as UTF-8)"),
    (lambda: validate_member({**MEMBER_DOC, "org": "\udfff"}), "member.org",
     "contains a lone UTF-16 surrogate (not encodable as UTF-8)"),
    (lambda: _records_of_line(canonical_line(RECORDS[0])[:-1].replace(b'"name":"', b'"name":"\\ud800', 1)),
     "chunk[0].line[1].name", "contains a lone UTF-16 surrogate (not encodable as UTF-8)"),
    # Messages that quoted the sender's value whole: tens of KB in one log line.
    (lambda: open_delta(signing.sign(KEY, KIND_DELTA, "all", 2, ISSUED, EXPIRES,
                                     _delta_with(status=list(range(20_000))))),
     "delta.upserts[0].status", "a list is not one of ['active', 'left', 'suspended']"),
    (lambda: decode_resync(b'{"have":0,"list":{"a":[1,2]},"reason":"gap"}'), "resync.list",
     "a dict is not a scope (all, org-<id>, group-<id>)"),
    (lambda: decode_resync(b'{"have":' + b"9" * 4000 + b',"list":"all","reason":"gap"}'), "resync.have",
     "999999999999... (4000 digits) is outside 0..9007199254740991"),
    (lambda: decode_report(json.dumps({"at": 0, "hotlist": 0, "lists": {"x" * 60_000: {}}}).encode()),
     "report.lists." + "x" * 37 + "...", f"'{'x' * 37}...' is not a scope (all, org-<id>, group-<id>)"),
    (lambda: validate_member({**MEMBER_DOC, "\ud800\n" + "x" * 5000: 1}),
     "member.\\ud800\\n" + "x" * 29 + "...", "unknown key"),  # escaped, then cut to 40
    (lambda: chunk_index(f"{PREFIX}/members/all/chunk/" + "9" * 70_000, "all", PREFIX),
     f"{PREFIX}/members/all/chunk/" + "9" * 21 + "...", "not a chunk topic of scope 'all'"),
], ids=["deep-delta", "deep-report", "deep-resync", "deep-chunk-line", "surrogate-delta", "surrogate-member",
        "surrogate-chunk-line", "huge-choice", "dict-scope", "4000-digits", "long-scope-key", "odd-key",
        "long-topic"])
def test_found_faults_are_refused_by_name(decode: Callable[[], Any], where: str, problem: str) -> None:
    with pytest.raises(PayloadError) as err:
        decode()
    check_refusal(err.value, (where.split(".")[0].split("[")[0],))
    assert (err.value.where, err.value.problem) == (where, problem)


# -- the service: refused messages leave the store as it was ---------------------------------------------


class FakeUplink:
    """Takes the service's subscriptions and publications, as the real uplink does, without a broker."""

    def __init__(self) -> None:
        self.handlers: dict[str, tuple[Callable[[str, bytes], Awaitable[None]], int]] = {}
        self.published: list[tuple[str, bytes]] = []

    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes], Awaitable[None]],
                  max_bytes: int) -> None:
        self.handlers[topic_filter] = (handler, max_bytes)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        self.published.append((topic, payload))
        return True


class Service:
    """A MemberSync on a real store holding RECORDS as v1, fed message by message."""

    def __init__(self, workdir: Path) -> None:
        self.runner = asyncio.Runner()
        self.store = MemberStore(workdir / "members.db", scopes=("all",))
        manifest = open_manifest(MANIFEST)
        build = self.store.new_build(manifest)
        self.store.install(build, build.run(iter_snapshot_lines(manifest, CHUNKS)))
        self.sync = MemberSync(load(write_terminal_config(workdir / "terminal", 1883)), now=lambda: NOW)
        self.uplink = FakeUplink()
        self.sync.attach(self.store, self.uplink)  # type: ignore[arg-type]
        self.reader = sqlite3.connect(self.store.path)

    def close(self) -> None:
        self.runner.run(self.sync.close())
        self.runner.close()
        self.reader.close()
        self.store.close()

    def state(self) -> tuple[Any, ...]:
        """Everything a message could change: the list (recomputed from its lines) and the hot list."""
        hot = self.reader.execute("SELECT hex(ref), reason, added_at FROM hotlist ORDER BY ref").fetchall()
        return store_content(self.store), self.store.held["all"], self.store.hotlist_state(), hot

    def refusals(self) -> int:
        return sum(self.sync.refused.values())

    def deliver(self, topic_filter: str, topic: str, payload: bytes) -> None:
        """Hand one message to its handler and wait for the work it started; only PayloadError may escape."""
        handler, limit = self.uplink.handlers[topic_filter]
        assert len(payload) <= limit  # bigger ones the uplink refuses before any handler sees them

        async def run() -> list[BaseException]:
            outcome_ = await _call(handler, topic, payload)
            if isinstance(outcome_, PayloadError):
                check_refusal(outcome_, (PREFIX,))
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            done = await asyncio.gather(*pending, return_exceptions=True)
            return [r for r in done if isinstance(r, BaseException)]

        failures = self.runner.run(run())
        assert not failures, f"a sync task failed: {failures[0]!r}"


async def _call(handler: Callable[[str, bytes], Awaitable[None]], topic: str,
                payload: bytes) -> PayloadError | None:
    try:
        await handler(topic, payload)
    except PayloadError as exc:  # the uplink's contract: a handler refuses by raising PayloadError
        return exc
    return None


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    running = Service(tmp_path_factory.mktemp("service"))
    try:
        yield running
    finally:
        running.close()


def test_the_service_rig_sees_a_genuine_change(tmp_path: Path) -> None:
    """The control: genuine messages do change the state these properties compare."""
    rig = Service(tmp_path)
    try:
        before = rig.state()
        rig.deliver(delta_topic("all", PREFIX), delta_topic("all", PREFIX), DELTA)
        after_delta = rig.state()
        assert after_delta[0] == (2, *list_digest(V2)) != before[0]
        rig.deliver(hotlist_topic(PREFIX), hotlist_topic(PREFIX), HOTLIST)
        assert rig.store.lookup(bytes.fromhex(BLOCKED_REF)).hot and rig.state()[3] != before[3]
        for index, chunk in enumerate(CHUNKS_V2):  # v3 of the same list: adopted without download
            rig.deliver(chunk_filter("all", PREFIX), chunk_topic("all", index, PREFIX), chunk)
        rig.deliver(manifest_topic("all", PREFIX), manifest_topic("all", PREFIX),
                    build_snapshot(V2, "all", 3, KEY, ISSUED, EXPIRES, chunk_size=SMALL_CHUNK)[0])
        assert rig.store.held["all"].version == 3 and rig.refusals() == 0
    finally:
        rig.close()


def _service_case(service: Service, topic_filter: str, topic: str, payload: bytes) -> None:
    before, refused = service.state(), service.refusals()
    service.deliver(topic_filter, topic, payload)
    assert service.state() == before, "a refused message changed the store"
    assert service.refusals() == refused + 1, "a bad message went unrefused"


#: A service-level message: arbitrary bytes, a mutated genuine envelope, or a malformed signed body.
def service_payloads(genuine: bytes, doc: Any) -> st.SearchStrategy[bytes]:
    header = signing.parse(genuine)[0]
    return st.one_of(
        st.binary(max_size=200),
        ENVELOPE_MUTATIONS.map(lambda m: mutate_envelope(genuine, *m)).filter(lambda b: b != genuine),
        mutated_body(doc).map(lambda body: signing.sign(KEY, header.kind, "all", header.version, ISSUED,
                                                        EXPIRES, body)),
    )


@FUZZ_SERVICE
@given(payload=service_payloads(DELTA, DELTA_DOC))
@example(payload=signing.sign(KEY, KIND_DELTA, "all", 2, ISSUED, EXPIRES, json.dumps(
    {**DELTA_DOC, "upserts": [{**DELTA_DOC["upserts"][0], "name": "\ud800"}]}).encode()))
def test_refused_deltas_leave_the_store_unchanged(service: Service, payload: bytes) -> None:
    decoded = outcome(lambda: open_delta(payload), "envelope", "delta")
    genuine = open_delta(DELTA)
    assume(isinstance(decoded, PayloadError) or (decoded.upserts, decoded.removals, decoded.count,
                                                 decoded.digest) != (genuine.upserts, genuine.removals,
                                                                     genuine.count, genuine.digest))
    topic = delta_topic("all", PREFIX)
    _service_case(service, topic, topic, payload)


@FUZZ_SERVICE
@given(payload=service_payloads(HOTLIST, HOTLIST_DOC))
def test_refused_hotlist_messages_leave_the_store_unchanged(service: Service, payload: bytes) -> None:
    # A well-formed hot list signed by the trusted key is an order to obey, not bad input.
    assume(isinstance(outcome(lambda: open_hotlist(payload), "envelope", "hotlist"), PayloadError))
    topic = hotlist_topic(PREFIX)
    _service_case(service, topic, topic, payload)


@FUZZ_SERVICE
@given(payload=service_payloads(MANIFEST_V2, body_of(MANIFEST_V2)))
def test_refused_manifests_leave_the_store_unchanged(service: Service, payload: bytes) -> None:
    # A forged v2 that got through would build from these chunks and change the list.
    for index, chunk in enumerate(CHUNKS_V2):
        service.deliver(chunk_filter("all", PREFIX), chunk_topic("all", index, PREFIX), chunk)
    assume(isinstance(outcome(lambda: open_manifest(payload), "envelope", "manifest"), PayloadError))
    topic = manifest_topic("all", PREFIX)
    _service_case(service, topic, topic, payload)


@FUZZ_SERVICE
@given(level=st.one_of(st.text(max_size=10), st.integers(0, 9000).map(str)), payload=st.binary(max_size=300))
@example(level="x" * 70_000, payload=b"x")
def test_stray_chunks_change_nothing(service: Service, level: str, payload: bytes) -> None:
    before = service.state()
    service.deliver(chunk_filter("all", PREFIX), f"{PREFIX}/members/all/chunk/{level}", payload)
    assert service.state() == before
