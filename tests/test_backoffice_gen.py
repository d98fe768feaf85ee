"""Back-office data side: synthetic members, card identifiers, CSV import, keys, scopes."""

from __future__ import annotations

import collections
import csv
import io
import os
import re
import stat

import pytest

from simulator.backoffice import keys
from simulator.backoffice.csv_import import read_members_csv
from simulator.backoffice.generate import (
    ORGS,
    batch_sizes,
    card_identifiers,
    generate_members,
    luhn_check_digit,
    luhn_valid,
    mask_name,
    member_no,
    org_ids,
)
from simulator.backoffice.publish import records_for_scope
from terminal import signing
from terminal.cardref import card_ref
from terminal.exceptions import ImportRejected
from terminal.sync.records import validate_member

CARD_KEY = b"\x22" * 32
COUNT = 22_000


@pytest.fixture(scope="module")
def members() -> list[dict]:
    return list(generate_members(COUNT, seed=11, card_key=CARD_KEY))


# -- generator ---------------------------------------------------------------------------


def test_same_seed_same_list_other_seed_other_list() -> None:
    first = list(generate_members(300, seed=11, card_key=CARD_KEY))
    assert list(generate_members(300, seed=11, card_key=CARD_KEY)) == first
    other = list(generate_members(300, seed=12, card_key=CARD_KEY))
    assert [m["member_no"] for m in other] == [m["member_no"] for m in first]
    assert sum(a != b for a, b in zip(other, first)) > 290


def test_every_record_is_valid_canonical_and_in_member_no_order(members) -> None:
    assert all(validate_member(m) == m for m in members)
    numbers = [m["member_no"] for m in members]
    assert numbers == sorted(set(numbers)) and numbers[0] == member_no(0) == "3300000001"


def test_batches_are_1_4_6_elevenths_in_order(members) -> None:
    assert batch_sizes(1_100_000) == (100_000, 400_000, 600_000)
    assert batch_sizes(COUNT) == (2_000, 8_000, 12_000)
    batches = [m["batch"] for m in members]
    assert batches == [1] * 2_000 + [2] * 8_000 + [3] * 12_000


def test_status_role_and_card_distribution(members) -> None:
    status = collections.Counter(m["status"] for m in members)
    assert 0.94 < status["active"] / COUNT < 0.96
    assert 0.025 < status["suspended"] / COUNT < 0.035
    assert 0.015 < status["left"] / COUNT < 0.025
    kinds = collections.Counter(c["kind"] for m in members for c in m["cards"])
    assert kinds["union"] == COUNT
    assert 0.76 < kinds["pan"] / COUNT < 0.84
    assert 0.27 < kinds["ecard"] / COUNT < 0.33
    assert 0.035 < kinds["uid"] / COUNT < 0.065
    roles = collections.Counter(m["role"] for m in members)
    assert roles["member"] / COUNT > 0.95 and all(roles[r] for r in ("technician", "supervisor", "visitor"))


def test_work_units_are_chinese_names_with_a_long_tail(members) -> None:
    orgs = collections.Counter(m["org"] for m in members)
    assert set(orgs) == {name for _, name, _ in ORGS}
    largest, smallest = orgs.most_common()[0][1], orgs.most_common()[-1][1]
    assert largest > 10 * smallest
    assert all(re.fullmatch(r"[\u4e00-\u9fff]+", name) for name in orgs)


def test_names_are_masked_like_wang_star_ming(members) -> None:
    pattern = re.compile(r"[\u4e00-\u9fff]{1,2}\*[\u4e00-\u9fff]?")
    assert all(pattern.fullmatch(m["name"]) for m in members)
    assert sum(len(m["name"]) == 3 for m in members) > COUNT * 0.7


def test_validity_follows_batch_and_status(members) -> None:
    for m in members:
        if m["role"] == "visitor" or m["status"] == "left":
            assert m["valid_until"] > m["valid_from"]
        else:
            assert m["valid_until"] == 0
    # batch 3 starts 2025-01-01 00:00 Asia/Shanghai = 2024-12-31T16:00:00Z
    assert min(m["valid_from"] for m in members if m["batch"] == 3) == 1_735_660_800


def test_card_refs_are_hmacs_of_the_deterministic_identifiers(members) -> None:
    for m in members[:500]:
        expected = sorted(({"kind": k, "ref": card_ref(CARD_KEY, k, ident).hex()}
                           for k, ident in card_identifiers(11, m["member_no"]).items()),
                          key=lambda c: (c["kind"], c["ref"]))
        assert m["cards"] == expected


