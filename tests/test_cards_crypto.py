"""Crypto of the card layer against published vectors.

RFC 4493 (AES-CMAC), NXP AN10922 §2.2.1 (AES-128 key diversification) and
NXP AN12196 (EV2 AuthenticateEV2First, secure messaging) worked examples.
If these fail, no profile test result means anything.
"""

from __future__ import annotations

import os

import pytest

from simulator.cards.desfire import an10922 as simulator_an10922
from terminal.cards.cmac import (
    AesKey,
    aes_cmac,
    an10922_aes128,
    cmac_subkeys,
    iso9797_m2_pad,
    iso9797_m2_unpad,
    truncate_mac,
)
from terminal.cards.desfire import AuthenticateEv2First, Session, session_keys, session_vectors
from terminal.cards.sam import SYSTEM_IDENTIFIER, diversification_input
from terminal.exceptions import CardNotGenuine, MalformedResponse, UnexpectedStatus

h = bytes.fromhex

# --- RFC 4493 ---------------------------------------------------------------------

RFC4493_KEY = h("2b7e151628aed2a6abf7158809cf4f3c")
RFC4493_MSG = h(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)


def test_rfc4493_subkeys() -> None:
    k1, k2 = cmac_subkeys(RFC4493_KEY)
    assert k1 == h("fbeed618357133667c85e08f7236a8de")
    assert k2 == h("f7ddac306ae266ccf90bc11ee46d513b")


@pytest.mark.parametrize(
    ("length", "mac"),
    [
        (0, "bb1d6929e95937287fa37d129b756746"),
        (16, "070a16b46b4d4144f79bdd9dd04a287c"),
        (40, "dfa66747de9ae63030ca32611497c827"),
        (64, "51f0bebf7e3b9d92fc49741779363cfe"),
    ],
)
def test_rfc4493_examples(length: int, mac: str) -> None:
    assert aes_cmac(RFC4493_KEY, RFC4493_MSG[:length]) == h(mac)


def test_cmac_refuses_non_aes128_keys() -> None:
    with pytest.raises(ValueError):
        aes_cmac(b"short", b"")


def test_one_key_object_serves_any_number_of_operations_alike() -> None:
    """The key's contexts are reused: no chaining state may leak from one operation to the next."""
    key = AesKey(RFC4493_KEY)
    macs = [key.cmac(RFC4493_MSG[:n]) for n in (0, 16, 40, 64, 40, 0)]
    assert macs[0] == macs[5] == h("bb1d6929e95937287fa37d129b756746")
    assert macs[2] == macs[4] == h("dfa66747de9ae63030ca32611497c827")
    assert repr(key) == "AesKey(...)"  # never the key


# --- NIST SP 800-38A F.2.1 / F.2.2 (CBC-AES128) ----------------------------------------

SP800_38A_IV = h("000102030405060708090a0b0c0d0e0f")
SP800_38A_CBC = h(
    "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2"
    "73bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7"
)


def test_sp800_38a_cbc_examples_both_ways_and_again() -> None:
    key = AesKey(RFC4493_KEY)
    for _ in range(2):
        assert key.cbc_encrypt(SP800_38A_IV, RFC4493_MSG) == SP800_38A_CBC
        assert key.cbc_decrypt(SP800_38A_IV, SP800_38A_CBC) == RFC4493_MSG
    assert key.cbc_decrypt(SP800_38A_CBC[:16], SP800_38A_CBC[16:32]) == RFC4493_MSG[16:32]
    with pytest.raises(ValueError):
        key.cbc_encrypt(SP800_38A_IV, RFC4493_MSG[:20])


# --- AN10922 -----------------------------------------------------------------------

AN10922_MASTER = h("00112233445566778899AABBCCDDEEFF")
AN10922_UID = h("04782E21801D80")
AN10922_AID = h("3042F5")
AN10922_SYSID = b"NXP Abu"


def test_an10922_published_example() -> None:
    key = an10922_aes128(AN10922_MASTER, AN10922_UID + AN10922_AID + AN10922_SYSID)
    assert key == h("A8DD63A3B89D54B37CA802473FDA9175")


def test_an10922_differs_from_plain_cmac_only_where_the_padding_rule_does() -> None:
    """AN10922 pads to two blocks; plain CMAC agrees only for 17..32-byte M."""
    master = os.urandom(16)
    for n in range(1, 32):
        div = os.urandom(n)
        plain = aes_cmac(master, b"\x01" + div)
        same = 16 < n + 1 <= 32
        assert (an10922_aes128(master, div) == plain) is same, n


def test_an10922_matches_the_simulator_implementation_for_every_length() -> None:
    master = os.urandom(16)
    for n in range(1, 32):
        div = os.urandom(n)
        assert an10922_aes128(master, div) == simulator_an10922(master, div)


def test_an10922_input_length_is_bounded() -> None:
    with pytest.raises(ValueError):
        an10922_aes128(AN10922_MASTER, b"")
    with pytest.raises(ValueError):
        an10922_aes128(AN10922_MASTER, bytes(32))


