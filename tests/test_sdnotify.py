"""sd_notify client and loop-driven watchdog, against a socket standing in for systemd.

A bound AF_UNIX datagram socket is all systemd's side of the protocol is, so
the tests read exactly what systemd would read. The watchdog's promise (pings
stop when the loop stops or hangs, continue while it is merely busy) is shown
on a real child process that is frozen with SIGSTOP or blocked with a
synchronous sleep, because that is the failure the watchdog exists for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from terminal.sdnotify import Notifier, socket_address, watchdog_interval, watchdog_task

REPO = Path(__file__).resolve().parents[1]
PING = "WATCHDOG=1"
WATCHDOG_USEC = 400_000  # the child pings every 0.2 s
PERIOD = WATCHDOG_USEC / 1_000_000 / 2
Starter = Callable[[str], "subprocess.Popen[bytes]"]

# The child is a miniature terminal: a watchdog task plus one "workload" task
# whose behaviour the test picks. It announces each phase with STATUS= on the
# same socket, so the test sees phase changes in order with the pings.
CHILD = """
import asyncio, sys, time
from terminal.sdnotify import Notifier, watchdog_task

async def main(mode):
    notifier = Notifier.from_environ()
    async def workload():
        await asyncio.sleep(0.5)
        notifier.status(mode)
        if mode == "hang":
            time.sleep(30)
        while mode == "busy":
            time.sleep(0.05)
            await asyncio.sleep(0)
    task = asyncio.get_running_loop().create_task(workload())
    notifier.ready()
    await watchdog_task(lambda: True, notifier)

asyncio.run(main(sys.argv[1]))
"""


class NotifyListener:
    """The service manager's end of NOTIFY_SOCKET: receives and timestamps datagrams."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def receive(self, timeout: float) -> str | None:
        """One datagram, or ``None`` if none arrives within ``timeout`` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def collect(self, seconds: float) -> list[tuple[float, str]]:
        """Every datagram arriving in the next ``seconds``, with its monotonic arrival time."""
        end = time.monotonic() + seconds
        got: list[tuple[float, str]] = []
        while (left := end - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None:
                got.append((time.monotonic(), message))
        return got

    def wait_for(self, wanted: str, timeout: float) -> list[str]:
        """Read until ``wanted`` arrives; return what came before it. Fails on timeout."""
        end = time.monotonic() + timeout
        before: list[str] = []
        while (left := end - time.monotonic()) > 0:
            message = self.receive(left)
            if message == wanted:
                return before
            if message is not None:
                before.append(message)
        pytest.fail(f"{wanted!r} did not arrive within {timeout} s; got {before!r}")

    def drain(self) -> None:
        """Discard what is already queued."""
        while self.receive(0.001) is not None:
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def socket_path() -> Iterator[str]:
    """A short path: AF_UNIX paths are limited to 108 bytes, pytest's tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="sdn") as folder:
        yield os.path.join(folder, "notify")


@pytest.fixture
def listener(socket_path: str) -> Iterator[NotifyListener]:
    listening = NotifyListener(socket_path)
    yield listening
    listening.close()


@pytest.fixture
def child(socket_path: str, listener: NotifyListener) -> Iterator[Starter]:
    """Start the miniature terminal in a given mode; always reaped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(mode: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.pop("WATCHDOG_PID", None)
        env.update(
            NOTIFY_SOCKET=socket_path,
            WATCHDOG_USEC=str(WATCHDOG_USEC),
            PYTHONPATH=str(REPO),
        )
        proc = subprocess.Popen([sys.executable, "-c", CHILD, mode], env=env, stderr=subprocess.PIPE)
        started.append(proc)
        listener.wait_for("READY=1", timeout=5)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.communicate(timeout=5)


def pings(messages: list[tuple[float, str]]) -> list[float]:
    return [at for at, text in messages if text == PING]


def wait_stopped(pid: int, timeout: float = 2.0) -> None:
    """Block until the kernel reports the process as stopped (state T), so no ping is in flight."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("T", "t"):
            return
        time.sleep(0.005)
    pytest.fail(f"process {pid} did not stop")


# --- the protocol -----------------------------------------------------------


def test_state_messages_arrive_as_systemd_reads_them(socket_path: str, listener: NotifyListener) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": socket_path})
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("members: 1104233\nloaded")
    assert notifier.watchdog()
    assert notifier.stopping()
    notifier.close()
    received = [listener.receive(1) for _ in range(4)]
    assert received == ["READY=1", "STATUS=members: 1104233 loaded", "WATCHDOG=1", "STOPPING=1"]


