"""The production broker config, run on a real mosquitto with a throw-away PKI.

The config and ACL in config/mosquitto/ are used as shipped; only file paths,
the port (a free one on 127.0.0.1) and the log destination are rewritten.
mosquitto drops unauthorised publishes silently, so "not delivered" is shown
by ordering: the forbidden messages are published first and an allowed
control message last, on one connection; MQTT keeps a publisher's order per
subscriber, so once the control arrives, anything forbidden would already
have arrived too. MQTT 5 PUBACK reason codes are asserted as well.
"""

from __future__ import annotations

import os
import pwd
import queue
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from simulator.services import ManagedProcess, free_port, port_open
from tests.pki import BrokerPki, Issued, make_broker_pki

CONFIG = Path(__file__).resolve().parents[1] / "config" / "mosquitto"
PREFIX = "unionterm/v1"
NOT_AUTHORIZED = 135  # MQTT 5 reason code 0x87
WAIT = 5.0  # upper bound for anything that should happen


def broker_config(production: str, pki: BrokerPki, port: int, work: Path) -> str:
    """The production config with paths, port and logging pointed at the test's world.

    Every key rewritten here must exist in the production file, so removing
    e.g. ``crlfile`` there fails the test instead of silently testing less.
    """
    overrides = {
        "listener": f"{port} 127.0.0.1",
        "cafile": str(pki.ca.cert_path),
        "certfile": str(pki.server.cert_path),
        "keyfile": str(pki.server.key_path),
        "crlfile": str(pki.ca.crl_path),
        "acl_file": str(CONFIG / "acl"),
        "persistence_location": f"{work}/",
        "log_dest": "stdout",
    }
    seen: set[str] = set()
    lines = []
    for line in production.splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() and not line.lstrip().startswith("#") else ""
        if key in overrides:
            seen.add(key)
            line = f"{key} {overrides[key]}"
        lines.append(line)
    assert seen == set(overrides), f"production config lacks {set(overrides) - seen}"
    # As root, mosquitto would switch to user "mosquitto", who cannot read the test's files.
    lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    return "\n".join(lines) + "\n"


