"""Ed25519 signed envelopes for everything the back office tells a terminal.

A member list opens doors and hands out discounts, and MQTT delivers whatever
anyone with broker credentials publishes, so every list, delta, hot-list entry
and command carries a signature. The signed bytes include a header that names
the message kind, its scope (or the terminal id, for commands), its version
and its validity window: a signature made for ``org-12``'s delta can never be
replayed as ``all``'s, nor a hot-list entry as a command.

Wire format (``docs/protocol-members.md`` has the full text and an example)::

    envelope = "UT1\\n" || header || "\\n" || body || signature
    header   = canonical JSON object, one line, keys exactly
               expires, issued, kid, kind, len, scope, version
    signature = Ed25519(private key, every byte before it), 64 bytes

The signature is a fixed-size trailer and ``len`` gives the body length, so a
verifier never needs to re-serialise anything: it checks the exact bytes that
arrived. Parsing is bounded: an envelope larger than the configured maximum
is refused before a single byte of it is interpreted.

Key files are one line of lowercase hex: the raw 32-byte Ed25519 seed for a
private key (written mode 0600 and refused when group- or world-readable),
the raw 32-byte public key for a public key. A key id is the first 8 bytes of
SHA-256 over the raw public key, in hex; a terminal trusts at most two keys at
once, the current one and the next, so keys can be rotated without a gap.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import stat
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .exceptions import ConfigError, PayloadError, ReplayError, SignatureError, UnsignedError
from .sync.strict import TOKEN_RE, canonical_json, check_keys, get_int, get_str, loads_object

MAGIC = b"UT1\n"
SIGNATURE_LEN = 64
#: Longest header line accepted; a real one is about 150 bytes.
MAX_HEADER_LEN = 1024
#: Default ceiling for a whole envelope: a full hot list of 40,000 cards is
#: ~3.8 MiB, a 1.1M-member manifest ~0.2 MiB. Commands may pass a smaller one.
DEFAULT_MAX_BYTES = 4 << 20
#: Current key plus the next one during a rotation; more would only widen the attack surface.
MAX_TRUSTED_KEYS = 2
#: Versions, sequence numbers and times stay within what every JSON parser represents exactly.
MAX_INT = 2**53 - 1

KIND_MANIFEST = "members.manifest"
KIND_DELTA = "members.delta"
KIND_HOTLIST = "hotlist"
KIND_HOTLIST_FULL = "hotlist.full"
KIND_COMMAND = "command"

KIND_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
KID_RE = re.compile(r"[0-9a-f]{16}")
_HEADER_KEYS = frozenset({"expires", "issued", "kid", "kind", "len", "scope", "version"})
_WHERE = "envelope"


@dataclass(frozen=True)
class Header:
    """The signed facts about a message, as the signer stated them."""

    kind: str
    scope: str
    version: int
    issued: int
    expires: int
    kid: str
    length: int

    def expired(self, now: float) -> bool:
        """A list whose validity has run out is still used, but shown as stale."""
        return now >= self.expires

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, "scope": self.scope, "version": self.version,
                "issued": self.issued, "expires": self.expires, "kid": self.kid,
                "len": self.length}


@dataclass(frozen=True)
class Verified:
    """A message whose signature, kind, scope and validity window all checked out."""

    header: Header
    body: bytes


def key_id(public_key: Ed25519PublicKey) -> str:
    """Name a key by its hash so headers can say which trusted key to use."""
    return hashlib.sha256(public_key.public_bytes_raw()).digest()[:8].hex()


def sign(private_key: Ed25519PrivateKey, kind: str, scope: str, version: int,
         issued: int, expires: int, body: bytes) -> bytes:
    """Wrap ``body`` in a signed envelope (back-office side)."""
    header = Header(kind=kind, scope=scope, version=version, issued=issued, expires=expires,
                    kid=key_id(private_key.public_key()), length=len(body))
    line = canonical_json(header.as_json())
    # Validate with the verifier's own rules: the back office must never emit
    # an envelope a terminal would refuse as malformed.
    try:
        _check_header(loads_object(line, "header"))
    except PayloadError as exc:
        raise ValueError(f"cannot sign: {exc}") from None
    signed = MAGIC + line + b"\n" + body
    return signed + private_key.sign(signed)


def parse(blob: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Header, bytes]:
    """Split an envelope into its header and body WITHOUT checking the signature.

    Only for diagnostics and for :func:`verify`; nothing parsed here may be acted on.
    """
    if len(blob) > max_bytes:
        raise PayloadError(_WHERE, f"{len(blob)} bytes is over the {max_bytes}-byte limit")
    if not blob.startswith(MAGIC):
        raise UnsignedError(_WHERE, "unsigned: does not start with the UT1 envelope magic")
    end = blob.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER_LEN + 1)
    if end < 0:
        raise PayloadError(f"{_WHERE}.header", f"no header line within {MAX_HEADER_LEN} bytes")
    header = _check_header(loads_object(blob[len(MAGIC):end], f"{_WHERE}.header"))
    body_len = len(blob) - (end + 1) - SIGNATURE_LEN
    if body_len != header.length:
        raise PayloadError(f"{_WHERE}.header.len",
                           f"says {header.length} body bytes, envelope holds {max(body_len, 0)}"
                           f" plus a {SIGNATURE_LEN}-byte signature")
    return header, blob[end + 1:len(blob) - SIGNATURE_LEN]


def verify(blob: bytes, trusted: Mapping[str, Ed25519PublicKey], expect_kind: str | Collection[str],
           expect_scope: str, now: float, max_bytes: int = DEFAULT_MAX_BYTES) -> Verified:
    """Accept a message only if a trusted key signed exactly these bytes for this use.

    Raises :class:`PayloadError` (too large, malformed), :class:`SignatureError`
    (unsigned, unknown key, bad signature, wrong kind or scope) or
    :class:`ReplayError` (expired). Version order is the caller's, see
    :func:`check_version`.
    """
    header, body = parse(blob, max_bytes)
    key = trusted.get(header.kid)
    if key is None:
        raise SignatureError(f"{_WHERE}.header.kid", f"key {header.kid} is not trusted")
    try:
        key.verify(blob[-SIGNATURE_LEN:], blob[:-SIGNATURE_LEN])
    except InvalidSignature:
        raise SignatureError(_WHERE, f"signature does not verify with key {header.kid}") from None
    kinds = (expect_kind,) if isinstance(expect_kind, str) else tuple(expect_kind)
    if header.kind not in kinds:
        raise SignatureError(f"{_WHERE}.header.kind",
                             f"signed as {header.kind!r}, expected {' or '.join(map(repr, kinds))}")
    if header.scope != expect_scope:
        raise SignatureError(f"{_WHERE}.header.scope",
                             f"signed for {header.scope!r}, expected {expect_scope!r}")
    if header.expired(now):
        raise ReplayError(f"{_WHERE}.header.expires", f"{header.kind} v{header.version} expired "
                          f"at {header.expires} (now {int(now)})")
    return Verified(header, body)


def _check_header(obj: dict[str, object]) -> Header:
    where = f"{_WHERE}.header"
    check_keys(obj, where, _HEADER_KEYS)
    issued = get_int(obj, "issued", where, 0, MAX_INT)
    expires = get_int(obj, "expires", where, 0, MAX_INT)
    if expires <= issued:
        raise PayloadError(f"{where}.expires", f"{expires} is not after issued {issued}")
    return Header(
        kind=get_str(obj, "kind", where, 32, KIND_RE, allow_empty=False),
        scope=get_str(obj, "scope", where, 64, TOKEN_RE, allow_empty=False),
        version=get_int(obj, "version", where, 1, MAX_INT),
        issued=issued,
        expires=expires,
        kid=get_str(obj, "kid", where, 16, KID_RE, allow_empty=False),
        length=get_int(obj, "len", where, 0, MAX_INT),
    )


# -- version rules ---------------------------------------------------------------


class VersionCheck(enum.Enum):
    """What to do with a verified message given the version already held."""

    APPLY = "apply"
    #: A gap: something in between was missed; ask for a full copy on ``.../resync``.
    RESYNC = "resync"


#: Kinds that replace the whole state: any newer version applies, gaps are fine.
_REPLACING = frozenset({KIND_MANIFEST, KIND_HOTLIST_FULL, KIND_COMMAND})
#: Kinds that change the state step by step: only ``local + 1`` applies.
_SEQUENTIAL = frozenset({KIND_DELTA, KIND_HOTLIST})


def check_version(local: int, incoming: int, kind: str) -> VersionCheck:
    """The one ordering rule for every kind (``local`` 0 means nothing held yet).

    Replacing kinds (snapshot manifest, full hot list, command) apply when
    newer; sequential kinds (delta, hot-list change) apply only on top of
    exactly the version they were made from, anything later means a gap.
    Older or equal versions are refused with :class:`ReplayError`: that is a
    replay, or a retained message already applied.
    """
    if kind not in _REPLACING and kind not in _SEQUENTIAL:
        raise ValueError(f"no version rule for kind {kind!r}")
    if incoming <= local:
        raise ReplayError(kind, f"version {incoming} is not newer than the held version {local}")
    if kind in _REPLACING or incoming == local + 1:
        return VersionCheck.APPLY
    return VersionCheck.RESYNC


# -- key files --------------------------------------------------------------------

_KEY_HEX_RE = re.compile(r"[0-9a-f]{64}")


def write_private_key(path: str | os.PathLike[str], key: Ed25519PrivateKey) -> None:
    """Write the 32-byte seed as hex, mode 0600, never over an existing file."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(name, None, "already exists; refusing to overwrite a signing key") from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        os.fchmod(fd, 0o600)  # the umask may have narrowed it further, never widened: be exact
        fh.write(key.private_bytes_raw().hex() + "\n")


