"""Real services the simulator runs: a private pcscd with vpcd slots, and mosquitto.

Both are the real programs, started in the foreground as child processes on
loopback and private ports, and stopped by their pid (never by name: a
machine may run its own). Only one pcscd can run per machine, because its
socket is always ``/run/pcscd/pcscd.comm``; starting a second one is refused
with a message that says so.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger("unionterm.sim.services")

VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
PCSCD_SOCKET = "/run/pcscd/pcscd.comm"


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def port_listening(port: int) -> bool:
    """True if something listens on TCP ``port``, without connecting to it.

    Connecting would be a side effect here: to vpcd a connection *is* a card
    being placed on the reader.
    """
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class ManagedProcess:
    """A foreground child process with start/stop/restart and its output in a log file."""

    name = "process"

    def __init__(self, workdir: Path | None = None) -> None:
        # absolute: the daemons change directory, so a relative path would point nowhere
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"unionterm-{self.name}-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.logfile = self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def before_start(self) -> None:
        return None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self.before_start()
        with open(self.logfile, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_for(lambda: self.ready() or self.proc.poll() is not None, timeout, f"{self.name} to start")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            tail = self.logfile.read_text(errors="replace")[-2000:]
            self.proc = None
            raise RuntimeError(f"{self.name} exited at start; log {self.logfile}:\n{tail}")
        atexit.register(self.stop)  # a crashed test run must not leave a pcscd holding the socket
        log.info("event=service_started name=%s pid=%d", self.name, self.proc.pid)

    def stop(self, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.info("event=service_stopped name=%s", self.name)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Pcscd(ManagedProcess):
    """pcscd with its own reader.conf folder holding vpcd reader(s).

    Reader ``i`` listens for virtual cards on TCP ``channel + 2*i`` (slot 0)
    and ``channel + 2*i + 1`` (slot 1), as vpcd does.
    """

    name = "pcscd"

    def __init__(self, channel: int | None = None, readers: int = 1, friendly: str = "Sim Reader",
                 workdir: Path | None = None) -> None:
        super().__init__(workdir)
        self.channel = channel or int(os.environ.get("UNIONTERM_VPCD_CHANNEL", "0x9001"), 0)
        self.readers = readers
        self.friendly = friendly
        self.confdir = self.workdir / "reader.conf.d"

    def card_port(self, reader: int = 0, slot: int = 0) -> int:
        return self.channel + 2 * reader + slot

    def reader_name(self, reader: int = 0, slot: int = 0) -> str:
        return f"{self.friendly} {reader:02d} {slot:02d}" if self.readers == 1 else \
            f"{self.friendly} {reader} {0:02d} {slot:02d}"

    def before_start(self) -> None:
        if not os.path.exists(VPCD_DRIVER):
            raise RuntimeError(f"{VPCD_DRIVER} missing: install the Debian package vsmartcard-vpcd")
        if shutil.which("pcscd") is None:
            raise RuntimeError("pcscd not found: install the Debian package pcscd")
        if self._other_pcscd():
            raise RuntimeError("another pcscd is already running on this machine; only one can "
                               f"own {PCSCD_SOCKET}: stop it first (e.g. 'systemctl stop pcscd.socket pcscd')")
        self.confdir.mkdir(parents=True, exist_ok=True)
        for old in self.confdir.iterdir():
            old.unlink()
        for i in range(self.readers):
            name = self.friendly if self.readers == 1 else f"{self.friendly} {i}"
            port = self.channel + 2 * i
            (self.confdir / f"vpcd{i}").write_text(
                f'FRIENDLYNAME "{name}"\nDEVICENAME /dev/null:0x{port:04X}\n'
                f"LIBPATH {VPCD_DRIVER}\nCHANNELID 0x{port:04X}\n")

    def _other_pcscd(self) -> bool:
        """Is a pcscd answering on the socket? (Checked by connecting, so a pcscd in
        another mount namespace, or a zombie, does not count.)"""
        if not os.path.exists(PCSCD_SOCKET):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(PCSCD_SOCKET)
            except OSError:
                return False
        return True

    def command(self) -> list[str]:
        return ["pcscd", "--foreground", "--config", str(self.confdir)]

    def ready(self) -> bool:
        return os.path.exists(PCSCD_SOCKET) and all(
            port_listening(self.card_port(i, slot)) for i in range(self.readers) for slot in (0, 1))


class Mosquitto(ManagedProcess):
    """A real mosquitto broker on a private loopback port, no persistence."""

    name = "mosquitto"

    def __init__(self, port: int | None = None, workdir: Path | None = None, extra: str = "",
                 persistent: bool = False) -> None:
        super().__init__(workdir)
        self.port = port or free_port()
        self.extra = extra
        self.persistent = persistent
        self.conf = self.workdir / "mosquitto.conf"

    def before_start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(binary):
            raise RuntimeError("mosquitto not found: install the Debian package mosquitto")
        self.binary = binary
        persistence = "false"
        if self.persistent:  # sessions and queued QoS 1 messages survive a broker restart
            # mosquitto drops root privileges to its own user, which cannot enter a
            # 0700 work folder (pytest's tmp_path is one): keep the store under /tmp.
            if not hasattr(self, "store"):
                self.store = Path(tempfile.mkdtemp(prefix="unionterm-mosquitto-store-"))
                os.chmod(self.store, 0o777)
            store = self.store
            persistence = f"true\npersistence_location {store}/"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             f"persistence {persistence}\nlog_dest stdout\n{self.extra}")

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]

    def ready(self) -> bool:
        return port_listening(self.port)
