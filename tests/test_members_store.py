"""The member store: snapshot files swapped in whole, deltas checked by digest, hot list apart."""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from terminal import signing
from terminal.exceptions import PayloadError, ReplayError, StorageError
from terminal.members import LOCAL, MemberStore
from terminal.model import MemberStatus
from terminal.sync.delta import decode_delta
from terminal.sync.hotlist import decode_hotlist
from terminal.sync.records import canonical_line, quick_line, validate_member
from terminal.sync.snapshot import decode_manifest, iter_snapshot_lines

from tests.memberkit import KEY, delta, digest_of, hotlist, members, snapshot, store_content

TRUSTED = signing.trusted_keys([KEY.public_key()])
#: Seed of members that are new in a delta.
SEED_NEW = 77


def manifest_of(blob: bytes, scope: str = "all"):
    return decode_manifest(signing.verify(blob, TRUSTED, signing.KIND_MANIFEST, scope, time.time()))


def install(store: MemberStore, records: list[dict], version: int, scope: str = "all") -> None:
    blob, chunks = snapshot(records, version, scope)
    manifest = manifest_of(blob, scope)
    build = store.new_build(manifest)
    held = build.run(iter_snapshot_lines(manifest, chunks))
    old = store.install(build, held)
    assert old is None or not old.exists() or old != build.path


def ref_of(record: dict) -> bytes:
    """The member's union card (an e-card's ref derives from the member number alone)."""
    return bytes.fromhex(next(c["ref"] for c in record["cards"] if c["kind"] == "union"))


@pytest.fixture
def store(tmp_path: Path):
    s = MemberStore(tmp_path / "members.db", ["all"])
    yield s
    s.close()


# -- the fast line check agrees with the full one ---------------------------------------------

TOKEN = st.from_regex(r"[0-9A-Za-z][0-9A-Za-z_.\-]{0,8}", fullmatch=True)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=40)
RECORDS = st.fixed_dictionaries({
    "member_no": st.from_regex(r"[0-9A-Za-z][0-9A-Za-z_\-]{0,33}", fullmatch=True),
    "name": TEXT, "org": TEXT,
    "status": st.sampled_from(["active", "suspended", "left", "gone"]),
    "tier": st.integers(0, 10),
    "canteen_group": st.one_of(st.just(""), TOKEN),
    "access_groups": st.lists(TOKEN, max_size=4),
    "valid_from": st.integers(0, 4_102_416_001),
    "valid_until": st.one_of(st.just(0), st.integers(0, 4_102_416_001)),
    "batch": st.integers(0, 4),
    "role": st.sampled_from(["member", "technician", "supervisor", "visitor"]),
    "pin_hash": st.one_of(st.just(""), st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                               max_size=6)),
    "cards": st.lists(st.fixed_dictionaries({
        "kind": st.sampled_from(["union", "pan", "uid", "ecard", "iris"]),
        "ref": st.sampled_from(["ab" * 32, "cd" * 32, "0f" * 32, "AB" * 32])}), max_size=3),
})


def full_check(line: bytes) -> tuple[str, tuple[str, ...]] | None:
    """What the codec's full path decides for one line: (member_no, refs), or None if refused."""
    try:
        record = validate_member(json.loads(line))
    except (PayloadError, ValueError):
        return None
    if canonical_line(record) != line + b"\n":
        return None
    return record["member_no"], tuple(c["ref"] for c in record["cards"])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(record=RECORDS, sort_lists=st.booleans())
def test_quick_line_never_accepts_what_the_full_check_refuses(record, sort_lists) -> None:
    if sort_lists:
        record["access_groups"].sort()
        record["cards"].sort(key=lambda c: (c["kind"], c["ref"]))
    line = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    quick, full = quick_line(line), full_check(line)
    assert quick is None or quick == full
    if full is not None:  # and every valid canonical line takes the fast path
        assert quick == full


@settings(max_examples=300)
@given(data=st.data())
def test_quick_line_refuses_mutated_lines_the_full_check_refuses(data) -> None:
    line = canonical_line(members(3)[data.draw(st.integers(0, 2))])[:-1]
    pos = data.draw(st.integers(0, len(line) - 1))
    insert = data.draw(st.binary(min_size=0, max_size=3))
    cut = data.draw(st.integers(0, 3))
    mutated = line[:pos] + insert + line[pos + cut:]
    quick = quick_line(mutated)
    assert quick is None or quick == full_check(mutated)


