"""``unionterm provision``: from a JSON file on a clean box, re-provisioning, and every refusal.

The CLI runs as a real process (``python -m terminal.cli``) with a permissive
umask, so the file modes asserted are the ones provisioning sets, not the
ones the environment happened to give.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from simulator.people import cast, records
from simulator.services import Mosquitto, free_port
from terminal.config import load
from terminal.exceptions import ConfigError
from terminal.journal import Journal, TxEntry
from terminal.members import MemberStore
from terminal.provision import (
    CLIENT_CSR,
    CLIENT_KEY,
    Owners,
    Spec,
    ask_missing,
    parse_broker,
    toml_text,
    write_file,
)
from terminal.timesource import wall_clock
from terminal.tls import inspect_material
from tests.pki import DAY, BrokerPki, CertificateAuthority, make_broker_pki

REPO = Path(__file__).resolve().parents[1]


# --- helpers shared with test_doctor ------------------------------------------------------------


def run_cli(*args: str, umask: int = 0o000) -> subprocess.CompletedProcess[str]:
    """``unionterm ARGS`` as a separate process (stdin not a TTY: never prompts)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "terminal.cli", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
                          preexec_fn=lambda: os.umask(umask))


def backoffice_key() -> str:
    return Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()


def write_inputs(folder: Path) -> dict[str, Path]:
    """What a technician brings: the deployment card key, the SAM key file, a back-office key file."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"card_key": folder / "card.key", "sam": folder / "sam.json", "backoffice": folder / "backoffice.pub"}
    files["card_key"].write_text(secrets.token_hex(32) + "\n")
    files["sam"].write_text(json.dumps({"1": secrets.token_hex(16), "2": secrets.token_hex(16)}))
    files["backoffice"].write_text(backoffice_key() + "\n")
    return files


def sim_sections(reader: str = "Sim Reader") -> dict[str, dict[str, object]]:
    """Hardware tables for the simulator: the real PC/SC reader, mock pins, dummy display."""
    return {"reader": {"name": reader}, "gpio": {"driver": "mock"}, "display": {"driver": "dummy"}}


def spec_file(folder: Path, state_dir: Path, **fields: object) -> Path:
    """A provisioning JSON file in ``folder`` (inputs referenced relative to it, as the back office would);
    ``fields`` override the defaults (terminal T1, broker mqtts://127.0.0.1:8883)."""
    write_inputs(folder / "inputs")
    spec: dict[str, object] = {
        "terminal_id": "T1", "mode": "access", "site": "gate 3, canteen building", "broker": "mqtts://127.0.0.1:8883",
        "state_dir": str(state_dir), "card_key_file": "inputs/card.key", "sam_key_file": "inputs/sam.json",
        "backoffice_keys": ["inputs/backoffice.pub", backoffice_key()], "sections": sim_sections(),
    }
    spec.update(fields)
    path = folder / "provision.json"
    path.write_text(json.dumps(spec, ensure_ascii=False, indent=2))
    return path


def tls_fields(pki: BrokerPki, name: str) -> dict[str, str]:
    client = pki.clients[name]
    return {"ca_file": str(pki.ca.cert_path), "certificate": str(client.cert_path),
            "private_key": str(client.key_path)}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the TOML writer and the broker URL -------------------------------------------------------------------

scalars = st.one_of(st.text(max_size=12), st.integers(-2**63, 2**63 - 1), st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=True))
arrays = st.one_of(st.lists(st.text(max_size=6), max_size=4), st.lists(st.integers(-1000, 1000), max_size=4))
keys = st.text(min_size=1, max_size=8)
tables = st.recursive(st.dictionaries(keys, st.one_of(scalars, arrays), max_size=4),
                      lambda inner: st.dictionaries(keys, st.one_of(scalars, arrays, inner), max_size=4),
                      max_leaves=12)


@given(st.dictionaries(keys, tables, max_size=4))
def test_toml_writer_round_trips_through_tomllib(document: dict[str, object]) -> None:
    assert tomllib.loads(toml_text(document)) == document


def test_toml_writer_escapes_what_would_break_the_file() -> None:
    text = toml_text({"terminal": {"site": 'gate "3"\n# not a comment\x7f', "a.b": 1}})
    assert tomllib.loads(text) == {"terminal": {"site": 'gate "3"\n# not a comment\x7f', "a.b": 1}}