def test_union_diversification_input_layout() -> None:
    assert SYSTEM_IDENTIFIER == b"UNIONTERM"
    assert diversification_input(AN10922_UID, b"UNI") == AN10922_UID + b"UNI" + b"UNIONTERM"
    assert diversification_input(b"", b"UNI") == b"UNIUNIONTERM"


def test_m2_padding_round_trip_and_rejects() -> None:
    assert iso9797_m2_pad(h("01")) == h("01800000000000000000000000000000")
    assert len(iso9797_m2_pad(bytes(16))) == 32
    assert iso9797_m2_unpad(iso9797_m2_pad(h("0102"))) == h("0102")
    assert iso9797_m2_unpad(bytes(16)) is None
    assert iso9797_m2_unpad(h("0102") + bytes(14)) is None


def test_truncated_mac_takes_odd_bytes() -> None:
    assert truncate_mac(h("B565AC978FA46D5784C845CD1444102C")) == h("6597A457C8CD442C")


# --- AN12196: AuthenticateEV2First -------------------------------------------------

HANDSHAKES = [
    pytest.param(  # Table 14, key 0
        0,
        "13C5DB8A5930439FC3DEF9A4C675360F",
        "A04C124213C186F22399D33AC2A30215",
        "90AF00002035C3E05A752E0144BAC0DE51C1F22C56B34408A23D8AEA266CAB947EA8E0118D00",
        "3FA64DB5446D1F34CD6EA311167F5E4985B89690C04A05F17FA7AB2F08120663",
        "9D00C4DF",
        "1309C877509E5A215007FF0ED19CA564",
        "4C6626F5E72EA694202139295C7A7FC7",
        id="table14-key0",
    ),
    pytest.param(  # Table 19, key 3
        3,
        "B98F4C50CF1C2E084FD150E33992B048",
        "B875CEB0E66A6C5CD00898DC371F92D1",
        "90AF000020FF0306E47DFBC50087C4D8A78E88E62DE1E8BE457AA477C707E2F0874916A8B100",
        "0CC9A8094A8EEA683ECAAC5C7BF20584206D0608D477110FC6B3D5D3F65C3A6A",
        "7614281A",
        "7A93D6571E4B180FCA6AC90C9A7488D4",
        "FC4AF159B62E549B5812394CAB1918CC",
        id="table19-key3",
    ),
]


@pytest.mark.parametrize(("key_no", "rnd_a", "challenge", "second", "final", "ti", "enc", "mac"), HANDSHAKES)
def test_an12196_authenticate_ev2_first(
    key_no: int, rnd_a: str, challenge: str, second: str, final: str, ti: str, enc: str, mac: str
) -> None:
    auth = AuthenticateEv2First(bytes(16), key_no, rnd_a=h(rnd_a))
    assert auth.command() == bytes([0x90, 0x71, 0, 0, 2, key_no, 0, 0])
    assert auth.answer_challenge(h(challenge) + b"\x91\xAF") == h(second)
    session = auth.finish(h(final) + b"\x91\x00")
    assert session.ti == h(ti)
    assert session.enc_key == h(enc)
    assert session.mac_key == h(mac)
    assert session.cmd_ctr == 0


def test_an12196_session_vectors() -> None:
    sv1, sv2 = session_vectors(h("13C5DB8A5930439FC3DEF9A4C675360F"), h("B9E2FC789B64BF237CCCAA20EC7E6E48"))
    assert sv1 == h("A55A0001008013C56268A548D8FBBF237CCCAA20EC7E6E48C3DEF9A4C675360F")
    assert sv2 == h("5AA50001008013C56268A548D8FBBF237CCCAA20EC7E6E48C3DEF9A4C675360F")
    enc, mac = session_keys(AesKey(bytes(16)), h("13C5DB8A5930439FC3DEF9A4C675360F"), h("B9E2FC789B64BF237CCCAA20EC7E6E48"))
    assert (enc, mac) == (h("1309C877509E5A215007FF0ED19CA564"), h("4C6626F5E72EA694202139295C7A7FC7"))


def _table14_after_challenge() -> AuthenticateEv2First:
    auth = AuthenticateEv2First(bytes(16), 0, rnd_a=h("13C5DB8A5930439FC3DEF9A4C675360F"))
    auth.answer_challenge(h("A04C124213C186F22399D33AC2A3021591AF"))
    return auth


def test_card_that_does_not_prove_rnd_a_is_not_genuine() -> None:
    final = bytearray(h("3FA64DB5446D1F34CD6EA311167F5E4985B89690C04A05F17FA7AB2F08120663"))
    final[5] ^= 0x01  # corrupts RndA' after decryption
    with pytest.raises(CardNotGenuine):
        _table14_after_challenge().finish(bytes(final) + b"\x91\x00")