@pytest.mark.parametrize("field,value", [
    ("name", 'say "hi" \\ bye'), ("name", "王" * 32), ("org", ""), ("pin_hash", 'a"b\\c'),
    ("access_groups", []), ("cards", []), ("valid_until", 4_102_416_000),
])
def test_quick_line_takes_unusual_but_valid_records(field, value) -> None:
    record = validate_member({**members(1)[0], field: value})
    line = canonical_line(record)[:-1]
    assert quick_line(line) == (record["member_no"], tuple(c["ref"] for c in record["cards"]))


# -- snapshots: built beside, swapped whole ---------------------------------------------------


def test_snapshot_is_served_after_install_and_reports_its_digest(store) -> None:
    records = members(300)
    install(store, records, 4)
    assert store_content(store) == (4, 300, digest_of(records)[1])
    found = store.lookup(ref_of(records[17]))
    assert found.member is not None and found.member.member_no == records[17]["member_no"]
    assert found.member.status is MemberStatus(records[17]["status"]) and found.scope == "all"
    assert found.member.access_groups == tuple(records[17]["access_groups"])
    assert store.lookup(b"\x00" * 32).member is None
    assert store.member(records[3]["member_no"]).name == records[3]["name"]


def test_second_snapshot_replaces_the_first_and_its_file_is_gone(store) -> None:
    first, second = members(200), members(150, seed=9)
    install(store, first, 1)
    old_file = store.list_path("all")
    install(store, second, 2)
    assert store.lookup(ref_of(first[5])).member is None
    assert store.lookup(ref_of(second[5])).member.member_no == second[5]["member_no"]
    assert store_content(store) == (2, 150, digest_of(second)[1])
    assert old_file.exists() and old_file.name in store.sweep()  # replaced: nothing points at it
    assert not old_file.exists() and store.list_path("all").exists()


def test_lookups_keep_the_old_list_until_the_swap(store, tmp_path) -> None:
    """A build runs in a thread while the loop keeps looking up: only old, then only new."""
    old, new = members(400), members(2000, seed=8)
    install(store, old, 1)
    blob, chunks = snapshot(new, 2)
    manifest = manifest_of(blob)
    build = store.new_build(manifest)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("held", build.run(
        iter_snapshot_lines(manifest, chunks))))
    thread.start()
    seen = 0
    while thread.is_alive():
        assert store.lookup(ref_of(old[seen % 400])).member is not None
        assert store.lookup(ref_of(new[seen % 2000])).member is None
        seen += 1
    thread.join()
    store.install(build, result["held"])
    assert seen > 10
    assert store.lookup(ref_of(new[7])).member.member_no == new[7]["member_no"]


def test_a_build_that_fails_leaves_the_old_list_and_no_file(store) -> None:
    old = members(100)
    install(store, old, 1)
    blob, chunks = snapshot(members(100, seed=4), 2)
    manifest = manifest_of(blob)
    wrong = dataclasses.replace(manifest, digest="00" * 32)
    build = store.new_build(wrong)
    with pytest.raises(PayloadError) as err:
        build.run(iter_snapshot_lines(wrong, chunks))
    assert err.value.where == "manifest.digest"
    assert not build.path.exists()
    assert store_content(store) == (1, 100, digest_of(old)[1])
    reopened = MemberStore(store.path, ["all"])
    assert store_content(reopened) == (1, 100, digest_of(old)[1])
    reopened.close()


def test_pointer_decides_what_serves_after_a_crash(tmp_path) -> None:
    """A build file whose pointer was never switched is not served, and the sweep removes it."""
    store = MemberStore(tmp_path / "members.db", ["all"])
    old = members(50)
    install(store, old, 1)
    blob, chunks = snapshot(members(60, seed=5), 2)
    manifest = manifest_of(blob)
    build = store.new_build(manifest)
    held = build._fill(iter_snapshot_lines(manifest, chunks))  # complete, but not yet pointed at
    store.close()
    assert held.version == 2 and build.path.exists()
    restarted = MemberStore(tmp_path / "members.db", ["all"])
    assert store_content(restarted) == (1, 50, digest_of(old)[1])
    assert build.path.name in restarted.sweep()
    assert not build.path.exists() and restarted.list_path("all").exists()
    restarted.close()


def test_store_of_another_layout_is_refused(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "members.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE members (member_no TEXT PRIMARY KEY, name TEXT)")
    with pytest.raises(StorageError, match="layout"):
        MemberStore(path)


# -- deltas ----------------------------------------------------------------------------------


def delta_of(blob: bytes):
    return decode_delta(signing.verify(blob, TRUSTED, signing.KIND_DELTA, "all", time.time()))