def test_card_identifier_formats() -> None:
    lengths = collections.Counter()
    for i in range(3000):
        no = member_no(i)
        ids = card_identifiers(11, no)
        assert ids == card_identifiers(11, no)
        union = ids["union"]
        assert isinstance(union, bytes) and len(union) == 7 and union[0] == 0x04
        if "uid" in ids:
            assert len(ids["uid"]) == 7 and ids["uid"][0] == 0x04 and ids["uid"] != union
        if "ecard" in ids:
            assert ids["ecard"] == no  # the QR token carries the member number
        if "pan" in ids:
            pan = ids["pan"]
            assert re.fullmatch(r"62[0-9]{14,17}", pan)
            assert luhn_valid(pan)
            lengths[len(pan)] += 1
    assert set(lengths) == {16, 17, 18, 19}


@pytest.mark.parametrize("number,valid", [
    # the textbook example, then card-scheme test numbers (UnionPay 16 and 19 digits)
    ("79927398713", True), ("79927398710", False),
    ("4111111111111111", True), ("5555555555554444", True),
    ("6200000000000005", True), ("6205500000000000004", True), ("6200000000000006", False),
    ("378282246310005", True), ("4111111111111112", False), ("", False), ("4111 1111", False),
])
def test_luhn_against_published_numbers(number, valid) -> None:
    assert luhn_valid(number) is valid


def test_luhn_check_digit_completes_the_number() -> None:
    assert luhn_check_digit("7992739871") == "3"
    assert luhn_check_digit("411111111111111") == "1"


@pytest.mark.parametrize("full,masked", [
    ("王小明", "王*明"), ("张三", "张*"), ("欧阳娜娜", "欧阳*娜"), ("欧阳", "欧*"),
    ("李*华", "李*华"), ("John Smith", "J*h"),
])
def test_mask_name(full, masked) -> None:
    assert mask_name(full) == masked


# -- CSV import --------------------------------------------------------------------------------

HEADER = ("member_no,name,org,status,tier,canteen_group,access_groups,valid_from,valid_until,"
          "batch,role,card_kind,card_id\n")


def test_csv_import_hashes_cards_and_merges_rows_of_one_member() -> None:
    text = HEADER + (
        "3300000002,王小明,杭州西溪物流有限公司,active,1,cg-1008,site-1008;gym,2024-01-01,,2,member,"
        "union,04A1B2C3D4E5F6\n"
        "3300000002,王小明,杭州西溪物流有限公司,active,1,cg-1008,site-1008;gym,2024-01-01,,2,member,"
        "pan,6222021234567890128\n"
        "\n"
        "3300000001, 张三 ,杭州市第三人民医院,left,0,,,2023-01-01,2024-12-31,1,visitor,,\n"
    )
    records = read_members_csv(io.StringIO(text), CARD_KEY)
    assert [r["member_no"] for r in records] == ["3300000001", "3300000002"]
    zhang, wang = records
    assert (zhang["name"], zhang["cards"], zhang["access_groups"]) == ("张*", [], [])
    assert zhang["valid_from"] == 1_672_502_400  # 2023-01-01 00:00 +08:00
    assert zhang["valid_until"] == 1_735_660_800  # end of 2024-12-31 = 2025-01-01 00:00 +08:00
    assert wang["name"] == "王*明" and wang["access_groups"] == ["gym", "site-1008"]
    assert wang["cards"] == sorted([
        {"kind": "union", "ref": card_ref(CARD_KEY, "union", bytes.fromhex("04A1B2C3D4E5F6")).hex()},
        {"kind": "pan", "ref": card_ref(CARD_KEY, "pan", "6222021234567890128").hex()},
    ], key=lambda c: c["kind"])
    assert all(validate_member(r) == r for r in records)


def test_csv_with_bad_rows_reports_every_cell_and_returns_nothing() -> None:
    good = "3300000001,王小明,单位,active,1,,,2024-01-01,,2,member,union,04A1B2C3D4E5F6\n"
    text = HEADER + good + (
        "33/02,王小明,单位,alive,12,,,2024-02-30,,2,member,union,04A1B2C3D4E5F7\n"    # line 3
        "3300000003,李四,单位,active,1,cg 1,gym;gym,2024-01-01,2023-01-01,4,boss,pan,6222021234567890127\n"
        "3300000001,王小明,单位,active,2,,,2024-01-01,,2,member,uid,04A1B2C3D4E5\n"  # line 5
        "3300000004,赵六,单位,active,1,,,2024-01-01,,1,member,union,04A1B2C3D4E5F6\n"
        "3300000005,钱七,单位,active,1,,,2024-01-01,,1,member,ecard,3300000006\n"
        "3300000006,孙八,单位,active\n"                                               # line 8
    )
    with pytest.raises(ImportRejected) as err:
        read_members_csv(io.StringIO(text), CARD_KEY)
    assert err.value.errors == sorted(err.value.errors)
    assert [(line, column) for line, column, _ in err.value.errors] == [
        (3, "member_no"), (3, "status"), (3, "tier"), (3, "valid_from"),
        (4, "access_groups"), (4, "batch"), (4, "canteen_group"), (4, "card_id"), (4, "role"),
        (4, "valid_until"),
        (5, "card_id"), (5, "tier"),
        (6, "card_id"),
        (7, "card_id"),
        (8, "tier"),
    ]
    problems = {(line, column): problem for line, column, problem in err.value.errors}
    assert "Luhn" in problems[(4, "card_id")]
    assert "differs from line 2" in problems[(5, "tier")]
    assert "already on line 2" in problems[(6, "card_id")]
    assert "row has 4 fields" in problems[(8, "tier")]
    assert str(err.value).startswith("<csv>: line 3, column member_no:")