def test_card_refusing_our_cryptogram_is_not_genuine() -> None:
    with pytest.raises(CardNotGenuine):
        _table14_after_challenge().finish(h("91AE"))


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ("A04C124213C186F22399D33AC2A302", UnexpectedStatus),  # no 91 AF status
        ("A04C124213C186F22399D33AC2A30291AF", MalformedResponse),  # 15-byte challenge
        ("9140", UnexpectedStatus),  # no such key
        ("91", MalformedResponse),
    ],
)
def test_malformed_challenge(answer: str, error: type[Exception]) -> None:
    auth = AuthenticateEv2First(bytes(16), 0)
    with pytest.raises(error):
        auth.answer_challenge(h(answer))


def test_handshake_steps_cannot_run_out_of_order() -> None:
    auth = AuthenticateEv2First(bytes(16), 0)
    with pytest.raises(RuntimeError):
        auth.finish(bytes(32) + b"\x91\x00")
    auth = _table14_after_challenge()
    auth.finish(h("3FA64DB5446D1F34CD6EA311167F5E4985B89690C04A05F17FA7AB2F081206639100"))
    with pytest.raises(RuntimeError):  # the static key is gone after finish
        auth.finish(h("3FA64DB5446D1F34CD6EA311167F5E4985B89690C04A05F17FA7AB2F081206639100"))


# --- AN12196: secure messaging -------------------------------------------------------


def _table7() -> Session:
    return Session(h("7A21085E"), bytes(16), h("8248134A386E86EB7FAF54A52E536CB6"))


def test_an12196_table7_command_mac() -> None:
    assert _table7().mac_command(0xF5, b"\x02") == h("90F5000009026597A457C8CD442C00")


TABLE7_ANSWER = h("0040EEEE000100D1FE001F00004400004400002000006A00002A474282E7A479869100")


def test_an12196_table7_response_mac_and_counter() -> None:
    session = _table7()
    assert session.verify_response(TABLE7_ANSWER, "GetFileSettings") == TABLE7_ANSWER[:-10]
    assert session.cmd_ctr == 1


def test_response_mac_fails_on_any_flipped_bit_or_wrong_counter() -> None:
    tampered = bytearray(TABLE7_ANSWER)
    tampered[3] ^= 0x10
    with pytest.raises(CardNotGenuine):
        _table7().verify_response(bytes(tampered), "GetFileSettings")
    replayed = _table7()
    replayed.cmd_ctr = 1
    with pytest.raises(CardNotGenuine):
        replayed.verify_response(TABLE7_ANSWER, "GetFileSettings")


@pytest.mark.parametrize(
    ("ti", "mac_key", "ctr", "answer"),
    [
        ("7614281A", "FC4AF159B62E549B5812394CAB1918CC", 0, "C26D236E4A7C046D9100"),  # Table 21
        ("7614281A", "5529860B2FC5FB6154B7F28361D30BF9", 2, "203BB55D1089D5879100"),  # Table 25
        ("D779B1D0", "FE4EDBF46536557E304682F33E63A84F", 0, "86044208CAD1676A9100"),  # Table 27
    ],
)
def test_an12196_response_macs_without_data(ti: str, mac_key: str, ctr: int, answer: str) -> None:
    session = Session(h(ti), bytes(16), h(mac_key), cmd_ctr=ctr)
    assert session.verify_response(h(answer), "command") == b""
    assert session.cmd_ctr == ctr + 1


def test_status_error_is_reported_before_mac() -> None:
    with pytest.raises(UnexpectedStatus) as info:
        _table7().verify_response(h("919D"), "ReadData")
    assert info.value.sw == 0x919D


def _table28() -> Session:
    return Session(h("DF055522"), h("2B4D963C014DC36F24F69A50A394F875"), h("379D32130CE61705DD5FD8C36B95D764"))


TABLE28_ANSWER = h("70756055688505B52A5E26E59E329CD6595F672298EA41B79100")


def test_an12196_table28_get_card_uid() -> None:
    session = _table28()
    assert session.get_card_uid() == h("90510000088E2C155ADDA99BE300")
    assert session.response_iv() == h("7F6BB0B278EA054CBD238C5D9E9E342B")
    assert session.parse_get_card_uid(TABLE28_ANSWER) == h("04958CAA5C5E80")
    assert session.cmd_ctr == 1


def test_get_card_uid_rejects_tampering_and_bad_shape() -> None:
    tampered = bytearray(TABLE28_ANSWER)
    tampered[0] ^= 0x01
    with pytest.raises(CardNotGenuine):
        _table28().parse_get_card_uid(bytes(tampered))
    with pytest.raises(MalformedResponse):
        _table28().parse_get_card_uid(TABLE28_ANSWER[:12] + b"\x91\x00")


def test_read_data_mac_mode_framing() -> None:
    session = _table7()
    command = session.read_data(1, 0, 32)
    header = h("01000000200000")
    assert command[:5] == h("90AD00000F")
    assert command[5:12] == header
    assert command[12:20] == truncate_mac(aes_cmac(session.mac_key, b"\xAD\x00\x00" + session.ti + header))
    assert command[20:] == b"\x00"