@pytest.mark.parametrize(("url", "parsed"), [
    ("mqtts://broker.union.example", ("broker.union.example", 8883, True)),
    ("mqtt://10.0.0.5", ("10.0.0.5", 1883, False)),
    ("mqtts://broker:9883/", ("broker", 9883, True)),
    ("  mqtts://[fd00::1]:8883 ", ("fd00::1", 8883, True)),
])
def test_broker_urls(url: str, parsed: tuple[str, int, bool]) -> None:
    assert parse_broker(url) == parsed


@pytest.mark.parametrize(("url", "problem"), [
    ("mqtts//broker.example", "use mqtts://host[:port]"),
    ("https://broker.example", "use mqtts://host[:port]"),
    ("mqtts://", "names no host"),
    ("mqtts://user:secret@broker", "no user or password"),
    ("mqtts://broker:99999", "not a valid URL"),
    ("mqtts://broker/unionterm", "no path or query"),
])
def test_broken_broker_urls_are_named(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="broker") as caught:
        parse_broker(url, "spec.json")
    assert problem in caught.value.problem


# --- a clean box, from a JSON file -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> BrokerPki:
    return make_broker_pki(tmp_path_factory.mktemp("pki"))


def test_provision_from_json_on_a_clean_box(tmp_path: Path, pki: BrokerPki) -> None:
    config = tmp_path / "etc" / "unionterm" / "terminal.toml"
    spec = spec_file(tmp_path / "usb", tmp_path / "state", **tls_fields(pki, "T1"))
    done = run_cli("provision", "--from", str(spec), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "provisioned terminal T1 (access)" in done.stdout

    etc = config.parent
    assert mode_of(config) == 0o640
    for secret in ("card.key", "sam.keys", "tls/terminal.key"):
        assert mode_of(etc / secret) == 0o600, secret
    for public in ("backoffice-1.pub", "backoffice-2.pub", "tls/ca.crt", "tls/terminal.crt"):
        assert mode_of(etc / public) == 0o644, public
    assert mode_of(etc) == mode_of(etc / "tls") == 0o750
    assert mode_of(tmp_path / "state") == 0o700
    assert not list(etc.glob(".*")), "no temporary or staging file may be left behind"

    assert run_cli("check-config", str(config)).returncode == 0
    cfg = load(config)
    assert (cfg.terminal.id, cfg.terminal.site, cfg.mqtt.host, cfg.mqtt.port) == (
        "T1", "gate 3, canteen building", "127.0.0.1", 8883)
    assert cfg.commands.public_keys == ("backoffice-1.pub", "backoffice-2.pub")
    assert (cfg.cards.sam, cfg.reader.name, cfg.gpio.driver) == ("software", "Sim Reader", "mock")
    assert (etc / "card.key").read_text() == (tmp_path / "usb/inputs/card.key").read_text().strip() + "\n"
    material = inspect_material(cfg)
    assert material is not None and material.certificate is not None
    assert material.certificate.subject_cn == "T1"


def sign_csr(ca: CertificateAuthority, csr_pem: bytes, out: Path) -> Path:
    """What the union's CA does with a terminal's CSR."""
    csr = x509.load_pem_x509_csr(csr_pem)
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca.certificate.subject)
                   .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - DAY).not_valid_after(now + 400 * DAY)
                   .sign(ca.key, hashes.SHA256()))
    out.write_bytes(certificate.public_bytes(Encoding.PEM))
    return out