def test_delta_applies_upserts_and_removals_with_the_stated_digest(store) -> None:
    old = members(120)
    install(store, old, 3)
    new = copy.deepcopy(old[:100]) + members(130, seed=SEED_NEW)[120:]
    new[10]["status"] = "left"
    new[10]["valid_until"] = new[10]["valid_from"] + 86_400
    held = store.apply_delta(delta_of(delta(old, new, base=3)))
    store.refresh("all", held)
    assert store_content(store) == (4, 110, digest_of(new)[1]) and held.digest == digest_of(new)[1]
    assert store.lookup(ref_of(old[110])).member is None
    assert store.lookup(ref_of(new[10])).member.status is MemberStatus.LEFT
    assert store.lookup(ref_of(new[105])).member.member_no == new[105]["member_no"]


def test_delta_with_a_wrong_digest_is_rolled_back(store) -> None:
    old = members(80)
    install(store, old, 3)
    new = copy.deepcopy(old)
    new[0]["tier"] = (new[0]["tier"] + 1) % 10
    good = delta_of(delta(old, new, base=3))
    lying = dataclasses.replace(good, digest="ab" * 32)
    before = store_content(store)
    with pytest.raises(PayloadError) as err:
        store.apply_delta(lying)
    assert err.value.where == "delta.digest"
    assert store_content(store) == before
    assert store.lookup(ref_of(old[0])).member.tier == old[0]["tier"]


def test_delta_on_another_base_is_refused(store) -> None:
    old = members(20)
    install(store, old, 5)
    with pytest.raises(ReplayError):
        store.apply_delta(delta_of(delta(old, old[:10], base=4)))
    assert store_content(store)[0] == 5


# -- hot list and local list ---------------------------------------------------------------------


def hot_of(blob: bytes):
    return decode_hotlist(signing.verify(blob, TRUSTED, ("hotlist", "hotlist.full"), "all", time.time()))


def test_hot_list_wins_and_survives_a_snapshot_swap(store) -> None:
    records = members(30)
    install(store, records, 1)
    ref = records[2]["cards"][0]["ref"]
    store.apply_hotlist(hot_of(hotlist(1, {ref: "stolen"})))
    looked = store.lookup(bytes.fromhex(ref))
    assert looked.hot and looked.hot_reason == "stolen" and looked.member is not None
    install(store, records, 2)
    assert store.lookup(bytes.fromhex(ref)).hot
    assert store.hotlist_state().version == 1
    with pytest.raises(ReplayError):
        store.apply_hotlist(hot_of(hotlist(1, {ref: "lost"})))
    other = records[3]["cards"][0]["ref"]
    store.apply_hotlist(hot_of(hotlist(5, {other: "lost"}, full=True)))
    assert not store.lookup(bytes.fromhex(ref)).hot and store.lookup(bytes.fromhex(other)).hot


def test_scopes_are_consulted_in_order_then_the_local_list(tmp_path) -> None:
    store = MemberStore(tmp_path / "members.db", ["org-1", "all"])
    a, b = members(10), members(10, seed=6)
    install(store, a, 1, "all")
    changed = copy.deepcopy(a[:1])
    changed[0]["tier"] = (a[0]["tier"] + 3) % 10
    install(store, changed, 1, "org-1")
    assert store.lookup(ref_of(a[0])).scope == "org-1"
    assert store.lookup(ref_of(a[0])).member.tier == changed[0]["tier"]
    assert store.lookup(ref_of(a[1])).scope == "all"
    store.upsert(b[:2])
    assert store.lookup(ref_of(b[1])).scope == LOCAL
    assert store.count() == 10 + 1 + 2
    store.close()
    assert MemberStore(tmp_path / "members.db").scopes == ("all", "org-1")  # None: what is on disk


def test_local_upsert_replaces_a_member_and_its_cards(store) -> None:
    record = members(1)[0]
    store.upsert([record])
    moved = {**record, "cards": [{"kind": "uid", "ref": "ee" * 32}]}
    store.upsert([moved])
    assert store.lookup(ref_of(record)).member is None
    assert store.lookup(b"\xee" * 32).member.member_no == record["member_no"]
    with pytest.raises(PayloadError):
        store.upsert([{**record, "status": "dead"}])


@pytest.mark.parametrize("order", ["lower first", "higher first"])
def test_a_card_on_two_members_always_gets_the_lowest_member_number(store, order) -> None:
    first, second = members(2)
    shared = {"kind": "uid", "ref": "dd" * 32}
    low, high = sorted((first, second), key=lambda r: r["member_no"])
    records = [{**r, "cards": [*r["cards"], shared]} for r in (low, high)]
    for record in records if order == "lower first" else records[::-1]:  # one at a time: ids in that order
        store.upsert([record])
    assert store.lookup(b"\xdd" * 32).member.member_no == low["member_no"]
    assert store.lookup(ref_of(high)).member.member_no == high["member_no"]
