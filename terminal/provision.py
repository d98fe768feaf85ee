"""``unionterm provision``: make a blank box into terminal X, or re-point an installed one.

A technician provisions at the counter, often over a serial console, and a
half-written config is worse than none (the service starts with the wrong
terminal id, or with keys that do not belong to its certificate). So:

* Every input is validated before anything is touched: the new config is
  parsed with the terminal's own loader, and every key, certificate and SAM
  file is loaded the way the service will load it, from a staging folder
  next to the config.
* Each file then replaces its predecessor by ``rename`` (written to a
  temporary name, ``fsync``ed, renamed, folder ``fsync``ed), keys first and
  the config last, so the config never names a file that is not in place.
* Modes are exact, whatever the umask: config 0640, private keys 0600 owned
  by the service user, public keys and certificates 0644.
* Re-provisioning starts from the installed config, so a second run can
  change one thing (``--certificate`` after the CA signed the CSR, a new
  broker URL) and keeps the wiring and everything else. The journal and the
  member list are kept unless ``--reset-state``, and even then they are
  moved aside, never deleted: the journal may hold transactions the back
  office has not acknowledged.

The terminal's TLS identity is an EC P-256 key generated here (it never
leaves the box) and a CSR with CN = terminal id, which the broker's ACL
turns into the terminal's topics; or a certificate and key issued elsewhere.
"""

from __future__ import annotations

import dataclasses
import datetime
import grp
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import sqlite3
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import signing, tls
from .cardref import load_card_key
from .cards.sam import SoftwareSam
from .config import Config, parse
from .exceptions import ConfigError, UniontermError
from .storage import fsync_path, write_atomic
from .tomlout import toml_text

log = logging.getLogger("unionterm.provision")

SERVICE_USER = "unionterm"
CONFIG_MODE = 0o640
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o750
STATE_MODE = 0o700

#: Where provisioned files go, relative to the config's folder (the config names them so).
CARD_KEY = "card.key"
SAM_KEYS = "sam.keys"
CA_CERT = "tls/ca.crt"
CLIENT_CERT = "tls/terminal.crt"
CLIENT_KEY = "tls/terminal.key"
CLIENT_CSR = "tls/terminal.csr"
BACKOFFICE_KEY = "backoffice-{n}.pub"

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


# --- the input ---------------------------------------------------------------------------------


