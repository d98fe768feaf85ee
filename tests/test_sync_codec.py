"""Member-list codec: records, digest, snapshot chunks, deltas, hot lists, reports."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from simulator.backoffice.generate import generate_members
from simulator.backoffice.publish import ListDiff, build_delta, build_hotlist, build_snapshot, diff_lists
from terminal import signing
from terminal.cardref import card_ref
from terminal.exceptions import PayloadError, SignatureError
from terminal.sync import topics
from terminal.sync.delta import decode_delta, encode_delta_body
from terminal.sync.hotlist import HotlistEntry, decode_hotlist
from terminal.sync.limits import Limits
from terminal.signing import check_version
from terminal.sync.records import ListDigest, canonical_line, list_digest, validate_member
from terminal.sync.report import (
    ListState,
    Report,
    ResyncRequest,
    decode_report,
    decode_resync,
    encode_report,
    encode_resync,
)
from terminal.sync.snapshot import (
    ChunkInfo,
    decode_manifest,
    encode_manifest_body,
    iter_chunk,
    iter_snapshot,
    min_chunk_size,
)

NOW = 1_750_000_000
ISSUED, EXPIRES = NOW - 10, NOW + 7 * 86_400
CARD_KEY = b"\x11" * 32
KEY = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
TRUSTED = signing.trusted_keys([KEY.public_key()])
SMALL_CHUNK = min_chunk_size()


def member(no: str = "3300000001", **changes: object) -> dict:
    record = {
        "member_no": no, "name": "王*明", "org": "杭州市第三人民医院", "status": "active", "tier": 1,
        "canteen_group": "cg-1003", "access_groups": ["site-1003", "gym"], "valid_from": 1_672_502_400,
        "valid_until": 0, "batch": 1, "role": "member", "pin_hash": "",
        "cards": [{"kind": "union", "ref": "ab" * 32}, {"kind": "pan", "ref": "cd" * 32}],
    }
    record.update(changes)
    return record


@pytest.fixture(scope="module")
def members() -> list[dict]:
    return list(generate_members(3000, seed=5, card_key=CARD_KEY))


@pytest.fixture(scope="module")
def snapshot(members) -> tuple[bytes, list[bytes]]:
    manifest, chunks = build_snapshot(members, "all", 7, KEY, ISSUED, EXPIRES, chunk_size=SMALL_CHUNK)
    return manifest, list(chunks)


def manifest_of(blob: bytes, scope: str = "all"):
    return decode_manifest(signing.verify(blob, TRUSTED, signing.KIND_MANIFEST, scope, NOW))


def signed_manifest(count: int, digest: str, chunks: list[ChunkInfo], version: int = 7) -> bytes:
    body = encode_manifest_body(count, digest, chunks)
    return signing.sign(KEY, signing.KIND_MANIFEST, "all", version, ISSUED, EXPIRES, body)


def chunk_of(lines: list[bytes]) -> tuple[ChunkInfo, bytes]:
    """A chunk built by hand, so tests can make one the encoder never would."""
    raw = b"".join(lines)
    data = zlib.compress(raw)
    first = json.loads(lines[0])["member_no"]
    last = json.loads(lines[-1])["member_no"]
    return ChunkInfo(hashlib.sha256(data).hexdigest(), len(data), len(raw), len(lines), first, last), data


# -- records -------------------------------------------------------------------------------


def test_validate_member_returns_canonical_copy() -> None:
    source = member()
    record = validate_member(source)
    assert record["access_groups"] == ["gym", "site-1003"]
    assert [c["kind"] for c in record["cards"]] == ["pan", "union"]
    assert source["access_groups"] == ["site-1003", "gym"]  # the input is left alone
    assert canonical_line(record) == (
        '{"access_groups":["gym","site-1003"],"batch":1,"canteen_group":"cg-1003","cards":'
        f'[{{"kind":"pan","ref":"{"cd" * 32}"}},{{"kind":"union","ref":"{"ab" * 32}"}}],'
        '"member_no":"3300000001","name":"王*明","org":"杭州市第三人民医院","pin_hash":"",'
        '"role":"member","status":"active","tier":1,"valid_from":1672502400,"valid_until":0}\n'
    ).encode()


@pytest.mark.parametrize("changes,where", [
    ({"member_no": "33/01"}, "member.member_no"),
    ({"member_no": ""}, "member.member_no"),
    ({"name": ""}, "member.name"),
    ({"name": "王\n明"}, "member.name"),
    ({"status": "dead"}, "member.status"),
    ({"status": ["active"]}, "member.status"),
    ({"tier": True}, "member.tier"),
    ({"tier": 10}, "member.tier"),
    ({"tier": "1"}, "member.tier"),
    ({"canteen_group": "a b"}, "member.canteen_group"),
    ({"access_groups": "gym"}, "member.access_groups"),
    ({"access_groups": ["gym", "gym"]}, "member.access_groups[1]"),
    ({"access_groups": ["gym", 3]}, "member.access_groups[1]"),
    ({"valid_from": -1}, "member.valid_from"),
    ({"valid_until": 1_672_502_400}, "member.valid_until"),
    ({"batch": 4}, "member.batch"),
    ({"role": "admin"}, "member.role"),
    ({"pin_hash": "has space"}, "member.pin_hash"),
    ({"cards": [{"kind": "iris", "ref": "ab" * 32}]}, "member.cards[0].kind"),
    ({"cards": [{"kind": "uid", "ref": "AB" * 32}]}, "member.cards[0].ref"),
    ({"cards": [{"kind": "uid", "ref": "ab" * 31}]}, "member.cards[0].ref"),
    ({"cards": [{"kind": "uid"}]}, "member.cards[0].ref"),
    ({"cards": [{"kind": "uid", "ref": "ab" * 32, "pin": 1}]}, "member.cards[0].pin"),
    ({"cards": [{"kind": "uid", "ref": "ab" * 32}, {"kind": "pan", "ref": "ab" * 32}]}, "member.cards[1]"),
    ({"cards": ["ab" * 32]}, "member.cards[0]"),
    ({"nickname": "x"}, "member.nickname"),
])
def test_each_bad_field_is_named(changes, where) -> None:
    with pytest.raises(PayloadError) as err:
        validate_member(member(**changes))
    assert err.value.where == where


def test_missing_field_is_named() -> None:
    record = member()
    del record["pin_hash"]
    with pytest.raises(PayloadError, match="required key missing") as err:
        validate_member(record)
    assert err.value.where == "member.pin_hash"


def test_list_digest_is_the_sum_of_the_lines_sha256(members) -> None:
    records = [validate_member(r) for r in members[:50]]
    lines = [json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
             for r in sorted(records, key=lambda r: r["member_no"])]
    total = sum(int(hashlib.sha256(line).hexdigest(), 16) for line in lines) % 2 ** 256
    assert list_digest(records) == (50, format(total, "064x"))
    assert list_digest([]) == (0, "0" * 64)


def test_a_change_moves_the_digest_to_that_of_the_changed_list(members) -> None:
    records = [validate_member(r) for r in members[:30]]
    changed = dict(records[7], status="left" if records[7]["status"] != "left" else "active")
    after = [*records[:3], *records[4:7], changed, *records[8:]]
    moved = ListDigest(*list_digest(records))
    moved.minus(canonical_line(records[3]))
    moved.minus(canonical_line(records[7]))
    moved.plus(canonical_line(changed))
    assert (moved.count, moved.hexdigest()) == list_digest(after) != list_digest(records)


def test_list_digest_refuses_out_of_order_records() -> None:
    digest = ListDigest()
    digest.add(validate_member(member("2")))
    with pytest.raises(ValueError, match="member_no order"):
        digest.add(validate_member(member("10")))  # "10" < "2" as text: the store's order


# -- snapshots -------------------------------------------------------------------------------


def test_snapshot_round_trip_streams_every_record_and_checks_the_digest(members, snapshot) -> None:
    blob, chunks = snapshot
    manifest = manifest_of(blob)
    assert (manifest.scope, manifest.version, manifest.count) == ("all", 7, 3000)
    assert manifest.digest == list_digest(validate_member(r) for r in members)[1]
    assert len(chunks) == len(manifest.chunks) > 3
    assert all(len(c) <= SMALL_CHUNK for c in chunks)
    decoded = list(iter_snapshot(manifest, chunks))
    assert decoded == [validate_member(r) for r in members]


def test_chunks_decode_in_any_order_to_the_same_records(members, snapshot) -> None:
    blob, chunks = snapshot
    manifest = manifest_of(blob)
    seen = {}
    for index in reversed(range(len(chunks))):
        for record in iter_chunk(manifest, index, chunks[index]):
            seen[record["member_no"]] = record
    assert [seen[k] for k in sorted(seen)] == [validate_member(r) for r in members]


def test_snapshot_decoding_is_streaming(snapshot) -> None:
    """The first record comes out after one chunk was taken, not after the whole list."""
    blob, chunks = snapshot
    taken = []

    def feed():
        for chunk in chunks:
            taken.append(len(chunk))
            yield chunk

    records = iter_snapshot(manifest_of(blob), feed())
    next(records)
    assert len(taken) == 1


def test_chunk_tampering_is_detected_before_any_record(snapshot) -> None:
    blob, chunks = snapshot
    manifest = manifest_of(blob)
    bad = bytearray(chunks[1])
    bad[len(bad) // 2] ^= 0x01
    with pytest.raises(SignatureError, match="do not match the signed manifest") as err:
        iter_chunk(manifest, 1, bytes(bad))
    assert err.value.where == "chunk[1]"
    with pytest.raises(SignatureError):
        iter_chunk(manifest, 0, chunks[1])  # a genuine chunk in the wrong place
    with pytest.raises(SignatureError):
        list(iter_snapshot(manifest, [chunks[0], chunks[2]]))


def test_oversize_chunk_and_bad_index_are_refused(snapshot) -> None:
    blob, chunks = snapshot
    manifest = manifest_of(blob)
    with pytest.raises(PayloadError, match="limit"):
        iter_chunk(manifest, 0, chunks[0], Limits(max_chunk=100))
    with pytest.raises(PayloadError, match="has"):
        iter_chunk(manifest, len(chunks), chunks[0])


def test_missing_chunk_fails_the_snapshot(snapshot) -> None:
    blob, chunks = snapshot
    with pytest.raises(PayloadError, match="chunks given"):
        list(iter_snapshot(manifest_of(blob), chunks[:-1]))


def test_manifest_digest_that_does_not_match_the_chunks_fails_at_the_end() -> None:
    records = [validate_member(member(f"33{i:08d}")) for i in range(3)]
    info, data = chunk_of([canonical_line(r) for r in records])
    manifest = manifest_of(signed_manifest(3, "00" * 32, [info]))
    decoded = iter_snapshot(manifest, [data])
    assert [next(decoded) for _ in range(3)] == records
    with pytest.raises(PayloadError, match="manifest says") as err:
        next(decoded)
    assert err.value.where == "manifest.digest"


def test_non_canonical_line_is_refused_with_its_line_number() -> None:
    good = canonical_line(validate_member(member("3300000001")))
    spaced = json.dumps(validate_member(member("3300000002")), ensure_ascii=False).encode() + b"\n"
    info, data = chunk_of([good, spaced])
    manifest = manifest_of(signed_manifest(2, "00" * 32, [info]))
    with pytest.raises(PayloadError, match="canonical") as err:
        list(iter_chunk(manifest, 0, data))
    assert err.value.where == "chunk[0].line[2]"


def test_bad_record_in_a_chunk_names_line_and_field() -> None:
    lines = [canonical_line(validate_member(member("3300000001"))),
             canonical_line(member("3300000002", status="gone"))]
    info, data = chunk_of(lines)
    manifest = manifest_of(signed_manifest(2, "00" * 32, [info]))
    with pytest.raises(PayloadError) as err:
        list(iter_chunk(manifest, 0, data))
    assert err.value.where == "chunk[0].line[2].status"


def test_chunk_that_inflates_past_its_stated_size_is_stopped() -> None:
    lines = [canonical_line(validate_member(member(f"33{i:08d}"))) for i in range(2)]
    info, data = chunk_of(lines)
    small = ChunkInfo(info.sha256, info.size, info.raw - 1, info.count, info.first, info.last)
    manifest = manifest_of(signed_manifest(2, "00" * 32, [small]))
    with pytest.raises(PayloadError, match="decompresses past"):
        list(iter_chunk(manifest, 0, data))


def test_chunk_with_records_out_of_order_is_refused() -> None:
    lines = [canonical_line(validate_member(member(no))) for no in ("3300000002", "3300000001")]
    info, data = chunk_of(lines)
    info = ChunkInfo(info.sha256, info.size, info.raw, 2, "3300000002", "3300000009")
    manifest = manifest_of(signed_manifest(2, "00" * 32, [info]))
    with pytest.raises(PayloadError, match="is not after") as err:
        list(iter_chunk(manifest, 0, data))
    assert err.value.where == "chunk[0].line[2]"


@pytest.mark.parametrize("mutate,where", [
    (lambda b: b.update(count=b["count"] + 1), "manifest.count"),
    (lambda b: b.update(compression="zstd"), "manifest.compression"),
    (lambda b: b["chunks"][1].update(first=b["chunks"][0]["last"]), "manifest.chunks[1].first"),
    (lambda b: b["chunks"][0].update(size=0), "manifest.chunks[0].size"),
    (lambda b: b["chunks"][0].update(sha256="x"), "manifest.chunks[0].sha256"),
    (lambda b: b["chunks"][0].pop("raw"), "manifest.chunks[0].raw"),
    (lambda b: b.update(extra=1), "manifest.extra"),
])
def test_manifest_fields_are_validated(snapshot, mutate, where) -> None:
    blob, _ = snapshot
    header, body = signing.parse(blob)
    obj = json.loads(body)
    mutate(obj)
    resigned = signing.sign(KEY, signing.KIND_MANIFEST, "all", 7, ISSUED, EXPIRES, json.dumps(obj).encode())
    with pytest.raises(PayloadError) as err:
        manifest_of(resigned)
    assert err.value.where == where


def test_empty_scope_is_a_valid_snapshot() -> None:
    blob, chunks = build_snapshot([], "group-nobody", 1, KEY, ISSUED, EXPIRES)
    manifest = manifest_of(blob, "group-nobody")
    assert (manifest.count, manifest.chunks, manifest.digest) == (0, (), "0" * 64)
    assert list(iter_snapshot(manifest, chunks)) == []


def test_snapshot_builder_refuses_unsorted_input() -> None:
    with pytest.raises(ValueError, match="member_no order"):
        build_snapshot([member("3300000002"), member("3300000001")], "all", 1, KEY, ISSUED, EXPIRES)


def test_manifest_stale_after_expiry(snapshot) -> None:
    manifest = manifest_of(snapshot[0])
    assert not manifest.stale(EXPIRES - 1)
    assert manifest.stale(EXPIRES)


# -- deltas -----------------------------------------------------------------------------------


def test_delta_round_trip_and_apply_gives_the_new_list(members) -> None:
    old = [validate_member(r) for r in members[:200]]
    new = copy.deepcopy(old)
    new[3]["status"] = "suspended"
    del new[10]
    new.append(validate_member(member("3399999999")))
    diff = diff_lists(old, new)
    assert [r["member_no"] for r in diff.upserts] == [old[3]["member_no"], "3399999999"]
    assert diff.removals == [old[10]["member_no"]]
    blob = build_delta("all", 7, diff, KEY, ISSUED, EXPIRES)
    delta = decode_delta(signing.verify(blob, TRUSTED, signing.KIND_DELTA, "all", NOW))
    assert (delta.base, delta.version, delta.count) == (7, 8, len(new))
    applied = {r["member_no"]: r for r in old}
    for no in delta.removals:
        del applied[no]
    applied.update((r["member_no"], r) for r in delta.upserts)
    assert list_digest(applied[k] for k in sorted(applied)) == (delta.count, delta.digest)


def signed_delta(body: dict, version: int = 8) -> bytes:
    return signing.sign(KEY, signing.KIND_DELTA, "all", version, ISSUED, EXPIRES,
                        json.dumps(body, ensure_ascii=False).encode())


def delta_body(**changes: object) -> dict:
    body = {"base": 7, "count": 1, "digest": "00" * 32, "removals": ["3300000009"],
            "upserts": [member()]}
    body.update(changes)
    return body


@pytest.mark.parametrize("body,where", [
    (delta_body(base=6), "delta.base"),
    (delta_body(base=True), "delta.base"),
    (delta_body(upserts=[member(tier=-1)]), "delta.upserts[0].tier"),
    (delta_body(removals=["3300000001"]), "delta.upserts+removals[1]"),
    (delta_body(removals=["a b"]), "delta.removals[0]"),
    (delta_body(digest="00"), "delta.digest"),
    (delta_body(count=-1), "delta.count"),
    (delta_body(unexpected=[]), "delta.unexpected"),
    ({"base": 7}, "delta.count"),
])
def test_delta_fields_are_validated(body, where) -> None:
    with pytest.raises(PayloadError) as err:
        decode_delta(signing.verify(signed_delta(body), TRUSTED, signing.KIND_DELTA, "all", NOW))
    assert err.value.where == where


def test_delta_size_is_bounded() -> None:
    limits = Limits(max_delta_ops=2)
    body = delta_body(removals=["3300000007", "3300000008"])
    verified = signing.verify(signed_delta(body), TRUSTED, signing.KIND_DELTA, "all", NOW)
    with pytest.raises(PayloadError, match="more than 2"):
        decode_delta(verified, limits)
    with pytest.raises(PayloadError, match="more than 2"):
        encode_delta_body(7, [member()], ["3300000007", "3300000008"], 1, "00" * 32, limits)


def test_manifest_is_not_accepted_as_a_delta(snapshot) -> None:
    verified = signing.verify(snapshot[0], TRUSTED, signing.KIND_MANIFEST, "all", NOW)
    with pytest.raises(PayloadError, match="not 'members.delta'"):
        decode_delta(verified)


def test_empty_delta_between_equal_lists(members) -> None:
    diff = diff_lists(members[:20], members[:20])
    assert diff == ListDiff([], [], 20, list_digest(validate_member(r) for r in members[:20])[1])


# -- hot list ---------------------------------------------------------------------------------


def test_hotlist_change_round_trip() -> None:
    entries = [HotlistEntry("add", "aa" * 32, "stolen"), HotlistEntry("remove", "bb" * 32, "found")]
    blob = build_hotlist(58, entries, KEY, ISSUED, EXPIRES)
    hot = decode_hotlist(signing.verify(blob, TRUSTED, ("hotlist", "hotlist.full"), "all", NOW))
    assert (hot.version, hot.full, hot.entries) == (58, False, tuple(entries))
    assert hot.entries[0].ref_bytes == b"\xaa" * 32


def test_full_hotlist_is_its_own_kind_and_holds_only_additions() -> None:
    blob = build_hotlist(60, [HotlistEntry("add", "aa" * 32, "lost")], KEY, ISSUED, EXPIRES, full=True)
    with pytest.raises(SignatureError):
        signing.verify(blob, TRUSTED, "hotlist", "all", NOW)
    hot = decode_hotlist(signing.verify(blob, TRUSTED, ("hotlist", "hotlist.full"), "all", NOW))
    assert hot.full
    with pytest.raises(PayloadError) as err:
        build_hotlist(61, [HotlistEntry("remove", "aa" * 32, "found")], KEY, ISSUED, EXPIRES, full=True)
    assert err.value.where == "hotlist.entries[0].op"


@pytest.mark.parametrize("entries,where", [
    ([{"op": "add", "ref": "aa" * 32, "reason": "found"}], "hotlist.entries[0].reason"),
    ([{"op": "block", "ref": "aa" * 32, "reason": "lost"}], "hotlist.entries[0].op"),
    ([{"op": "add", "ref": "aa" * 32}], "hotlist.entries[0].reason"),
    ([{"op": "add", "ref": "aa" * 32, "reason": "lost"}] * 2, "hotlist.entries[1]"),
])
def test_hotlist_entries_are_validated(entries, where) -> None:
    blob = signing.sign(KEY, "hotlist", "all", 3, ISSUED, EXPIRES, json.dumps({"entries": entries}).encode())
    with pytest.raises(PayloadError) as err:
        decode_hotlist(signing.verify(blob, TRUSTED, "hotlist", "all", NOW))
    assert err.value.where == where


# -- reports, resync, topics ---------------------------------------------------------------------


def test_report_round_trip() -> None:
    report = Report(at=NOW, hotlist=58, lists=(
        ListState("all", 7, 1_100_000, "ab" * 32, EXPIRES), ListState("org-1001", 0, 0, "cd" * 32, 0)))
    assert decode_report(encode_report(report)) == report
    assert report.lists[1].stale(NOW) and not report.lists[0].stale(NOW)


@pytest.mark.parametrize("payload,where", [
    (b'{"at":1,"hotlist":0,"lists":{"a/b":{}}}', "report.lists.a/b"),
    (b'{"at":1,"hotlist":0,"lists":{"all":{"version":1,"count":1,"digest":"x","expires":0}}}',
     "report.lists.all.digest"),
    (b'{"at":1,"hotlist":-1,"lists":{}}', "report.hotlist"),
    (b'{"at":1,"lists":{}}', "report.hotlist"),
    (b'{"at":1,"hotlist":0,"lists":[]}', "report.lists"),
    (b"x" * 70_000, "report"),
])
def test_bad_report_names_the_field(payload, where) -> None:
    with pytest.raises(PayloadError) as err:
        decode_report(payload)
    assert err.value.where == where


def test_resync_round_trip_and_validation() -> None:
    for request in (ResyncRequest("org-1001", 7, "gap"), ResyncRequest("hotlist", 57, "gap")):
        assert decode_resync(encode_resync(request)) == request
    with pytest.raises(PayloadError) as err:
        encode_resync(ResyncRequest("all", 7, "bored"))
    assert err.value.where == "resync.reason"
    with pytest.raises(PayloadError) as err:
        decode_resync(b'{"list":"everything","have":0,"reason":"gap"}')
    assert err.value.where == "resync.list"


def test_topics_and_chunk_index() -> None:
    assert topics.manifest_topic("org-1001") == "unionterm/v1/members/org-1001/manifest"
    assert topics.chunk_topic("all", 12) == "unionterm/v1/members/all/chunk/12"
    assert topics.chunk_index("unionterm/v1/members/all/chunk/12", "all") == 12
    assert topics.resync_topic("T-1") == "unionterm/v1/t/T-1/members/resync"
    for topic in ("unionterm/v1/members/all/chunk/012", "unionterm/v1/members/all/chunk/x",
                  "unionterm/v1/members/org-1/chunk/1", "unionterm/v1/members/all/chunk/١"):
        with pytest.raises(PayloadError):
            topics.chunk_index(topic, "all")
    for scope in ("org-", "a/b", "group-#", "ALL", "org-1/+"):
        with pytest.raises(PayloadError):
            topics.manifest_topic(scope)


# -- the worked example in docs/protocol-members.md ------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol-members.md"
RFC8032_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


@pytest.fixture(scope="module")
def doc_examples() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    return dict(re.findall(r"<!-- example:([\w-]+) -->\n```\n(.*?)\n```", text, re.DOTALL))


def doc_envelope(examples: dict[str, str], name: str) -> bytes:
    return examples[name].encode() + bytes.fromhex(examples[f"{name}-signature"])


def test_worked_example_in_the_protocol_document_holds(doc_examples) -> None:
    trusted = signing.trusted_keys([Ed25519PublicKey.from_public_bytes(bytes.fromhex(RFC8032_PUBLIC))])
    at = 1_735_690_000
    manifest = decode_manifest(signing.verify(doc_envelope(doc_examples, "manifest"), trusted,
                                              signing.KIND_MANIFEST, "org-1008", at))
    chunk = bytes.fromhex(doc_examples["chunk0"])
    records = list(iter_snapshot(manifest, [chunk]))
    assert b"".join(canonical_line(r) for r in records) == (doc_examples["lines"] + "\n").encode()
    total = sum(int(hashlib.sha256(line).hexdigest(), 16) for line in zlib.decompress(chunk).splitlines(True))
    assert manifest.digest == format(total % 2 ** 256, "064x")
    card_key = bytes(range(32))
    assert records[0]["cards"][1]["ref"] == card_ref(card_key, "union", bytes.fromhex("04A1B2C3D4E5F6")).hex()
    assert records[1]["cards"][0]["ref"] == card_ref(card_key, "ecard", "3300000002").hex()

    delta = decode_delta(signing.verify(doc_envelope(doc_examples, "delta"), trusted,
                                        signing.KIND_DELTA, "org-1008", at))
    assert (delta.base, delta.removals, delta.count) == (12, ("3300000002",), 1)
    assert list_digest(delta.upserts) == (delta.count, delta.digest)
    assert check_version(manifest.version, delta.version, signing.KIND_DELTA) is signing.VersionCheck.APPLY

    hot = decode_hotlist(signing.verify(doc_envelope(doc_examples, "hotlist"), trusted, "hotlist", "all", at))
    assert hot.entries[0].ref == card_ref(card_key, "pan", "6222021234567890128").hex()

    report = decode_report(doc_examples["report"].encode())
    assert report.lists[0] == ListState("org-1008", 13, 1, delta.digest, delta.expires)
    assert decode_resync(doc_examples["resync"].encode()) == ResyncRequest("org-1008", 13, "gap")