def test_generated_key_csr_then_certificate_install(tmp_path: Path, pki: BrokerPki) -> None:
    config = tmp_path / "etc" / "terminal.toml"
    spec = spec_file(tmp_path / "usb", tmp_path / "state", terminal_id="GATE-0042", broker="mqtts://broker.union.example",
                     ca_file=str(pki.ca.cert_path), generate_key=True)
    first = run_cli("provision", "--from", str(spec), "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert "tls/terminal.csr" in first.stdout and "--certificate" in first.stdout
    csr = x509.load_pem_x509_csr((config.parent / CLIENT_CSR).read_bytes())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "GATE-0042"
    assert csr.is_signature_valid
    assert mode_of(config.parent / CLIENT_KEY) == 0o600
    assert load(config).tls.cert_file == ""  # no certificate yet: the broker would refuse it
    key_before = (config.parent / CLIENT_KEY).read_bytes()

    signed = sign_csr(pki.ca, (config.parent / CLIENT_CSR).read_bytes(), tmp_path / "signed.crt")
    second = run_cli("provision", "--config", str(config), "--certificate", str(signed))
    assert second.returncode == 0, second.stderr
    cfg = load(config)
    assert (cfg.terminal.id, cfg.mqtt.host, cfg.tls.cert_file) == ("GATE-0042", "broker.union.example",
                                                                  "tls/terminal.crt")
    assert (config.parent / CLIENT_KEY).read_bytes() == key_before  # the key never changed hands
    material = inspect_material(cfg)
    assert material is not None and material.certificate is not None and not material.warnings


# --- re-provisioning ---------------------------------------------------------------------------------------


async def test_reprovision_keeps_state_and_wiring_unless_reset(tmp_path: Path, pki: BrokerPki) -> None:
    config = tmp_path / "etc" / "terminal.toml"
    state = tmp_path / "state"
    spec = spec_file(tmp_path / "usb", state, **tls_fields(pki, "T1"))
    assert run_cli("provision", "--from", str(spec), "--config", str(config)).returncode == 0
    with config.open("a") as fh:  # the installer tuned the wiring by hand
        fh.write("\n[access]\npulse_ms = 1500\n")
    cfg = load(config)
    async with Journal(cfg.state_path(cfg.journal.db), "T1", wall_clock) as journal:
        await journal.append(TxEntry(mode="access", kind="tap", decision="approve", reason="ok"))
    store = MemberStore(cfg.state_path(cfg.members.db))
    store.upsert(records(cast(1), bytes.fromhex((config.parent / "card.key").read_text())))
    store.close()

    moved = run_cli("provision", "--config", str(config), "--broker", "mqtts://broker2.union.example:9883")
    assert moved.returncode == 0, moved.stderr
    assert "journal and member list kept" in moved.stdout
    cfg = load(config)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.access.pulse_ms, cfg.tls.cert_file) == (
        "broker2.union.example", 9883, 1500, "tls/terminal.crt")
    store = MemberStore(cfg.state_path(cfg.members.db))
    assert store.count() == 1
    store.close()
    assert cfg.state_path(cfg.journal.db).exists()

    reset = run_cli("provision", "--config", str(config), "--reset-state")
    assert reset.returncode == 0, reset.stderr
    assert "1 records not yet acknowledged" in reset.stdout
    (aside,) = state.glob("aside-*")
    assert {p.name for p in aside.iterdir()} >= {"journal.db", "members.db", "journal.db.head"}
    assert not cfg.state_path(cfg.journal.db).exists() and not cfg.state_path(cfg.members.db).exists()


# --- refusals: a clear line, and the installed terminal untouched ----------------------------------------

Change = Callable[[Path, BrokerPki], dict[str, object]]


def _bad_sam(folder: Path, _pki: BrokerPki) -> dict[str, object]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bad-sam.keys").write_text("1 not-a-key\n")
    return {"sam_key_file": str(folder / "bad-sam.keys")}


@pytest.mark.parametrize(("change", "problem"), [
    (lambda f, p: {"broker": "mqtts//broker.union.example"}, "broker: 'mqtts//broker.union.example': use mqtts://"),
    (_bad_sam, "sam.keys: slot 1: slot must be a number and key hex"),
    (lambda f, p: {**tls_fields(p, "T1"), "private_key": str(p.clients["T2"].key_path)},
     "this key does not belong to the certificate terminal.crt"),
    (lambda f, p: {"terminal_id": "T-EXPIRED", "ca_file": str(p.ca.cert_path),
                   "certificate": str(p.expired.cert_path), "private_key": str(p.expired.key_path)},
     "certificate expired on"),
    (lambda f, p: {**tls_fields(p, "T1"), "terminal_id": "T2"}, "certificate is for 'T1', this terminal is 'T2'"),
    (lambda f, p: {"card_key_file": "", "card_key": "00112233"}, "card key is 4 bytes; at least 16 are needed"),
    (lambda f, p: {"backoffice_keys": ["ab" * 31]}, "back-office key 1: file not found"),
    (lambda f, p: {"mode": "turnstile"}, "terminal.mode: must be one of 'access', 'pos', 'canteen'"),
], ids=["broker-url", "sam-key-file", "key-of-another-certificate", "expired-certificate", "certificate-of-another-terminal",
        "short-card-key", "missing-backoffice-key", "unknown-mode"])
