"""The shipped systemd unit, sysusers and tmpfiles entries, checked by systemd's own tools.

``systemd-analyze verify`` loads a unit file exactly as PID 1 would and works
without systemd running as init (it only needs the unit search path), so it
runs here and in CI. It reports bad settings as warnings with exit code 0,
so the tests fail on any diagnostic that names the unit, and a deliberately
broken copy proves that such diagnostics are seen at all. The directive list
is asserted separately because a missing line is not an error to systemd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
UNIT = SYSTEMD / "unionterm.service"
PRODUCTION_BINARY = "/opt/unionterm/.venv/bin/unionterm"
# Exposure score x10 that `systemd-analyze security` must not exceed ("OK" is < 4.0).
MAX_EXPOSURE = 20


def tool(name: str) -> str:
    """Path of a systemd tool; the tests are about systemd, so its absence is a failure."""
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/bin")
    assert path, f"{name} not found: install Debian's 'systemd' package"
    return path


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value, in order (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        key, _, value = line.partition("=")
        sections[current][key.strip()].append(value.strip())
    return sections


def runnable_copy(directory: Path, text: str) -> Path:
    """The unit with ExecStart pointing at a binary that exists, so verify checks the rest.

    verify rejects a unit whose command is missing, and the production venv is
    not installed in CI; everything else stays byte-for-byte the same.
    """
    assert PRODUCTION_BINARY in text
    copy = directory / UNIT.name
    copy.write_text(text.replace(PRODUCTION_BINARY, tool("true")))
    return copy


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice", SYSTEMD_LOG_COLOR="0")
    return subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", "--generators=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=unit.parent,
    )


def diagnostics_about(result: subprocess.CompletedProcess[str], unit: Path) -> list[str]:
    """Lines of verify's output that concern our unit (others may warn about host units)."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if unit.name in line or str(unit) in line or "unionterm" in line]


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    copy = runnable_copy(tmp_path, UNIT.read_text())
    result = verify(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert diagnostics_about(result, copy) == []


def test_verify_does_report_a_broken_setting(tmp_path: Path) -> None:
    """Negative control: the clean result above is not verify saying nothing whatever we feed it."""
    broken = UNIT.read_text().replace("UMask=0077", "UMask=not-octal")
    copy = runnable_copy(tmp_path, broken)
    assert any("UMask" in line or "mode" in line for line in diagnostics_about(verify(copy), copy))


def test_verify_rejects_the_unit_if_execstart_is_missing(tmp_path: Path) -> None:
    """Why the test substitutes ExecStart: verify checks the binary really exists."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(PRODUCTION_BINARY, str(tmp_path / "absent")))
    result = verify(copy)
    assert result.returncode != 0
    assert any("not executable" in line for line in diagnostics_about(result, copy))


def test_security_exposure_stays_low(tmp_path: Path) -> None:
    copy = runnable_copy(tmp_path, UNIT.read_text())
    result = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", f"--threshold={MAX_EXPOSURE}", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_watchdog_and_restart_policy(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert int(service["WatchdogSec"][0]) > 0
    assert service["Restart"] == ["on-failure"]
    assert service["RestartSec"]
    assert int(unit["Unit"]["StartLimitIntervalSec"][0]) > 0
    assert int(unit["Unit"]["StartLimitBurst"][0]) > 0
    assert service["ExecStart"] == [f"{PRODUCTION_BINARY} run --config /etc/unionterm/terminal.toml"]


def test_ordering_after_pcscd_and_network(unit: dict[str, dict[str, list[str]]]) -> None:
    after = " ".join(unit["Unit"]["After"]).split()
    wants = " ".join(unit["Unit"]["Wants"]).split()
    for dependency in ("pcscd.service", "network-online.target"):
        assert dependency in after
        assert dependency in wants


def test_identity_and_directories(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]
    assert service["User"] == ["unionterm"]
    assert service["Group"] == ["unionterm"]
    assert set(" ".join(service["SupplementaryGroups"]).split()) == {"gpio", "i2c", "dialout", "spi"}
    assert service["StateDirectory"] == ["unionterm"]
    assert service["ConfigurationDirectory"] == ["unionterm"]
    assert service["UMask"] == ["0077"]


def test_hardening_keeps_devices_reachable(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]
    assert "PrivateDevices" not in service, "PrivateDevices hides the GPIO/I2C/SPI/serial nodes"
    assert service["DevicePolicy"] == ["closed"]
    allowed = {entry.split()[0] for entry in service["DeviceAllow"]}
    assert allowed == {
        "char-gpiochip",
        "char-i2c",
        "char-spi",
        "char-ttyAMA",
        "char-ttyS",
        "char-ttyUSB",
        "char-ttyACM",
    }
    expected = {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert service[key] == [value], key
    assert service["ProtectHome"] and service["ProtectHome"] != ["no"]
    assert set(service["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "@system-service" in service["SystemCallFilter"]


def run_sysusers(root: Path) -> None:
    subprocess.run(
        [tool("systemd-sysusers"), f"--root={root}", str(SYSTEMD / "unionterm.sysusers")],
        check=True,
        capture_output=True,
        timeout=60,
    )


def read_db(path: Path) -> dict[str, list[str]]:
    """An /etc/passwd or /etc/group file as name -> fields."""
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines() if line}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A minimal OS root like Raspberry Pi OS: dialout and gpio already exist with their own GIDs."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\ngpio:x:993:\n")
    return tmp_path


def test_sysusers_creates_user_in_device_groups(image: Path) -> None:
    run_sysusers(image)
    users = read_db(image / "etc" / "passwd")
    groups = read_db(image / "etc" / "group")
    assert users["unionterm"][6] == "/usr/sbin/nologin"
    assert int(users["unionterm"][2]) < 1000  # a system user
    assert groups["unionterm"][2] == users["unionterm"][3]
    for group in ("gpio", "i2c", "spi", "dialout"):
        assert "unionterm" in groups[group][3].split(","), group
    # Existing groups keep their GIDs: udev rules on the image refer to them.
    assert groups["gpio"][2] == "993"
    assert groups["dialout"][2] == "20"


def test_tmpfiles_locks_config_to_root_and_service_group(image: Path) -> None:
    run_sysusers(image)
    (image / "etc" / "unionterm" / "tls").mkdir(parents=True)
    for name in ("terminal.toml", "card.key", "sam.keys", "tls/terminal.key", "tls/terminal.crt", "tls/ca.crt"):
        (image / "etc" / "unionterm" / name).write_text("")
    subprocess.run(
        [tool("systemd-tmpfiles"), f"--root={image}", "--create", str(SYSTEMD / "unionterm.tmpfiles")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    gid = int(read_db(image / "etc" / "group")["unionterm"][2])
    uid = int(read_db(image / "etc" / "passwd")["unionterm"][2])
    expected = {
        "etc/unionterm": (0o750, 0, gid),
        "etc/unionterm/terminal.toml": (0o640, 0, gid),
        "etc/unionterm/tls": (0o750, 0, gid),
        "etc/unionterm/tls/terminal.crt": (0o640, 0, gid),
        "etc/unionterm/tls/ca.crt": (0o640, 0, gid),
        # private keys: the service user alone, or the key loaders refuse them
        "etc/unionterm/tls/terminal.key": (0o600, uid, gid),
        "etc/unionterm/card.key": (0o600, uid, gid),
        "etc/unionterm/sam.keys": (0o600, uid, gid),
        "var/lib/unionterm": (0o700, uid, gid),
    }
    for relative, (mode, owner, group) in expected.items():
        st = (image / relative).stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, owner, group), relative
