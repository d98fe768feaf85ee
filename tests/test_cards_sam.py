"""The SAM seam: key file loading rules and the PC/SC SAM applet protocol."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_cards_support import BehaviourChannel

from simulator.cards.sam import SamCard
from terminal.cards.cmac import an10922_aes128
from terminal.cards.sam import PcscSam, SoftwareSam, diversify_command, parse_diversify
from terminal.exceptions import ConfigError, SamError

MASTER1 = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
MASTER2 = bytes.fromhex("F0E1D2C3B4A5968778695A4B3C2D1E0F")
UID = bytes.fromhex("04782E21801D80")
AID = b"UNI"


def write_key_file(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "keys"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


async def test_json_key_file(tmp_path: Path) -> None:
    path = write_key_file(tmp_path, json.dumps({"1": MASTER1.hex(), "2": MASTER2.hex()}))
    sam = SoftwareSam.load(path)
    assert sam.slots == [1, 2]
    assert await sam.diversified_key(1, UID, AID) == an10922_aes128(MASTER1, UID + AID + b"UNIONTERM")
    assert await sam.diversified_key(2, b"", AID) == an10922_aes128(MASTER2, AID + b"UNIONTERM")


async def test_hex_lines_key_file(tmp_path: Path) -> None:
    text = f"# union masters\n1 {MASTER1.hex()}\n\n0x02 {MASTER2.hex().upper()}  # uid key\n"
    sam = SoftwareSam.load(write_key_file(tmp_path, text))
    assert sam.slots == [1, 2]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path, f"1 {MASTER1.hex()}", mode)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        SoftwareSam.load(path)
    assert info.value.path == path


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# nothing\n",
        "1 00112233",
        "1 zz112233445566778899AABBCCDDEEFF",
        "300 00112233445566778899AABBCCDDEEFF",
        "1 00112233445566778899AABBCCDDEEFF\n1 00112233445566778899AABBCCDDEEFF",
        "one 00112233445566778899AABBCCDDEEFF",
        "1 2 3",
        "{not json",
        "[1, 2]",
        '{"1": 5}',
    ],
)
def test_bad_key_files(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        SoftwareSam.load(write_key_file(tmp_path, text))
    assert MASTER1.hex() not in str(info.value).lower()


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open"):
        SoftwareSam.load(str(tmp_path / "absent"))


def test_sam_objects_do_not_show_keys() -> None:
    assert MASTER1.hex() not in repr(SoftwareSam({1: MASTER1})).lower()
    assert "slots=[1]" in repr(SoftwareSam({1: MASTER1}))


async def test_unknown_slot_is_a_sam_error() -> None:
    with pytest.raises(SamError):
        await SoftwareSam({1: MASTER1}).diversified_key(3, UID, AID)


def test_diversify_command_layout() -> None:
    assert diversify_command(1, UID, AID) == bytes.fromhex("80100100") + bytes([11, 7]) + UID + AID + b"\x10"
    assert diversify_command(2, b"", AID) == bytes.fromhex("801002000400") + AID + b"\x10"
    with pytest.raises(SamError):
        diversify_command(1, b"\x01\x02", AID)


@pytest.mark.parametrize("answer", ["9000", "6A88", "00" * 15 + "9000", "00" * 16 + "6F00", "90"])
def test_bad_diversify_answers(answer: str) -> None:
    with pytest.raises(SamError):
        parse_diversify(bytes.fromhex(answer))


async def test_pcsc_sam_matches_software_sam() -> None:
    card = PcscSam(BehaviourChannel(SamCard({1: MASTER1, 2: MASTER2})))
    soft = SoftwareSam({1: MASTER1, 2: MASTER2})
    for slot, uid in ((1, UID), (2, b""), (1, bytes.fromhex("08AABBCC"))):
        assert await card.diversified_key(slot, uid, AID) == await soft.diversified_key(slot, uid, AID)


async def test_pcsc_sam_reselects_after_a_failure() -> None:
    behaviour = SamCard({1: MASTER1})
    channel = BehaviourChannel(behaviour)
    sam = PcscSam(channel)
    with pytest.raises(SamError):
        await sam.diversified_key(9, UID, AID)
    behaviour.reset()  # e.g. the SAM was power-cycled
    assert await sam.diversified_key(1, UID, AID) == an10922_aes128(MASTER1, UID + AID + b"UNIONTERM")
    selects = [c for c in channel.sent if c[:2] == b"\x00\xA4"]
    assert len(selects) == 2


def test_sam_applet_refuses_diversify_before_select() -> None:
    card = SamCard({1: MASTER1})
    assert card.respond(diversify_command(1, UID, AID)) == b"\x69\x85"