class ProductionBroker(ManagedProcess):
    """mosquitto running config/mosquitto as shipped, with a test PKI, on a free loopback port."""

    name = "mosquitto"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.pki = make_broker_pki(workdir / "pki")
        self.conf = workdir / "broker.conf"

    def before_start(self) -> None:
        production = (CONFIG / "unionterm-broker.conf").read_text()
        self.conf.write_text(broker_config(production, self.pki, self.port, self.workdir))

    def command(self) -> list[str]:
        binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
        assert binary, "mosquitto not found: install Debian's 'mosquitto' package"
        return [binary, "-c", str(self.conf)]

    def ready(self) -> bool:
        return port_open(self.port)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionBroker]:
    broker = ProductionBroker(tmp_path_factory.mktemp("broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


Connect = Callable[..., "Peer"]


class Peer:
    """One MQTT 5 client over TLS, with blocking helpers bounded by ``WAIT``."""

    def __init__(self, broker: ProductionBroker, identity: Issued | None, client_id: str = "") -> None:
        self.port = broker.port
        context = ssl.create_default_context(cafile=str(broker.pki.ca.cert_path))
        if identity is not None:
            context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.tls_set_context(context)
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connect_result: ReasonCode | None = None
        self.settled = threading.Event()
        self.disconnected = threading.Event()
        self.acks: dict[int, object] = {}
        self.acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = lambda client, userdata: self.settled.set()
        self.client.on_message = lambda client, userdata, message: self.messages.put(
            (message.topic, message.payload)
        )
        self.client.on_subscribe = lambda client, userdata, mid, codes, props: self._ack(mid, codes)
        self.client.on_publish = lambda client, userdata, mid, code, props: self._ack(mid, code)

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, code: ReasonCode, props: Properties
    ) -> None:
        self.connect_result = code
        self.settled.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, code: ReasonCode, props: Properties
    ) -> None:
        self.disconnected.set()
        self.settled.set()

    def _ack(self, mid: int, result: object) -> None:
        with self.acked:
            self.acks[mid] = result
            self.acked.notify_all()

    def _wait_ack(self, mid: int) -> object:
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.acks, timeout=WAIT), f"no ack for mid {mid}"
            return self.acks.pop(mid)

    def connect(self) -> bool:
        """True only if the broker answered CONNACK success; any refusal or TLS failure is False."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except OSError:
            return False
        self.client.loop_start()
        self.settled.wait(WAIT)
        connected = self.connect_result is not None and not self.connect_result.is_failure
        return connected and not self.disconnected.is_set()

    def subscribe(self, *topics: str) -> list[int]:
        """Subscribe at QoS 1; the SUBACK reason code per topic (0-2 granted, 135 refused)."""
        _, mid = self.client.subscribe([(topic, 1) for topic in topics])
        return [code.value for code in self._wait_ack(mid)]

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the PUBACK reason code (0 = accepted)."""
        info = self.client.publish(topic, payload, qos=1)
        return self._wait_ack(info.mid).value

    def receive_until(self, topic: str) -> list[tuple[str, bytes]]:
        """Everything received up to and including the first message on ``topic``."""
        got: list[tuple[str, bytes]] = []
        end = time.monotonic() + WAIT
        while (left := end - time.monotonic()) > 0:
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
            if got[-1][0] == topic:
                return got
        pytest.fail(f"control message on {topic} never arrived; got {got}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers(tls_broker: ProductionBroker) -> Iterator[Connect]:
    """Connected peers by certificate name; all disconnected after the test."""
    opened: list[Peer] = []

    def connect(name: str, client_id: str = "") -> Peer:
        peer = Peer(tls_broker, tls_broker.pki.clients[name], client_id)
        opened.append(peer)
        assert peer.connect(), f"{name} could not connect"
        return peer

    yield connect
    for peer in opened:
        peer.close()


def topic(terminal: str, leaf: str) -> str:
    return f"{PREFIX}/t/{terminal}/{leaf}"


def test_terminal_transaction_reaches_back_office(peers: Connect) -> None:
    office = peers("backoffice")
    assert office.subscribe(f"{PREFIX}/#") == [1]
    t1 = peers("T1")
    assert t1.publish(topic("T1", "tx"), b'{"seq": 1}') == 0
    assert office.receive_until(topic("T1", "tx")) == [(topic("T1", "tx"), b'{"seq": 1}')]


def test_terminal_may_not_publish_outside_its_own_reports(peers: Connect) -> None:
    office = peers("backoffice")
    office.subscribe(f"{PREFIX}/#")
    t1 = peers("T1")
    forbidden = [
        topic("T2", "tx"),  # posing as another terminal
        f"{PREFIX}/members/all/delta",  # forging member lists
        f"{PREFIX}/hotlist",
        topic("T1", "cmd"),  # commanding itself
        topic("T1", "ack"),  # acknowledging its own transactions
    ]
    for denied in forbidden:
        assert t1.publish(denied, b"forged") == NOT_AUTHORIZED, denied
    leaves = ("status", "telemetry", "cmd/result", "members/report", "members/resync")
    allowed = [topic("T1", leaf) for leaf in leaves]
    for leaf in allowed:
        assert t1.publish(leaf, b"ok") == 0, leaf
    received = office.receive_until(allowed[-1])
    assert [t for t, _ in received] == allowed


def test_terminal_reads_only_its_own_messages_and_shared_lists(peers: Connect) -> None:
    t1 = peers("T1")
    t2 = peers("T2")
    own_and_shared = [topic("T1", "ack"), topic("T1", "cmd"), f"{PREFIX}/members/#", f"{PREFIX}/hotlist"]
    assert t1.subscribe(*own_and_shared) == [1, 1, 1, 1]
    # mosquitto's ACL file does not refuse subscriptions; it filters each
    # message on delivery, which is what the ordering check below shows.
    t1.subscribe(topic("T2", "ack"), topic("T2", "cmd"), f"{PREFIX}/t/+/tx", "#")
    assert t2.subscribe(topic("T2", "ack")) == [1]

    office = peers("backoffice")
    office.publish(topic("T2", "ack"), b"for T2")
    office.publish(topic("T2", "cmd"), b"for T2")
    t2.publish(topic("T2", "tx"), b"T2 sale")
    expected = [topic("T1", "ack"), topic("T1", "cmd"), f"{PREFIX}/members/all/manifest", f"{PREFIX}/hotlist"]
    for allowed in expected:
        office.publish(allowed, b"for T1")
    # Overlapping subscriptions ("#") may deliver a message more than once, so
    # compare topic sets; T2's PUBACK came before these, after routing it.
    assert {t for t, _ in t1.receive_until(expected[-1])} == set(expected)
    assert t2.receive_until(topic("T2", "ack")) == [(topic("T2", "ack"), b"for T2")]


def test_client_id_cannot_be_used_to_take_over_another_terminal(peers: Connect) -> None:
    t2 = peers("T2", client_id="T2")  # a terminal uses its id as client id
    t2.subscribe(topic("T2", "ack"))
    peers("T1", client_id="T2")  # would kick T2 off if the client id were trusted
    peers("backoffice").publish(topic("T2", "ack"), b"still here")
    assert t2.receive_until(topic("T2", "ack")) == [(topic("T2", "ack"), b"still here")]
    assert not t2.disconnected.is_set()


@pytest.mark.parametrize(
    ("who", "accepted"),
    [("T1", True), ("no certificate", False), ("revoked", False), ("expired", False)],
)
def test_only_valid_certificates_connect(tls_broker: ProductionBroker, who: str, accepted: bool) -> None:
    identities = {
        "T1": tls_broker.pki.clients["T1"],
        "no certificate": None,
        "revoked": tls_broker.pki.revoked,
        "expired": tls_broker.pki.expired,
    }
    peer = Peer(tls_broker, identities[who])
    try:
        assert peer.connect() is accepted
    finally:
        peer.close()
