"""``unionterm doctor`` against the simulator's real stacks, and each failure it must name.

The acceptance path: provision from a JSON file on a clean folder, check the
config, then run the doctor as a process against real pcscd + vpcd and a
mosquitto running the production TLS + ACL config (tests/test_broker_tls_acl):
all green. Then the failures a technician meets: a broken broker URL, a wrong
key file, an expired certificate, each giving one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from simulator.backoffice.publish import build_snapshot
from simulator.people import cast, records
from simulator.services import Pcscd, free_port
from terminal.cli import pcsc_readers
from terminal.config import Config, load, parse
from terminal.doctor import (
    BROKER_ERRORS,
    Level,
    Report,
    check_clock,
    check_disk,
    check_gpio,
    check_journal,
    check_members,
    explain_broker_error,
    run_doctor,
)
from terminal.journal import Journal, TxEntry, canonical, chain_hash
from terminal.members import MemberStore
from terminal.signing import KIND_MANIFEST, trusted_keys, verify
from terminal.sync.snapshot import decode_manifest, iter_snapshot_lines
from terminal.timesource import CLOCK_FLOOR_S, kernel_synchronised
from terminal.tls import tls_params
from tests.pki import DAY, Issued
from tests.test_broker_tls_acl import ProductionBroker, tls_broker  # noqa: F401 - the fixture, reused
from tests.test_provision import run_cli, spec_file

TERMINAL = "GREEN-01"
NOW_MS = (CLOCK_FLOOR_S + 200 * 86400) * 1000


def synced_clock() -> tuple[int, bool]:
    return int(time.time() * 1000), True


@pytest.fixture(scope="module")
def identity(tls_broker: ProductionBroker) -> Issued:
    """A certificate for this terminal with a year to run (the shared test PKI's live a week)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return tls_broker.pki.ca.issue(TERMINAL, not_after=now + 365 * DAY)


def install_list(home: Path, people: int, scope: str = "all", version: int = 3, expires_in: int = 86400) -> None:
    """A synced list installed the way the member sync installs one: signed manifest, chunks, build, swap."""
    key = Ed25519PrivateKey.generate()
    now = int(time.time())
    card_key = os.urandom(32)
    blob, chunks = build_snapshot(records(cast(people), card_key), scope, version, key, now, now + expires_in)
    manifest = decode_manifest(verify(blob, trusted_keys([key.public_key()]), KIND_MANIFEST, scope, now))
    store = MemberStore(home, scopes=[scope])
    try:
        build = store.new_build(manifest)
        store.install(build, build.run(iter_snapshot_lines(manifest, list(chunks))))
    finally:
        store.close()


async def journal_records(cfg: Config, n: int) -> None:
    async with Journal(cfg.state_path(cfg.journal.db), cfg.terminal.id, synced_clock, cfg.journal) as journal:
        for i in range(n):
            await journal.append(TxEntry(mode="access", kind="tap", decision="approve", reason="ok",
                                         member_no=f"M{i:07d}"))


@pytest.fixture
async def provisioned(tmp_path: Path, pcscd: Pcscd, tls_broker: ProductionBroker, identity: Issued) -> Config:
    """A terminal provisioned from JSON against the TLS broker, with a member list and a few transactions."""
    if not pcscd.running:
        pcscd.start()
    spec = spec_file(tmp_path / "usb", tmp_path / "state", terminal_id=TERMINAL,
                     broker=f"mqtts://127.0.0.1:{tls_broker.port}", ca_file=str(tls_broker.pki.ca.cert_path),
                     certificate=str(identity.cert_path), private_key=str(identity.key_path))
    config = tmp_path / "etc" / "terminal.toml"
    done = run_cli("provision", "--from", str(spec), "--config", str(config))
    assert done.returncode == 0, done.stderr
    cfg = load(config)
    store = MemberStore(cfg.state_path(cfg.members.db))
    store.upsert(records(cast(3), bytes.fromhex((config.parent / "card.key").read_text())))
    store.close()
    install_list(cfg.state_path(cfg.members.db), 5)
    await journal_records(cfg, 3)
    return cfg


def levels(report: Report) -> dict[str, Level]:
    return {c.name: c.level for c in report.checks}


def line(report: Report, name: str) -> str:
    (check,) = [c for c in report.checks if c.name == name]
    return check.summary


# --- the acceptance path ------------------------------------------------------------------------------


@pytest.mark.stack
async def test_provisioned_terminal_is_all_green(provisioned: Config) -> None:
    cfg = provisioned
    assert run_cli("check-config", cfg.source).returncode == 0
    done = run_cli("doctor", "--config", cfg.source, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["failures"] == 0 and report["terminal"] == TERMINAL
    by_name = {c["name"]: c for c in report["checks"]}
    assert list(by_name) == ["config", "pcscd", "readers", "keys", "tls", "broker", "clock", "members",
                             "journal", "disk", "gpio"]
    # This machine's own clock may not be NTP-synchronised; the doctor must say exactly that, no more.
    host_clock = "warn" if kernel_synchronised() is False else "ok"
    assert {n: c["level"] for n, c in by_name.items()} == {n: host_clock if n == "clock" else "ok" for n in by_name}
    assert "Sim Reader" in by_name["readers"]["summary"]
    assert f"CN={TERMINAL}" in by_name["tls"]["summary"]
    assert "(TLS)" in by_name["broker"]["summary"]
    assert by_name["members"]["summary"].startswith("all v3 (5 members") and "local 3" in by_name["members"]["summary"]
    assert by_name["journal"]["summary"] == "records 1..3, chain intact, 3 not yet acknowledged"

    # In process, with a synchronised clock: every single line green.
    report_obj = await run_doctor(cfg, pcsc_readers, clock=synced_clock, synchronised=lambda: True)
    assert set(levels(report_obj).values()) == {Level.OK}, report_obj.text()


@pytest.mark.stack
async def test_broken_broker_url(provisioned: Config) -> None:
    closed = free_port()
    done = run_cli("provision", "--config", provisioned.source, "--broker", f"mqtts://127.0.0.1:{closed}")
    assert done.returncode == 0, done.stderr
    cfg = load(provisioned.source)
    doctor = run_cli("doctor", "--config", cfg.source, "--timeout", "3")
    assert doctor.returncode == 1
    assert f"FAIL  broker    127.0.0.1:{closed} (TLS): connection refused: nothing listens on that port" in doctor.stdout
    assert "-> check [mqtt] port (8883 for TLS) and that the broker runs" in doctor.stdout
    assert "result: FAILED (1 failed," in doctor.stdout

    run_cli("provision", "--config", cfg.source, "--broker", "mqtts://no-such-broker.invalid:8883")
    report = await run_doctor(load(cfg.source), pcsc_readers, clock=synced_clock, synchronised=lambda: True,
                              broker_timeout=5)
    assert levels(report)["broker"] is Level.FAIL
    assert "cannot resolve the broker's host name" in line(report, "broker")


@pytest.mark.stack
async def test_wrong_key_file(provisioned: Config, tls_broker: ProductionBroker) -> None:
    key = provisioned.config_path(provisioned.tls.key_file)
    key.write_bytes(tls_broker.pki.clients["T2"].key_path.read_bytes())  # the wrong terminal's key, copied over
    report = await run_doctor(provisioned, pcsc_readers, clock=synced_clock, synchronised=lambda: True)
    assert [c.name for c in report.checks if c.level is not Level.OK] == ["tls", "broker"]
    assert line(report, "tls") == f"{key}: this key does not belong to the certificate terminal.crt " \
                                  "(wrong key file, or a certificate issued for another key)"
    assert "the private key does not belong to the certificate" in line(report, "broker")

    os.chmod(key, 0o644)
    report = await run_doctor(provisioned, pcsc_readers, clock=synced_clock, synchronised=lambda: True)
    assert "mode 0644 lets others read the terminal's private key" in line(report, "tls")

    sam = provisioned.config_path(provisioned.cards.sam_key_file)
    sam.write_text('{"1": "00112233"}')
    report = await run_doctor(provisioned, pcsc_readers, clock=synced_clock, synchronised=lambda: True)
    assert levels(report)["keys"] is Level.FAIL
    assert line(report, "keys") == f"{sam}: slot 1: slot must be 0..255 and key 16 bytes (32 hex digits)"


@pytest.mark.stack
async def test_expired_certificate(provisioned: Config, tls_broker: ProductionBroker) -> None:
    expired = tls_broker.pki.expired
    for source, installed in ((expired.cert_path, provisioned.tls.cert_file), (expired.key_path, provisioned.tls.key_file)):
        provisioned.config_path(installed).write_bytes(source.read_bytes())  # content only: modes stay as provisioned
    done = run_cli("doctor", "--config", provisioned.source, "--timeout", "3")
    assert done.returncode == 1
    day = expired.certificate.not_valid_after_utc.strftime("%Y-%m-%d")
    assert f"FAIL  tls       {provisioned.config_path(provisioned.tls.cert_file)}: certificate expired on {day}" in done.stdout
    broker_line = next(x for x in done.stdout.splitlines() if "FAIL  broker" in x)
    assert "the broker rejected this terminal's certificate" in broker_line


@pytest.mark.stack
async def test_tls_params_carry_the_uplinks_client_through_the_production_broker(provisioned: Config) -> None:
    params = tls_params(provisioned)
    assert params is not None and params.cert_reqs is ssl.CERT_REQUIRED
    client = aiomqtt.Client(hostname=provisioned.mqtt.host, port=provisioned.mqtt.port, tls_params=params)
    async with asyncio.timeout(10), client:
        # Connected over TLS as this terminal (its certificate, the CA from [tls]); a QoS 1 round trip works.
        await client.publish(f"unionterm/v1/t/{TERMINAL}/status", b"online", qos=1)
    plain = parse('[terminal]\nid = "P-1"\nmode = "pos"\n', "plain.toml")
    assert tls_params(plain) is None


def test_an_unloadable_config_is_a_report_too(tmp_path: Path) -> None:
    bad = tmp_path / "terminal.toml"
    bad.write_text('[terminal]\nid = "X"\nmode = "turnstile"\n')
    done = run_cli("doctor", "--config", str(bad), "--json")
    assert done.returncode == 78
    report = json.loads(done.stdout)
    assert report["ok"] is False and report["checks"][0]["name"] == "config"
    assert "terminal.mode: must be one of" in report["checks"][0]["summary"]


# --- the journal's chain ----------------------------------------------------------------------------------


def config_in(tmp_path: Path, extra: str = "") -> Config:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return parse(f'[terminal]\nid = "J-1"\nmode = "access"\nstate_dir = "{state}"\n{extra}', str(tmp_path / "t.toml"))


@contextlib.contextmanager
def journal_db(cfg: Config) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(cfg.state_path(cfg.journal.db), isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


async def test_journal_chain_breaks_are_found(tmp_path: Path) -> None:
    cfg = config_in(tmp_path)
    assert check_journal(cfg)[0].summary == "no journal yet (created at the first start)"
    await journal_records(cfg, 4)
    check, last_ms = check_journal(cfg)
    assert check.level is Level.OK and check.summary == "records 1..4, chain intact, 4 not yet acknowledged"
    assert abs(last_ms - time.time() * 1000) < 60_000

    with journal_db(cfg) as conn:
        (body,) = conn.execute("SELECT body FROM tx WHERE seq = 2").fetchone()
        conn.execute("UPDATE tx SET body = ? WHERE seq = 2", (body.replace('"approve"', '"deny"'),))
    assert check_journal(cfg)[0].summary == "hash chain broken: record 2 was altered (its hash does not match its content)"

    with journal_db(cfg) as conn:  # a forger who recomputes the hash still breaks the link to record 3
        fields = json.loads(body.replace('"approve"', '"deny"'))
        fields["txid"] = "forged"
        forged = canonical(fields)
        conn.execute("UPDATE tx SET body = ?, hash = ? WHERE seq = 2", (forged, chain_hash(fields["prev_hash"], forged)))
    assert check_journal(cfg)[0].summary == "hash chain broken: record 3 does not link to record 2"

    with journal_db(cfg) as conn:
        conn.execute("DELETE FROM tx WHERE seq = 2")
    assert check_journal(cfg)[0].summary == "hash chain broken: records 2..2 are missing"


async def test_pruned_start_is_fine_but_a_lost_tail_is_not(tmp_path: Path) -> None:
    cfg = config_in(tmp_path)
    await journal_records(cfg, 4)
    with journal_db(cfg) as conn:
        conn.execute("DELETE FROM tx WHERE seq = 1")  # retention pruning removes the oldest rows
    assert check_journal(cfg)[0].level is Level.OK
    with journal_db(cfg) as conn:
        conn.execute("DELETE FROM tx WHERE seq = 4")  # a restored backup: committed records vanished
    check = check_journal(cfg)[0]
    assert check.level is Level.FAIL
    assert check.summary == "committed records are gone: the journal ends at 3, its head file says 4"


# --- the member lists ------------------------------------------------------------------------------------


def test_member_lists(tmp_path: Path) -> None:
    cfg = config_in(tmp_path)
    now = time.time()
    assert check_members(cfg, now).level is Level.WARN  # none yet
    home = cfg.state_path(cfg.members.db)
    MemberStore(home).close()
    assert check_members(cfg, now).summary == "member lists are empty: every card is refused"
    install_list(home, 4, version=7)
    check = check_members(cfg, now)
    assert check.level is Level.OK and check.summary.startswith("all v7 (4 members, applied 0.0 h ago)")
    assert check_members(cfg, now + 2 * 86400).level is Level.WARN  # the list's validity ran out

    (pointer,) = home.with_suffix(".lists").glob("all.current")
    list_file = pointer.parent / pointer.read_text().strip()
    with contextlib.closing(sqlite3.connect(list_file, isolation_level=None)) as conn:
        (stored,) = conn.execute("SELECT line FROM members WHERE id = 1").fetchone()
        conn.execute("UPDATE members SET line = ? WHERE id = 1", (stored.replace(b'"active"', b'"left"'),))
    check = check_members(cfg, now)
    assert (check.level, check.summary) == (Level.FAIL, "list all v7: content does not match the digest "
                                                        "the back office signed")
    with contextlib.closing(sqlite3.connect(list_file, isolation_level=None)) as conn:
        conn.execute("DELETE FROM members WHERE id = 2")
    orphaned = check_members(cfg, now)
    assert orphaned.level is Level.FAIL and orphaned.summary.endswith("card(s) point at no member")
    pointer.write_text("all.v99.gone.db\n")
    assert check_members(cfg, now).summary == "list all: its pointer names all.v99.gone.db, which is missing"


# --- clock, disk, GPIO, the broker's words ------------------------------------------------------------------


def test_clock() -> None:
    def at(ms: int) -> tuple[int, bool]:
        return ms, True

    assert check_clock(lambda: at(NOW_MS), True).level is Level.OK
    assert check_clock(lambda: at(NOW_MS), None).summary.endswith("synchronisation unknown")
    unsynced = check_clock(lambda: at(NOW_MS), False)
    assert unsynced.level is Level.WARN and "NOT synchronised" in unsynced.summary
    never_set = check_clock(lambda: at(86400_000), False)
    assert never_set.level is Level.FAIL and "1970-01-02" in never_set.summary
    set_back = check_clock(lambda: at(NOW_MS), True, last_record_ms=NOW_MS + 3_600_000)
    assert set_back.level is Level.FAIL and "3600 s behind the newest journal record" in set_back.summary
    assert check_clock(lambda: at(NOW_MS), True, last_record_ms=NOW_MS + 30_000).level is Level.OK


def test_disk(tmp_path: Path) -> None:
    cfg = config_in(tmp_path)
    assert check_disk(cfg).level is Level.OK
    shutil.rmtree(tmp_path / "state")
    assert check_disk(cfg).summary == f"state folder {tmp_path / 'state'} does not exist"


GPIO = '[gpio]\ndriver = "gpiozero"\n[display]\ndriver = "luma"\ninterface = "{bus}"\n'


def test_gpio_pins_on_a_bus_and_device_nodes(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    cfg = config_in(tmp_path, GPIO.format(bus="i2c") + "[keypad]\ndriver = \"matrix\"\n")
    assert check_gpio(cfg, str(dev)).summary == f"{dev}/gpiochip0 missing; {dev}/i2c-1 missing"
    for node in ("gpiochip0", "i2c-1"):
        (dev / node).touch()
    check = check_gpio(cfg, str(dev))
    assert check.level is Level.OK and "keypad row 1 12" in check.summary and "relay 17" in check.summary

    clash = config_in(tmp_path, GPIO.format(bus="i2c").replace('[gpio]\n', '[gpio]\nbuzzer_pin = 3\n'))
    assert check_gpio(clash, str(dev)).summary == "GPIO3 (buzzer) is I2C SCL"
    spi = config_in(tmp_path, GPIO.format(bus="spi").replace('[gpio]\n', '[gpio]\nrelay_pin = 10\n'))
    assert check_gpio(spi, str(dev)).summary == "GPIO10 (relay) is SPI MOSI"
    uart = config_in(tmp_path, '[gpio]\nred_led_pin = 14\n[serial.ecr]\nport = "/dev/serial0"\n')
    assert check_gpio(uart, str(dev)).summary == "GPIO14 (red LED) is UART TXD"


@pytest.mark.parametrize(("raw", "meaning"), [
    ("[Errno -2] Name or service not known", "cannot resolve the broker's host name"),
    ("[Errno 111] Connection refused", "connection refused: nothing listens on that port"),
    ("failed to receive on socket: [SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3 alert certificate expired",
     "the broker rejected this terminal's certificate: expired"),
    ("failed to receive on socket: [SSL: SSLV3_ALERT_CERTIFICATE_REVOKED] sslv3 alert certificate revoked",
     "the broker rejected this terminal's certificate: revoked"),
    ("tlsv13 alert certificate required", "the broker requires a client certificate and this terminal sent none"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in certificate chain",
     "the broker's certificate is not trusted"),
    ("failed to receive on socket: [Errno 104] Connection reset by peer",
     "the broker dropped the connection at once: TLS and plain MQTT mixed up?"),
    ("broker refused the connection: Not authorized", "the broker refused this identity"),
    ("something new", "something new"),
])
def test_connection_errors_are_put_in_words(raw: str, meaning: str) -> None:
    what, hint = explain_broker_error(raw)
    assert what == meaning
    assert hint and all(hint for _needles, _what, hint in BROKER_ERRORS)
