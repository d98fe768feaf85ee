"""The cash-register link: CRC, wire format, messages, and the decoder under
garbage, truncation, corruption and timeouts (fuzzed: it never raises)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terminal.ecr import (
    ETX,
    STX,
    Decoder,
    ErrorReply,
    Frame,
    FrameError,
    Reply,
    Sale,
    Status,
    StatusReply,
    Void,
    crc16,
    encode,
    parse_body,
    reply_for,
)
from terminal.exceptions import PayloadError
from terminal.model import Decision, Verdict

SALE = Sale(1, 1999, "POS1-000123")
#: The SALE example of docs/ecr-link.md, byte for byte.
SALE_WIRE = bytes.fromhex("02 0014 5330311c313939391c504f53312d303030313233 82aa 03")


def crc_bitwise(data: bytes) -> int:
    """CRC-16/CCITT-FALSE straight from its definition, to cross-check binascii."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def test_crc_check_value_from_the_crc_catalogue() -> None:
    assert crc16(b"123456789") == 0x29B1 == crc_bitwise(b"123456789")


@given(st.binary(max_size=300))
def test_crc_matches_the_bitwise_definition(data: bytes) -> None:
    assert crc16(data) == crc_bitwise(data)


def test_documented_example_frame() -> None:
    assert encode(SALE) == SALE_WIRE
    assert Decoder().feed(SALE_WIRE, 0.0) == [SALE]


ids = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=32)
fen = st.integers(0, 999_999_999)
seqs = st.integers(0, 99)
words = st.from_regex(r"[a-z0-9_]{1,32}", fullmatch=True)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    discount, to_pay = draw(st.integers(0, 10**8)), draw(st.integers(0, 10**8))
    return Reply(draw(seqs), draw(st.booleans()), draw(words), discount + to_pay, discount, to_pay, draw(ids))


messages = st.one_of(
    st.builds(Sale, seqs, st.integers(1, 999_999_999), ids),
    st.builds(Void, seqs, ids, st.just("")),
    st.builds(Void, seqs, st.just(""), ids),
    st.builds(Status, seqs),
    replies(),
    st.builds(StatusReply, seqs, words, ids),
    st.builds(ErrorReply, seqs, words),
)


@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_round_trip_in_arbitrary_chunks(batch: list[Frame], data: st.DataObject) -> None:
    wire = b"".join(encode(m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    dec, got = Decoder(), []
    for a, b in zip([0, *cuts], [*cuts, len(wire)]):
        got += dec.feed(wire[a:b], 0.0)
    assert got == batch and not dec.pending


noise = st.binary(max_size=40).map(lambda b: b.replace(bytes([STX]), b""))


@given(noise, messages, noise)
def test_frame_is_found_between_line_noise(before: bytes, message: Frame, after: bytes) -> None:
    got = Decoder().feed(before + encode(message) + after, 0.0)
    assert [g for g in got if not isinstance(g, FrameError)] == [message]
    assert all(g.kind == "noise" and not g.answer for g in got if isinstance(g, FrameError))


@settings(max_examples=300)
@given(st.lists(st.tuples(st.binary(max_size=64), st.floats(0, 5)), max_size=12))
def test_decoder_never_raises_on_any_bytes(chunks: list[tuple[bytes, float]]) -> None:
    dec, now = Decoder(timeout_s=0.5), 0.0
    for data, gap in chunks:
        now += gap
        for item in dec.feed(data, now):
            assert isinstance(item, (FrameError, Sale, Void, Status, Reply, StatusReply, ErrorReply))
    dec.poll(now + 10)
    assert not dec.pending


@given(st.binary(max_size=64), messages)
def test_after_any_garbage_a_quiet_line_then_a_frame_gets_through(garbage: bytes, message: Frame) -> None:
    dec = Decoder(timeout_s=0.5)
    dec.feed(garbage, 0.0)
    got = dec.feed(encode(message), 1.0)
    assert got[-1] == message


def corrupt(frame: bytes, index: int, value: int) -> bytes:
    return frame[:index] + bytes([value]) + frame[index + 1 :]


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        (corrupt(SALE_WIRE, 10, ord("8")), "checksum"),  # amount 1999 -> 1989
        (corrupt(SALE_WIRE, len(SALE_WIRE) - 2, 0x00), "checksum"),
        (corrupt(SALE_WIRE, len(SALE_WIRE) - 1, 0x04), "etx"),
        (b"\x02\xff\xff", "length"),
        (b"\x02\x00\x02", "length"),  # too short; then 02 02 00 claims 512 bytes: too long
        (b"\x02\x01\x00", "length"),
    ],
)
def test_corrupt_frame_is_an_error_and_the_next_frame_still_decodes(bad: bytes, kind: str) -> None:
    got = Decoder().feed(bad + encode(Status(9)), 0.0)
    errors = [g for g in got if isinstance(g, FrameError)]
    assert errors[0].kind == kind and errors[0].answer
    assert got[-1] == Status(9)
    assert not any(isinstance(g, Sale) for g in got)  # never acted on