def test_csv_header_problems_are_reported_on_line_1(tmp_path) -> None:
    path = tmp_path / "members.csv"
    path.write_text("\ufeffmember_no,name,nickname\n3300000001,王小明,小明\n", encoding="utf-8")
    with pytest.raises(ImportRejected) as err:
        read_members_csv(path, CARD_KEY)
    columns = {column for line, column, _ in err.value.errors if line == 1}
    assert {"nickname", "org", "status", "card_id"} <= columns
    assert "pin_hash" not in columns and "member_no" not in columns
    assert err.value.source == str(path)


def test_empty_csv_is_rejected() -> None:
    with pytest.raises(ImportRejected, match="header"):
        read_members_csv(io.StringIO(""), CARD_KEY)


def test_line_numbers_count_physical_lines_of_quoted_cells() -> None:
    text = HEADER + (
        '3300000001,"王小\n明",单位,active,1,,,2024-01-01,,2,member,,\n'
        "3300000002,李四,单位,active,x,,,2024-01-01,,2,member,,\n"
    )
    with pytest.raises(ImportRejected) as err:
        read_members_csv(io.StringIO(text), CARD_KEY)
    assert [(line, column) for line, column, _ in err.value.errors] == [(2, "name"), (4, "tier")]


# -- keys and scopes ------------------------------------------------------------------------------


def test_generate_keypair_writes_files_terminals_can_use(tmp_path, capsys) -> None:
    private, public = tmp_path / "bo.key", tmp_path / "bo.pub"
    assert keys.main([str(private), str(public)]) == 0
    kid = capsys.readouterr().out.strip().removeprefix("key_id=")
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    blob = signing.sign(signing.load_private_key(private), "hotlist", "all", 1, 1, 2, b"{}")
    verified = signing.verify(blob, signing.load_trusted([public]), "hotlist", "all", 1)
    assert verified.header.kid == kid
    with pytest.raises(Exception, match="refusing to overwrite"):
        keys.generate_keypair(private, tmp_path / "other.pub")


def test_records_for_scope(members) -> None:
    sample = members[:2000]
    assert list(records_for_scope(sample, "all", org_ids())) == sample
    org = list(records_for_scope(sample, "org-1003", org_ids()))
    assert org and all(m["org"] == "杭州市第三人民医院" for m in org)
    assert len(org) == sum(m["org"] == "杭州市第三人民医院" for m in sample)
    gym = list(records_for_scope(sample, "group-gym", org_ids()))
    assert gym and all("gym" in m["access_groups"] for m in gym)
    canteen = list(records_for_scope(sample, "group-cg-1003", org_ids()))
    assert canteen and all(m["canteen_group"] == "cg-1003" for m in canteen)
    with pytest.raises(ValueError, match="no work unit"):
        list(records_for_scope(sample, "org-9999", org_ids()))


def test_unreadable_csv_is_rejected_with_its_line(tmp_path) -> None:
    path = tmp_path / "members.csv"
    good = "3300000001,王小明,单位,active,1,,,2024-01-01,,2,member,,\n"
    path.write_bytes((HEADER + good).encode() + b"3300000002,\xff\xfe,x\n")
    with pytest.raises(ImportRejected) as err:
        read_members_csv(path, CARD_KEY)
    assert [(line, column) for line, column, _ in err.value.errors] == [(3, "*")]
    assert err.value.source == str(path)


def test_csv_parser_errors_are_rejected_with_their_line() -> None:
    giant = "x" * (csv.field_size_limit() + 1)  # the csv module's own limit on one cell
    text = HEADER + "3300000001,王小明,单位,active,1,,,2024-01-01,,2,member,,\n" + f"33000002,{giant},\n"
    with pytest.raises(ImportRejected) as err:
        read_members_csv(io.StringIO(text), CARD_KEY)
    assert [(line, column) for line, column, _ in err.value.errors] == [(3, "*")]