def test_abstract_namespace_socket() -> None:
    name = f"unionterm-test-{uuid.uuid4().hex}"
    listening = NotifyListener(b"\0" + name.encode())
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert listening.receive(1) == "READY=1"
    finally:
        listening.close()


def test_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@foo") == b"\0foo"
    assert socket_address("vsock:2:1234") is None
    assert socket_address("") is None
    assert socket_address(None) is None


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_seconds is None
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_send_failure_is_logged_not_raised(socket_path: str, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": socket_path + "-gone"})
    with caplog.at_level(logging.WARNING, logger="unionterm.sdnotify"):
        assert notifier.ready() is False
    assert "event=sd_notify_failed" in caplog.text


def test_watchdog_interval_from_environment() -> None:
    me = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, me) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me)}, me) == 30.0
    # The watchdog belongs to another process (we inherited its environment).
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me + 1)}, me) is None
    assert watchdog_interval({}, me) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, me) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, me) is None


async def test_watchdog_task_returns_when_systemd_set_no_watchdog(socket_path: str) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": socket_path})
    await asyncio.wait_for(watchdog_task(lambda: True, notifier), timeout=1)


# --- health ----------------------------------------------------------------------


async def test_unhealthy_stops_pings_and_logs_once(
    socket_path: str, listener: NotifyListener, caplog: pytest.LogCaptureFixture
) -> None:
    healthy = True
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": socket_path, "WATCHDOG_USEC": "100000"})
    caplog.set_level(logging.INFO, logger="unionterm.sdnotify")
    task = asyncio.create_task(watchdog_task(lambda: healthy, notifier))
    try:
        await asyncio.sleep(0.3)
        healthy = False
        await asyncio.sleep(0)  # the flip is seen by the next tick at the latest
        listener.drain()
        await asyncio.sleep(0.4)  # eight periods
        assert listener.collect(0.01) == []
        healthy = True
        await asyncio.sleep(0.2)
        assert len(pings(listener.collect(0.01))) >= 2
    finally:
        task.cancel()
    events = [r.getMessage().split()[0] for r in caplog.records if r.name == "unionterm.sdnotify"]
    assert events == ["event=watchdog_unhealthy", "event=watchdog_healthy"]


async def test_health_check_that_raises_counts_as_unhealthy(
    socket_path: str, listener: NotifyListener, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> bool:
        raise RuntimeError("database gone")

    notifier = Notifier.from_environ({"NOTIFY_SOCKET": socket_path})
    task = asyncio.create_task(watchdog_task(broken, notifier, interval=0.1))
    await asyncio.sleep(0.3)
    task.cancel()
    assert listener.collect(0.01) == []
    assert "event=watchdog_health_error" in caplog.text
    assert caplog.text.count("event=watchdog_unhealthy") == 1


# --- the loop drives the pings (real child process) --------------------------------


def test_pings_at_half_the_interval_stop_on_sigstop_and_resume(
    child: Starter, listener: NotifyListener
) -> None:
    proc = child("idle")
    times = pings(listener.collect(1.0))
    assert len(times) >= 3
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert PERIOD * 0.7 < statistics.median(gaps) < PERIOD * 1.5

    os.kill(proc.pid, signal.SIGSTOP)
    wait_stopped(proc.pid)
    listener.drain()
    assert listener.collect(5 * PERIOD) == []

    os.kill(proc.pid, signal.SIGCONT)
    assert len(pings(listener.collect(4 * PERIOD))) >= 2


def test_blocked_loop_stops_pings(child: Starter, listener: NotifyListener) -> None:
    proc = child("hang")
    assert PING in listener.wait_for("STATUS=hang", timeout=3)
    assert listener.collect(5 * PERIOD) == []
    assert proc.poll() is None  # alive, just not serving: exactly what systemd must catch


def test_busy_loop_that_still_yields_keeps_pinging(child: Starter, listener: NotifyListener) -> None:
    child("busy")
    listener.wait_for("STATUS=busy", timeout=3)
    times = pings(listener.collect(1.2))
    assert len(times) >= 4
    # Every gap stays inside the watchdog interval, so systemd would not fire.
    assert max(b - a for a, b in zip(times, times[1:])) < 2 * PERIOD
