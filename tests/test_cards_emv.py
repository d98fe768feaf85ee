"""BER-TLV parsing and the EMV read steps, byte by byte."""

from __future__ import annotations

import datetime

import pytest

from terminal.cards import tlv
from terminal.cards.emv import (
    AppEntry,
    TerminalData,
    choose_application,
    get_processing_options,
    luhn_valid,
    parse_ppse,
    parse_processing_options,
    parse_select_application,
    pan_from_objects,
    pdol_data,
    read_record,
    records_to_read,
    select_ppse,
)
from terminal.exceptions import MalformedResponse, UnexpectedStatus

h = bytes.fromhex
TERMINAL = TerminalData(today=datetime.date(2025, 3, 4), unpredictable=h("11223344"))

# --- TLV ------------------------------------------------------------------------------


def test_nested_template_with_multibyte_tags_and_long_length() -> None:
    value = bytes(200)
    data = h("6F81D1") + h("BF0C81C8") + value + h("9F38029F66")  # 4 + 200 + 5 = 0xD1
    items = tlv.parse(data)
    assert items[0].tag == 0x6F and items[0].constructed
    assert tlv.find_value(items, 0xBF0C) == value
    assert tlv.find_value(items, 0x9F38) == h("9F66")
    assert tlv.find(items, 0x5A) is None


def test_padding_between_objects_is_skipped() -> None:
    items = tlv.parse(h("00005A0212340000FF9F020100"))
    assert [(i.tag, i.value) for i in items] == [(0x5A, h("1234")), (0x9F02, h("00"))]


@pytest.mark.parametrize(
    "data",
    [
        "5A",  # no length
        "5A05 1234",  # value past the end
        "9F",  # truncated multi-byte tag
        "9FFFFF0100",  # tag longer than 3 bytes
        "5A80",  # indefinite length
        "5A840000000100",  # 4 length bytes
        "5A8201",  # truncated long length
        "6F035A0512",  # inner value past the end of the template
    ],
)
def test_malformed_tlv(data: str) -> None:
    with pytest.raises(MalformedResponse):
        tlv.parse(h(data.replace(" ", "")))


def test_depth_and_object_count_are_bounded() -> None:
    deep = h("5A00")
    for _ in range(tlv.MAX_DEPTH):
        deep = h("A5") + bytes([len(deep)]) + deep
    assert tlv.find_value(tlv.parse(deep), 0x5A) == b""  # 6 nested templates: fine
    with pytest.raises(MalformedResponse, match="deep"):
        tlv.parse(h("A5") + bytes([len(deep)]) + deep)
    with pytest.raises(MalformedResponse, match="many"):
        tlv.parse(h("5A00") * (tlv.MAX_OBJECTS + 1))
    assert len(tlv.parse(h("5A00") * tlv.MAX_OBJECTS)) == tlv.MAX_OBJECTS


def test_dol_and_encode() -> None:
    assert tlv.parse_dol(h("9F66049F02069A03")) == [(0x9F66, 4), (0x9F02, 6), (0x9A, 3)]
    assert tlv.encode(0x9F38, b"\x01\x02") == h("9F38020102")
    assert tlv.encode(0x70, bytes(200))[:3] == h("7081C8")
    with pytest.raises(MalformedResponse):
        tlv.parse_dol(h("9F66"))


# --- EMV steps ----------------------------------------------------------------------------


def test_select_ppse_command() -> None:
    assert select_ppse() == h("00A404000E") + b"2PAY.SYS.DDF01" + h("00")


def ppse_answer(*entries: bytes) -> bytes:
    directory = b"".join(tlv.encode(0x61, e) for e in entries)
    return tlv.encode(0x6F, tlv.encode(0xA5, tlv.encode(0xBF0C, directory))) + h("9000")


def entry(aid: str, priority: int | None = None) -> bytes:
    body = tlv.encode(0x4F, h(aid))
    return body + (tlv.encode(0x87, bytes([priority])) if priority is not None else b"")


def test_ppse_priority_decides() -> None:
    answer = ppse_answer(entry("A0000000031010", 2), entry("A000000333010101", 1), entry("A000000333010106", 3))
    assert choose_application(parse_ppse(answer)).aid == h("A000000333010101")
    answer = ppse_answer(entry("A000000333010101", 3), entry("A0000000041010", 1))
    assert choose_application(parse_ppse(answer)).aid == h("A0000000041010")


def test_ppse_without_priority_prefers_unionpay_then_card_order() -> None:
    answer = ppse_answer(entry("A0000000041010"), entry("A000000333010102"), entry("A000000333010101"))
    assert choose_application(parse_ppse(answer)).aid == h("A000000333010101")
    entries = [AppEntry(h("A000000333010101"), 0, 1), AppEntry(h("A000000333010101"), 0, 0)]
    assert choose_application(entries).order == 0
    prioritised = [AppEntry(h("A0000000041010"), 0, 0), AppEntry(h("A0000000031010"), 5, 1)]
    assert choose_application(prioritised).aid == h("A0000000031010")


