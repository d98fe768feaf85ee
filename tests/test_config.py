"""The config file: typed, strict, and every error names file, key and problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from terminal.config import load, parse
from terminal.exceptions import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = '[terminal]\nid = "T-1"\nmode = "access"\n'


@pytest.mark.parametrize("name", ["access.toml", "pos.toml", "canteen.toml"])
def test_example_configs_load(name: str) -> None:
    cfg = load(ROOT / "config" / name)
    assert cfg.terminal.mode == name.removesuffix(".toml")
    assert cfg.source.endswith(name)


def test_defaults_fill_in() -> None:
    cfg = parse(MINIMAL, "t.toml")
    assert cfg.gpio.relay_pin == 17 and cfg.mqtt.port == 1883 and cfg.access.pulse_ms == 3000


@pytest.mark.parametrize(
    "extra, key, words",
    [
        ('[mqtt]\nport = "1883"\n', "mqtt.port", "expected an integer, got string '1883'"),
        ("[mqtt]\nport = 70000\n", "mqtt.port", "must be at most 65535"),
        ("[gpio]\nrelay_pin = 27\n", "gpio.green_led_pin", "pin 27 is already used by gpio.relay_pin"),
        ("[access]\npulse_msec = 3000\n", "access.pulse_msec", "unknown key"),
        ("[acess]\npulse_ms = 3000\n", "acess", "unknown key"),
        ('[display]\ncontroller = "ssd1309"\n', "display.controller", "must be one of 'ssd1306', 'sh1106'"),
        ("[gpio]\nrelay_active_high = 1\n", "gpio.relay_active_high", "expected true or false"),
        ('[serial.ecr]\nbaudrate = 9600\n', "serial.ecr.port", "is required but missing"),
    ],
)
def test_errors_name_file_key_and_problem(extra: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(MINIMAL + extra, "/etc/unionterm/terminal.toml")
    assert err.value.key == key
    assert str(err.value).startswith(f"/etc/unionterm/terminal.toml: {key}: ")
    assert words in str(err.value)


def test_missing_required_section() -> None:
    with pytest.raises(ConfigError, match=r"t.toml: terminal: is required but missing"):
        parse("[mqtt]\nport = 1\n", "t.toml")


def test_bad_toml_names_line() -> None:
    with pytest.raises(ConfigError, match=r"t.toml: not valid TOML: .*line 2"):
        parse('[terminal]\nid = "x\n', "t.toml")


def _check(path: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "terminal.cli", "check-config", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_check_config_cli_three_failures(tmp_path: Path) -> None:
    wrong_type = tmp_path / "wrong-type.toml"
    wrong_type.write_text(MINIMAL + "[access]\npulse_ms = \"long\"\n")
    unknown = tmp_path / "unknown-key.toml"
    unknown.write_text(MINIMAL + "[mqtt]\nhostname = \"x\"\n")
    missing = tmp_path / "nope.toml"
    expected = {
        wrong_type: f"{wrong_type}: access.pulse_ms: expected an integer, got string 'long'",
        unknown: f"{unknown}: mqtt.hostname: unknown key",
        missing: f"{missing}: file not found",
    }
    for path, message in expected.items():
        result = _check(path)
        assert result.returncode == 78, result
        assert message in result.stderr
        assert "Traceback" not in result.stderr + result.stdout


def test_check_config_cli_ok() -> None:
    result = _check(ROOT / "config" / "access.toml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
