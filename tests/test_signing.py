"""Signed envelopes: what verifies, and every way a message must fail to."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from terminal import signing
from terminal.exceptions import ConfigError, PayloadError, ReplayError, SignatureError
from terminal.signing import VersionCheck, check_version

NOW = 1_750_000_000
ISSUED = NOW - 60
EXPIRES = NOW + 86_400

# RFC 8032, section 7.1, TEST 1 (empty message).
RFC8032_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
RFC8032_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
RFC8032_SIGNATURE = ("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
                     "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture(scope="module")
def trusted(key: Ed25519PrivateKey) -> dict:
    return signing.trusted_keys([key.public_key()])


def envelope(key: Ed25519PrivateKey, kind: str = "members.delta", scope: str = "org-7",
             body: bytes = b'{"hello":"world"}', version: int = 5) -> bytes:
    return signing.sign(key, kind, scope, version, ISSUED, EXPIRES, body)


def raw_envelope(key: Ed25519PrivateKey, header: bytes, body: bytes) -> bytes:
    """A correctly signed envelope around an arbitrary header line (to test header rules)."""
    signed = signing.MAGIC + header + b"\n" + body
    return signed + key.sign(signed)


def test_round_trip_returns_header_and_exact_body(key, trusted) -> None:
    body = "会员 list\n\x00binary".encode()
    blob = signing.sign(key, "members.manifest", "all", 42, ISSUED, EXPIRES, body)
    verified = signing.verify(blob, trusted, "members.manifest", "all", NOW)
    assert verified.body == body
    assert verified.header == signing.Header(
        kind="members.manifest", scope="all", version=42, issued=ISSUED, expires=EXPIRES,
        kid=signing.key_id(key.public_key()), length=len(body))


def test_layout_is_magic_header_line_body_and_64_byte_signature(key) -> None:
    blob = envelope(key, body=b"BODY")
    header_line, rest = blob[len(signing.MAGIC):].split(b"\n", 1)
    assert blob.startswith(b"UT1\n")
    assert rest[:-64] == b"BODY"
    assert header_line == (b'{"expires":%d,"issued":%d,"kid":"%s","kind":"members.delta",'
                           b'"len":4,"scope":"org-7","version":5}'
                           % (EXPIRES, ISSUED, signing.key_id(key.public_key()).encode()))
    key.public_key().verify(blob[-64:], blob[:-64])  # plain Ed25519 over everything before it


def test_every_single_bit_flip_is_refused(key, trusted) -> None:
    blob = envelope(key, body=b"{}")
    for i in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[i] ^= 1 << bit
            with pytest.raises(PayloadError):
                signing.verify(bytes(tampered), trusted, "members.delta", "org-7", NOW)


@pytest.mark.parametrize("old,new", [(b'"org-7"', b'"org-8"'), (b'"version":5', b'"version":6'),
                                     (b'"hello"', b'"hellp"')])
def test_tampered_but_well_formed_bytes_fail_the_signature(key, trusted, old, new) -> None:
    blob = envelope(key).replace(old, new)
    with pytest.raises(SignatureError, match="does not verify"):
        signing.verify(blob, trusted, "members.delta", ("org-8" if b"org" in new else "org-7"), NOW)


def test_signature_for_one_kind_never_verifies_as_another(key, trusted) -> None:
    blob = envelope(key, kind="hotlist", scope="all")
    with pytest.raises(SignatureError, match="signed as 'hotlist'") as err:
        signing.verify(blob, trusted, "command", "all", NOW)
    assert err.value.where == "envelope.header.kind"
    assert signing.verify(blob, trusted, ("hotlist", "hotlist.full"), "all", NOW).header.kind == "hotlist"


def test_signature_for_one_scope_never_verifies_as_another(key, trusted) -> None:
    blob = envelope(key, scope="org-7")
    with pytest.raises(SignatureError, match="signed for 'org-7'") as err:
        signing.verify(blob, trusted, "members.delta", "all", NOW)
    assert err.value.where == "envelope.header.scope"


def test_command_is_bound_to_its_terminal_id(key, trusted) -> None:
    blob = signing.sign(key, "command", "T-0042", 9, ISSUED, EXPIRES, b'{"op":"reboot"}')
    assert signing.verify(blob, trusted, "command", "T-0042", NOW).body == b'{"op":"reboot"}'
    with pytest.raises(SignatureError):
        signing.verify(blob, trusted, "command", "T-0043", NOW)


def test_unknown_key_is_refused(key, trusted) -> None:
    stranger = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
    with pytest.raises(SignatureError, match="not trusted") as err:
        signing.verify(envelope(stranger), trusted, "members.delta", "org-7", NOW)
    assert err.value.where == "envelope.header.kid"


def test_known_key_id_with_a_foreign_signature_is_refused(key, trusted) -> None:
    stranger = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
    blob = envelope(key)
    forged = blob[:-64] + stranger.sign(blob[:-64])
    with pytest.raises(SignatureError, match="does not verify"):
        signing.verify(forged, trusted, "members.delta", "org-7", NOW)


def test_unsigned_payload_is_a_signature_error(trusted) -> None:
    with pytest.raises(SignatureError, match="unsigned"):
        signing.verify(b'{"base":1}', trusted, "members.delta", "org-7", NOW)


def test_expired_message_is_a_replay_error(key, trusted) -> None:
    blob = envelope(key)
    assert signing.verify(blob, trusted, "members.delta", "org-7", EXPIRES - 1)
    for now in (EXPIRES, EXPIRES + 3600):
        with pytest.raises(ReplayError, match="expired"):
            signing.verify(blob, trusted, "members.delta", "org-7", now)


def test_two_trusted_keys_allow_rotation_and_a_third_is_refused(key) -> None:
    new = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
    retired = Ed25519PrivateKey.from_private_bytes(b"\x03" * 32)
    both = signing.trusted_keys([key.public_key(), new.public_key()])
    assert signing.verify(envelope(key), both, "members.delta", "org-7", NOW).header.kid == \
        signing.key_id(key.public_key())
    assert signing.verify(envelope(new), both, "members.delta", "org-7", NOW).header.kid == \
        signing.key_id(new.public_key())
    with pytest.raises(SignatureError):
        signing.verify(envelope(retired), both, "members.delta", "org-7", NOW)
    with pytest.raises(ValueError, match="at most 2"):
        signing.trusted_keys([key.public_key(), new.public_key(), retired.public_key()])


def test_oversize_blob_is_refused_before_it_is_read(key, trusted) -> None:
    blob = envelope(key, body=b"x" * 1000)
    assert signing.verify(blob, trusted, "members.delta", "org-7", NOW, max_bytes=len(blob))
    with pytest.raises(PayloadError, match="over the 100-byte limit") as err:
        signing.verify(blob, trusted, "members.delta", "org-7", NOW, max_bytes=100)
    assert type(err.value) is PayloadError
    junk = b"\xff" * (signing.DEFAULT_MAX_BYTES + 1)  # not even the magic is looked at
    with pytest.raises(PayloadError, match="limit") as err:
        signing.verify(junk, trusted, "members.delta", "org-7", NOW)
    assert type(err.value) is PayloadError


def test_truncated_envelope_is_refused_by_length(key, trusted) -> None:
    blob = envelope(key)
    with pytest.raises(PayloadError, match="header.len|says") as err:
        signing.verify(blob[:-1], trusted, "members.delta", "org-7", NOW)
    assert err.value.where == "envelope.header.len"


@pytest.mark.parametrize("header,where", [
    (b'{"expires":2,"issued":1,"kid":"K","kind":"hotlist","len":2,"scope":"all","version":1,"x":1}',
     "envelope.header.x"),
    (b'{"expires":2,"issued":1,"kid":"K","kind":"hotlist","len":2,"scope":"all"}',
     "envelope.header.version"),
    (b'{"expires":2,"issued":1,"kid":"K","kind":"hotlist","len":2,"scope":"all","version":true}',
     "envelope.header.version"),
    (b'{"expires":2,"issued":1,"kid":"K","kind":"hotlist","len":2,"scope":"a/b","version":1}',
     "envelope.header.scope"),
    (b'{"expires":1,"issued":1,"kid":"K","kind":"hotlist","len":2,"scope":"all","version":1}',
     "envelope.header.expires"),
    (b'{"expires":2,"issued":1,"kid":"K","kind":"hotlist","len":2,"scope":"all","version":1,'
     b'"version":2}', "envelope.header"),
    (b'[1,2]', "envelope.header"),
])
def test_signed_but_malformed_header_names_the_field(key, trusted, header, where) -> None:
    header = header.replace(b'"K"', b'"%s"' % signing.key_id(key.public_key()).encode())
    with pytest.raises(PayloadError) as err:
        signing.verify(raw_envelope(key, header, b"{}"), trusted, "hotlist", "all", 1)
    assert err.value.where == where


def test_header_line_is_bounded(key, trusted) -> None:
    header = b'{"kind":"' + b"a" * 2000 + b'"}'
    with pytest.raises(PayloadError, match="no header line within 1024"):
        signing.verify(raw_envelope(key, header, b""), trusted, "hotlist", "all", NOW)


@pytest.mark.parametrize("kind,scope,version,issued,expires", [
    ("Members", "all", 1, 1, 2), ("hotlist", "a/b", 1, 1, 2), ("hotlist", "a+", 1, 1, 2),
    ("hotlist", "all", 0, 1, 2), ("hotlist", "all", 1, 5, 5), ("hotlist", "", 1, 1, 2),
])
def test_sign_refuses_what_a_terminal_would_refuse(key, kind, scope, version, issued, expires) -> None:
    with pytest.raises(ValueError, match="cannot sign"):
        signing.sign(key, kind, scope, version, issued, expires, b"")


def test_key_id_is_first_8_bytes_of_sha256_of_the_raw_public_key() -> None:
    public = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_SEED)).public_key()
    # SHA-256(d75a9801...) computed independently (sha256sum of the 32 raw bytes).
    assert signing.key_id(public) == "21fe31dfa154a261"


# -- key files -----------------------------------------------------------------------


def test_private_key_file_is_hex_seed_mode_0600_and_matches_rfc8032(tmp_path) -> None:
    path = tmp_path / "signing.key"
    signing.write_private_key(path, Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_SEED)))
    assert path.read_text() == RFC8032_SEED + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = signing.load_private_key(path)
    assert loaded.public_key().public_bytes_raw().hex() == RFC8032_PUBLIC
    assert loaded.sign(b"").hex() == RFC8032_SIGNATURE


def test_private_key_is_never_overwritten(tmp_path, key) -> None:
    path = tmp_path / "signing.key"
    signing.write_private_key(path, key)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        signing.write_private_key(path, Ed25519PrivateKey.generate())
    assert signing.load_private_key(path).private_bytes_raw() == key.private_bytes_raw()


def test_private_key_readable_by_others_is_refused(tmp_path) -> None:
    path = tmp_path / "signing.key"
    path.write_text(RFC8032_SEED + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        signing.load_private_key(path)


def test_public_key_files_load_into_trust_table(tmp_path, key) -> None:
    paths = []
    for i, k in enumerate([key, Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_SEED))]):
        paths.append(tmp_path / f"k{i}.pub")
        signing.write_public_key(paths[-1], k.public_key())
    assert paths[1].read_text() == RFC8032_PUBLIC + "\n"
    table = signing.load_trusted(paths)
    assert sorted(table) == sorted([signing.key_id(key.public_key()), "21fe31dfa154a261"])
    assert signing.verify(envelope(key), table, "members.delta", "org-7", NOW)
    with pytest.raises(ConfigError, match="at most 2"):
        signing.load_trusted(paths + [paths[0]])


@pytest.mark.parametrize("text", ["", "zz" * 32, RFC8032_PUBLIC[:-2], RFC8032_PUBLIC.upper()])
def test_malformed_public_key_file_names_the_file(tmp_path, text) -> None:
    path = tmp_path / "bad.pub"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        signing.load_public_key(path)
    assert err.value.path == str(path)


def test_missing_key_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        signing.load_public_key(tmp_path / "absent.pub")


# -- version rule ----------------------------------------------------------------------


@pytest.mark.parametrize("kind,local,incoming,expected", [
    ("members.manifest", 0, 1, VersionCheck.APPLY),
    ("members.manifest", 3, 9, VersionCheck.APPLY),
    ("members.delta", 3, 4, VersionCheck.APPLY),
    ("members.delta", 3, 5, VersionCheck.RESYNC),
    ("members.delta", 0, 2, VersionCheck.RESYNC),
    ("members.delta", 0, 7, VersionCheck.RESYNC),
    ("hotlist", 10, 11, VersionCheck.APPLY),
    ("hotlist", 10, 12, VersionCheck.RESYNC),
    ("hotlist.full", 10, 30, VersionCheck.APPLY),
    ("command", 1, 5, VersionCheck.APPLY),
])
def test_check_version_apply_or_resync(kind, local, incoming, expected) -> None:
    assert check_version(local, incoming, kind) is expected


@pytest.mark.parametrize("kind", ["members.manifest", "members.delta", "hotlist", "hotlist.full", "command"])
@pytest.mark.parametrize("incoming", [4, 5])
def test_check_version_refuses_older_or_equal(kind, incoming) -> None:
    with pytest.raises(ReplayError, match="not newer"):
        check_version(5, incoming, kind)


def test_check_version_has_no_default_rule() -> None:
    with pytest.raises(ValueError):
        check_version(1, 2, "members.something")