def write_public_key(path: str | os.PathLike[str], key: Ed25519PublicKey) -> None:
    """Write the raw 32-byte public key as one line of hex."""
    Path(path).write_text(key.public_bytes_raw().hex() + "\n", encoding="ascii")


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a seed file; refuse it if anyone but the owner could have read it."""
    name = os.fspath(path)
    try:
        mode = os.stat(name).st_mode
    except FileNotFoundError:
        raise ConfigError(name, None, "file not found") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(name, None, f"mode {stat.S_IMODE(mode):04o} lets others read the "
                          "signing key; chmod 600 it")
    return Ed25519PrivateKey.from_private_bytes(_read_key_hex(name))


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a public key file (one line of 64 hex digits)."""
    return Ed25519PublicKey.from_public_bytes(_read_key_hex(os.fspath(path)))


def trusted_keys(keys: Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    """Index keys by key id for :func:`verify`; at most :data:`MAX_TRUSTED_KEYS`."""
    table = {key_id(k): k for k in keys}
    if len(table) > MAX_TRUSTED_KEYS:
        raise ValueError(f"{len(table)} keys given, a terminal trusts at most {MAX_TRUSTED_KEYS}")
    return table


def load_trusted(paths: Iterable[str | os.PathLike[str]]) -> dict[str, Ed25519PublicKey]:
    """Load the trusted public keys named in the config."""
    names = [os.fspath(p) for p in paths]
    if len(names) > MAX_TRUSTED_KEYS:
        raise ConfigError(names[MAX_TRUSTED_KEYS], None,
                          f"a terminal trusts at most {MAX_TRUSTED_KEYS} keys (current and next)")
    return trusted_keys(load_public_key(n) for n in names)


def _read_key_hex(name: str) -> bytes:
    try:
        text = Path(name).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(name, None, "file not found") from None
    except (UnicodeDecodeError, PermissionError) as exc:
        raise ConfigError(name, None, f"unreadable: {exc}") from None
    if not _KEY_HEX_RE.fullmatch(text):
        raise ConfigError(name, None, "expected one line of 64 lowercase hex digits (32 raw key bytes)")
    return bytes.fromhex(text)
