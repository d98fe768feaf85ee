"""The real ``unionterm run`` process speaks systemd's notify protocol, and its watchdog follows its loop.

A bound datagram socket stands in for systemd's NOTIFY_SOCKET (helpers from
tests/test_sdnotify.py). The terminal runs against real pcscd + vpcd and
mosquitto: READY=1 must come once it takes taps, then WATCHDOG=1 every
WatchdogSec/2; a frozen process (SIGSTOP) sends none, and pings resume on
SIGCONT; SIGTERM says STOPPING=1 and exits cleanly.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.rig import Rig, sim_config_text
from simulator.services import Mosquitto, Pcscd
from tests.test_sdnotify import NotifyListener, pings, wait_stopped

REPO = Path(__file__).resolve().parents[1]
WATCHDOG_USEC = 400_000
PERIOD = WATCHDOG_USEC / 1_000_000 / 2

pytestmark = pytest.mark.stack


@pytest.fixture
def terminal_config(tmp_path: Path, broker: Mosquitto) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "card.key").write_text(secrets.token_hex(32))
    os.chmod(tmp_path / "card.key", 0o600)
    fd = os.open(tmp_path / "sam.keys", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"1": secrets.token_hex(16), "2": secrets.token_hex(16)}, fh)
    config = tmp_path / "terminal.toml"
    config.write_text(sim_config_text(state, "access", broker.port))
    return config


@pytest.fixture
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifyListener]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path may be longer.
    folder = Path(f"/tmp/sdn-{secrets.token_hex(4)}")
    folder.mkdir()
    listening = NotifyListener(str(folder / "notify"))
    try:
        yield listening
    finally:
        listening.close()
        (folder / "notify").unlink(missing_ok=True)
        folder.rmdir()


@pytest.fixture
def terminal(pcscd: Pcscd, terminal_config: Path, listener: NotifyListener) -> Iterator[subprocess.Popen[bytes]]:
    if not pcscd.running:
        pcscd.start()
    env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": listener.sock.getsockname(),
           "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "terminal.cli", "run", "--config", str(terminal_config)],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.communicate(timeout=10)


def test_ready_then_pings_which_stop_while_frozen(terminal: subprocess.Popen[bytes],
                                                  listener: NotifyListener) -> None:
    listener.wait_for("READY=1", timeout=20)
    assert listener.receive(2) == "STATUS=serving: terminal SIM-0001 (access)"
    assert len(pings(listener.collect(1.0))) >= 3  # every 0.2 s

    os.kill(terminal.pid, signal.SIGSTOP)
    wait_stopped(terminal.pid)
    listener.drain()
    assert listener.collect(5 * PERIOD) == []  # systemd would now kill and restart it

    os.kill(terminal.pid, signal.SIGCONT)
    assert len(pings(listener.collect(4 * PERIOD))) >= 2

    terminal.send_signal(signal.SIGTERM)
    listener.wait_for("STOPPING=1", timeout=5)
    assert terminal.wait(timeout=20) == 0


async def test_health_is_the_card_task_and_the_journal(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> None:
    if not pcscd.running:
        pcscd.start()
    async with Rig(tmp_path / "rig", pcscd=pcscd, broker=broker) as rig:
        assert rig.terminal.healthy()
        await rig.stop_terminal()
        assert not rig.terminal.healthy()  # no card task and no open journal: nothing to vouch for
