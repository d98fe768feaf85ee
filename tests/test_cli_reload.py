"""A signed "reload config" restarts the terminal inside the running process.

The unit restarts only on failure, so a reload that merely exited 0 would
leave the door controller stopped: the real CLI process must come back by
itself, and a retained reload command must not reload it again.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from simulator.cards.uid import UidCard
from simulator.rig import sim_config_text
from simulator.services import Mosquitto, Pcscd
from simulator.vcard import VirtualCard
from terminal.commands import RELOAD_CONFIG, build_command
from terminal.signing import write_public_key

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = "SIM-0001"


def _read_until(proc: subprocess.Popen[str], lines: list[str], needle: str, count: int = 1,
                timeout: float = 30.0) -> None:
    """Collect the process's log lines until ``needle`` has appeared ``count`` times."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while sum(needle in line for line in lines) < count:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"no {needle!r} x{count} in:\n{''.join(lines)}")
        line = proc.stdout.readline()
        if line:
            lines.append(line)


def test_reload_command_restarts_in_place(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> None:
    if not pcscd.running:
        pcscd.start()
    key = Ed25519PrivateKey.generate()
    write_public_key(tmp_path / "cmd.pub", key.public_key())
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "card.key").write_text("22" * 32)
    cfg = tmp_path / "terminal.toml"
    cfg.write_text(sim_config_text(state, "access", broker.port)
                   + '\n[commands]\npublic_keys = ["cmd.pub"]\n')
    proc = subprocess.Popen([sys.executable, "-u", "-m", "terminal.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: list[str] = []
    try:
        _read_until(proc, lines, "event=broker_connected")

        async def send() -> None:  # retained: it must act once, not again after the restart
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-backoffice") as client:
                await client.publish(f"unionterm/v1/t/{TERMINAL}/cmd",
                                     build_command(key, TERMINAL, 1, RELOAD_CONFIG), qos=1, retain=True)

        asyncio.run(send())
        _read_until(proc, lines, "event=config_reloaded")
        _read_until(proc, lines, "event=terminal_started", count=2)
        _read_until(proc, lines, "event=broker_connected", count=2)
        card = VirtualCard(UidCard(bytes.fromhex("04C0FFEE000042")), pcscd.card_port())
        card.place()
        try:
            _read_until(proc, lines, "event=tap ")  # the reloaded terminal serves taps
        finally:
            card.remove()
        time.sleep(1.0)  # time for a second delivery of the retained command to arrive and be refused
        assert proc.poll() is None, "".join(lines)
        proc.terminate()
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert output.count("event=config_reloaded") == 1, output
    assert output.count("event=terminal_started") == 2, output
    assert "Traceback" not in output