def test_truncated_frame_followed_by_a_new_one() -> None:
    dec = Decoder(timeout_s=0.5)
    assert dec.feed(SALE_WIRE[:9], 0.0) == []
    assert dec.pending
    # the cash register gave up and sent another frame: it hides inside the
    # claimed length of the first until the line has been quiet long enough
    assert dec.feed(encode(Status(2)), 0.1) == []
    assert dec.poll(0.6) == []
    got = dec.poll(0.61)
    assert got[0].kind == "timeout" and got[-1] == Status(2)


def test_partial_frame_times_out_only_after_the_timeout() -> None:
    dec = Decoder(timeout_s=0.5)
    dec.feed(SALE_WIRE[:-1], 10.0)
    assert dec.poll(10.5) == []
    got = dec.poll(10.51)
    assert got[0].kind == "timeout" and got[0].reply() == ErrorReply(0, "timeout")
    assert not dec.pending
    assert dec.feed(SALE_WIRE, 11.0) == [SALE]


def test_slow_but_steady_bytes_do_not_time_out() -> None:
    dec, got = Decoder(timeout_s=0.5), []
    for i, byte in enumerate(SALE_WIRE):
        got += dec.feed(bytes([byte]), i * 0.4)
    assert got == [SALE]


def framed(body: bytes) -> bytes:
    head = len(body).to_bytes(2, "big")
    return bytes([STX]) + head + body + crc16(head + body).to_bytes(2, "big") + bytes([ETX])


@pytest.mark.parametrize(
    ("body", "seq", "problem"),
    [
        (b"X01", 1, "unknown type"),
        (b"S05\x1c100", 5, "takes 2 fields"),
        (b"S05\x1c1x0\x1cREF", 5, "decimal digits"),
        (b"S05\x1c0\x1cREF", 5, "positive"),
        (b"S05\x1c100\x1cA REF", 5, "printable"),
        (b"S05100\x1cREF", 5, "follow FS"),
        (b"Sx5\x1c100\x1cREF", None, "two-digit SEQ"),
        (b"S05\x1c100\x1c\xff", 5, "printable"),
        (b"R07\x1cA\x1cok\x1c100\x1c10\x1c80\x1cT1", 7, "discount plus"),
        (b"R07\x1cY\x1cok\x1c100\x1c10\x1c90\x1cT1", 7, "A or D"),
        (b"V08\x1c\x1c", 8, "ecr_ref or tx_id"),
        (b"Q08\x1c", 8, "takes 0 fields"),
    ],
)
def test_well_framed_bad_content_is_a_format_error(body: bytes, seq: int | None, problem: str) -> None:
    (got,) = Decoder().feed(framed(body), 0.0)
    assert isinstance(got, FrameError) and got.kind == "format" and got.seq == seq
    assert problem in got.detail
    assert parse_body(body) == got


def test_reply_for_a_decision() -> None:
    approved = Decision(Verdict.APPROVE, "ok", 2000, 100, 1900, True)
    assert reply_for(4, 2000, approved, "T-9") == Reply(4, True, "ok", 2000, 100, 1900, "T-9")
    denied = Decision.deny("limit_reached")
    assert reply_for(4, 2000, denied, "T-9") == Reply(4, False, "limit_reached", 2000, 0, 2000, "T-9")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Sale(100, 1, "R"),
        lambda: Sale(1, 1_000_000_000, "R"),
        lambda: Sale(1, 100, "x" * 33),
        lambda: Sale(1, 100, ""),
        lambda: Reply(1, True, "OK", 1, 0, 1, "T"),
        lambda: StatusReply(1, "ready", ""),
    ],
)
def test_encoder_refuses_what_it_could_not_frame(make: object) -> None:
    with pytest.raises(PayloadError):
        make()  # type: ignore[operator]


def test_examples_in_the_document_decode() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "ecr-link.md").read_text(encoding="utf-8")
    wires = [bytes.fromhex(line) for line in doc.splitlines() if line.startswith("    02 ")]
    got = Decoder().feed(b"".join(wires), 0.0)
    assert got == [SALE, Reply(1, True, "ok", 1999, 99, 1900, "T7-000042")]