def parse_broker(url: str, source: str = "broker") -> tuple[str, int, bool]:
    """``mqtt[s]://host[:port]`` -> (host, port, tls). Credentials do not belong in it: the certificate is the identity."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(source, "broker", f"{url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise ConfigError(source, "broker", f"{url!r}: use mqtts://host[:port] (TLS) or mqtt://host[:port]")
    if not parts.hostname:
        raise ConfigError(source, "broker", f"{url!r} names no host")
    if parts.username or parts.password:
        raise ConfigError(source, "broker", "no user or password in the URL: the terminal's certificate is its identity")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(source, "broker", f"{url!r}: an MQTT broker URL has no path or query")
    return parts.hostname, port or DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts"


@dataclass
class Spec:
    """What the technician (or the JSON file from the back office) says this terminal is.

    Empty fields are taken from the installed config, if any. File fields
    are paths on the provisioning machine; they are copied into the config's
    folder under fixed names.
    """

    terminal_id: str = ""
    mode: str = ""
    site: str = ""
    broker: str = ""
    language: str = ""
    state_dir: str = ""
    #: The deployment's card-hash key: hex, or a file holding it.
    card_key: str = ""
    card_key_file: str = ""
    #: Back-office command keys (current, next): 64 hex digits each, or files holding them.
    backoffice_keys: tuple[str, ...] = ()
    ca_file: str = ""
    #: The terminal's certificate, once the CA issued it; with ``private_key`` unless the key was generated here.
    certificate: str = ""
    private_key: str = ""
    #: Make a fresh key and a CSR for the CA (the certificate is installed by a later run).
    generate_key: bool = False
    sam_key_file: str = ""
    #: Further config tables as they appear in terminal.toml (gpio, display, reader, keypad ...).
    sections: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str, base: Path | None = None) -> "Spec":
        """Build from JSON-like data, strictly: an unknown key or a wrong type names itself.

        Relative paths are resolved against ``base`` (the JSON file's folder).
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(source, key, f"unknown key (known: {', '.join(sorted(known))})")
            if key == "backoffice_keys":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(source, key, "expected a list of strings")
                value = tuple(value)
            elif key == "generate_key":
                if not isinstance(value, bool):
                    raise ConfigError(source, key, "expected true or false")
            elif key == "sections":
                if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                    raise ConfigError(source, key, "expected an object of config tables")
            elif not isinstance(value, str):
                raise ConfigError(source, key, "expected a string")
            values[key] = value
        spec = cls(**values)
        if base is not None:
            spec.resolve_paths(base)
        return spec

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Spec":
        """Read ``--from FILE.json``."""
        name = os.fspath(path)
        try:
            data = json.loads(Path(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(name, None, "file not found") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(name, None, f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(name, None, "expected a JSON object")
        return cls.from_mapping(data, name, Path(name).resolve().parent)

    def resolve_paths(self, base: Path) -> None:
        """A JSON file on a USB stick names its neighbours; make those names independent of the cwd."""
        for name in ("card_key_file", "ca_file", "certificate", "private_key", "sam_key_file"):
            value = getattr(self, name)
            if value:
                setattr(self, name, str(base / value))
        self.backoffice_keys = tuple(k if _is_hex_key(k) else str(base / k) for k in self.backoffice_keys)

    def merge(self, other: "Spec") -> "Spec":
        """``other``'s non-empty fields over this one's (flags over ``--from``)."""
        merged = dataclasses.replace(self)
        for f in dataclasses.fields(other):
            value = getattr(other, f.name)
            if value:
                setattr(merged, f.name, value)
        return merged


def _is_hex_key(text: str) -> bool:
    return re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()) is not None


#: Questions asked for what is still missing, in this order: (field, question, required).
QUESTIONS = (
    ("terminal_id", "Terminal id (e.g. POS-0001)", True),
    ("mode", "Mode (access, pos, canteen)", True),
    ("site", "Site / merchant id", False),
    ("broker", "Broker URL (mqtts://host:8883)", True),
    ("card_key_file", "Card key file (deployment key, hex)", True),
    ("ca_file", "Broker CA certificate file (PEM)", False),
    ("sam_key_file", "SAM key file (Enter: none)", False),
)


def ask_missing(spec: Spec, existing: Mapping[str, Any], ask: Callable[[str], str]) -> Spec:
    """Prompt for what neither the spec nor the installed config gives; ``ask`` is ``input`` in the CLI.

    A required answer left empty is asked again; the broker URL is checked as
    it is typed, so a typo is caught at the prompt.
    """
    have = _installed(existing)
    for name, question, required in QUESTIONS:
        if getattr(spec, name) or have.get(name) or (name == "card_key_file" and spec.card_key):
            continue
        while True:
            answer = ask(f"{question}: ").strip()
            if name == "broker" and answer:
                try:
                    parse_broker(answer, "prompt")
                except ConfigError as exc:
                    ask(f"  {exc.problem} (press Enter) ")
                    continue
            if answer or not required:
                break
        setattr(spec, name, answer)
    if spec.broker.startswith("mqtts") and not (spec.certificate or spec.generate_key or have.get("certificate")):
        spec.generate_key = ask("Generate this terminal's TLS key and a CSR now? [Y/n]: ").strip().lower() != "n"
    return spec


def _installed(existing: Mapping[str, Any]) -> dict[str, Any]:
    """What the installed config already settles, by spec field name."""
    terminal = existing.get("terminal", {})
    return {"terminal_id": terminal.get("id"), "mode": terminal.get("mode"),
            "broker": existing.get("mqtt", {}).get("host"),
            "card_key_file": existing.get("members", {}).get("card_key_file"),
            "certificate": existing.get("tls", {}).get("cert_file")}


# --- ownership and atomic writes ------------------------------------------------------------------


@dataclass(frozen=True)
class Owners:
    """Who owns what: secrets belong to the service user, the config to root with the service's group."""

    service_uid: int | None = None
    service_gid: int | None = None

    @classmethod
    def lookup(cls, user: str | None) -> "Owners":
        """The service user's ids; nobody when not root (tests, a developer's machine) or no such user."""
        name = user or SERVICE_USER
        if os.geteuid() != 0:
            return cls()
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            if user:
                raise ConfigError("--owner", None, f"no user {user!r} on this system") from None
            return cls()
        gid = entry.pw_gid
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            pass
        return cls(entry.pw_uid, gid)

    def apply(self, fd: int, secret: bool) -> None:
        """Chown the open file before it is renamed into place, so it is never visible with the wrong owner."""
        if self.service_uid is None:
            return
        os.fchown(fd, self.service_uid if secret else 0, self.service_gid if self.service_gid is not None else -1)


def write_file(path: Path, data: bytes, mode: int, owners: Owners = Owners(), secret: bool = False) -> None:
    """Write ``path`` atomically with exactly ``mode`` and the owner ``owners`` gives it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode, prepare=lambda fd: owners.apply(fd, secret))


# --- what gets written ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One file of the provisioned set: its name under the config folder, its bytes, its mode."""

    name: str
    data: bytes
    mode: int
    secret: bool = False


@dataclass
class Result:
    """What a provisioning run did, for the report."""

    config: Path
    written: list[str] = field(default_factory=list)
    csr: Path | None = None
    moved_aside: Path | None = None
    unacked_moved: int = 0
    warnings: list[str] = field(default_factory=list)


def _read_input(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, None, f"{what}: file not found") from None
    except OSError as exc:
        raise ConfigError(path, None, f"{what}: unreadable ({exc.strerror})") from None


def _card_key(spec: Spec) -> bytes | None:
    if not (spec.card_key or spec.card_key_file):
        return None
    source = spec.card_key_file or "card_key"
    text = spec.card_key or _read_input(spec.card_key_file, "card key").decode("ascii", "replace")
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(source, None, "card key must be hex (the deployment key the back office issued)") from None
    if len(key) < 16:
        raise ConfigError(source, None, f"card key is {len(key)} bytes; at least 16 are needed")
    return (key.hex() + "\n").encode()


def _public_key_line(value: str, n: int) -> bytes:
    text = value if _is_hex_key(value) else _read_input(value, f"back-office key {n}").decode("ascii", "replace")
    text = text.strip().lower()
    if not _is_hex_key(text):
        raise ConfigError(value if not _is_hex_key(value) else f"backoffice_keys[{n - 1}]", None,
                          "a back-office public key is one line of 64 hex digits (32 raw Ed25519 bytes)")
    return (text + "\n").encode()


def make_key_and_csr(terminal_id: str) -> tuple[bytes, bytes]:
    """A fresh EC P-256 key (PKCS#8 PEM) and a CSR for CN = ``terminal_id``.

    P-256 because every broker and CA supports it and a Pi signs with it in
    about a millisecond; the CN is what the broker's ACL keys on.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "unionterm"),
                                    x509.NameAttribute(NameOID.COMMON_NAME, terminal_id)]))
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def _set(table: dict[str, Any], section: str, **values: Any) -> None:
    table.setdefault(section, {}).update({k: v for k, v in values.items() if v not in (None, "")})


def read_installed(config_path: Path) -> dict[str, Any]:
    """The installed config as a table ({} for a clean box); a config that is not TOML is refused."""
    try:
        return tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(config_path), None, f"the installed config is not valid TOML ({exc}); "
                          "move it away to provision from scratch") from None


def plan(spec: Spec, existing: Mapping[str, Any], config_dir: Path) -> tuple[dict[str, Any], list[Planned], list[str]]:
    """The new config table, the files to write and the warnings; nothing is touched yet."""
    table: dict[str, Any] = json.loads(json.dumps(existing))  # a deep copy of plain data
    for name, section in spec.sections.items():
        table.setdefault(name, {}).update(section)
    _set(table, "terminal", id=spec.terminal_id, mode=spec.mode, site=spec.site, language=spec.language,
         state_dir=spec.state_dir)
    files: list[Planned] = []
    warnings: list[str] = []
    if spec.broker:
        host, port, use_tls = parse_broker(spec.broker)
        _set(table, "mqtt", host=host, port=port)
        if not use_tls:
            table.pop("tls", None)
            warnings.append("plain mqtt://: transactions and member data travel unencrypted")
    card_key = _card_key(spec)
    if card_key is not None:
        files.append(Planned(CARD_KEY, card_key, SECRET_MODE, secret=True))
        _set(table, "members", card_key_file=CARD_KEY)
    if spec.backoffice_keys:
        names = []
        for n, value in enumerate(spec.backoffice_keys, 1):
            names.append(BACKOFFICE_KEY.format(n=n))
            files.append(Planned(names[-1], _public_key_line(value, n), PUBLIC_MODE))
        _set(table, "commands", public_keys=names)
    if spec.sam_key_file:
        files.append(Planned(SAM_KEYS, _read_input(spec.sam_key_file, "SAM key file"), SECRET_MODE, secret=True))
        _set(table, "cards", sam="software", sam_key_file=SAM_KEYS)
    files += _plan_tls(spec, table, config_dir, warnings)
    if spec.broker and parse_broker(spec.broker)[2] and not table.get("tls", {}).get("ca_file"):
        raise ConfigError(spec.broker, "broker", "mqtts:// needs the broker's CA certificate (--ca, or ca_file)")
    return table, files, warnings


def _plan_tls(spec: Spec, table: dict[str, Any], config_dir: Path, warnings: list[str]) -> list[Planned]:
    """The ``[tls]`` table and its files; a certificate always travels with the key it was issued for."""
    files: list[Planned] = []
    if spec.ca_file:
        files.append(Planned(CA_CERT, _read_input(spec.ca_file, "CA certificate"), PUBLIC_MODE))
        _set(table, "tls", ca_file=CA_CERT)
    if spec.generate_key and (spec.certificate or spec.private_key):
        raise ConfigError("certificate", None, "a certificate cannot belong to a key generated in the same run; "
                          "install it with a second run (--certificate only)")
    terminal_id = table.get("terminal", {}).get("id", "")
    if spec.generate_key:
        key_pem, csr_pem = make_key_and_csr(terminal_id)
        files += [Planned(CLIENT_KEY, key_pem, SECRET_MODE, secret=True), Planned(CLIENT_CSR, csr_pem, PUBLIC_MODE)]
        tls_table = table.setdefault("tls", {})
        tls_table.pop("cert_file", None)  # the old certificate belongs to the old key
        tls_table.pop("key_file", None)
        warnings.append(f"send {CLIENT_CSR} to the CA, then run: unionterm provision --certificate <signed.crt>")
    if spec.certificate:
        files.append(Planned(CLIENT_CERT, _read_input(spec.certificate, "certificate"), PUBLIC_MODE))
        if spec.private_key:
            files.append(Planned(CLIENT_KEY, _read_input(spec.private_key, "private key"), SECRET_MODE, secret=True))
        elif not (config_dir / CLIENT_KEY).exists():
            raise ConfigError(spec.certificate, None, f"no private key for it: give --private-key, or generate one "
                              f"here first ({CLIENT_KEY} does not exist)")
        _set(table, "tls", cert_file=CLIENT_CERT, key_file=CLIENT_KEY)
    if table.get("tls") and not table["tls"].get("ca_file"):
        raise ConfigError("ca_file", None, "TLS needs the broker's CA certificate (--ca)")
    return files


# --- validation in a staging folder, then the commit ----------------------------------------------------


def _validate(cfg: Config, warnings: list[str]) -> None:
    """Load every secret and certificate the way the service will; raise on the first that would fail."""
    load_card_key(cfg.config_path(cfg.members.card_key_file))
    signing.load_trusted(cfg.config_path(p) for p in cfg.commands.public_keys)
    if "union-app" in cfg.cards.profiles and cfg.cards.sam == "software":
        sam_path = cfg.config_path(cfg.cards.sam_key_file)
        if sam_path.exists():
            SoftwareSam.load(str(sam_path))
        else:
            warnings.append(f"no SAM keys ({cfg.cards.sam_key_file}): union cards will be refused "
                            "(sam_unavailable) until they are imported")
    material = tls.inspect_material(cfg)
    if material is not None:
        warnings.extend(material.warnings)


def _carry_over(cfg: Config) -> list[str]:
    """Installed files the new config names relative to its folder: the staging folder must hold them too.

    (Absolute names resolve to the same file from the staging folder, so they need no copy.)
    """
    names = [cfg.members.card_key_file, cfg.cards.sam_key_file, *cfg.commands.public_keys,
             cfg.tls.ca_file, cfg.tls.cert_file, cfg.tls.key_file]
    return [n for n in names if n and not Path(n).is_absolute()]


def provision(spec: Spec, config_path: Path, *, owners: Owners = Owners(), reset_state: bool = False) -> Result:
    """Validate and install ``spec`` as the config at ``config_path``; see the module docstring."""
    config_path = Path(config_path)
    config_dir = config_path.parent
    existing = read_installed(config_path)
    table, files, warnings = plan(spec, existing, config_dir)
    order = [f.name for f in dataclasses.fields(Config)]
    table = dict(sorted(table.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    text = ("# Written by `unionterm provision`; re-run it to change identity, broker or keys.\n"
            + toml_text(table))
    parse(text, str(config_path))  # schema errors name the real file, not the staging folder
    files.append(Planned(config_path.name, text.encode(), CONFIG_MODE))
    config_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(config_dir, f".provision-{secrets.token_hex(4)}")
    stage.mkdir(mode=0o700)
    try:
        staged = {f.name for f in files}
        for f in files:
            target = stage / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_file(target, f.data, f.mode)
        cfg = parse(text, str(stage / config_path.name))
        for name in _carry_over(cfg):
            if name not in staged and (config_dir / name).exists():
                (stage / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(config_dir / name, stage / name)
        try:
            _validate(cfg, warnings)
        except ConfigError as exc:  # name the file where it will be, not the staging folder
            raise ConfigError(exc.path.replace(str(stage), str(config_dir)), exc.key, exc.problem) from None
        except UniontermError as exc:
            raise UniontermError(str(exc).replace(str(stage), str(config_dir))) from None
        result = Result(config_path, warnings=warnings)
        for f in sorted(files, key=lambda f: f.name == config_path.name):  # the config goes last
            write_file(config_dir / f.name, f.data, f.mode, owners, f.secret)
            result.written.append(f.name)
            if f.name == CLIENT_CSR:
                result.csr = config_dir / f.name
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    _own_dirs(config_dir, owners, {str(Path(f.name).parent) for f in files} - {"."})
    final = parse(text, str(config_path))
    state = Path(final.terminal.state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=STATE_MODE)
    if owners.service_uid is not None:
        os.chown(state, owners.service_uid, owners.service_gid if owners.service_gid is not None else -1)
    if reset_state:
        result.moved_aside, result.unacked_moved = move_state_aside(final)
    log.info("event=provisioned terminal=%s config=%s files=%d reset=%s",
             final.terminal.id, config_path, len(result.written), reset_state)
    return result


def _own_dirs(config_dir: Path, owners: Owners, subdirs: Iterable[str]) -> None:
    """Folders: the service may read them, nobody else may even list them (as unionterm.tmpfiles sets)."""
    for directory in (config_dir, *(config_dir / d for d in subdirs)):
        os.chmod(directory, DIR_MODE)
        if owners.service_uid is not None:
            os.chown(directory, 0, owners.service_gid if owners.service_gid is not None else -1)


def _unacked(journal: Path) -> int:
    """Records the back office has not acknowledged (read-only; 0 when unreadable)."""
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
            last = conn.execute("SELECT coalesce(max(seq), 0) FROM tx").fetchone()[0]
            row = conn.execute("SELECT v FROM meta WHERE k = 'acked'").fetchone()
    except sqlite3.Error:
        return 0
    return max(0, int(last) - int(row[0] if row else 0))


def move_state_aside(cfg: Config) -> tuple[Path | None, int]:
    """Move the journal and the member list into ``aside-<UTC time>/`` in the state folder.

    Returns the folder (None if there was nothing) and how many journaled
    records the back office had not acknowledged: those must be handed over
    from the moved file before it is ever deleted.
    """
    state = Path(cfg.terminal.state_dir)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = state / f"aside-{stamp}"
    journal = cfg.state_path(cfg.journal.db)
    unacked = _unacked(journal) if journal.exists() else 0
    moved = 0
    for db in (cfg.journal.db, cfg.members.db):
        for suffix in ("", "-wal", "-shm", ".head"):
            source = cfg.state_path(db + suffix)
            if source.exists():
                aside.mkdir(mode=STATE_MODE, exist_ok=True)
                os.replace(source, aside / source.name)
                moved += 1
    if not moved:
        return None, 0
    fsync_path(state)
    log.warning("event=state_moved_aside folder=%s unacked=%d", aside, unacked)
    return aside, unacked