def test_refusals_name_the_problem_and_change_nothing(tmp_path: Path, pki: BrokerPki, change: Change,
                                                      problem: str) -> None:
    config = tmp_path / "etc" / "terminal.toml"
    good = spec_file(tmp_path / "good", tmp_path / "state", **tls_fields(pki, "T1"))
    assert run_cli("provision", "--from", str(good), "--config", str(config)).returncode == 0
    installed = {p: p.read_bytes() for p in config.parent.rglob("*") if p.is_file()}

    bad = spec_file(tmp_path / "bad", tmp_path / "state", **{**tls_fields(pki, "T1"), **change(tmp_path / "bad", pki)})
    done = run_cli("provision", "--from", str(bad), "--config", str(config))
    assert done.returncode == 78
    assert problem in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert ".provision-" not in done.stderr  # files are named where they live, not where they were staged
    assert {p: p.read_bytes() for p in config.parent.rglob("*") if p.is_file()} == installed


def test_tls_broker_without_a_ca_is_refused_on_a_clean_box(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "terminal.toml"
    spec = spec_file(tmp_path / "usb", tmp_path / "state", broker="mqtts://broker.union.example")
    done = run_cli("provision", "--from", str(spec), "--config", str(config))
    assert done.returncode == 78
    assert "mqtts:// needs the broker's CA certificate" in done.stderr
    assert not config.parent.exists() or not any(config.parent.iterdir())


# --- the pieces ----------------------------------------------------------------------------------------


def test_prompts_ask_only_what_is_missing_and_check_the_url() -> None:
    answers = iter(["", "K-7", "canteen", "", "mqtt:/oops", "", "mqtts://broker.example", "/media/usb/card.key",
                    "/media/usb/ca.crt", "", "y"])
    asked: list[str] = []

    def ask(question: str) -> str:
        asked.append(question)
        return next(answers)

    spec = ask_missing(Spec(), {}, ask)
    assert (spec.terminal_id, spec.mode, spec.site, spec.broker) == ("K-7", "canteen", "", "mqtts://broker.example")
    assert (spec.card_key_file, spec.ca_file, spec.sam_key_file, spec.generate_key) == (
        "/media/usb/card.key", "/media/usb/ca.crt", "", True)
    assert asked[0] == asked[1] == "Terminal id (e.g. POS-0001): "  # required: asked again
    assert "names no host" in asked[5]  # the typo is explained at once
    installed = {"terminal": {"id": "K-7", "mode": "pos"}, "mqtt": {"host": "b"}, "members": {"card_key_file": "c"},
                 "tls": {"cert_file": "tls/terminal.crt"}}
    quiet: list[str] = []
    ask_missing(Spec(), installed, lambda q: quiet.append(q) or "")
    assert quiet == ["Site / merchant id: ", "Broker CA certificate file (PEM): ", "SAM key file (Enter: none): "]


def test_spec_files_are_strict() -> None:
    with pytest.raises(ConfigError, match="terminl_id: unknown key"):
        Spec.from_mapping({"terminl_id": "T1"}, "spec.json")
    with pytest.raises(ConfigError, match="generate_key: expected true or false"):
        Spec.from_mapping({"generate_key": "yes"}, "spec.json")


def test_write_file_is_exact_about_mode_and_owner(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_file(tmp_path / "public.pem", b"x", 0o644)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "public.pem") == 0o644  # widened past the umask on purpose
    if os.geteuid() == 0:
        owners = Owners(65534, 65534)  # nobody:nogroup stands in for unionterm:unionterm
        write_file(tmp_path / "card.key", b"k", 0o600, owners, secret=True)
        write_file(tmp_path / "terminal.toml", b"c", 0o640, owners)
        assert (tmp_path / "card.key").stat().st_uid == 65534  # the service reads its own secrets
        assert ((tmp_path / "terminal.toml").stat().st_uid, (tmp_path / "terminal.toml").stat().st_gid) == (0, 65534)
        with pytest.raises(ConfigError, match="no user 'no-such-user'"):
            Owners.lookup("no-such-user")
    else:
        assert Owners.lookup("") == Owners()  # not root: files stay with whoever provisions


@pytest.mark.stack
def test_check_reports_the_broker(tmp_path: Path, broker: Mosquitto) -> None:
    config = tmp_path / "etc" / "terminal.toml"
    spec = spec_file(tmp_path / "usb", tmp_path / "state", broker=f"mqtt://127.0.0.1:{broker.port}")
    done = run_cli("provision", "--from", str(spec), "--config", str(config), "--check")
    assert done.returncode == 0, done.stderr
    assert f"broker: OK connected to 127.0.0.1:{broker.port} (plain)" in done.stdout
    assert "unencrypted" in done.stdout

    closed = free_port()
    down = run_cli("provision", "--config", str(config), "--broker", f"mqtt://127.0.0.1:{closed}", "--check")
    assert down.returncode == 1
    assert f"broker: FAIL 127.0.0.1:{closed} (plain): connection refused" in down.stdout