def test_ppse_refusals() -> None:
    with pytest.raises(UnexpectedStatus):
        parse_ppse(h("6A82"))
    with pytest.raises(MalformedResponse, match="no application"):
        parse_ppse(ppse_answer())
    with pytest.raises(MalformedResponse, match="no supported"):
        choose_application(parse_ppse(ppse_answer(entry("A0000000651010", 1))))  # JCB: not ours
    with pytest.raises(MalformedResponse):
        parse_ppse(tlv.encode(0x70, b"") + h("9000"))


def test_select_aid_returns_pdol() -> None:
    fci = tlv.encode(0x6F, tlv.encode(0x84, h("A000000333010101")) + tlv.encode(0xA5, tlv.encode(0x9F38, h("9F6604"))))
    assert parse_select_application(fci + h("9000")) == h("9F6604")
    no_pdol = tlv.encode(0x6F, tlv.encode(0x84, h("A000000333010101")))
    assert parse_select_application(no_pdol + h("9000")) == b""


def test_pdol_filled_with_terminal_defaults() -> None:
    pdol = h("9F66049F02069F03069F1A0295055F2A029A039C019F37049F3501DF6003")
    expected = (
        h("36004000") + bytes(6) + bytes(6) + h("0156") + bytes(5) + h("0156") + h("250304") + h("00")
        + h("11223344") + h("22") + bytes(3)
    )
    assert pdol_data(pdol, TERMINAL) == expected
    command = get_processing_options(pdol, TERMINAL)
    assert command[:5] == h("80A8000000")[:4] + bytes([2 + len(expected)])
    assert command[5:7] == bytes([0x83, len(expected)])
    assert command[-1] == 0


def test_pdol_values_are_sized_to_the_request() -> None:
    # numeric: keep the rightmost digits / pad left; binary: keep left / pad right
    assert pdol_data(h("9F1A01"), TERMINAL) == h("56")
    assert pdol_data(h("9F1A03"), TERMINAL) == h("000156")
    assert pdol_data(h("9F6602"), TERMINAL) == h("3600")
    assert pdol_data(h("9F6606"), TERMINAL) == h("360040000000")
    assert pdol_data(b"", TERMINAL) == b""
    assert get_processing_options(b"", TERMINAL) == h("80A80000028300") + h("00")


def test_gpo_formats() -> None:
    afl = h("08010100")
    fmt1 = tlv.encode(0x80, h("1980") + afl) + h("9000")
    assert parse_processing_options(fmt1).afl == afl
    track2 = tlv.encode(0x57, h("6212345678901232D301220100000000"))
    fmt2 = tlv.encode(0x77, tlv.encode(0x82, h("0080")) + tlv.encode(0x94, afl) + track2) + h("9000")
    options = parse_processing_options(fmt2)
    assert options.afl == afl
    assert pan_from_objects(options.objects) == "6212345678901232"
    with pytest.raises(UnexpectedStatus):
        parse_processing_options(h("6985"))
    with pytest.raises(MalformedResponse):
        parse_processing_options(tlv.encode(0x80, h("19")) + h("9000"))


def test_afl_expansion_and_limits() -> None:
    assert records_to_read(h("0801010010010300")) == [(1, 1), (2, 1), (2, 2), (2, 3)]
    for bad in ("080101", "08000100", "08020100", "09010100", "F8010100", "0801FF00"):
        with pytest.raises(MalformedResponse):
            records_to_read(h(bad))


def test_read_record_command() -> None:
    assert read_record(2, 1) == h("00B2011400")


@pytest.mark.parametrize(
    ("objects", "pan"),
    [
        (tlv.encode(0x5A, h("6212345678901232")), "6212345678901232"),
        (tlv.encode(0x5A, h("4111111111111111FF")), "4111111111111111"),
        (tlv.encode(0x5A, h("621234567890123F")), None),  # 15 digits, check fails -> raises below
        (tlv.encode(0x57, h("4111111111111111D25122010000")), "4111111111111111"),
        (tlv.encode(0x5F20, b"NAME"), None),
    ],
)
def test_pan_extraction(objects: bytes, pan: str | None) -> None:
    items = tlv.parse(objects)
    if pan is None and tlv.find(items, 0x5A) is not None:
        with pytest.raises(MalformedResponse):
            pan_from_objects(items)
    else:
        assert pan_from_objects(items) == pan


@pytest.mark.parametrize("track2", ["4111111111111111", "41111111111D2512", "4111111111111112D2512", "4A11D25"])
def test_bad_track2(track2: str) -> None:
    with pytest.raises(MalformedResponse):
        pan_from_objects(tlv.parse(tlv.encode(0x57, h(track2 + ("F" if len(track2) % 2 else "")))))


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert luhn_valid("6212345678901232")
